"""Ranks of a torchrun recovery (2 gloo processes) agree before they work and when they stop: a
signal in "chunks" mode stops every rank after the same iteration with rank 0's checkpoint
saved; ranks given other settings or teachers, or not seeing the same files, are refused
before any work, on every rank, with one line."""
import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from conftest import train_tiny_teachers

from infer_fast.distill import RecoveryConfig, distill_infer
from infer_fast.storage import load_distilled

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")

DATASET = "fashion-mnist-mini"

# Runs the CLI with the arguments it is given, except on the rank named in RANK_CHANGES (JSON:
# rank -> its own "env", "cwd", "args" (in place of the given ones) and "hide": checkpoint file
# names that rank does not see), as when one node has other files or another command line.
RANKS_SCRIPT = """
import json, os, sys
args = sys.argv[1:]
change = json.loads(os.environ.get("RANK_CHANGES", "{}")).get(os.environ["RANK"], {})
os.environ.update(change.get("env", {}))
if "cwd" in change:
    os.chdir(change["cwd"])
args = change.get("args", args)
if change.get("hide"):
    from infer_fast.distill import checkpoints
    found = checkpoints.recovery_checkpoints
    checkpoints.recovery_checkpoints = lambda base: [p for p in found(base) if os.path.basename(p) not in change["hide"]]
from infer_fast.cli import main
sys.exit(main(args))
"""


@pytest.fixture(scope="module")
def teacher_paths(tmp_path_factory):
    return train_tiny_teachers(tmp_path_factory.mktemp("teachers"))


def torchrun(args, cwd, changes=None):
    (cwd / "ranks.py").write_text(RANKS_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(cwd / "ranks.py"), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", RANK_CHANGES=json.dumps(changes or {}))
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def distill_args(teachers, out, iterations=3, *extra):
    return ["distill", "--dataset", DATASET, "--teachers", ",".join(teachers), "--ipc", "2", "--accounting", "ipc",
            "--iterations", str(iterations), "--group-size", "2", "--quiet", "--out", out, *extra]


def each_rank_said(result, line):
    return all(f"infer-fast distill (rank {rank} of 2): {line}" in result.stderr for rank in (0, 1))


def leftovers(folder):
    return sorted(p for p in os.listdir(folder) if "set" in p)


CHUNKS = ["--distributed", "chunks", "--chunk-size", "5", "--checkpoint-every", "off", "--checkpoint-minutes", "off"]


@pytest.mark.parametrize("signal_at", [{"1": 3}, {"0": 5, "1": 3}], ids=["rank-1-only", "both-ranks"])
def test_a_signal_in_chunks_mode_stops_every_rank_after_the_same_iteration_with_the_batch_saved(
        teacher_paths, tmp_path, signal_at):
    """Every rank works on every batch: a rank that left alone broke rank 0's next all-reduce
    before it saved (no checkpoint, an internal error). Now the ranks vote each iteration: all
    stop after the first iteration any got a signal in, rank 0 saves the batch there, and the
    resume finishes it."""
    changes = {rank: {"env": {"INFER_FAST_TEST_SIGNAL_AT_ITERATION": f"SIGTERM:{t}"}} for rank, t in signal_at.items()}
    args = distill_args(teacher_paths[:1], "set", 8, *CHUNKS)
    stopped = torchrun(args, tmp_path, changes)
    assert stopped.returncode != 0
    assert each_rank_said(stopped, "interrupted (SIGTERM); progress is saved in set.recovery.pt"), stopped.stderr
    assert "internal error" not in stopped.stderr
    partials = torch.load(tmp_path / "set.recovery.pt", weights_only=False)["partials"]
    assert [(p["k"], p["iteration"]) for p in partials] == [([0, 1], 4)]  # stopped after iteration 3 (0-based)

    if len(signal_at) > 1:
        return  # (the state saved is the same kind: one resume is enough)
    resumed = torchrun([*args, "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    distill_infer(DATASET, teacher_paths[:1], 2, tmp_path / "one", accounting="ipc",
                  config=RecoveryConfig(iterations=8, group_size=2), progress=False)
    two, one = load_distilled(tmp_path / "set"), load_distilled(tmp_path / "one")
    torch.testing.assert_close(two.ufc, one.ufc, rtol=0, atol=1e-5)  # (chunks: the same batch, summed apart)
    assert leftovers(tmp_path) == ["set"]


def test_ranks_whose_torchrun_agent_dies_save_their_shares_and_stop(teacher_paths, tmp_path):
    """torchrun forwards SIGTERM, SIGINT, SIGHUP and SIGQUIT to its ranks; killed itself (SIGKILL,
    the out-of-memory killer, or SLURM's SIGUSR1 where --signals-to-handle does not name it) it
    left them running alone, holding their GPUs and the output's lock, until their work ended.
    Now a rank gets SIGTERM when its agent dies: each saves its share and stops with its line."""
    import signal
    import time

    from test_rank_agreement import descendants

    (tmp_path / "ranks.py").write_text(RANKS_SCRIPT)
    args = distill_args(teacher_paths[:1], "set", 100000, "--checkpoint-every", "5")  # (hours: never done first)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(tmp_path / "ranks.py"), *args]
    shares = [tmp_path / f"set.recovery.pt.rank{rank}-of-2" for rank in (0, 1)]
    with subprocess.Popen(cmd, cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as agent:
        ranks = []
        try:
            deadline = time.monotonic() + 240
            while not all(share.exists() for share in shares):  # both ranks inside their recoveries
                assert agent.poll() is None and time.monotonic() < deadline, "the ranks never checkpointed"
                time.sleep(0.1)
            ranks = descendants(agent.pid)
            agent.kill()
            agent.wait()
            _, err = agent.communicate(timeout=120)  # (the ranks hold the pipes until they end)
        except subprocess.TimeoutExpired:
            pytest.fail("the ranks ran on after their torchrun agent died")
        finally:
            for pid in ranks:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert each_rank_said(subprocess.CompletedProcess(cmd, agent.returncode, "", err),
                          "interrupted (SIGTERM); progress is saved in set.recovery.pt.rank0-of-2"), err
    for share in shares:
        (partial,) = torch.load(share, weights_only=False)["partials"]
        assert partial["iteration"] >= 5
    assert not (tmp_path / "set").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".set")]  # (nor the output's lock)


@pytest.mark.parametrize("differs,mode", [("iterations", "jobs"), ("teachers", "chunks")])
def test_ranks_given_other_settings_or_teachers_are_refused_before_any_work(teacher_paths, tmp_path, differs, mode):
    """Rank 1 with another --iterations, or other weights behind its --teachers, made half of a
    set whose manifest said rank 0's run, exit 0. Now every rank refuses at start, naming the
    first rank and setting that differ."""
    extra = CHUNKS if mode == "chunks" else []
    args = distill_args(teacher_paths, "set", 3, *extra)
    if differs == "iterations":
        theirs, said = distill_args(teacher_paths, "set", 5, *extra), "rank 1's --iterations is 5, rank 0's 3"
    else:  # the same files in another order: each name with the other's weights
        theirs, said = distill_args(teacher_paths[::-1], "set", 3, *extra), "rank 1's teachers' weights differ from rank 0's"
    result = torchrun(args, tmp_path, {"1": {"args": theirs}})
    assert result.returncode != 0
    assert each_rank_said(result, f"error: {said}: every rank must run the same command on the same files"), result.stderr
    assert leftovers(tmp_path) == []


def test_ranks_that_do_not_share_the_output_folder_are_refused_before_any_work(teacher_paths, tmp_path):
    """Rank 1 in another folder (another node's disk): the run succeeded leaving rank 1's
    checkpoint files there, and a resume of such a run redid every job, then failed. Now every
    rank refuses at start, and the probe file rank 0 made is gone."""
    (tmp_path / "node1").mkdir()
    result = torchrun(distill_args(teacher_paths, "set"), tmp_path, {"1": {"cwd": str(tmp_path / "node1")}})
    assert result.returncode != 0
    said = (f"error: the ranks do not see the same files at {tmp_path}: the output must be on a file system every rank "
            f"shares (rank 1, looking in {tmp_path / 'node1'}, does not see the file rank 0 made there)")
    assert each_rank_said(result, said), result.stderr
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "node1") == []
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".set")]  # (nor the probe, nor the lock)


def test_ranks_that_see_other_checkpoint_files_are_refused_before_any_work(teacher_paths, tmp_path):
    """A resume where a rank does not see a share another rank sees (a cache of a network file
    system, a node's own disk) would redo that share's jobs, then fail at the gather."""
    share = tmp_path / "set.recovery.pt.rank0-of-2"
    share.write_bytes(b"")  # (never read: the refusal comes first)
    result = torchrun([*distill_args(teacher_paths, "set"), "--resume"], tmp_path, {"1": {"hide": [share.name]}})
    assert result.returncode != 0
    said = (f"error: the ranks do not see the same files at {tmp_path}: the output must be on a file system every rank "
            f"shares (rank 0 sees {share.name}, rank 1 does not)")
    assert each_rank_said(result, said), result.stderr
    assert share.read_bytes() == b""
