"""Dispatch, custom-op registration (opcheck) and torch.compile without graph breaks."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import backend_params
from infer_fast.ops import available_backends, backends, bn_stat_loss, ufc_compose
from infer_fast.ops.ufc_compose import _check_and_normalize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_torch_backend_always_available():
    assert "torch" in available_backends("cpu")
    assert available_backends()[0] == "torch"


def test_the_backends_for_cuda_are_none_without_cuda():
    if torch.cuda.is_available():
        assert "torch" in available_backends("cuda")
    else:
        assert available_backends("cuda") == [] and available_backends(torch.device("cuda", 0)) == []
        assert "cuda" not in available_backends()


@pytest.mark.parametrize("device", ["tpu", "cuda:x", 3.5])
def test_unknown_device_named(device):
    with pytest.raises(ValueError, match="device must be a torch.device or a device name"):
        available_backends(device)


def test_cpu_extension_is_built():
    """The installed package always carries the C++ CPU kernels."""
    assert backends.unavailable_reason("cpu", torch.device("cpu")) is None
    assert backends.resolve("auto", torch.device("cpu")) == "cpu"


def test_env_var_overrides_auto(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "torch")
    assert backends.resolve("auto", torch.device("cpu")) == "torch"
    monkeypatch.setenv(backends.ENV_VAR, "cuda")
    with pytest.raises(backends.BackendUnavailableError, match="INFER_FAST_BACKEND='cuda' .* is unavailable"):
        backends.resolve("auto", torch.device("cpu"))


@pytest.mark.parametrize("value", ["bogus", "cuda"])
def test_a_forced_backend_that_cannot_run_is_refused_before_any_work(value, tmp_path):
    """The CLI checks INFER_FAST_BACKEND first, naming it (it once failed after the teachers trained)."""
    if value == "cuda" and torch.cuda.is_available():
        pytest.skip("cuda runs here")
    out = tmp_path / "run"
    env = dict(os.environ, INFER_FAST_BACKEND=value, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "infer_fast", "run", "fashion-mnist", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith(f"infer-fast run: error: INFER_FAST_BACKEND={value!r} is unavailable: ")
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()


def test_resolve_is_marked_constant_for_dynamo_as_its_decorator_marks(tmp_path):
    """backends marks the function itself so that importing infer_fast does not import torch._dynamo."""
    def probe():
        return None

    torch._dynamo.assume_constant_result(probe)
    assert vars(probe) == {"_dynamo_marked_constant": True}  # (a torch that marks otherwise fails here)
    assert backends._resolved_name._dynamo_marked_constant is True
    done = subprocess.run([sys.executable, "-c", "import sys, infer_fast.cli as c; c.build_parser(); "
                           "print('torch._dynamo' in sys.modules)"], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert done.stdout.strip() == "False", done.stderr


def test_an_import_from_a_checkout_without_its_build_says_so(tmp_path):
    package = tmp_path / "infer_fast"
    package.mkdir()
    (tmp_path / "setup.py").write_text("")
    assert "imported infer_fast from the source tree" in backends._source_tree_hint(str(package))
    (package / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    assert backends._source_tree_hint(str(package)) == ""
    (tmp_path / "setup.py").unlink()
    (package / "_C.cpython-311-x86_64-linux-gnu.so").unlink()
    assert backends._source_tree_hint(str(package)) == ""  # (an installed package: no checkout around it)


def test_a_missing_extension_in_a_checkout_is_not_advised_a_reinstall(monkeypatch):
    """From a checkout the hint says what helps (reinstalling would not); elsewhere, reinstall."""
    hint = " (Python imported infer_fast from the source tree X ...)"
    monkeypatch.setattr(backends, "compiled_extension", lambda: (None, "ImportError: no _C" + hint))
    monkeypatch.setattr(backends, "_source_tree_hint", lambda package=None: hint)
    assert backends.unavailable_reason("cpu", torch.device("cpu")) == \
        f"the compiled extension infer_fast._C did not load (ImportError: no _C{hint})"
    monkeypatch.setattr(backends, "compiled_extension", lambda: (None, "ImportError: no _C"))
    monkeypatch.setattr(backends, "_source_tree_hint", lambda package=None: "")
    assert backends.unavailable_reason("cpu", torch.device("cpu")).endswith("(ImportError: no _C); reinstall infer-fast")


def test_explicit_backend_wins_over_env_var(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "cuda")
    assert backends.resolve("torch", torch.device("cpu")) == "torch"


def test_report_covers_every_backend():
    report = backends.backend_report()
    assert set(report) == set(backends.BACKENDS)
    assert report["torch"]["cpu"] == "usable"


def bn_args(device, dtype=torch.float32, channels_last=False):
    x = torch.randn(4, 5, 3, 3, device=device, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(), torch.randn(5, device=device) * 0.1, torch.rand(5, device=device) + 0.5


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck_bn_stat_loss(backend, device, channels_last):
    """The differentiable op and the functional ops it dispatches to."""
    x, rm, rv = bn_args(device, channels_last=channels_last)
    ops = torch.ops.infer_fast_C
    torch.library.opcheck(ops.bn_stat_loss, (x, rm, rv, 2, backend))
    x = x.detach()
    torch.library.opcheck(ops.bn_stat_forward, (x, rm, rv, 2, backend))
    _, stats = ops.bn_stat_forward(x, rm, rv, 2, backend)
    for grad_loss in (torch.ones(2, device=device), torch.ones((), device=device).expand(2)):
        torch.library.opcheck(ops.bn_stat_backward, (x, rm, stats, grad_loss, None, None, None, 0.0, backend))


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("clamp", [False, True])
@pytest.mark.parametrize("transform", [True, False])
def test_opcheck_ufc_compose(backend, device, clamp, transform):
    natural = torch.randn(2, 3, 2, 4, 5, device=device, requires_grad=True)
    ufc = torch.randn(3, 2, 4, 5, device=device, requires_grad=True)
    shifts = torch.tensor([[1, 2], [0, -4], [3, 13]], device=device) if transform else None
    flips = torch.tensor([True, False, True], device=device) if transform else None
    args = _check_and_normalize(natural, ufc, torch.tensor([1, 0, 1], device=device), shifts, flips,
                                -1.0 if clamp else None, 1.0 if clamp else None)
    ops = torch.ops.infer_fast_C
    torch.library.opcheck(ops.ufc_compose, (*args, backend))
    detached = [a.detach() if a is not None else None for a in args]
    torch.library.opcheck(ops.ufc_compose_forward, (*detached, backend))
    grad_out = torch.randn(3, 3, 2, 4, 5, device=device)
    torch.library.opcheck(ops.ufc_compose_backward, (grad_out, *detached, backend))
    torch.library.opcheck(ops.ufc_compose_grad_natural, (grad_out, *detached))


def recovery_step(natural, ufc, index, shifts, rm, rv, weight):
    """A miniature recovery step: compose, a conv, BN-statistics loss, backward target."""
    images = ufc_compose(natural, ufc, index, shifts, lo=-2.0, hi=2.0).flatten(0, 1)
    features = torch.nn.functional.conv2d(images, weight, padding=1)
    return bn_stat_loss(features, rm, rv, groups=ufc.shape[0]).sum()


def test_compile_fullgraph_no_graph_breaks():
    """Both ops trace as single custom ops: fullgraph=True fails on any graph break."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    natural = torch.randn(2, 3, 2, 6, 6, generator=gen)
    ufc = torch.zeros(2, 2, 6, 6, requires_grad=True)
    index = torch.tensor([0, 1])
    shifts = torch.tensor([[1, 2], [3, 0]])
    rm, rv = torch.zeros(4), torch.ones(4)
    weight = torch.randn(4, 2, 3, 3, generator=gen)
    compiled = torch.compile(recovery_step, fullgraph=True, backend="aot_eager")
    eager_loss = recovery_step(natural, ufc, index, shifts, rm, rv, weight)
    (eager_grad,) = torch.autograd.grad(eager_loss, ufc)
    loss = compiled(natural, ufc, index, shifts, rm, rv, weight)
    (grad,) = torch.autograd.grad(loss, ufc)
    torch.testing.assert_close(loss, eager_loss)
    torch.testing.assert_close(grad, eager_grad)



def test_a_compiled_compose_checks_each_index_it_is_given():
    """Under torch.compile the index values cannot be read while tracing: the graph checks
    them each time it runs, so another index tensor given to the compiled function is refused
    by the op's own message, before the kernel (which on CUDA trusts index)."""
    torch._dynamo.reset()
    natural, ufc = torch.randn(3, 5, 2, 4, 4), torch.randn(2, 2, 4, 4)
    compiled = torch.compile(lambda index: ufc_compose(natural, ufc, index), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(torch.tensor([0, 2])), ufc_compose(natural, ufc, torch.tensor([0, 2])))
    with pytest.raises(RuntimeError, match=r"ufc_compose: index values must lie in \[0, 3\)"):
        compiled(torch.tensor([0, 7]))

def test_compile_inductor():
    """Inductor compiles around the custom ops and gives the eager result."""
    torch._dynamo.reset()
    x = torch.randn(4, 5, 3, 3, requires_grad=True)
    rm, rv = torch.zeros(5), torch.ones(5)

    def fn(x):
        return bn_stat_loss(torch.relu(x) * 2, rm, rv, groups=2).sum()

    compiled = torch.compile(fn, fullgraph=True)
    (grad,) = torch.autograd.grad(compiled(x), x)
    (expected,) = torch.autograd.grad(fn(x), x)
    torch.testing.assert_close(grad, expected)


def test_info_says_why_cuda_kernels_are_not_usable():
    """A CUDA registration that failed at import is reported with its reason, not fatal."""
    from infer_fast.info import cuda_kernels_status

    class Extension:
        def __init__(self, status):
            self.status = status

        def cuda_status(self):
            return self.status

    built = {"cuda_kernels": True}
    assert cuda_kernels_status(Extension(""), built) == "built and registered"
    failed = cuda_kernels_status(Extension("Mismatch in kernel C++ signatures"), built)
    assert failed == "built, but not registered: Mismatch in kernel C++ signatures"
    assert cuda_kernels_status(None, built).startswith("built, but the extension did not load")
    skipped = cuda_kernels_status(None, {"cuda_kernels": False, "cuda_reason": "CPU-only torch"})
    assert skipped == "skipped: CPU-only torch"
    import infer_fast._C as ext

    assert ext.cuda_status() == ("" if ext.cuda_compiled() else "this build has no CUDA kernels")
