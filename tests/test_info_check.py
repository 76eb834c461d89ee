"""`infer-fast info --check`: a visible CUDA GPU without usable CUDA kernels is a failure (exit
status 1, one line naming why), on a CPU-only machine the check does not apply (status 0).
The GPU and the extension are faked, so every case runs on the CPU."""
import subprocess
import sys

import pytest
import torch

from infer_fast import cli, info
from infer_fast.ops import backends


class FakeExtension:
    """The two questions info asks infer_fast._C about its CUDA part."""

    def __init__(self, compiled=True, status=""):
        self.compiled, self.status = compiled, status

    def cuda_compiled(self):
        return self.compiled

    def cuda_status(self):
        return self.status


BUILT = {"cuda_kernels": True, "cuda_reason": "torch 2.11.0+cu130 with CUDA 13.0, toolkit at /usr/local/cuda"}


def fake_machine(monkeypatch, gpu, build, extension=None, why=None):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(info, "build_info", lambda: build)
    monkeypatch.setattr(backends, "compiled_extension", lambda: (extension, why))


def run_check(capsys):
    """(exit status, stdout, stderr) of ``infer-fast info --check`` in this process."""
    try:
        status = cli.main(["info", "--check"])
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def test_cpu_only_machine_passes_and_says_the_check_does_not_apply(monkeypatch, capsys):
    fake_machine(monkeypatch, gpu=False, build={"cuda_kernels": False, "cuda_reason": "CPU-only torch"})
    status, out, err = run_check(capsys)
    assert status == 0 and err == ""
    assert out == "infer-fast info --check: ok: no CUDA GPU is visible: the CUDA kernel check does not apply\n"


def test_gpu_with_kernels_built_and_registered_passes(monkeypatch, capsys):
    fake_machine(monkeypatch, gpu=True, build=BUILT, extension=FakeExtension())
    status, out, err = run_check(capsys)
    assert status == 0 and err == ""
    assert out == "infer-fast info --check: ok: a CUDA GPU is visible and the CUDA kernels are built and registered\n"


@pytest.mark.parametrize(
    "build,extension,why,reason",
    [
        ({"cuda_kernels": False, "cuda_reason": "the installed torch 2.13.0+cpu is a CPU-only build"}, FakeExtension(False),
         None, "the CUDA kernels were skipped at build: the installed torch 2.13.0+cpu is a CPU-only build"),
        (BUILT, None, "ImportError: libcudart.so.13: cannot open shared object file",
         "the cuda backend cannot run: the compiled extension infer_fast._C did not load "
         "(ImportError: libcudart.so.13: cannot open shared object file)"),
        # the build record says built, the loaded extension has none: a stale or mixed install
        (BUILT, FakeExtension(compiled=False), None,
         "the cuda backend cannot run: infer_fast._C was built without CUDA kernels"),
        # a multi-line registration error still makes one line
        (BUILT, FakeExtension(status="CUDA error: no kernel image is available\nfor execution on the device"), None,
         "the cuda backend cannot run: the CUDA kernels of infer_fast._C did not register "
         "(CUDA error: no kernel image is available for execution on the device)"),
    ],
    ids=["skipped-at-build", "not-loaded", "stale-build-record", "not-registered"],
)
def test_gpu_without_usable_cuda_kernels_fails_with_one_line(monkeypatch, capsys, build, extension, why, reason):
    fake_machine(monkeypatch, gpu=True, build=build, extension=extension, why=why)
    status, out, err = run_check(capsys)
    assert status == 1 and out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("infer-fast info --check: FAILED: a CUDA GPU is visible")
    assert reason in err


def test_gpu_check_from_the_command_line_matches_this_machine():
    """The real entry point, in a new process: status 0 without a GPU, and with one exactly
    when the CUDA backend is usable."""
    proc = subprocess.run([sys.executable, "-m", "infer_fast.cli", "info", "--check"], capture_output=True,
                          text=True, timeout=300)
    usable = backends.unavailable_reason("cuda", torch.device("cuda")) is None
    if not torch.cuda.is_available():
        assert proc.returncode == 0, proc.stderr
        assert "the CUDA kernel check does not apply" in proc.stdout
    else:
        assert proc.returncode == (0 if usable else 1), proc.stdout + proc.stderr
