"""INFER distillation: budget, natural sets, UFC recovery (batching, resume, errors), end to end."""
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import kill_after_save, rounding_bound, torch_threads
from torch import nn

from infer_fast import distill
from infer_fast.distill import engine, plan
from infer_fast.data import load_dataset
from infer_fast.distill import (
    RecoveryConfig,
    distill_infer,
    infer_budget,
    recover_ufcs,
    select_natural_sets,
)
from infer_fast.ops import ufc_compose
from infer_fast.storage import load_distilled

torch.set_num_threads(1)

DATASET = "fashion-mnist-mini"


def _interrupt_batch(monkeypatch, on_call):
    """Make the on_call-th optimized batch raise KeyboardInterrupt (a kill mid-run); returns
    a function that restores the real one."""
    real = engine.optimize_batch
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == on_call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "optimize_batch", interrupted)
    return lambda: monkeypatch.setattr(engine, "optimize_batch", real)


def _cfg(**kw):
    base = dict(iterations=5, seed=3)
    base.update(kw)
    return RecoveryConfig(**base)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_recovery_bits_do_not_depend_on_the_thread_count(natural, teachers, train_set, backend):
    """A run resumed in a process with another thread count continues bit-identically only if
    nothing on the path reduces by thread (issue 20, point 0): INFER and SRe2L at 1 and 2
    threads give the same bits, on our C++ kernels and on torch's ops."""
    from infer_fast.distill import recover_sre2l
    from infer_fast.ops.backends import available_backends

    if backend not in available_backends("cpu"):
        pytest.skip(f"backend {backend} not built")
    spec = train_set.spec
    runs = []
    for n in (1, 2):
        with torch_threads(n):
            ufcs = recover_ufcs(natural, teachers, spec.mean, spec.std, _cfg(group_size=3), progress=False,
                                backend=backend)["ufc"]
            pixels = recover_sre2l(2, 10, (1, 28, 28), teachers[:1], spec.mean, spec.std,
                                   RecoveryConfig.sre2l(iterations=3, seed=1, group_size=2), progress=False,
                                   backend=backend)["pixels"]
        runs.append((ufcs, pixels))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_batch_stats_name_the_backend_that_ran(natural, teachers, train_set):
    """Each batch's stats say which kernels ran: "auto" resolved (our C++ kernels on the CPU,
    the CUDA ones on a GPU: tests/test_recovery_gpu.py), or the backend asked for."""
    from infer_fast.ops.backends import available_backends

    spec = train_set.spec
    auto = recover_ufcs(natural, teachers[:1], spec.mean, spec.std, _cfg(iterations=2, group_size=3), progress=False)
    expected = "cpu" if "cpu" in available_backends("cpu") else "torch"
    assert {s["backend"] for s in auto["stats"]} == {expected}
    torch_run = recover_ufcs(natural, teachers[:1], spec.mean, spec.std, _cfg(iterations=2, group_size=3),
                             progress=False, backend="torch")
    assert {s["backend"] for s in torch_run["stats"]} == {"torch"}


# ---- budget ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "ipc,C,M,K",
    [(10, 10, 4, 7), (50, 10, 4, 35), (10, 100, 4, 9), (50, 100, 4, 48), (10, 1000, 3, 9), (50, 1000, 3, 49), (2, 10, 4, 1)],
)
def test_fair_budget(ipc, C, M, K):
    assert infer_budget(ipc, C, M) == K
    assert K * C + K * M <= ipc * C


def test_budget_ipc_accounting_and_errors():
    assert infer_budget(10, 1000, 3, accounting="ipc") == 10
    with pytest.raises(ValueError, match=r"ipc=1.*ipc >= 2"):
        infer_budget(1, 10, 4)
    with pytest.raises(ValueError, match=r"ipc >= 3"):
        infer_budget(2, 4, 5)
    with pytest.raises(ValueError, match="accounting"):
        infer_budget(10, 10, 4, accounting="paper")
    with pytest.raises(ValueError, match="ipc"):
        infer_budget(0, 10, 4)


# ---- natural sets -----------------------------------------------------------------------

def test_select_natural_sets(train_set):
    nat = select_natural_sets(train_set, 4, seed=7)
    C = train_set.spec.num_classes
    assert nat.shape == (4, C) + tuple(train_set.images.shape[1:]) and nat.dtype == torch.uint8
    flat = train_set.images.flatten(1)
    for c in range(C):
        rows = []
        for k in range(4):
            match = (flat == nat[k, c].flatten()).all(1).nonzero().squeeze(1)
            assert match.numel() >= 1 and (train_set.labels[match] == c).any()
            rows.append(int(match[0]))
        assert len(set(rows)) == 4  # without replacement within a class
    assert torch.equal(nat, select_natural_sets(train_set, 4, seed=7))
    assert not torch.equal(nat, select_natural_sets(train_set, 4, seed=8))
    with pytest.raises(ValueError, match=r"^K = 10000 natural sets needs 10000 images of every class, but class 0 of "
                                         r"the train split of fashion-mnist-mini has 500 \(10 classes have fewer\)$"):
        select_natural_sets(train_set, 10_000, seed=0)
    with pytest.raises(ValueError, match=r"^infer at ipc 10001 \(K = 10000 natural sets\) needs 10000 images .*: "
                                         r"lower ipc \(--ipc\)$"):
        select_natural_sets(train_set, 10_000, seed=0, ipc=10_001)


# ---- recovery ----------------------------------------------------------------------------

def test_batched_equals_alone(natural, teachers, train_set):
    spec = train_set.spec
    teacher = teachers[:1]
    together = recover_ufcs(natural, teacher, spec.mean, spec.std, _cfg(group_size=3), progress=False)
    alone = recover_ufcs(natural, teacher, spec.mean, spec.std, _cfg(group_size=1), progress=False)
    pairs = recover_ufcs(natural, teacher, spec.mean, spec.std, _cfg(group_size=2), progress=False)
    K = natural.shape[0]
    assert together["ufc"].shape == (K,) + tuple(natural.shape[2:])
    assert together["ufc"].dtype == torch.float32
    assert together["ufc_index"].tolist() == [0, 1, 2] and together["ufc_teacher"].tolist() == [0, 0, 0]
    assert together["ufc"].abs().max() > 0  # it moved
    torch.testing.assert_close(together["ufc"], alone["ufc"], rtol=0, atol=rounding_bound(5))
    torch.testing.assert_close(pairs["ufc"], alone["ufc"], rtol=0, atol=rounding_bound(5))
    assert len(together["stats"]) == 1 and len(alone["stats"]) == 3 and len(pairs["stats"]) == 2
    s = together["stats"][0]
    assert s["teacher"] == 0 and s["k"] == [0, 1, 2]
    for key in ("ce", "r_bn", "accuracy"):
        assert key in s and len(s[key + "_per_ufc"]) == 3
    assert 0.0 <= s["accuracy"] <= 1.0
    assert s["ce_last_iteration"] > 0 and s["r_bn_last_iteration"] > 0
    # another seed draws other shifts -> other compensators
    other = recover_ufcs(natural, teacher, spec.mean, spec.std, _cfg(group_size=3, seed=4), progress=False)
    assert not torch.allclose(other["ufc"], together["ufc"])


def test_first_iteration_matches_manual_step(natural, teachers, train_set):
    """One iteration with max_shift=0: u = -lr * sign(grad) (Adam's first step), where grad is
    the gradient of CE + r_bn * R_bn of the unshifted set at u = 0."""
    from infer_fast.data.transforms import normalize
    from infer_fast.ops import BNStatTracker

    spec, teacher = train_set.spec, teachers[0]
    cfg = _cfg(iterations=1, max_shift=0, group_size=1, r_bn=0.5)
    out = recover_ufcs(natural[:1], [teacher], spec.mean, spec.std, cfg, progress=False)
    x0 = normalize(natural[0], spec.mean, spec.std)
    u = torch.zeros_like(x0[0], requires_grad=True)
    tracker = BNStatTracker(teacher, groups=1)
    logits = teacher(x0 + u)
    loss = nn.functional.cross_entropy(logits, torch.arange(10)) + 0.5 * tracker.weighted_sum(10.0).sum()
    tracker.remove()
    (grad,) = torch.autograd.grad(loss, u)
    expected = -cfg.lr * grad / (grad.abs() + cfg.eps)
    torch.testing.assert_close(out["ufc"][0], expected, rtol=1e-4, atol=1e-5)


def test_multi_teacher_layout(natural, teachers, train_set):
    spec = train_set.spec
    out = recover_ufcs(natural[:2], teachers, spec.mean, spec.std, _cfg(iterations=2), progress=False)
    assert out["ufc"].shape == (4, 1, 28, 28)
    assert out["ufc_teacher"].tolist() == [0, 0, 1, 1] and out["ufc_index"].tolist() == [0, 1, 0, 1]
    assert out["group_size"] == 2  # automatic on CPU: min(K, 512 // C)
    assert [s["teacher"] for s in out["stats"]] == [0, 1]


def _saved_jobs(saved):
    """The (m, k) jobs a recovery checkpoint lists as recovered."""
    return [tuple(job) for entry in saved["results"] for job in entry["jobs"]]


def test_resume_after_interrupt(natural, teachers, train_set, tmp_path, monkeypatch):
    spec = train_set.spec
    cfg = _cfg(group_size=1)
    full = recover_ufcs(natural, teachers[:1], spec.mean, spec.std, cfg, progress=False)
    ckpt = tmp_path / "run.recovery.pt"
    restore = _interrupt_batch(monkeypatch, on_call=2)
    with pytest.raises(KeyboardInterrupt):
        recover_ufcs(natural, teachers[:1], spec.mean, spec.std, cfg, checkpoint=ckpt, progress=False)
    restore()
    saved = torch.load(ckpt, weights_only=True)
    assert _saved_jobs(saved) == [(0, 0)]
    assert os.listdir(tmp_path / "run.recovery.pt.results") == [saved["results"][0]["file"]]
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]

    # an existing checkpoint without resume is refused; another config is refused
    with pytest.raises(ValueError, match="resume=True"):
        recover_ufcs(natural, teachers[:1], spec.mean, spec.std, cfg, checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match="iterations"):
        recover_ufcs(natural, teachers[:1], spec.mean, spec.std, _cfg(group_size=1, iterations=6),
                     checkpoint=ckpt, resume=True, progress=False)
    with pytest.raises(ValueError, match="natural images"):
        recover_ufcs(natural.flip(0), teachers[:1], spec.mean, spec.std, cfg, checkpoint=ckpt, resume=True,
                     progress=False)
    with pytest.raises(ValueError, match="M"):
        recover_ufcs(natural, teachers, spec.mean, spec.std, cfg, checkpoint=ckpt, resume=True, progress=False)
    # another teacher of the same architecture (the silent reuse issue 12 found) is refused, naming it
    with pytest.raises(ValueError, match=r"belongs to another run \(the teachers' weights \(or their order\) differ\)"):
        recover_ufcs(natural, teachers[1:], spec.mean, spec.std, cfg, checkpoint=ckpt, resume=True, progress=False)

    # resume (with another group size: results do not depend on batching) from a checkpoint as
    # infer-fast wrote them before checkpoints inside a batch (no "partials")
    torch.save({key: value for key, value in saved.items() if key != "partials"}, ckpt)
    resumed = recover_ufcs(natural, teachers[:1], spec.mean, spec.std, _cfg(group_size=2), checkpoint=ckpt,
                           resume=True, progress=False)
    torch.testing.assert_close(resumed["ufc"], full["ufc"], rtol=0, atol=rounding_bound(5))  # other batching
    assert [s["k"] for s in resumed["stats"]] == [[0], [1, 2]]
    assert resumed["ufc_index"].tolist() == full["ufc_index"].tolist()


def test_results_of_each_batch_written_once(natural, teachers, train_set, tmp_path, monkeypatch):
    """Each finished batch's results go to a file of their own, written once (not every result
    rewritten after every batch); the checkpoint only lists them; a listed file that is
    missing is refused by name on resume."""
    from infer_fast.distill import checkpoints

    spec = train_set.spec
    writes, real = [], checkpoints.save_atomic
    monkeypatch.setattr(checkpoints, "save_atomic", lambda obj, path: (writes.append(os.path.basename(path)), real(obj, path)))
    ckpt = tmp_path / "run.recovery.pt"
    restore = _interrupt_batch(monkeypatch, on_call=3)
    with pytest.raises(KeyboardInterrupt):
        recover_ufcs(natural, teachers[:1], spec.mean, spec.std, _cfg(group_size=1), checkpoint=ckpt, progress=False)
    restore()
    results = [w for w in writes if w != ckpt.name]
    assert len(results) == len(set(results)) == 2 and writes.count(ckpt.name) == 2
    saved = torch.load(ckpt, weights_only=True)
    assert not any(isinstance(v, (torch.Tensor, list)) and "ufc" in k for k, v in saved.items())
    assert sorted(os.listdir(tmp_path / "run.recovery.pt.results")) == sorted(results)
    (tmp_path / "run.recovery.pt.results" / saved["results"][1]["file"]).unlink()
    with pytest.raises(ValueError, match=r"lists results in .*, which is missing: delete the checkpoint"):
        recover_ufcs(natural, teachers[:1], spec.mean, spec.std, _cfg(group_size=1), checkpoint=ckpt, resume=True,
                     progress=False)


def test_resume_from_shares_of_another_world_size(teacher_paths, tmp_path, monkeypatch):
    """A run split across 2 ranks and stopped continues in one process (or any world size)
    from the ranks' shares: nothing recovered is redone, and every share is removed at the end."""
    cfg = _cfg(group_size=1, iterations=3)
    clean = load_distilled(distill_infer(DATASET, teacher_paths, ipc=3, out_dir=tmp_path / "clean", config=cfg,
                                         progress=False))
    out = tmp_path / "run"
    restore = _interrupt_batch(monkeypatch, on_call=3)
    with pytest.raises(KeyboardInterrupt):
        distill_infer(DATASET, teacher_paths, ipc=3, out_dir=out, config=cfg, progress=False)
    restore()
    # the two jobs done, as if two ranks had written one each (shares of a 2-rank run)
    ckpt = tmp_path / "run.recovery.pt"
    saved = torch.load(ckpt, weights_only=True)
    assert len(_saved_jobs(saved)) == 2 and len(saved["results"]) == 2  # one results file per batch
    for r in range(2):
        share = dict(saved, results=saved["results"][r:r + 1], stats=saved["stats"][r:r + 1])
        torch.save(share, f"{ckpt}.rank{r}-of-2")
    ckpt.unlink()
    with pytest.raises(ValueError, match="resume"):
        distill_infer(DATASET, teacher_paths, ipc=3, out_dir=out, config=cfg, progress=False)
    calls = []
    real = engine.optimize_batch
    monkeypatch.setattr(engine, "optimize_batch", lambda *a, **kw: calls.append(a[6]) or real(*a, **kw))
    resumed = load_distilled(distill_infer(DATASET, teacher_paths, ipc=3, out_dir=out, config=cfg, resume=True,
                                           progress=False))
    assert len(calls) == 2  # 4 UFCs (K = 2, M = 2), 2 recovered before: only the other 2 run
    assert torch.equal(resumed.ufc, clean.ufc)  # the same batches as the uninterrupted run: the same bits
    assert not [p for p in os.listdir(tmp_path) if "recovery" in p]


def test_resumed_set_records_the_batches_of_both_runs(teacher_paths, tmp_path, monkeypatch):
    """A run resumed with another group size records every batch its UFCs came from (the
    grouping changes float rounding), not only the last run's group size."""
    out = tmp_path / "run"
    restore = _interrupt_batch(monkeypatch, on_call=3)
    with pytest.raises(KeyboardInterrupt):
        distill_infer(DATASET, teacher_paths, ipc=3, out_dir=out, config=_cfg(group_size=1, iterations=2),
                      progress=False)
    restore()
    resumed = load_distilled(distill_infer(DATASET, teacher_paths, ipc=3, out_dir=out, resume=True, progress=False,
                                           config=_cfg(group_size=2, iterations=2)))
    assert resumed.hyperparameters["batches"] == [[0, [0]], [0, [1]], [1, [0, 1]]]
    assert resumed.hyperparameters["group_size_used"] == 2 and resumed.hyperparameters["group_size"] == 2


# ---- checkpoints inside a batch -------------------------------------------------------------

def _interrupt_at_iteration(monkeypatch, t_stop):
    """Make the first optimized batch raise KeyboardInterrupt (a kill) when it is about to run
    iteration t_stop (the eager loop reads its learning rate once per iteration); returns a
    function that restores the real schedule."""
    real = engine.cosine_lr
    batches = {"n": 0}

    def schedule(t, config):
        batches["n"] += t == 0
        if batches["n"] == 1 and t == t_stop:
            raise KeyboardInterrupt
        return real(t, config)

    monkeypatch.setattr(engine, "cosine_lr", schedule)
    return lambda: monkeypatch.setattr(engine, "cosine_lr", real)


def _interrupt_after_checkpoint(monkeypatch, iteration):
    """Make a run raise KeyboardInterrupt (a kill) as soon as its in-batch checkpoint of
    ``iteration`` is on disk: the point where checkpoints.SIGKILL_AFTER_CHECKPOINT_ENV kills the CLI.
    Returns a function that restores the real writer."""
    from infer_fast.distill import checkpoints

    return kill_after_save(monkeypatch, checkpoints,
                           lambda saved: any(state["iteration"] == iteration for state in saved["partials"]))


def _recover(method, natural, teachers, spec, cfg, **kwargs):
    """The result tensor of an INFER or SRe2L recovery (3 jobs of teacher 0) and its stats."""
    from infer_fast.distill import recover_sre2l

    if method == "infer":
        out = recover_ufcs(natural, teachers[:1], spec.mean, spec.std, cfg, **kwargs)
        return out["ufc"], out["stats"]
    out = recover_sre2l(3, 10, (1, 28, 28), teachers[:1], spec.mean, spec.std, cfg, **kwargs)
    return out["pixels"], out["stats"]


def _cadence_cfg(method, **kw):
    base = dict(iterations=12, seed=3, checkpoint_minutes=None)
    base.update(kw)
    return RecoveryConfig(**base) if method == "infer" else RecoveryConfig.sre2l(**base)


@pytest.mark.parametrize("method", ["infer", "sre2l"])
def test_interrupted_inside_a_batch_resumes_bit_identically(method, natural, teachers, train_set, tmp_path,
                                                            monkeypatch, capsys):
    """Killed at iteration 8 of the first batch (k = 0, 1) with a checkpoint every 5
    iterations: the checkpoint holds that batch at iteration 5 (variable, Adam, augmentation
    position), and the resumed run prints where it continues and ends exactly (torch.equal)
    where an uninterrupted run does, although it asks for other batches and another cadence
    (both result-neutral): the interrupted batch continues as it was."""
    spec = train_set.spec
    full, full_stats = _recover(method, natural, teachers, spec, _cadence_cfg(method, group_size=2), progress=False)
    assert [s["k"] for s in full_stats] == [[0, 1], [2]]
    ckpt = tmp_path / "run.recovery.pt"
    restore = _interrupt_at_iteration(monkeypatch, 8)
    with pytest.raises(KeyboardInterrupt):
        _recover(method, natural, teachers, spec, _cadence_cfg(method, group_size=2, checkpoint_every=5),
                 checkpoint=ckpt, progress=False)
    restore()
    saved = torch.load(ckpt, weights_only=True)
    assert saved["results"] == []  # no batch finished
    (partial,) = saved["partials"]
    assert (partial["method"], partial["teacher"], partial["k"]) == (method, 0, [0, 1])
    assert partial["iteration"] == 5 and partial["augment_step"] == 5 and float(partial["adam_step"]) == 5.0
    assert partial["variable"].shape[0] == 2 and partial["exp_avg_sq"].shape == partial["variable"].shape
    assert partial["alive"].tolist() == [True, True] and partial["died_at"].tolist() == [-1, -1]
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    capsys.readouterr()

    resumed, stats = _recover(method, natural, teachers, spec, _cadence_cfg(method, group_size=3, checkpoint_every=4),
                              checkpoint=ckpt, resume=True, progress=True)
    out = capsys.readouterr().out
    label = {"infer": "INFER", "sre2l": "SRe2L"}[method]
    assert f"resuming, 0/3 {label} jobs already recovered; teacher 1/1 batch k=0..1 continues at iteration 5/12" in out
    assert torch.equal(resumed, full)
    assert [s["k"] for s in stats] == [[0, 1], [2]]
    assert [s["resumed_from_iteration"] for s in stats] == [5, 0]
    saved = torch.load(ckpt, weights_only=True)
    assert saved["partials"] == [] and _saved_jobs(saved) == [(0, 0), (0, 1), (0, 2)]


@pytest.mark.parametrize("method", ["infer", "sre2l"])
def test_resume_from_every_checkpoint_inside_a_batch_is_bit_identical(method, natural, teachers, train_set, tmp_path,
                                                                      monkeypatch):
    """Checkpointed after every iteration and killed as soon as the checkpoint of iteration i is
    on disk, for every i inside the first batch (1: its very first checkpoint, ..., 11: its last
    before the batch ends at 12), the resumed run continues at i and ends exactly (torch.equal)
    where an uninterrupted run does; and so does a run killed twice (at 3, then, resumed, at 9)."""
    spec = train_set.spec
    full, _ = _recover(method, natural, teachers, spec, _cadence_cfg(method, group_size=2), progress=False)
    every = _cadence_cfg(method, group_size=2, checkpoint_every=1)

    def killed_at(iteration, ckpt, resume=False):
        restore = _interrupt_after_checkpoint(monkeypatch, iteration)
        with pytest.raises(KeyboardInterrupt):
            _recover(method, natural, teachers, spec, every, checkpoint=ckpt, resume=resume, progress=False)
        restore()
        (partial,) = torch.load(ckpt, weights_only=True)["partials"]
        assert (partial["k"], partial["iteration"], partial["augment_step"]) == ([0, 1], iteration, iteration)

    for iteration in range(1, 12):
        ckpt = tmp_path / f"killed-at-{iteration}.recovery.pt"
        killed_at(iteration, ckpt)
        resumed, stats = _recover(method, natural, teachers, spec, _cadence_cfg(method, group_size=2), checkpoint=ckpt,
                                  resume=True, progress=False)
        assert [s["resumed_from_iteration"] for s in stats] == [iteration, 0]
        assert torch.equal(resumed, full), f"resumed from iteration {iteration}"
    ckpt = tmp_path / "killed-twice.recovery.pt"
    killed_at(3, ckpt)
    killed_at(9, ckpt, resume=True)  # the resumed run's own checkpoints continue it as well
    resumed, _ = _recover(method, natural, teachers, spec, every, checkpoint=ckpt, resume=True, progress=False)
    assert torch.equal(resumed, full)


def test_partial_batch_from_shares_of_another_world_size(natural, teachers, train_set, tmp_path, monkeypatch, capsys):
    """Two states of one interrupted batch in the shares of a 2-rank run (the older one at
    iteration 5, the newer at 10): one process continues the newer one, to the same result."""
    spec = train_set.spec
    cfg = _cadence_cfg("infer", group_size=2, checkpoint_every=5)
    full, _ = _recover("infer", natural, teachers, spec, cfg, progress=False)
    ckpt = tmp_path / "run.recovery.pt"
    for rank, t_stop in ((0, 8), (1, 11)):
        alone = tmp_path / f"alone{rank}.recovery.pt"
        restore = _interrupt_at_iteration(monkeypatch, t_stop)
        with pytest.raises(KeyboardInterrupt):
            _recover("infer", natural, teachers, spec, cfg, checkpoint=alone, progress=False)
        restore()
        os.replace(alone, f"{ckpt}.rank{rank}-of-2")
    capsys.readouterr()
    resumed, stats = _recover("infer", natural, teachers, spec, cfg, checkpoint=ckpt, resume=True, progress=True)
    assert "teacher 1/1 batch k=0..1 continues at iteration 10/12" in capsys.readouterr().out
    assert [s["resumed_from_iteration"] for s in stats] == [10, 0]
    assert torch.equal(resumed, full)


def test_checkpoint_minutes_checkpoints_by_wall_clock(natural, teachers, train_set, tmp_path, monkeypatch):
    """With checkpoint_minutes=1 and every iteration taking 25 s of a fake clock, the batch is
    checkpointed after iterations 3, 6 and 9 (then whole when it ends), to the same result."""
    from infer_fast.distill import checkpoints

    spec = train_set.spec
    cfg = _cadence_cfg("infer", group_size=3, checkpoint_minutes=1)
    full, _ = _recover("infer", natural, teachers, spec, cfg, progress=False)
    now = [0.0]
    monkeypatch.setattr(engine, "checkpoint_clock", lambda: now[0])
    real_schedule = engine.cosine_lr

    def schedule(t, config):  # called once per iteration
        now[0] += 25.0
        return real_schedule(t, config)

    monkeypatch.setattr(engine, "cosine_lr", schedule)
    written, real_save = [], checkpoints.save_atomic
    monkeypatch.setattr(checkpoints, "save_atomic", lambda obj, path: (  # (the checkpoint's writes, not the results files')
        "partials" in obj and written.append([p["iteration"] for p in obj["partials"]]), real_save(obj, path)))
    ckpt = tmp_path / "run.recovery.pt"
    result, _ = _recover("infer", natural, teachers, spec, cfg, checkpoint=ckpt, progress=False)
    assert written == [[3], [6], [9], []]
    assert torch.equal(result, full)
    # no checkpoint path: no checkpoints at all, whatever the cadence
    written.clear()
    _recover("infer", natural[:1], teachers, spec, cfg, progress=False)
    assert written == []


def test_resume_without_a_checkpoint_says_it_starts_over(natural, teachers, train_set, tmp_path, capsys):
    spec = train_set.spec
    ckpt = tmp_path / "none.recovery.pt"
    recover_ufcs(natural[:1], teachers[:1], spec.mean, spec.std, _cfg(iterations=2), checkpoint=ckpt, resume=True,
                 progress=True)
    assert f"no recovery checkpoint at {ckpt}: starting from the beginning" in capsys.readouterr().out
    assert ckpt.exists()


def test_engine_takes_what_it_optimizes_from_the_recovery_kind(natural, teachers, train_set, tmp_path, monkeypatch):
    """The engine and the scheduler name no method: a RecoveryKind defined here (SRe2L's free
    images under another name, with SRe2L's seed tag and loss) runs through them, its loss hook
    asked once per teacher, its name in the checkpoint's batch states, and recovers SRe2L's
    images to the bit."""
    from dataclasses import replace

    from infer_fast.data.pixels import quantize_images
    from infer_fast.distill import checkpoints, jobs, recover_sre2l
    from infer_fast.methods.sre2l import FreeImages

    scored = []

    class Toy(FreeImages):
        method, noun = "toy", "toy group"

        def losses(self, teacher, num_classes, config, backend):  # (its loss hook: SRe2L's, counted)
            losses = super().losses(teacher, num_classes, config, backend)
            scored.append(num_classes)
            return losses

    spec, cfg = train_set.spec, RecoveryConfig.sre2l(iterations=4, seed=2, group_size=2, checkpoint_every=2)
    states, real = [], checkpoints.save_atomic
    monkeypatch.setattr(checkpoints, "save_atomic", lambda obj, path: (
        states.extend(obj.get("partials", [])), real(obj, path)))
    done, stats, _ = jobs.recover(Toy(), {"ipc": 2}, [(0, 0), (0, 1)], teachers[:1], None, 10, (1, 28, 28),
                                   spec.mean, spec.std, cfg, tmp_path / "toy.recovery.pt", False, False, "auto")
    assert [s["method"] for s in states] == ["toy"] and [b["k"] for b in stats] == [[0, 1]] and scored == [10]
    sre2l = recover_sre2l(2, 10, (1, 28, 28), teachers[:1], spec.mean, spec.std, replace(cfg, checkpoint_every=None),
                          progress=False)
    ours = torch.cat([done[(0, 0)], done[(0, 1)]])  # float32 composed images, clamped
    assert torch.equal(quantize_images(ours, spec.mean, spec.std), sre2l["pixels"])


@pytest.mark.parametrize("bad", [
    dict(checkpoint_every=0), dict(checkpoint_every=2.5), dict(checkpoint_every=True), dict(checkpoint_every="5"),
    dict(checkpoint_minutes=0), dict(checkpoint_minutes=-1.0), dict(checkpoint_minutes=float("nan")),
    dict(checkpoint_minutes=float("inf")), dict(checkpoint_minutes="10"), dict(checkpoint_minutes=True),
])
def test_checkpoint_cadence_validation(bad):
    (name,) = bad
    with pytest.raises(ValueError, match=name):
        RecoveryConfig(**bad).validate()


def test_checkpoint_cadence_settings():
    from infer_fast.distill import recovery_config
    from infer_fast.distill.config import RESULT_NEUTRAL

    assert RecoveryConfig().checkpoint_every is None and RecoveryConfig().checkpoint_minutes == 10
    RecoveryConfig(checkpoint_every=1, checkpoint_minutes=None).validate()
    RecoveryConfig(checkpoint_minutes=0.5).validate()
    config = recovery_config({"checkpoint_every": 50, "checkpoint_minutes": 2})
    assert (config.checkpoint_every, config.checkpoint_minutes) == (50, 2)
    assert {"checkpoint_every", "checkpoint_minutes"} <= set(RESULT_NEUTRAL)  # another cadence may resume a run


def test_nan_loss_raises(natural, train_set, tmp_path):
    spec = train_set.spec
    bad = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)).eval()
    with torch.no_grad():
        bad[3].weight.fill_(float("nan"))
    ckpt = tmp_path / "nan.pt"
    with pytest.raises(distill.RecoveryDivergedError, match=r"3 of 3 jobs \(teacher 1/1 k=0 \(iteration 1\), teacher 1/1 k=1"):
        recover_ufcs(natural, [bad], spec.mean, spec.std, _cfg(group_size=3), checkpoint=ckpt, progress=False)
    assert not ckpt.exists()  # nothing recovered, nothing written


def test_nan_in_one_group_stops_only_that_ufc(natural, teachers, train_set, tmp_path, monkeypatch):
    """A NaN in UFC k=1's images at iteration 3 stops k=1 only: the UFCs batched with it end
    as if it had never been there, they are checkpointed, and the error names k=1."""
    spec = train_set.spec
    cfg = _cfg(group_size=3, iterations=6)
    clean = recover_ufcs(natural, teachers[:1], spec.mean, spec.std, cfg, progress=False)
    real, calls = engine.Augmentation.__call__, {"n": 0}

    def poisoned(self, *args, **kwargs):
        x = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            x = x.clone()
            x[1, 4, 0, 5, 5] = float("nan")
        return x

    monkeypatch.setattr(engine.Augmentation, "__call__", poisoned)
    ckpt = tmp_path / "one.pt"
    # (a resume helps a passing fault like this one; other settings are a new run: the message says both)
    expected = (r"1 of 3 jobs \(teacher 1/1 k=1 \(iteration 3\)\).*--resume retries only the failed ones with the same "
                r"settings and teachers .*are a new run \(delete it first\)")
    with pytest.raises(distill.RecoveryDivergedError, match=expected):
        recover_ufcs(natural, teachers[:1], spec.mean, spec.std, cfg, checkpoint=ckpt, progress=False)
    saved = torch.load(ckpt, weights_only=True)
    assert _saved_jobs(saved) == [(0, 0), (0, 2)]  # the diverged job is not among the results
    (batch,) = [torch.load(tmp_path / "one.pt.results" / e["file"], weights_only=True) for e in saved["results"]]
    assert batch["jobs"] == [[0, 0], [0, 2]]
    torch.testing.assert_close(torch.stack(batch["results"]), clean["ufc"][[0, 2]], rtol=0, atol=rounding_bound(6))
    assert saved["stats"][0]["failed"] == {1: 3}
    monkeypatch.setattr(engine.Augmentation, "__call__", real)
    resumed = recover_ufcs(natural, teachers[:1], spec.mean, spec.std, cfg, checkpoint=ckpt, resume=True, progress=False)
    torch.testing.assert_close(resumed["ufc"], clean["ufc"], rtol=0, atol=rounding_bound(6))


def test_bf16_and_channels_last(natural, teachers, train_set):
    spec = train_set.spec
    fp32 = recover_ufcs(natural, teachers[:1], spec.mean, spec.std, _cfg(group_size=3), progress=False)
    cl = recover_ufcs(natural, teachers[:1], spec.mean, spec.std, _cfg(group_size=3, channels_last=True), progress=False)
    torch.testing.assert_close(cl["ufc"], fp32["ufc"], rtol=0, atol=1e-4)
    assert all(p.is_contiguous() for p in teachers[0].parameters())  # the teacher's layout is restored
    before = {name: t.clone() for name, t in teachers[0].state_dict().items()}
    bf16 = recover_ufcs(natural, teachers[:1], spec.mean, spec.std, _cfg(group_size=3, precision="bf16"), progress=False)
    assert bf16["ufc"].dtype == torch.float32 and torch.isfinite(bf16["ufc"]).all()
    # the run converts a copy of the teacher: the caller's teacher is untouched (fp32, same values)
    assert all(torch.equal(t, before[name]) for name, t in teachers[0].state_dict().items())
    # bf16 rounding moves some Adam steps, but the compensators stay close to the fp32 ones
    assert (bf16["ufc"] - fp32["ufc"]).abs().mean() < 0.25 * fp32["ufc"].abs().mean()
    with pytest.raises(ValueError, match="precision"):
        RecoveryConfig(precision="fp16").validate()


def test_bf16_run_recovers_what_fp32_does(natural, teachers, train_set):
    """The teacher converted once to bf16 (BatchNorm, statistics, UFCs and Adam in fp32):
    judged by the fp32 teacher on the final clamped images, the bf16 run's CE is within 2%
    of the fp32 run's and its accuracy within one image of the K*C. (bf16 keeps 8 significant
    bits, a relative rounding of 2^-9 per value; over 20 iterations the compensators differ by
    a few such roundings, a fraction of a percent of CE measured here.)"""
    from infer_fast.data.transforms import normalize
    from infer_fast.storage import valid_range

    spec, teacher = train_set.spec, teachers[0]
    K, C = natural.shape[:2]
    lo, hi = valid_range(spec.mean, spec.std)
    composed = normalize(natural, spec.mean, spec.std)
    labels = torch.arange(C).repeat(K)

    def judged(precision):
        ufc = recover_ufcs(natural, [teacher], spec.mean, spec.std,
                           _cfg(group_size=K, iterations=20, precision=precision), progress=False)["ufc"]
        with torch.no_grad():
            logits = teacher(ufc_compose(composed, ufc, torch.arange(K), lo=lo, hi=hi).flatten(0, 1))
        return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()

    (ce32, acc32), (ce16, acc16) = judged("fp32"), judged("bf16")
    assert abs(ce16 - ce32) <= 0.02 * ce32
    assert abs(acc16 - acc32) <= 1 / (K * C) + 1e-6


def test_bn_training_mode_refused(natural, train_set):
    spec = train_set.spec
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    with pytest.raises(ValueError, match="training mode"):
        recover_ufcs(natural, [model], spec.mean, spec.std, _cfg(), progress=False)


def test_config_validation(natural, teachers, train_set):
    spec = train_set.spec
    for bad in (dict(iterations=0), dict(group_size=0), dict(max_shift=-1), dict(lr=0)):
        with pytest.raises(ValueError):
            recover_ufcs(natural, teachers[:1], spec.mean, spec.std, _cfg(**bad), progress=False)


# ---- end to end -------------------------------------------------------------------------

def test_distill_infer_end_to_end(teacher_paths, tmp_path, capsys):
    """... and with progress it says where the set is saved and how large (a long, silent write
    for a large set otherwise)."""
    out = tmp_path / "fm-ipc3"
    path = distill_infer(DATASET, teacher_paths, ipc=3, out_dir=out, config=_cfg(iterations=3), progress=True)
    assert path == out and not (tmp_path / "fm-ipc3.recovery.pt").exists()
    assert f"saving infer set (24 stored images, 27.6 KiB) -> {out}" in capsys.readouterr().err
    ds = load_distilled(out, expected_dataset=DATASET, expected_num_classes=10)
    K = 2  # floor(3 * 10 / (10 + 2))
    assert ds.method == "infer" and ds.natural.shape == (K, 10, 1, 28, 28) and ds.natural.dtype == torch.uint8
    assert ds.ufc.shape == (K * 2, 1, 28, 28)
    assert ds.ufc_teacher.tolist() == [0, 0, 1, 1] and ds.ufc_index.tolist() == [0, 1, 0, 1]
    assert ds.budget == {"ipc": 3, "K": K, "M": 2, "accounting": "fair"}
    assert ds.num_stored_images() <= 3 * 10
    assert [t["path"] for t in ds.teachers] == teacher_paths and ds.teachers[0]["model"] == "convnet-w8-d2"
    assert ds.hyperparameters["iterations"] == 3 and ds.seed == 3 and ds.full_train_size == 5000
    train = load_dataset(DATASET, "train")
    assert torch.equal(ds.natural, select_natural_sets(train, K, seed=3))
    with pytest.raises(FileExistsError):
        distill_infer(DATASET, teacher_paths, ipc=3, out_dir=out, config=_cfg(iterations=3), progress=False)


def test_distill_random_says_where_it_saves(tmp_path, capsys):
    """The random baseline with progress says where its set goes and how large; quiet without."""
    from infer_fast.distill import distill_random

    distill_random(DATASET, 2, tmp_path / "loud", seed=0, progress=True)
    assert "saving random set (20 stored images, " in capsys.readouterr().err
    distill_random(DATASET, 2, tmp_path / "quiet", seed=0, progress=False)
    assert "saving" not in capsys.readouterr().err


def test_progress_bar_runs(natural, teachers, train_set, capsys):
    spec = train_set.spec
    out = recover_ufcs(natural[:1], teachers[:1], spec.mean, spec.std, _cfg(iterations=2), progress=True)
    assert out["ufc"].shape == (1, 1, 28, 28)
    assert "teacher 1/1" in capsys.readouterr().err


# ---- natural-set selection by teacher confidence -----------------------------------------

def test_select_by_confidence(train_set, teachers):
    from infer_fast.data.transforms import normalize
    from infer_fast.relabel import ensemble_logits

    K = 3
    nat = select_natural_sets(train_set, K, seed=0, selection="confidence", teachers=teachers)
    assert nat.shape == (K, 10, 1, 28, 28)
    spec = train_set.spec
    for c in (0, 7):
        imgs = train_set.images[train_set.labels == c]
        prob = ensemble_logits(teachers, normalize(imgs, spec.mean, spec.std)).softmax(1)[:, c]
        chosen = ensemble_logits(teachers, normalize(nat[:, c], spec.mean, spec.std)).softmax(1)[:, c]
        top = prob.sort(descending=True).values[:K]
        torch.testing.assert_close(chosen, top)  # the K most confident, most confident first
    with pytest.raises(ValueError, match="needs the teachers"):
        select_natural_sets(train_set, K, seed=0, selection="confidence")
    with pytest.raises(ValueError, match="selection"):
        select_natural_sets(train_set, K, seed=0, selection="best")


# ---- ImageNet augmentation -----------------------------------------------------------------

def test_imagenet_augmentation_batched_equals_alone(natural, teachers, train_set):
    spec = train_set.spec
    cfg = lambda **kw: RecoveryConfig.imagenet(iterations=4, r_bn=1.0, max_shift=3, seed=3, **kw)  # noqa: E731
    together = recover_ufcs(natural, teachers[:1], spec.mean, spec.std, cfg(group_size=3), progress=False)
    alone = recover_ufcs(natural, teachers[:1], spec.mean, spec.std, cfg(group_size=1), progress=False)
    torch.testing.assert_close(together["ufc"], alone["ufc"], rtol=0, atol=rounding_bound(4))
    rolled = recover_ufcs(natural, teachers[:1], spec.mean, spec.std, _cfg(iterations=4, max_shift=3, group_size=3),
                          progress=False)
    assert not torch.allclose(rolled["ufc"], together["ufc"])  # crops and flips changed the result
    assert RecoveryConfig.imagenet().to_dict() == {
        **RecoveryConfig().to_dict(), "iterations": 2000, "r_bn": 0.01, "augmentation": "imagenet", "max_shift": 32}


def per_group_imagenet_augmentation(x, gens, config):
    """The ImageNet augmentation as it was written before it became one resampling: per group,
    a box from the job's generator, F.interpolate of the crop, flip, roll."""
    from infer_fast.data.transforms import resized_crop_boxes
    from infer_fast.data.transforms import RESIZED_CROP_RATIO

    height, width = x.shape[-2:]
    out = []
    for g, gen in enumerate(gens):
        top, left, h, w = (int(v) for v in resized_crop_boxes(1, height, width, tuple(config.crop_scale), RESIZED_CROP_RATIO, gen))
        flip = bool(torch.rand(1, generator=gen) < 0.5)
        shift = torch.randint(0, config.max_shift + 1, (2,), generator=gen).tolist()
        y = F.interpolate(x[g, :, :, top:top + h, left:left + w], size=(height, width), mode="bilinear",
                          align_corners=False, antialias=True)
        y = y.flip(-1) if flip else y
        out.append(torch.roll(y, shifts=shift, dims=(-2, -1)))
    return torch.stack(out)


@pytest.mark.parametrize("predrawn", [True, False], ids=["drawn-up-front", "drawn-per-step"])
def test_imagenet_augmentation_is_one_resampling_of_the_same_draws(predrawn):
    """One grid_sample over all groups gives what the per-group crop, resize, flip and roll
    gave, from the same draws of each job's generator, forward and backward (non-square
    images, so swapped axes would show)."""
    gen = torch.Generator().manual_seed(0)
    natural = torch.randn(3, 4, 2, 12, 10, generator=gen)
    ufc = torch.randn(3, 2, 12, 10, generator=gen, requires_grad=True)
    index = torch.tensor([2, 0, 1])
    cfg = RecoveryConfig(augmentation="imagenet", max_shift=5)
    seeds = (11, 12, 13)
    augment = engine.Augmentation(cfg, [torch.Generator().manual_seed(s) for s in seeds], 12, 10, "cpu",
                                  iterations=6 if predrawn else None)
    reference_gens = [torch.Generator().manual_seed(s) for s in seeds]
    for _ in range(6):
        out = augment(natural, ufc, index, "torch")
        expected = per_group_imagenet_augmentation(ufc_compose(natural, ufc, index), reference_gens, cfg)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        weights = torch.randn(out.shape, generator=gen)
        (grad,) = torch.autograd.grad((out * weights).sum(), ufc)
        (expected_grad,) = torch.autograd.grad((expected * weights).sum(), ufc)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("augmentation, max_shift", [("roll", 3), ("roll", 0), ("imagenet", 5)])
def test_augmented_rows_made_alone_equal_the_batch_rows(augmentation, max_shift):
    """What the chunked mode feeds the teacher: any row range of the augmented batch
    (straddling groups, within one group, the whole batch), made from its rows' sources
    alone, equals those rows of the whole batch, values and gradients."""
    gen = torch.Generator().manual_seed(0)
    natural = torch.randn(3, 4, 2, 12, 10, generator=gen, requires_grad=True)
    ufc = torch.randn(3, 2, 12, 10, generator=gen, requires_grad=True)
    ks = [2, 0, 1]
    cfg = RecoveryConfig(augmentation=augmentation, max_shift=max_shift)
    make = lambda: engine.Augmentation(cfg, [torch.Generator().manual_seed(s) for s in (1, 2, 3)], 12, 10, "cpu",  # noqa: E731
                                       iterations=2)
    whole, rows = make(), make()
    for _ in range(2):
        out = whole(natural, ufc, torch.tensor(ks), "torch").flatten(0, 1)
        draw = rows.advance()
        assert int(rows.step) == int(whole.step)
        for lo, hi in [(0, 12), (1, 3), (3, 9), (5, 6), (4, 8), (11, 12)]:
            part = rows.batch_rows(natural, ufc, ks, draw, 4, lo, hi, "torch")
            torch.testing.assert_close(part, out[lo:hi], rtol=0, atol=1e-6)
            weights = torch.randn(part.shape, generator=gen)
            got = torch.autograd.grad((part * weights).sum(), (natural, ufc))
            expected = torch.autograd.grad((out[lo:hi] * weights).sum(), (natural, ufc), retain_graph=True)
            for a, b in zip(got, expected):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_imagenet_augmentation_draws():
    """Crop box, flip and roll are applied per group: with a full-image box (scale (1, 1)),
    no flip and no shift the augmented batch is the composed batch."""
    torch.manual_seed(0)
    natural = torch.randn(2, 3, 1, 8, 8)
    ufc = torch.randn(2, 1, 8, 8)
    index = torch.tensor([0, 1])
    cfg = RecoveryConfig(augmentation="imagenet", crop_scale=(1.0, 1.0), max_shift=0)
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    out = engine.Augmentation(cfg, gens, 8, 8, "cpu")(natural, ufc, index, "torch")
    composed = natural + ufc[:, None]
    for g in range(2):  # each group is either the composed group or its mirror image
        assert torch.allclose(out[g], composed[g], atol=1e-5) or torch.allclose(out[g], composed[g].flip(-1), atol=1e-5)
    cfg = RecoveryConfig(augmentation="imagenet", crop_scale=(0.25, 0.5), max_shift=2)
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    out = engine.Augmentation(cfg, gens, 8, 8, "cpu")(natural, ufc.requires_grad_(), index, "torch")
    assert out.shape == composed.shape
    (grad,) = torch.autograd.grad(out.sum(), ufc)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [dict(augmentation="autoaugment"), dict(crop_scale=(0.5, 0.1)), dict(crop_scale=(0, 1))])
def test_augmentation_config_validation(bad):
    with pytest.raises(ValueError, match="augmentation|crop_scale"):
        RecoveryConfig(**bad).validate()


# ---- SRe2L baseline -------------------------------------------------------------------------

def test_sre2l_batched_equals_alone(teachers, train_set):
    from infer_fast.distill import recover_sre2l

    spec = train_set.spec
    cfg = lambda g: RecoveryConfig.sre2l(iterations=4, seed=1, group_size=g)  # noqa: E731
    together = recover_sre2l(4, 10, (1, 28, 28), teachers, spec.mean, spec.std, cfg(4), progress=False)
    alone = recover_sre2l(4, 10, (1, 28, 28), teachers, spec.mean, spec.std, cfg(1), progress=False)
    assert together["pixels"].shape == (40, 1, 28, 28) and together["pixels"].dtype == torch.uint8
    assert together["labels"].tolist() == list(range(10)) * 4
    assert together["teacher"].tolist() == [0] * 10 + [1] * 10 + [0] * 10 + [1] * 10  # group j -> teacher j mod M
    # (batching changes float rounding: a pixel on a rounding boundary may move one level)
    assert (together["pixels"].int() - alone["pixels"].int()).abs().max() <= 1
    assert [s["teacher"] for s in together["stats"]] == [0, 1]
    # the images moved away from their noise init (compare with 1 iteration)
    one = recover_sre2l(4, 10, (1, 28, 28), teachers, spec.mean, spec.std,
                        RecoveryConfig.sre2l(iterations=1, seed=1), progress=False)
    assert not torch.equal(one["pixels"], together["pixels"])
    assert RecoveryConfig.sre2l().r_bn == 0.01


def test_sre2l_resume(teachers, train_set, tmp_path, monkeypatch):
    from infer_fast.distill import recover_sre2l

    spec = train_set.spec
    cfg = RecoveryConfig.sre2l(iterations=3, group_size=1)
    full = recover_sre2l(3, 10, (1, 28, 28), teachers[:1], spec.mean, spec.std, cfg, progress=False)
    ckpt = tmp_path / "sre2l.recovery.pt"
    restore = _interrupt_batch(monkeypatch, on_call=3)
    with pytest.raises(KeyboardInterrupt):
        recover_sre2l(3, 10, (1, 28, 28), teachers[:1], spec.mean, spec.std, cfg, checkpoint=ckpt, progress=False)
    restore()
    saved = torch.load(ckpt, weights_only=True)  # the finished groups, quantized as they finished, a file each
    assert _saved_jobs(saved) == [(0, 0), (0, 1)] and len(saved["results"]) == 2
    groups = [torch.load(tmp_path / "sre2l.recovery.pt.results" / e["file"], weights_only=True)["results"][0]
              for e in saved["results"]]
    assert all(g.dtype == torch.uint8 and g.shape == (10, 1, 28, 28) for g in groups)
    with pytest.raises(ValueError, match="method"):  # an SRe2L checkpoint is not an INFER one
        recover_ufcs(select_natural_sets(train_set, 3, seed=0), teachers[:1], spec.mean, spec.std,
                     RecoveryConfig.sre2l(iterations=3, group_size=1), checkpoint=ckpt, resume=True, progress=False)
    resumed = recover_sre2l(3, 10, (1, 28, 28), teachers[:1], spec.mean, spec.std, cfg, checkpoint=ckpt,
                            resume=True, progress=False)
    assert [s["k"] for s in resumed["stats"]] == [[0], [1], [2]]
    assert torch.equal(resumed["pixels"], full["pixels"])  # the same batches: the same bits


def test_distill_sre2l_end_to_end(teacher_paths, teachers, train_set, tmp_path, capsys):
    """The set stores recover_sre2l's uint8 pixels (the recovered images quantized), says so,
    and says where it is saved and how large."""
    from infer_fast.distill import distill_sre2l, recover_sre2l

    out = tmp_path / "fm-sre2l"
    config = RecoveryConfig.sre2l(iterations=2)
    distill_sre2l(DATASET, teacher_paths, ipc=2, out_dir=out, config=config, progress=True)
    assert f"saving sre2l set (20 stored images, 15.5 KiB) -> {out}" in capsys.readouterr().err
    ds = load_distilled(out, expected_dataset=DATASET, expected_num_classes=10)
    assert ds.method == "sre2l" and ds.images.shape == (20, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == list(range(10)) * 2 and ds.num_stored_images() == 20
    assert ds.hyperparameters["r_bn"] == 0.01 and "teacher j mod M" in ds.hyperparameters["teacher_rule"]
    assert ds.hyperparameters["image_storage"].startswith("uint8 pixels")
    spec = train_set.spec
    recovered = recover_sre2l(2, 10, (1, 28, 28), teachers, spec.mean, spec.std, config, progress=False)["pixels"]
    assert torch.equal(ds.images, recovered)
    assert not (tmp_path / "fm-sre2l.recovery.pt").exists()
    with pytest.raises(ValueError, match="ipc"):
        distill_sre2l(DATASET, teacher_paths, ipc=0, out_dir=tmp_path / "x", progress=False)


def test_final_pass_is_announced_when_long_or_chunked(teachers, train_set, monkeypatch, capsys):
    """With progress, a batch says when its final pass (every image through the teacher once
    more, no bar) starts if its iterations were long or it runs in chunks; not otherwise."""
    from infer_fast.distill import recover_sre2l

    spec = train_set.spec
    cfg = lambda **kw: RecoveryConfig.sre2l(iterations=2, group_size=2, **kw)  # noqa: E731
    recover = lambda config, progress=True: recover_sre2l(  # noqa: E731
        2, 10, (1, 28, 28), teachers[:1], spec.mean, spec.std, config, progress=progress)
    capsys.readouterr()
    recover(cfg())  # (the note is a progress line: stderr)
    assert "final pass" not in capsys.readouterr().err  # quick iterations: over in a moment
    recover(cfg(chunk_size=6))
    assert "teacher 1/1 SRe2L groups k=0..1: final pass over the 20 recovered images in chunks of 6" \
        in capsys.readouterr().err
    monkeypatch.setattr(engine, "FINAL_PASS_NOTE_S", 0.0)  # as if every iteration were long
    recover(cfg())
    assert "k=0..1: final pass over the 20 recovered images (CE, R_bn, accuracy)" in capsys.readouterr().err
    recover(cfg(chunk_size=6), progress=False)
    assert capsys.readouterr() == ("", "")


def test_sre2l_space_check_is_the_runs_peak(teacher_paths, tmp_path, monkeypatch):
    """The free space asked before an SRe2L recovery covers what the run really holds on disk
    at its peak (the float32 recovery checkpoint with a batch's state inside, old and new file
    during its atomic replacement; then the uint8 set beside the last one), and not much more
    (before: the set as float32 + 8x the float32 images, whatever the batches)."""
    from infer_fast.distill import checkpoints, distill_sre2l, run
    from infer_fast.storage import disk

    asked, peak = [], [0]
    real_check, real_save, real_write = run.check_writable, checkpoints.save_atomic, disk._write_tensor_file
    on_disk = lambda: sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())  # noqa: E731

    def check(path, what, kind="file", need_bytes=0):
        asked.append(need_bytes)
        return real_check(path, what, kind, need_bytes)

    def save(obj, path):
        before = on_disk()
        real_save(obj, path)
        peak[0] = max(peak[0], before + os.path.getsize(path))  # the old file and the new one at once

    def write(path, tensors):
        entry = real_write(path, tensors)
        peak[0] = max(peak[0], on_disk())
        return entry

    monkeypatch.setattr(run, "check_writable", check)
    monkeypatch.setattr(checkpoints, "save_atomic", save)
    monkeypatch.setattr(disk, "_write_tensor_file", write)
    config = RecoveryConfig.sre2l(iterations=2, group_size=2, checkpoint_every=1)  # a checkpoint inside each batch
    distill_sre2l(DATASET, teacher_paths[:1], ipc=4, out_dir=tmp_path / "s", config=config, progress=False)
    need = max(asked)
    assert peak[0] <= need <= 1.5 * peak[0]
    float_images = 40 * 28 * 28 * 4
    assert need <= 9 * float_images / 2  # what it asked before


# ---- chunked exact mode ---------------------------------------------------------------------

def test_chunked_recovery_equals_whole_batch(natural, teachers, train_set):
    """Running the teacher in chunks (straddling the UFC groups) changes nothing: the BN
    statistics still cover every group's C images."""
    from infer_fast.distill import recover_sre2l

    spec = train_set.spec
    whole = recover_ufcs(natural, teachers[:1], spec.mean, spec.std, _cfg(group_size=3), progress=False)
    for chunk in (7, 10):
        chunked = recover_ufcs(natural, teachers[:1], spec.mean, spec.std, _cfg(group_size=3, chunk_size=chunk),
                               progress=False)
        torch.testing.assert_close(chunked["ufc"], whole["ufc"], rtol=0, atol=rounding_bound(5))
        for key in ("ce", "r_bn", "accuracy", "ce_last_iteration", "r_bn_last_iteration"):
            assert chunked["stats"][0][key] == pytest.approx(whole["stats"][0][key], rel=1e-4), key
    cfg = lambda **kw: RecoveryConfig.sre2l(iterations=3, seed=2, group_size=2, **kw)  # noqa: E731
    a = recover_sre2l(2, 10, (1, 28, 28), teachers[:1], spec.mean, spec.std, cfg(), progress=False)
    b = recover_sre2l(2, 10, (1, 28, 28), teachers[:1], spec.mean, spec.std, cfg(chunk_size=6), progress=False)
    assert (b["pixels"].int() - a["pixels"].int()).abs().max() <= 1  # a rounding boundary may move one level
    with pytest.raises(ValueError, match="chunk_size"):
        RecoveryConfig(chunk_size=0).validate()


def test_chunked_batches_never_hold_the_whole_input(natural, teachers, train_set, monkeypatch):
    """In chunks, every iteration makes the teacher's input chunk by chunk (a RowsFrom: no
    whole-batch input or input gradient alive, which at ImageNet scale were several GiB) and the
    final pass runs the statistics pass alone (no gradient)."""
    from infer_fast.distill import recover_sre2l
    from infer_fast.ops import RowsFrom

    calls = []
    real = engine.chunked_loss_backward

    def recording(teacher, x, *args, backward=True, **kwargs):
        calls.append((isinstance(x, RowsFrom), backward, torch.is_grad_enabled()))
        return real(teacher, x, *args, backward=backward, **kwargs)

    monkeypatch.setattr(engine, "chunked_loss_backward", recording)
    spec = train_set.spec
    recover_ufcs(natural, teachers[:1], spec.mean, spec.std, _cfg(iterations=3, group_size=3, chunk_size=7),
                 progress=False)
    recover_sre2l(2, 10, (1, 28, 28), teachers[:1], spec.mean, spec.std,
                  RecoveryConfig.sre2l(iterations=3, group_size=2, chunk_size=6), progress=False)
    per_batch = [(True, True, True)] * 3 + [(True, False, False)]
    assert calls == per_batch * 2


def test_flags_the_chunked_mode_cannot_honour_are_refused_or_announced(natural, teachers, train_set, monkeypatch):
    """fused_bn and compile do not apply to chunked batches: with an explicit chunk_size
    RecoveryConfig refuses them; when the automatic plan chunks (a group too large for the
    GPU), the run warns that they are off, records the chunks, and gives the chunked result."""
    spec = train_set.spec
    for flags in (dict(fused_bn=True), dict(compile="default")):
        with pytest.raises(ValueError, match="does not apply with chunk_size"):
            _cfg(chunk_size=7, **flags).validate()
    monkeypatch.setattr(plan, "auto_batch_plan", lambda *a, **kw: (3, 7))  # as on a GPU short of memory
    with pytest.warns(RuntimeWarning, match="fused_bn and compile do not apply"):
        fused = recover_ufcs(natural, teachers[:1], spec.mean, spec.std, _cfg(fused_bn=True), progress=False)
    plain = recover_ufcs(natural, teachers[:1], spec.mean, spec.std, _cfg(), progress=False)
    assert torch.equal(fused["ufc"], plain["ufc"]) and fused["stats"][0]["chunk_size"] == 7


def test_auto_batch_plan_on_cpu(natural, teachers):
    from infer_fast.distill import auto_batch_plan

    assert auto_batch_plan(teachers[0], natural.float(), K=100) == (51, None)  # 512 // C images, no chunks
    assert auto_batch_plan(teachers[0], natural.float(), K=3) == (3, None)


def test_fused_bn_recovery_equals_hooks(natural, teachers, train_set):
    spec = train_set.spec
    plain = recover_ufcs(natural, teachers[:1], spec.mean, spec.std, _cfg(group_size=3), progress=False)
    fused = recover_ufcs(natural, teachers[:1], spec.mean, spec.std, _cfg(group_size=3, fused_bn=True), progress=False)
    torch.testing.assert_close(fused["ufc"], plain["ufc"], rtol=0, atol=rounding_bound(5))
    assert all("forward" not in vars(m) for m in teachers[0].modules())  # BN layers restored


def test_compiled_recovery_equals_eager(natural, teachers, train_set):
    """torch.compile of the teacher pass (fullgraph, fused BN custom ops inside) gives the eager
    UFCs; one graph per group count serves every batch (K = 3 in groups of 2: G = 2, then 1)."""
    from torch._dynamo.utils import counters

    spec = train_set.spec
    cfg = lambda **kw: _cfg(group_size=2, iterations=3, fused_bn=True, **kw)  # noqa: E731
    eager = recover_ufcs(natural, teachers[:1], spec.mean, spec.std, cfg(), progress=False)
    torch._dynamo.reset()
    counters.clear()
    compiled = recover_ufcs(natural, teachers[:1], spec.mean, spec.std, cfg(compile="default"), progress=False)
    torch.testing.assert_close(compiled["ufc"], eager["ufc"], rtol=0, atol=rounding_bound(3))
    assert counters["stats"]["unique_graphs"] == 2  # G = 2 and G = 1, each traced once (no graph break)
    for batch in compiled["stats"]:  # the compile is in the first iteration's time
        assert 0 < batch["first_iteration_seconds"] <= batch["seconds"]
    assert all("forward" not in vars(m) for m in teachers[0].modules())  # BN layers restored
    with pytest.raises(ValueError, match="compile"):
        RecoveryConfig(compile="fast").validate()


def test_a_batch_names_its_jobs():
    """The progress line's jobs: a range where they are consecutive, else each (SRe2L's teacher
    j mod M takes groups 0, 2, 4 of M = 2)."""
    from infer_fast.distill.checkpoints import describe_batch, job_range

    assert [job_range(ks) for ks in ([3], [0, 1, 2], [0, 2, 4], [1, 3])] == ["3", "0..2", "0,2,4", "1,3"]
    assert describe_batch(0, [1, 3], 2) == "teacher 1/2 batch k=1,3"  # (a resume's line: not "k=1..3")
