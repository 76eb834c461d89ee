"""Recovery split across 2 processes (torchrun, gloo on CPU) equals the single-process result."""
import os
import subprocess
import sys

import pytest
import torch
from conftest import rounding_bound, train_tiny_teachers
import torch.distributed as dist

from infer_fast.distill import RecoveryConfig, distill_infer, distill_sre2l
from infer_fast.storage import load_distilled

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")

DATASET = "fashion-mnist-mini"


@pytest.fixture(scope="module")
def teacher_paths(tmp_path_factory):
    return train_tiny_teachers(tmp_path_factory.mktemp("teachers"))


def torchrun(args, cwd):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "infer_fast.cli", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("method", ["infer", "sre2l"])
def test_two_ranks_equal_one_process(teacher_paths, tmp_path, method):
    # ipc 4 with M = 2: INFER K = 3 -> 6 UFCs (3 per rank); SRe2L 4 groups (2 per rank)
    common = ["--dataset", DATASET, "--teachers", ",".join(teacher_paths), "--ipc", "4", "--iterations", "3",
              "--group-size", "2", "--method", method, "--quiet"]
    result = torchrun(["distill", *common, "--out", "two-ranks"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("method ") == 1  # one report, from rank 0
    config = RecoveryConfig(iterations=3, group_size=2) if method == "infer" else RecoveryConfig.sre2l(iterations=3, group_size=2)
    distill = distill_infer if method == "infer" else distill_sre2l
    distill(DATASET, teacher_paths, 4, tmp_path / "one", config=config, progress=False)
    two, one = load_distilled(tmp_path / "two-ranks"), load_distilled(tmp_path / "one")
    if method == "infer":
        assert torch.equal(two.natural, one.natural)
        assert two.ufc_index.tolist() == one.ufc_index.tolist() and two.ufc_teacher.tolist() == one.ufc_teacher.tolist()
        # each rank batches its own jobs (other batch shapes, one thread): float32 rounding apart
        torch.testing.assert_close(two.ufc, one.ufc, rtol=0, atol=rounding_bound(3))
    else:
        assert torch.equal(two.labels, one.labels)
        torch.testing.assert_close(two.images, one.images, rtol=0, atol=rounding_bound(3))
    assert not [p for p in os.listdir(tmp_path) if "recovery" in p]  # every rank removed its share checkpoint


STUDENT_SCRIPT = """
import sys
import torch
from infer_fast.data import load_dataset
from infer_fast.distributed import init_from_env
from infer_fast.storage import load_distilled
from infer_fast.student import StudentConfig, train_student

rank, world = init_from_env()
assert world == 2
ds = load_distilled(sys.argv[1])
cfg = StudentConfig(model="convnet-w8-d2-none", epochs=2, batch_size=49, device="cpu", temperature=4.0, seed=3)
result = train_student(ds, load_dataset("fashion-mnist-mini", "test"), cfg, progress=False)
torch.save({"state": result["model"].state_dict(), "accuracy": result["final_accuracy"],
            "losses": [r["loss"] for r in result["history"]]}, sys.argv[2] + f".rank{rank}")
"""


def test_ddp_student_equals_one_process(teacher_paths, tmp_path):
    """With a student without batch statistics (no norm layers), 2 DDP ranks training on halves of
    every batch (the 50 images' last batch of 1: one rank without rows) end with the
    single-process weights, and both record the whole batches' losses (not their own share's)."""
    from infer_fast.data import load_dataset
    from infer_fast.distill import distill_random
    from infer_fast.relabel import relabel_directory
    from infer_fast.student import StudentConfig, train_student

    distill_random(DATASET, 5, tmp_path / "set", seed=0)
    ds = relabel_directory(tmp_path / "set", teacher_paths[:1])
    (tmp_path / "student.py").write_text(STUDENT_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "student.py",
           str(tmp_path / "set"), str(tmp_path / "ddp.pt")]
    result = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    ddp, ddp1 = (torch.load(tmp_path / f"ddp.pt.rank{r}", weights_only=True) for r in (0, 1))
    cfg = StudentConfig(model="convnet-w8-d2-none", epochs=2, batch_size=49, device="cpu", temperature=4.0, seed=3)
    one = train_student(ds, load_dataset(DATASET, "test"), cfg, progress=False)
    for name, value in one["model"].state_dict().items():
        torch.testing.assert_close(ddp["state"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert abs(ddp["accuracy"] - one["final_accuracy"]) <= 0.002
    losses = [r["loss"] for r in one["history"]]
    assert ddp["losses"] == ddp1["losses"] and all(l == l for l in ddp["losses"])  # (the same on both: no NaN)
    torch.testing.assert_close(torch.tensor(ddp["losses"]), torch.tensor(losses), rtol=1e-5, atol=0)


CHUNKS_SCRIPT = """
import sys
import torch
from infer_fast.data import load_dataset
from infer_fast.distill import RecoveryConfig, recover_ufcs, select_natural_sets
from infer_fast.distributed import init_from_env
from infer_fast.teacher import load_teacher

rank, world = init_from_env()
train = load_dataset("fashion-mnist-mini", "train")
natural = select_natural_sets(train, 3, seed=0)
teacher = load_teacher(sys.argv[1])[0]
config = RecoveryConfig(iterations=3, group_size=3, chunk_size=7, distributed=sys.argv[3])
out = recover_ufcs(natural, [teacher], train.spec.mean, train.spec.std, config, progress=False)
torch.save(out["ufc"], sys.argv[2] + f".rank{rank}")
"""


@pytest.mark.parametrize("mode", ["chunks", "jobs"])
def test_chunks_of_one_batch_split_across_ranks(teacher_paths, tmp_path, mode):
    """distributed='chunks': both ranks work on the same 30-image batch, each running its
    chunks of 7 rows, the BN statistics all-reduced: the compensators equal one process's."""
    from infer_fast.data import load_dataset
    from infer_fast.distill import recover_ufcs, select_natural_sets
    from infer_fast.teacher import load_teacher

    (tmp_path / "chunks.py").write_text(CHUNKS_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "chunks.py",
           teacher_paths[0], str(tmp_path / "ufc.pt"), mode]
    result = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    train = load_dataset(DATASET, "train")
    one = recover_ufcs(select_natural_sets(train, 3, seed=0), [load_teacher(teacher_paths[0])[0]], train.spec.mean,
                       train.spec.std, RecoveryConfig(iterations=3, group_size=3), progress=False)
    for rank in (0, 1):  # every rank holds the whole result
        torch.testing.assert_close(torch.load(tmp_path / f"ufc.pt.rank{rank}"), one["ufc"], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="set chunk_size"):
        RecoveryConfig(distributed="chunks").validate()


@pytest.mark.parametrize("method,lines", [("sre2l", 2), ("random", 1)])
def test_every_rank_stops_with_the_refusal_of_an_output_in_use(teacher_paths, tmp_path, method, lines):
    """Rank 0 holds the output for the job: when another process writes it, every rank that
    works on it stops with that one-line refusal (SRe2L: both; random: rank 0 alone makes it),
    none left waiting for rank 0 in a collective (gloo's "Connection closed by peer" was
    reported as an internal error)."""
    from infer_fast.output_lock import output_lock

    with output_lock(tmp_path / "set", "output directory"):
        teachers = ["--teachers", teacher_paths[0], "--iterations", "1"] if method == "sre2l" else []
        result = torchrun(["distill", "--dataset", DATASET, "--method", method, *teachers, "--ipc", "2", "--out", "set",
                           "--quiet"], tmp_path)
    assert result.returncode != 0
    refusal = f"output directory set is being written by process {os.getpid()}"
    assert result.stderr.count(refusal) == lines, result.stderr
    for rank in range(lines):  # (each rank's line says which it is)
        assert f"infer-fast distill (rank {rank} of 2): error: {refusal}" in result.stderr
    assert "internal error" not in result.stderr and not (tmp_path / "set").exists()
