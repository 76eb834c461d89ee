"""`infer-fast run` under torchrun (2 gloo processes) equals one process, and a stopped
multi-rank run continues with another world size."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from infer_fast.pipeline import load_pipeline_config, run_pipeline
from infer_fast.storage import load_distilled

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")

torch.set_num_threads(1)  # the in-process resume runs match the subprocesses (OMP_NUM_THREADS=1)

# two teachers to train (one per rank), INFER (2 UFCs), INFER+Dyn, random and SRe2L (2 image
# groups) at ipc 2, 2 seeds: 8 student runs (4 per rank)
CONFIG = """\
dataset: fashion-mnist-mini
out: unused
teachers:
  - {model: convnet-w8-d2, epochs: 1, batch_size: 256, lr: 0.05, seed: 0}
  - {model: convnet-w8-d2, epochs: 1, batch_size: 256, lr: 0.05, seed: 1}
ipc: 2
methods: [infer, infer_dyn, random, sre2l]
recovery: {iterations: 2}
sre2l: {iterations: 2}
student: {model: convnet-w8-d2, epochs: 2, batch_size: 64}
seeds: 2
device: cpu
"""
TABLE_HEADER = "| method | ipc | top-1 %"
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def cli_run(cwd, out, ranks):
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)] if ranks > 1 else []
    cmd = [sys.executable, *launcher, "-m", "infer_fast.cli", "run", "exp.yaml", "--out", out]
    result = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same experiment run by 2 ranks and by 1 process: (directory, stdout and stderr of each)."""
    root = tmp_path_factory.mktemp("pipeline-ranks")
    (root / "exp.yaml").write_text(CONFIG)
    two = cli_run(root, "two", 2)
    one = cli_run(root, "one", 1)
    return root, two.stdout + two.stderr, one.stdout + one.stderr


def results_of(directory):
    with open(directory / "results.json") as f:
        return json.load(f)


def assert_same_results(a_dir, b_dir):
    """The numbers of two run directories agree: teachers, sets (tensors to 1e-6, measurements)
    and every student run's accuracy."""
    a, b = results_of(a_dir), results_of(b_dir)
    assert [t["test_accuracy"] for t in a["teachers"]] == [t["test_accuracy"] for t in b["teachers"]]
    assert sorted(a["sets"]) == sorted(b["sets"])
    for key, info in a["sets"].items():
        for field in ("training_images", "stored_images", "budget", "compression_ratio_percent"):
            assert info[field] == b["sets"][key][field], (key, field)
        assert info["feature_duplication"] == pytest.approx(b["sets"][key]["feature_duplication"], abs=1e-6), key
    for name in os.listdir(a_dir / "sets"):
        x, y = load_distilled(a_dir / "sets" / name), load_distilled(b_dir / "sets" / name)
        tensors = ("natural", "ufc", "ufc_index", "ufc_teacher") if x.method == "infer" else ("images", "labels")
        for t in tensors + ("soft_labels",):
            torch.testing.assert_close(getattr(x, t), getattr(y, t), rtol=0, atol=1e-6, msg=f"{name}: {t}")
    assert sorted(a["runs"]) == sorted(b["runs"])
    for key, run in a["runs"].items():
        other = b["runs"][key]
        assert (run["final_accuracy"], run["steps"], run["epochs"]) == (other["final_accuracy"], other["steps"], other["epochs"]), key
    assert [r["accuracy_mean"] for r in a["table"]] == [r["accuracy_mean"] for r in b["table"]]


def test_two_ranks_equal_one_process(runs):
    root, _, _ = runs
    assert len(results_of(root / "two")["runs"]) == 8
    assert_same_results(root / "two", root / "one")
    # nothing left behind: student checkpoints (each rank's), recovery shares
    assert not (root / "two" / "students").exists()  # (emptied, then removed)
    assert not [p for p in os.listdir(root / "two" / "sets") if "recovery" in p]


def test_only_rank0_prints(runs):
    _, two, one = runs
    for stdout in (two, one):
        assert stdout.count(TABLE_HEADER) == 1 and stdout.count("teachers: ") == 1
        assert stdout.count("distilling INFER ipc 2") == 1
    # the teachers were split: the second one trained on rank 1
    assert "teacher 1/2: training convnet-w8-d2 for 1 epoch on rank 0" in two
    assert "teacher 2/2: training convnet-w8-d2 for 1 epoch on rank 1" in two
    assert "students: 8 run(s) left, split across 2 ranks" in two
    # rank 0 announces only its own runs (runs 1, 3, 5, 7 of 8)
    assert "student 1/8" in two and "student 3/8" in two and "student 2/8" not in two


class Stop(Exception):
    pass


def test_stopped_run_continues_with_one_process(runs, monkeypatch):
    """A 2-rank run that lost two runs (one of them stopped after its first epoch) is finished
    by one process: the finished runs are kept, the stopped one resumes from its checkpoint,
    and the numbers equal an uninterrupted run's."""
    import infer_fast.student as student

    root, _, _ = runs
    shutil.copytree(root / "two", root / "resumed")
    data = results_of(root / "resumed")
    lost = ["infer/ipc2/seed1", "sre2l/ipc2/seed0"]  # run 2 (rank 1) and run 7 (rank 0) of the 2-rank plan
    for key in lost:
        del data["runs"][key]
    with open(root / "resumed" / "results.json", "w") as f:
        json.dump(data, f)
    cfg = load_pipeline_config(str(root / "exp.yaml"), out=str(root / "resumed"))

    # first attempt: stopped once the first student checkpoint (infer seed 1, epoch 1 of 2) is written
    real_save = student.save_atomic

    def save_then_stop(obj, path):
        real_save(obj, path)
        raise Stop(path)

    monkeypatch.setattr(student, "save_atomic", save_then_stop)
    with pytest.raises(Stop, match="infer-ipc2-seed1.pt"):
        run_pipeline(cfg, progress=False)
    monkeypatch.setattr(student, "save_atomic", real_save)
    assert os.listdir(root / "resumed" / "students") == ["infer-ipc2-seed1.pt"]

    calls = []
    real_train = student.train_student

    def counting(ds, test, scfg, **kwargs):
        calls.append((ds.method, scfg.seed, os.path.exists(kwargs["checkpoint"])))
        return real_train(ds, test, scfg, **kwargs)

    monkeypatch.setattr(student, "train_student", counting)
    run_pipeline(cfg, progress=False)
    assert calls == [("infer", 1, True), ("sre2l", 0, False)]  # only the lost runs; the stopped one resumed
    assert not (root / "resumed" / "students").exists()  # (emptied, then removed)
    assert_same_results(root / "resumed", root / "one")


def test_two_ranks_continue_a_damaged_run(runs):
    """2 ranks continue a run that lost a set (its directory and its runs), a set's
    measurements and a student run: only those are redone, to the same numbers."""
    root, _, _ = runs
    shutil.copytree(root / "two", root / "damaged")
    shutil.rmtree(root / "damaged" / "sets" / "sre2l-ipc2")
    data = results_of(root / "damaged")
    del data["sets"]["sre2l/ipc2"], data["sets"]["random/ipc2"]
    for key in ("sre2l/ipc2/seed0", "sre2l/ipc2/seed1", "infer/ipc2/seed0"):
        del data["runs"][key]
    with open(root / "damaged" / "results.json", "w") as f:
        json.dump(data, f)
    damaged = cli_run(root, "damaged", 2)
    stdout = damaged.stdout + damaged.stderr  # (the table; the progress lines on stderr)
    assert "teacher 1/2: training" not in stdout and "distilling INFER" not in stdout and "distilling Random" not in stdout
    assert stdout.count("distilling SRe2L ipc 2") == 1 and "students: 3 run(s) left" in stdout
    assert stdout.count(TABLE_HEADER) == 1
    assert not (root / "damaged" / "students").exists()  # (emptied, then removed)
    assert_same_results(root / "damaged", root / "one")
