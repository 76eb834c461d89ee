"""An interrupted batch resumes in the chunks the user or the memory plan gives it (the
out-of-memory message of such a batch names --chunk-size alone); --group-size without
--chunk-size still sizes the chunks from the memory available; `infer-fast run` continues a
results file when a section spells out a default; a resumed batch's chunks are named as such
in the warning and every chunked batch's chunk size is in the set's manifest."""
import json
import shutil
import signal
import warnings

import pytest
import torch

from conftest import rounding_bound
from infer_fast import interrupts, memory
from infer_fast.distill import RecoveryConfig, distill_infer, engine, plan, recover_ufcs
from infer_fast.storage import load_distilled

DATASET = "fashion-mnist-mini"
ALLOCATOR_ERROR = "[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: you tried to"


def _stopped_in_batch(monkeypatch, teacher_paths, out, config, at=3):
    """distill_infer of ``config`` stopped by a signal as iteration ``at`` of its first batch
    starts (as the handler does inside the batch's safe-point region): the batch's state is in
    ``out``.recovery.pt."""
    real = engine.cosine_lr

    def signalled(t, cfg):
        if t == at:
            interrupts.STOP.signum = signal.SIGTERM
        return real(t, cfg)

    monkeypatch.setattr(engine, "cosine_lr", signalled)
    with pytest.raises(interrupts.Interrupted):
        distill_infer(DATASET, teacher_paths[:1], 3, out, config=config, accounting="ipc", progress=False)
    monkeypatch.setattr(engine, "cosine_lr", real)
    (partial,) = torch.load(f"{out}.recovery.pt", weights_only=True)["partials"]
    assert partial["iteration"] == at + 1
    return partial


def _run(teacher_paths, out, config, **kwargs):
    return load_distilled(distill_infer(DATASET, teacher_paths[:1], 3, out, config=config, accounting="ipc",
                                        progress=False, **kwargs))


def _unchunked_passes_run_out_of_memory(monkeypatch, rows=20):
    """A small machine: a teacher pass of the whole batch of more than ``rows`` images raises
    the CPU allocator's error (chunked passes do not go through TeacherLosses)."""
    real = engine.TeacherLosses.__call__

    def guarded(self, x, compiled=True):
        if x.shape[0] * x.shape[1] > rows:
            raise RuntimeError(f"{ALLOCATOR_ERROR} {x.shape[0] * x.shape[1]} images")
        return real(self, x, compiled)

    monkeypatch.setattr(engine.TeacherLosses, "__call__", guarded)


# --- 1: an interrupted batch resumes in smaller chunks ----------------------------------------

def test_an_interrupted_batch_out_of_memory_resumes_in_the_chunks_given_or_planned(teacher_paths, tmp_path,
                                                                                   monkeypatch):
    """Stopped inside its one batch (3 UFCs x 10 images, all at once), then resumed on a machine
    where that batch does not fit: the out-of-memory error names --chunk-size alone (the
    batch's groups are its own); --resume --chunk-size 10 continues it in chunks (it reused the
    recorded chunks before, and failed again), saying so, and so does the memory plan without
    --chunk-size; both end equal to the uninterrupted run up to float rounding."""
    config = RecoveryConfig(iterations=8, group_size=3)
    reference = _run(teacher_paths, tmp_path / "reference", config)
    _stopped_in_batch(monkeypatch, teacher_paths, tmp_path / "stopped", config)
    shutil.copy(tmp_path / "stopped.recovery.pt", tmp_path / "planned.recovery.pt")
    _unchunked_passes_run_out_of_memory(monkeypatch)
    smaller_groups = RecoveryConfig(iterations=8, group_size=1)
    with pytest.raises(plan.RecoveryOutOfMemoryError) as caught:
        _run(teacher_paths, tmp_path / "stopped", smaller_groups, resume=True)
    message = str(caught.value)
    assert "run the teacher in smaller chunks: --chunk-size N" in message and "--chunk-size 15" in message
    assert "--group-size N" not in message and "group_size" not in message
    assert "--resume continues from there" in message

    chunked = RecoveryConfig(iterations=8, group_size=3, chunk_size=10)
    with pytest.warns(RuntimeWarning, match=r"k=0\.\.2 continues at iteration 4/8 in new chunks \(10 images at a "
                                            r"time; it ran the whole batch at once until then\).*up to float rounding"):
        resumed = _run(teacher_paths, tmp_path / "stopped", chunked, resume=True)
    bound = rounding_bound(8)
    assert (resumed.ufc - reference.ufc).abs().max() <= bound
    assert resumed.hyperparameters["batches"] == [[0, [0, 1, 2], 10]]

    # no --chunk-size: the memory plan for the batch's 3 groups (one group fits, not three)
    from infer_fast.teacher import load_teacher

    teacher = load_teacher(teacher_paths[0])[0]
    per_image = plan.activation_bytes_per_image(teacher, torch.zeros(1, 10, 1, 28, 28), 4)
    monkeypatch.setattr(memory, "available_memory", lambda device: int(1.5 * per_image * 10 / plan.MEMORY_FRACTION))
    with pytest.warns(RuntimeWarning) as seen:
        planned = _run(teacher_paths, tmp_path / "planned", config, resume=True)
    said = [str(w.message) for w in seen]
    assert any("the interrupted batch (3 groups of 10 images)" in s and "it continues in chunks of" in s for s in said)
    assert any("in new chunks" in s for s in said)
    (batch,) = planned.hyperparameters["batches"]
    assert batch[:2] == [0, [0, 1, 2]] and 1 <= batch[2] < 30
    assert (planned.ufc - reference.ufc).abs().max() <= bound


def test_a_resume_in_the_same_chunks_stays_bit_identical_and_says_nothing_of_new_chunks(teacher_paths, tmp_path,
                                                                                      monkeypatch):
    config = RecoveryConfig(iterations=6, group_size=3, chunk_size=7)
    reference = _run(teacher_paths, tmp_path / "reference", config)
    _stopped_in_batch(monkeypatch, teacher_paths, tmp_path / "stopped", config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed = _run(teacher_paths, tmp_path / "stopped", config, resume=True)
    assert torch.equal(resumed.ufc, reference.ufc)


# --- 2: --group-size alone still plans the chunks ---------------------------------------------

def test_group_size_without_chunk_size_plans_chunks_when_the_groups_do_not_fit(natural, teachers, train_set,
                                                                              monkeypatch):
    """group_size given, chunk_size not: when one group (or the G asked for) does not fit the
    memory available, the teacher runs in chunks planned from it, with the plan's warning (it
    ran all at once, and ran out of memory); with memory enough, no chunks."""
    spec, teacher = train_set.spec, teachers[0]
    per_image = plan.activation_bytes_per_image(teacher, natural[:1].float(), 4)
    group = per_image * 10 / plan.MEMORY_FRACTION

    def recover(G, available):
        monkeypatch.setattr(memory, "available_memory", lambda device: int(available))
        return recover_ufcs(natural, [teacher], spec.mean, spec.std, RecoveryConfig(iterations=2, group_size=G),
                            progress=False)

    with pytest.warns(RuntimeWarning, match="one group of 10 images needs .* it runs in chunks of"):
        one = recover(1, 0.6 * group)
    assert one["group_size"] == 1 and all(1 <= s["chunk_size"] < 10 for s in one["stats"])
    with pytest.warns(RuntimeWarning, match=r"a batch of 3 groups of 10 images needs .* 3 groups as --group-size asks"):
        three = recover(3, 1.5 * group)
    assert all(10 <= s["chunk_size"] < 30 for s in three["stats"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fits = recover(3, 100 * group)
    assert all(s["chunk_size"] is None for s in fits["stats"])


def test_batch_chunk_size_keeps_recorded_chunks_that_fit(natural, teachers, monkeypatch):
    teacher, probe = teachers[0], natural[:1].float()
    per_image = plan.activation_bytes_per_image(teacher, probe, 4)
    monkeypatch.setattr(memory, "available_memory", lambda device: int(100 * per_image * 10 / plan.MEMORY_FRACTION))
    assert plan.batch_chunk_size(teacher, probe, 3) is None
    assert plan.batch_chunk_size(teacher, probe, 3, recorded=7, resumed=True) == 7  # (fits: bit-identical)
    monkeypatch.setattr(memory, "available_memory", lambda device: None)  # unreadable: as it ran
    assert plan.batch_chunk_size(teacher, probe, 3, recorded=7) == 7
    assert plan.batch_chunk_size(teacher, probe, 3) is None


# --- 3: `infer-fast run` continues with defaults spelled out ----------------------------------

def _pipeline(tmp_path, **sections):
    from infer_fast.run_config import PipelineConfig

    values = dict(dataset=DATASET, teachers=[{"path": str(tmp_path / "t.pt")}], out=str(tmp_path / "run"), ipc=[3],
                  methods=["infer", "sre2l"], recovery={"iterations": 3}, sre2l={"iterations": 3},
                  student={"model": "convnet-w16-d2", "epochs": 1}, seeds=1)
    return PipelineConfig.from_dict({**values, **sections})


def _results_file(tmp_path, cfg, **config_changes):
    """results.json as infer-fast wrote it before (the run config's dict as given, the data root as a place)."""
    from infer_fast.results import RESULTS_FILE, RESULTS_FORMAT, recorded_config

    (tmp_path / "run").mkdir(exist_ok=True)
    path = tmp_path / "run" / RESULTS_FILE
    config = {**recorded_config(cfg), **config_changes}
    path.write_text(json.dumps({"format": RESULTS_FORMAT, "config": config, "teachers": [], "sets": {}, "runs": {},
                                "external_sets": {}}))
    return path


def test_run_continues_when_a_section_spells_out_a_default_and_names_a_changed_field(tmp_path):
    from infer_fast.results import load_results

    path = _results_file(tmp_path, _pipeline(tmp_path))
    spelled = _pipeline(tmp_path, recovery={"iterations": 3, "r_bn": 1.0, "lr": 0.25, "fused_bn": True},
                        sre2l={"iterations": 3, "r_bn": 0.01},
                        student={"model": "convnet-w16-d2", "epochs": 1, "temperature": 30.0, "device": "cpu"})
    assert load_results(path, spelled, external={})["config"]["recovery"]["r_bn"] == 1.0
    with pytest.raises(ValueError, match=r"belongs to another run \(recovery\.r_bn differs; recorded "
                                         r"recovery\.r_bn=1\.0\)"):
        load_results(path, _pipeline(tmp_path, recovery={"iterations": 3, "r_bn": 0.5}), external={})
    with pytest.raises(ValueError, match=r"sre2l\.r_bn differs; recorded sre2l\.r_bn=0\.01"):
        load_results(path, _pipeline(tmp_path, sre2l={"iterations": 3, "r_bn": 0.02}), external={})
    # the students' settings: free while no student ran, then compared field by field
    (tmp_path / "run" / "students").mkdir()
    (tmp_path / "run" / "students" / "infer-ipc3-seed0.pt").write_bytes(b"")
    load_results(path, spelled, external={})
    with pytest.raises(ValueError, match=r"student\.temperature differs; recorded student\.temperature=30\.0"):
        load_results(path, _pipeline(tmp_path, student={"model": "convnet-w16-d2", "epochs": 1, "temperature": 20.0}),
                     external={})


def test_a_results_file_of_before_without_newer_sections_is_continued(tmp_path):
    """A file written before the sre2l and method_options sections existed: they count as not
    given, so a config giving them their defaults continues it."""
    from infer_fast.results import load_results

    cfg = _pipeline(tmp_path, sre2l={})
    path = _results_file(tmp_path, cfg)
    old = json.loads(path.read_text())
    for name in ("sre2l", "method_options", "dynamic_epochs"):
        del old["config"][name]
    path.write_text(json.dumps(old))
    load_results(path, _pipeline(tmp_path, sre2l={"r_bn": 0.01}), external={})
    with pytest.raises(ValueError, match=r"sre2l\.iterations differs"):
        load_results(path, _pipeline(tmp_path, sre2l={"iterations": 3}), external={})


# --- 4: a resumed batch's chunks: the warning's words and the manifest ------------------------

def test_a_resumed_chunked_batch_with_fused_bn_says_why_and_the_manifest_records_its_chunks(teacher_paths, tmp_path,
                                                                                           monkeypatch):
    """Stopped in a batch run in chunks of 7 (--chunk-size), resumed without it and with
    --fused-bn: the batch continues in its chunks (they fit: bit-identical to the uninterrupted
    chunked run), the warning says so (not that one group does not fit in memory), and the
    manifest records the batch's chunk size beside its UFCs."""
    config = RecoveryConfig(iterations=6, group_size=3, chunk_size=7)
    reference = _run(teacher_paths, tmp_path / "reference", config)
    assert reference.hyperparameters["batches"] == [[0, [0, 1, 2], 7]]
    _stopped_in_batch(monkeypatch, teacher_paths, tmp_path / "stopped", config)
    with pytest.warns(RuntimeWarning) as seen:
        resumed = _run(teacher_paths, tmp_path / "stopped", RecoveryConfig(iterations=6, fused_bn=True), resume=True)
    said = [str(w.message) for w in seen]
    assert any(s.startswith("recovery: the resumed batch teacher 1/1 UFCs k=0..2 runs in chunks of 7 images (the "
                            "chunks it ran in before it was interrupted, kept so that it continues bit-identically)")
               for s in said), said
    assert not any("one group does not fit" in s or "new chunks" in s for s in said), said
    assert torch.equal(resumed.ufc, reference.ufc)
    assert resumed.hyperparameters["batches"] == [[0, [0, 1, 2], 7]]
    assert resumed.hyperparameters["fused_bn"] is True and resumed.hyperparameters["chunk_size"] is None
