"""What the GPU session measures and tests, checked on the CPU: a batch's CUDA-graph warm-up and
capture share one side stream (the engine's graphed loop, its CUDA streams and graph faked; on
a GPU, the real one); the property tests have GPU rows; the ops step runs its bf16 case first."""
import contextlib
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import BENCH
from torch import nn

from infer_fast.distill import RecoveryConfig, cuda_graphs, engine, recover_ufcs

CLASSES, SIZE = 4, 8


def tiny_recovery(device, batches: int):
    """recover_ufcs of ``batches`` batches of one UFC each, long enough to capture a graph."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(4, CLASSES)).to(device).eval()
    natural = torch.randint(0, 256, (batches, CLASSES, 3, SIZE, SIZE), dtype=torch.uint8,
                            generator=torch.Generator().manual_seed(0))
    config = RecoveryConfig(iterations=cuda_graphs.GRAPH_WARMUP_ITERATIONS + 2, group_size=1, augmentation="roll")
    return recover_ufcs(natural, [teacher], (0.5,) * 3, (0.25,) * 3, config, progress=False)


class FakeCuda:
    """torch.cuda's streams and graph capture, faked: which streams are made, which the work
    runs on, and the stream each capture is given."""

    def __init__(self, monkeypatch):
        self.made, self.used, self.captured_on = [], [], []
        fake = self

        class Stream:
            def __init__(self, device=None, priority=0):
                fake.made.append(self)

            def wait_stream(self, other):
                pass

        class Graph:
            def __init__(self, cuda_graph, pool=None, stream=None, **kwargs):
                fake.captured_on.append(stream)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        class CUDAGraph:
            def replay(self):
                pass

        @contextlib.contextmanager
        def use(stream):
            fake.used.append(stream)
            yield

        current = object.__new__(Stream)  # (the current stream: not made by the engine)
        for name, value in (("Stream", Stream), ("current_stream", lambda device=None: current), ("stream", use),
                            ("graph", Graph), ("CUDAGraph", CUDAGraph)):
            monkeypatch.setattr(torch.cuda, name, value)


def test_a_batch_warms_up_and_captures_on_one_side_stream(monkeypatch):
    """The engine's CUDA-graph path, run on the CPU (its batches marked graphed, CUDA's streams
    and graph faked): each batch makes one side stream, its warm-up iterations all run on it and
    its capture is given it. (One stream per warm-up iteration: the caching allocator, which
    keeps freed blocks per stream, could not reuse one iteration's memory in the next.)"""
    init = engine._Batch.__init__

    def graphed(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.graphed = True  # (on CUDA: uses_cuda_graph)

    monkeypatch.setattr(engine._Batch, "__init__", graphed)
    fake = FakeCuda(monkeypatch)
    result = tiny_recovery(torch.device("cpu"), batches=2)
    assert [s["cuda_graph"] for s in result["stats"]] == ["captured", "captured"]
    warmups = cuda_graphs.GRAPH_WARMUP_ITERATIONS
    assert len(fake.made) == 2  # one per batch
    assert fake.used == [fake.made[0]] * warmups + [fake.made[1]] * warmups
    assert fake.captured_on == fake.made


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_a_batch_on_the_gpu_makes_one_side_stream(monkeypatch):
    made = []

    class CountingStream(torch.cuda.Stream):
        def __new__(cls, *args, **kwargs):
            made.append(cls)
            return super().__new__(cls, *args, **kwargs)

    monkeypatch.setattr(torch.cuda, "Stream", CountingStream)
    result = tiny_recovery(torch.device("cuda"), batches=2)
    assert [s["cuda_graph"] for s in result["stats"]] == ["captured", "captured"]
    assert len(made) == 2


def test_the_property_tests_have_gpu_rows():
    """test_properties.py's rows: the CPU's backends, and the GPU kernels (cuda, triton on the
    GPU), which run where a GPU is present (the cuda row is listed, skipped, without one)."""
    pytest.importorskip("hypothesis")
    import test_properties

    marks = {p.id: {m.name for m in p.marks} for p in test_properties.BACKENDS}
    assert {"cpu-cpu", "torch-cpu", "cuda-cuda"} <= set(marks)
    if torch.cuda.is_available():  # (a cuda backend that cannot run there fails: backend_must_run)
        assert "triton-cuda" in marks and "skip" not in marks["cuda-cuda"] | marks["triton-cuda"]
    assert test_properties.examples("cuda", "cuda") < test_properties.examples("cpu", "cpu")


FAKE_GPU_PYTHON = """#!/bin/sh
# gpu_session.sh's python on a machine with a GPU: says there is one, logs each benchmark it runs
case "$1" in -c) echo 1; exit 0 ;; esac
echo "$*" >> "$RUNS"
case "$*" in *bfloat16*) exit 3 ;; esac
"""


def test_the_ops_step_runs_the_bf16_case_first(tmp_path):
    """On a GPU the ops step runs its one bf16 workload before the fp32 table (whose cold
    torch.compile may use the whole step's limit), then the fp32 table even when bf16 failed;
    the step's status is the failure, both runs in its log."""
    python = tmp_path / "python"
    python.write_text(FAKE_GPU_PYTHON)
    python.chmod(0o755)
    out, runs = tmp_path / "out", tmp_path / "runs.log"
    env = dict(os.environ, OUT=str(out), PYTHON=str(python), RUNS=str(runs))
    proc = subprocess.run(["bash", str(BENCH / "gpu_session.sh"), "ops"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 3, proc.stderr
    first, second = runs.read_text().splitlines()
    assert first.startswith("bench/bench_ops.py --preset gpu-bf16 --dtype bfloat16 --layouts channels_last --out ")
    assert first.endswith("/ops-bf16.json")
    assert second == f"bench/bench_ops.py --channels-last --out {out}/ops.json"
    assert (out / "ops.status").read_text() == "3\n"


# What marks a test file's GPU rows (a skip without CUDA, the backend rows of conftest, a model
# put on the GPU), and the files that have the words without the rows
GPU_ROW_MARKERS = ("skipif(not torch.cuda.is_available()", "backend_params(", "backend_row_marks(", 'device="cuda"',
                   ".cuda()")
WITHOUT_GPU_ROWS = {"test_backend_rows.py": "tests conftest's row marks on a faked machine"}


def test_every_test_file_with_gpu_rows_runs_in_the_gpu_session():
    """The session's `test` step runs only TEST_FILES: a GPU row in a file missing there never
    runs on the lent GPU (test_api_surface's and this file's were missing)."""
    script = (BENCH / "gpu_session.sh").read_text()
    listed = set(re.search(r"^TEST_FILES=\(([^)]*)\)", script, re.M).group(1).split())
    tests = Path(__file__).parent
    with_rows = {p.name for p in tests.glob("test_*.py") if any(m in p.read_text() for m in GPU_ROW_MARKERS)}
    assert with_rows - set(WITHOUT_GPU_ROWS) <= listed, sorted(with_rows - set(WITHOUT_GPU_ROWS) - listed)
    assert listed <= {p.name for p in tests.glob("test_*.py")}  # (no file listed that is gone)
