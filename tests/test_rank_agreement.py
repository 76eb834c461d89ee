"""`infer-fast run` and `infer-fast train` under torchrun (2 gloo processes): the ranks agree
before any work. `run` with scores finishes (its students never DDP) with one process's scores;
ranks given other configs or arguments, or not sharing OUT, are refused on every rank with one
line naming what differs; a rank that refuses its inputs alone stops every rank, each with a
line (it used to leave the others waiting for it, silently, until torchrun killed them)."""
import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest
import torch.distributed as dist
from test_distributed_agreement import RANKS_SCRIPT  # (the rank's own env, cwd or arguments: RANK_CHANGES)

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")

DATASET = "fashion-mnist-mini"
CONFIG = """\
dataset: fashion-mnist-mini
out: unused
teachers:
  - {model: convnet-w8-d2, epochs: 1, batch_size: 256, lr: 0.05, seed: 0}
ipc: 1
methods: [random]
student: {model: convnet-w8-d2, epochs: EPOCHS, batch_size: 64}
seeds: 1
device: cpu
"""
TIMEOUT = 90  # (each launch takes seconds; a deadlock is killed here, and fails the test)


def torchrun(args, cwd, changes=None, ranks=2):
    """The CLI run by ``ranks`` processes (rank r's RANK_CHANGES applied), or by one without
    torchrun; on a timeout torchrun and its ranks are killed, and the test fails."""
    (cwd / "ranks.py").write_text(RANKS_SCRIPT)
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)] if ranks > 1 else []
    cmd = [sys.executable, *launcher, str(cwd / "ranks.py"), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", RANK="0", RANK_CHANGES=json.dumps(changes or {}))
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            out, err = process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for pid in [*descendants(process.pid), process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            out, err = process.communicate()
            pytest.fail(f"still running after {TIMEOUT} s (a deadlock?):\n{out}\n{err}")
    return subprocess.CompletedProcess(cmd, process.returncode, out, err)


def descendants(pid):
    """The processes below ``pid`` (from Linux's /proc): torchrun starts its ranks in sessions of
    their own, which a kill of its process group misses (deadlocked, they would hold the pipes)."""
    found = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in map(int, f.read().split()):
                    found += [child, *descendants(child)]
    return found


def each_rank_said(result, command, line):
    return all(f"infer-fast {command} (rank {rank} of 2): {line}" in result.stderr for rank in (0, 1))


def write_config(folder, epochs=1, scores=False, name="exp.yaml"):
    folder.mkdir(exist_ok=True)
    text = CONFIG.replace("EPOCHS", str(epochs)) + ("scores: true\n" if scores else "")
    (folder / name).write_text(text)


def test_run_with_scores_on_two_ranks_finishes_with_the_scores_of_one_process(tmp_path):
    """Rank 0 scored alone, but its students were DDP students waiting for rank 1, which waited
    at the barrier after the scores: a deadlock. Now the scores' students train whole on rank 0."""
    write_config(tmp_path, scores=True)
    two = torchrun(["run", "exp.yaml", "--out", "two", "--quiet"], tmp_path)
    assert two.returncode == 0, two.stderr
    one = torchrun(["run", "exp.yaml", "--out", "one", "--quiet"], tmp_path, ranks=1)
    assert one.returncode == 0, one.stderr

    def scores(out):
        with open(tmp_path / out / "results.json") as f:
            text = json.dumps(json.load(f)["scores"], sort_keys=True)
        return json.loads(text.replace(f"{out}/", "OUT/"))  # (the sources name the run's teacher files)

    assert scores("two") == scores("one") and list(scores("one")) == ["random/ipc1"]
    assert "ars" in scores("two")["random/ipc1"]["scores"]


@pytest.mark.parametrize("change,said", [
    ({"args": ["run", "other.yaml", "--out", "out"]}, "rank 1's student.epochs is 2, rank 0's 1"),
    ({"args": ["run", "exp.yaml", "--out", "out", "--methods", "random,sre2l"]},
     "rank 1's methods is ['random', 'sre2l'], rank 0's ['random']"),
], ids=["student-epochs", "methods"])
def test_run_ranks_with_other_configs_are_refused_before_any_work(tmp_path, change, said):
    """Rank 1 reading another config (student epochs) mixed its students into rank 0's results,
    exit 0; given other --methods it crashed or deadlocked. Now every rank refuses at start."""
    write_config(tmp_path)
    write_config(tmp_path, epochs=2, name="other.yaml")
    result = torchrun(["run", "exp.yaml", "--out", "out"], tmp_path, {"1": change})
    assert result.returncode != 0
    assert each_rank_said(result, "run", f"error: {said}: every rank must run the same config, with the same "
                                         "options"), result.stderr
    assert not (tmp_path / "out").exists()


def test_run_ranks_that_do_not_share_out_are_refused_before_the_teachers_train(tmp_path):
    """Rank 1 with the same OUT on another disk (here: another folder) trained its teacher into
    its own OUT, then failed to find rank 0's. Now every rank refuses before any work, and the
    OUT rank 0 made for the probe is gone."""
    write_config(tmp_path)
    write_config(tmp_path / "node1")
    result = torchrun(["run", "exp.yaml", "--out", "out"], tmp_path, {"1": {"cwd": str(tmp_path / "node1")}})
    assert result.returncode != 0
    said = (f"error: the ranks do not see the same files at {tmp_path / 'out'}: OUT must be on a file system every "
            f"rank shares (rank 1, looking in {tmp_path / 'node1' / 'out'}, does not see the file rank 0 made there)")
    assert each_rank_said(result, "run", said), result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "node1" / "out").exists()


@pytest.mark.parametrize("case", ["backend", "teacher-file"])
def test_a_rank_refusing_its_inputs_alone_stops_every_rank_with_a_line(tmp_path, case):
    """Rank 1 refusing an INFER_FAST_BACKEND, or a teacher file its node lacks, left rank 0 waiting
    to join the process group (or the run's group) until torchrun killed it, with nothing said.
    Now rank 0 stops too, naming rank 1 and quoting its error."""
    write_config(tmp_path)
    args = ["run", "exp.yaml", "--out", "out"]
    if case == "backend":
        change = {"env": {"INFER_FAST_BACKEND": "bogus"}}
        refusal = "INFER_FAST_BACKEND='bogus' is unavailable"
    else:  # the same config, but the teacher file is on rank 0's disk only
        (tmp_path / "t.pt").write_bytes(b"")  # (never read: the refusal comes first)
        write_config(tmp_path / "node1")
        args += ["--teachers", "t.pt"]
        change = {"cwd": str(tmp_path / "node1")}
        refusal = "teachers[0]: teacher checkpoint 't.pt' does not exist"
    result = torchrun(args, tmp_path, {"1": change})
    assert result.returncode != 0
    assert f"infer-fast run (rank 1 of 2): error: {refusal}" in result.stderr, result.stderr
    assert (f"infer-fast run (rank 0 of 2): error: rank 1 stopped before any work ({refusal}"
            in result.stderr), result.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Two random sets of fashion-mnist-mini (ipc 1, seeds 0 and 1): other images."""
    from infer_fast.data import load_dataset
    from infer_fast.methods.random import random_set
    from infer_fast.storage import save_distilled

    root = tmp_path_factory.mktemp("sets")
    train = load_dataset(DATASET, "train")
    for seed in (0, 1):
        save_distilled(random_set(train, 1, seed=seed), root / f"set{seed}")
    return root


@pytest.mark.parametrize("theirs,said", [
    (["--lr", "0.05"], "rank 1's --lr is 0.05, rank 0's 0.01"),
    (["--set", "set1"], "rank 1's distilled set's images or labels differ from rank 0's"),
], ids=["lr", "set"])
def test_train_ranks_with_other_arguments_are_refused_before_any_training(sets, theirs, said):
    """Rank 1 with another --lr, or another set, trained its rows of every batch under its own
    run, and rank 0's line reported the result as its own. Now every rank refuses at start."""
    def train(directory, *extra):
        return ["train", str(sets / directory), "--model", "convnet-w8-d2", "--epochs", "1", "--seeds", "1",
                "--labels", "hard", "--lr", "0.01", "--device", "cpu", "--quiet", *extra]

    mine = train("set0")
    result = torchrun(mine, sets, {"1": {"args": train("set1") if theirs[0] == "--set" else train("set0", *theirs)}})
    assert result.returncode != 0
    assert each_rank_said(result, "train", f"error: {said}: every rank must run the same command on the same "
                                           "files"), result.stderr
    assert "student convnet-w8-d2" not in result.stdout  # (no result reported)


class _Writes:
    """A stderr that records each write."""

    def __init__(self):
        self.writes = []

    def write(self, text):
        self.writes.append(text)
        return len(text)

    def flush(self):
        pass


@pytest.mark.parametrize("ending", ["error", "internal error", "interrupted"])
def test_a_commands_last_line_is_written_at_once(monkeypatch, ending):
    """print wrote a line's text and its newline apart: under torchrun another rank's line could
    run into it. Now the line and its newline are one write."""
    from infer_fast import cli

    stderr = _Writes()
    monkeypatch.setattr(sys, "stderr", stderr)
    if ending == "error":
        cli._failed("run", ValueError("bad value"), (ValueError,))
    elif ending == "internal error":
        cli._failed("run", RuntimeError("a bug"), ())
    else:
        cli._interrupted(None, KeyboardInterrupt())
    assert len(stderr.writes) == 1 and stderr.writes[0].endswith("\n") and stderr.writes[0].count("\n") == 1
    assert stderr.writes[0].startswith("infer-fast")
