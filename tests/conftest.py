"""Test setup: Triton kernels run under the CPU interpreter when there is no GPU.

TRITON_INTERPRET is read when a kernel is decorated, so it is set here, before any test
module imports infer_fast.
"""
import atexit
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Tuple

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from infer_fast.ops import backends  # noqa: E402
from infer_fast.ops.reference import tolerance  # noqa: E402,F401  (the tests' bound, defined once in the package)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_bench_script(script: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python bench/<script> args...`` in a fresh interpreter, its output captured (the
    benchmarks' smoke tests)."""
    return subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def run_bench_json(script: str, out, *args, timeout: float = 300):
    """(process, its JSON) of ``python bench/<script> args... --out <out>``, which must end
    with status 0."""
    proc = run_bench_script(script, *args, "--out", out, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(Path(out).read_text())

@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to ``n`` inside the block, restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def backend_params():
    """(backend, device) pairs; those that cannot run here are skipped with the reason, except
    the cuda backend where a CUDA GPU is visible: its rows fail (backend_row_marks)."""
    params = []
    gpu = torch.cuda.is_available()
    for device in DEVICES:
        for name in backends.BACKENDS:
            if device == "cpu" and name == "cuda":
                continue
            why = backends.unavailable_reason(name, torch.device(device))
            marks = backend_row_marks(name, why, gpu)
            params.append(pytest.param(name, device, id=f"{name}-{device}", marks=marks))
    # The CUDA backend is listed even without a GPU so the skip is visible in the report.
    if "cuda" not in DEVICES:
        params.append(pytest.param("cuda", "cuda", id="cuda-cuda", marks=pytest.mark.skip(reason="no CUDA GPU")))
    return params


def backend_row_marks(name: str, why, gpu: bool) -> list:
    """The marks of a row of backend ``name``, which cannot run here when ``why`` is a reason.
    A backend that cannot run is skipped, except the cuda backend on a machine with a CUDA GPU:
    CUDA kernels not built, not loaded or not registered there are the failure a GPU run must
    report (issue 19), so its rows fail with the reason instead (pytest_pyfunc_call below)."""
    if why is None:
        return []
    if name == "cuda" and gpu:
        return [pytest.mark.backend_must_run(reason=f"a CUDA GPU is visible but the cuda backend cannot run: {why}")]
    return [pytest.mark.skip(reason=why)]


def pytest_configure(config):
    config.addinivalue_line("markers", "backend_must_run(reason): the row fails with the reason (backend_row_marks)")
    _start_recording_triton_launches(config)


def _start_recording_triton_launches(config) -> None:
    """With INFER_FAST_TRITON_LAUNCHES=FILE and the Triton interpreter, every distinct launch of
    our kernels is recorded and appended to FILE at the end (bench/triton_aot_check.py compiles
    them for a GPU: what the interpreter accepts and the compiler would refuse shows without one)."""
    path = os.environ.get("INFER_FAST_TRITON_LAUNCHES")
    if not path or not backends.triton_interpreter():
        return
    import importlib.util

    spec = importlib.util.spec_from_file_location("triton_aot_check", BENCH / "triton_aot_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    recording = module.recording(run_kernels=True)
    config._triton_launches = (module, path, recording, recording.__enter__())


def pytest_unconfigure(config):
    launches = getattr(config, "_triton_launches", None)
    if launches is not None:
        module, path, recording, seen = launches
        recording.__exit__(None, None, None)
        module.append_launches(path, seen)


def pytest_pyfunc_call(pyfuncitem):
    marker = pyfuncitem.get_closest_marker("backend_must_run")
    if marker is not None:
        pytest.fail(marker.kwargs["reason"], pytrace=False)


def gradcheck(backend, device, fn, inputs) -> bool:
    """torch.autograd.gradcheck of ``fn`` at ``inputs`` run by ``backend`` on ``device``. Under
    Triton's CPU interpreter a launch takes tens of milliseconds and the full check launches
    twice per input element (40 s for one test): there it runs in fast mode (random
    projections u^T J v against the analytic vector-Jacobian products, a few launches), which
    still fails a wrong gradient; every other backend gets the full check."""
    interpreted = backend == "triton" and torch.device(device).type == "cpu"
    return torch.autograd.gradcheck(fn, inputs, fast_mode=interpreted)


# the tiny teachers trained in this test process, by (dataset, seed): each is trained once and
# copied where a test asks for it (a dozen test files use them: a minute of the suite's time)
_TINY_TEACHERS: Dict[Tuple[str, int], str] = {}


def train_tiny_teachers(root, seeds=(0, 1), dataset="fashion-mnist-mini"):
    """Paths ``root/t<seed>.pt`` of small ConvNet teachers trained for one epoch on the embedded
    data (seconds; the same bits every time: trained once per process, then copied)."""
    from infer_fast.teacher import TeacherConfig, train_teacher

    paths = []
    for seed in seeds:
        trained = _TINY_TEACHERS.get((dataset, seed))
        if trained is None:
            folder = tempfile.mkdtemp(prefix="infer-fast-tiny-teacher-")
            atexit.register(shutil.rmtree, folder, True)
            trained = os.path.join(folder, f"t{seed}.pt")
            train_teacher(TeacherConfig(dataset=dataset, model="convnet-w8-d2", epochs=1, batch_size=256, lr=0.05,
                                        device="cpu", seed=seed), trained, progress=False)
            _TINY_TEACHERS[(dataset, seed)] = trained
        path = str(root / f"t{seed}.pt")
        shutil.copyfile(trained, path)
        paths.append(path)
    return paths


def teacher_stopped_after_epoch_1(monkeypatch, cfg, out) -> None:
    """``cfg``'s teacher trained into ``out`` and stopped (KeyboardInterrupt) in its second epoch,
    after the first was checkpointed; the teacher module as it was after."""
    from infer_fast import teacher as teacher_mod

    real_evaluate, calls = teacher_mod.evaluate, []

    def killed_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(teacher_mod, "evaluate", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        teacher_mod.train_teacher(cfg, str(out), progress=False)
    monkeypatch.setattr(teacher_mod, "evaluate", real_evaluate)
    assert torch.load(out, weights_only=True)["epochs_done"] == 1


def kill_after_save(monkeypatch, module, when=lambda saved: True):
    """Make ``module.save_atomic`` raise KeyboardInterrupt (a kill) as soon as a checkpoint for
    which ``when(saved)`` holds is on disk. Returns a function that restores the real writer."""
    real = module.save_atomic

    def save_then_die(obj, path):
        real(obj, path)
        if when(obj):
            raise KeyboardInterrupt

    monkeypatch.setattr(module, "save_atomic", save_then_die)
    return lambda: monkeypatch.setattr(module, "save_atomic", real)


def kill_after_rded_classes(monkeypatch, classes_done):
    """A KeyboardInterrupt (a kill) as soon as RDED's checkpoint after ``classes_done`` classes
    is on disk."""
    from infer_fast.methods import rded_checkpoint

    return kill_after_save(monkeypatch, rded_checkpoint, lambda saved: saved.get("classes_done") == classes_done)


def rounding_bound(iterations: int, summed: int = 10 * 28 * 28, lr: float = 0.25) -> float:
    """How far two recoveries may drift apart when they differ only by float32 rounding (other
    batch shapes, chunking, fused kernels, compiled graphs: other summation orders): a relative
    error ~sqrt(K) eps in each gradient, K = the values one BN statistic sums (C images x H x
    W), that Adam's normalized step (at most lr, amplified at most 1 / (1 - beta1) = 2 by its
    momentum) carries into every one of the T iterations. Derived, not tuned on one machine."""
    return 2 * iterations * lr * summed ** 0.5 * torch.finfo(torch.float32).eps


@pytest.fixture
def decode_log(tmp_path, monkeypatch):
    """The file every image decode of this test appends a line to (INFER_FAST_DECODE_LOG)."""
    from infer_fast.data import DECODE_LOG_ENV

    log = tmp_path / "decodes.log"
    monkeypatch.setenv(DECODE_LOG_ENV, str(log))
    return log


def decoded(log) -> int:
    """Files decoded since the last call (the ``decode_log``), the log emptied."""
    if not log.exists():
        return 0
    count = len(log.read_text().splitlines())
    log.unlink()
    return count


@pytest.fixture
def step_loss_reads(monkeypatch):
    """What a training loop reads on the host, while the fixture is active (``monkeypatch.undo()``
    ends it): ``losses``, every tensor ``backward`` was called on (a step's loss; kept alive, so
    no later tensor takes its memory); ``reads``, each read (item, tolist, float, numpy) of one
    of them; ``means``, how often a StepLosses read its losses on the host (for its mean)."""
    from types import SimpleNamespace

    from infer_fast.step_losses import StepLosses

    seen = SimpleNamespace(losses=[], reads=[], means=0)
    backward, host_values = torch.Tensor.backward, StepLosses._host_values

    def recording_backward(self, *args, **kwargs):
        seen.losses.append(self)
        return backward(self, *args, **kwargs)

    def counting_host_values(self):
        seen.means += 1
        return host_values(self)

    def counting(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            if any(self.data_ptr() == loss.data_ptr() for loss in seen.losses):
                seen.reads.append(name)
            return original(self, *args, **kwargs)
        return read

    monkeypatch.setattr(torch.Tensor, "backward", recording_backward)
    monkeypatch.setattr(StepLosses, "_host_values", counting_host_values)
    for name in ("item", "tolist", "__float__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    return seen


def small_infer_set():
    """A relabelled INFER set of fashion-mnist-mini in memory (K = 2 natural sets, 3 UFCs): its
    training order (natural images, then composed ones) is not class-major."""
    from infer_fast.storage import DistilledSet

    gen = torch.Generator().manual_seed(0)
    k, c, g = 2, 10, 3
    ds = DistilledSet(method="infer", dataset="fashion-mnist-mini", num_classes=c, channels=1, image_size=28,
                      mean=(0.286,), std=(0.353,),
                      natural=torch.randint(0, 256, (k, c, 1, 28, 28), generator=gen, dtype=torch.uint8),
                      ufc=0.2 * torch.randn(g, 1, 28, 28, generator=gen), ufc_index=torch.tensor([0, 1, 1]),
                      ufc_teacher=torch.zeros(g, dtype=torch.int64), budget={"ipc": 5, "K": k, "M": 1, "accounting": "fair"})
    ds.set_soft_labels(torch.randn(ds.num_training_images(), c, generator=gen))
    return ds


# One tiny teacher as (path, model) and a random set it labelled: module-scoped, for the modules
# that evaluate sets (evaluate, DD-Ranking, score resume; a module's own fixture of the same name wins)
@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from infer_fast.teacher import load_teacher

    path = train_tiny_teachers(tmp_path_factory.mktemp("teacher"), seeds=(0,))[0]
    return path, load_teacher(path)[0]


@pytest.fixture(scope="module")
def labelled_set(teacher):
    from infer_fast.data import load_dataset
    from infer_fast.methods.random import random_set
    from infer_fast.relabel import relabel

    return relabel(random_set(load_dataset("fashion-mnist-mini", "train"), 2, seed=100), [teacher[1]])


# The embedded data's train split, two tiny teachers and K = 3 natural sets: module-scoped, for
# the modules that recover UFCs on them (a module's own fixture of the same name wins)
@pytest.fixture(scope="module")
def train_set():
    from infer_fast.data import load_dataset

    return load_dataset("fashion-mnist-mini", "train")


@pytest.fixture(scope="module")
def teacher_paths(tmp_path_factory):
    return train_tiny_teachers(tmp_path_factory.mktemp("teachers"))


@pytest.fixture(scope="module")
def teachers(teacher_paths):
    from infer_fast.teacher import load_teacher

    return [load_teacher(p)[0] for p in teacher_paths]


@pytest.fixture(scope="module")
def natural(train_set):
    from infer_fast.distill import select_natural_sets

    return select_natural_sets(train_set, 3, seed=0)
