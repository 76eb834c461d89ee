"""conftest's backend rows: a backend that cannot run is skipped with the reason, except the
cuda backend on a machine with a CUDA GPU, whose rows fail with the reason (issue 19). The GPU
is faked, so the decision is covered on the CPU."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import conftest
from conftest import backend_params, backend_row_marks
from infer_fast.ops import backends

WHY = "the CUDA kernels of infer_fast._C did not register (no kernel image is available)"


def mark_names(marks):
    return [m.name for m in marks]


@pytest.mark.parametrize("gpu", [False, True])
@pytest.mark.parametrize("name", backends.BACKENDS)
def test_a_backend_that_can_run_gets_no_mark(name, gpu):
    assert backend_row_marks(name, None, gpu) == []


@pytest.mark.parametrize("name,gpu", [("cuda", False), ("triton", True), ("cpu", True), ("triton", False)])
def test_a_backend_that_cannot_run_is_skipped_with_the_reason(name, gpu):
    (mark,) = backend_row_marks(name, WHY, gpu)
    assert mark.name == "skip" and mark.kwargs["reason"] == WHY


def test_the_cuda_backend_must_run_where_a_gpu_is_visible():
    (mark,) = backend_row_marks("cuda", WHY, gpu=True)
    assert mark.name == "backend_must_run"
    assert mark.kwargs["reason"] == f"a CUDA GPU is visible but the cuda backend cannot run: {WHY}"


def test_backend_params_on_a_faked_gpu_machine(monkeypatch):
    """The whole helper with a GPU visible and the CUDA kernels unregistered: the cuda row must
    fail, the other rows are as on any machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(conftest, "DEVICES", ["cpu", "cuda"])
    real = backends.unavailable_reason
    monkeypatch.setattr(backends, "unavailable_reason",
                        lambda name, device: WHY if (name, device.type) == ("cuda", "cuda") else real(name, device))
    rows = {p.id: p for p in backend_params()}
    assert "cuda-cpu" not in rows and "cuda-cuda" in rows
    assert mark_names(rows["cuda-cuda"].marks) == ["backend_must_run"]
    assert WHY in rows["cuda-cuda"].marks[0].kwargs["reason"]
    assert not rows["torch-cuda"].marks and not rows["torch-cpu"].marks
    assert all(m.name != "backend_must_run" for key, p in rows.items() if key != "cuda-cuda" for m in p.marks)


def test_backend_params_without_a_gpu_skip_the_cuda_row(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(conftest, "DEVICES", ["cpu"])
    rows = {p.id: p for p in backend_params()}
    assert mark_names(rows["cuda-cuda"].marks) == ["skip"]


def test_a_row_that_must_run_fails_in_pytest_with_the_reason(tmp_path):
    """End to end: a pytest run of rows made by backend_row_marks, with conftest's hooks; the
    cuda row fails (not skips), naming the reason; the others skip and pass as usual."""
    suite_conftest = Path(conftest.__file__).resolve()
    (tmp_path / "conftest.py").write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('suite_conftest', {str(suite_conftest)!r})\n"
        "suite = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(suite)\n"
        "pytest_configure, pytest_pyfunc_call = suite.pytest_configure, suite.pytest_pyfunc_call\n"
        "backend_row_marks = suite.backend_row_marks\n")
    (tmp_path / "test_rows.py").write_text(
        "import pytest\n"
        "from conftest import backend_row_marks\n"
        "ROWS = [pytest.param(name, marks=backend_row_marks(name, why, gpu=True), id=name)\n"
        f"        for name, why in [('cuda', {WHY!r}), ('triton', 'Triton is not usable'), ('torch', None)]]\n"
        "@pytest.mark.parametrize('backend', ROWS)\n"
        "def test_row(backend):\n"
        "    assert backend\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", "test_rows.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "1 failed, 1 passed, 1 skipped" in out
    assert "FAILED test_rows.py::test_row[cuda]" in out
    assert f"a CUDA GPU is visible but the cuda backend cannot run: {WHY}" in out
    assert "Triton is not usable" in out and "PytestUnknownMarkWarning" not in out
