"""The compiled launchers are declared once (csrc/launchers.inc) for every backend, and a
definition that drifts from the declaration does not compile, on this CPU machine as on a
GPU one. The H200 run of 2026-11-30 found CUDA launchers taking ``at::Tensor&`` where the
CPU ones take ``const at::Tensor&``: the process aborted when the extension loaded. Here
that exact drift must be a compile error, for the CPU and for the CUDA namespace."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from torch.utils.cpp_extension import include_paths

CSRC = Path(__file__).resolve().parents[1] / "csrc"
COMPILER = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")

pytestmark = pytest.mark.skipif(COMPILER is None or not (CSRC / "launchers.inc").exists(),
                                reason="needs a C++ compiler and the source tree")

OUT_TYPES = {"declared": "const at::Tensor& out", "drifted": "at::Tensor& out"}


def syntax_check(tmp_path, namespace: str, out_param: str) -> subprocess.CompletedProcess:
    """Compile (syntax only) a definition of bn_stat_sums in ``namespace`` against ops.h."""
    source = tmp_path / "definition.cpp"
    source.write_text(
        '#include "ops.h"\n'
        f"void infer_fast::{namespace}::bn_stat_sums(const at::Tensor& x, const at::Tensor& running_mean,\n"
        f"                                          int64_t groups, {out_param}) {{}}\n"
    )
    flags = ["-std=c++17", "-fsyntax-only", f"-I{CSRC}", "-DINFER_FAST_WITH_CUDA=1"]
    for directory in include_paths():
        flags += ["-isystem", directory]
    return subprocess.run([COMPILER, *flags, str(source)], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("namespace", ["cpu", "cuda"])
def test_a_launcher_that_drifts_from_its_declaration_does_not_compile(tmp_path, namespace):
    declared = syntax_check(tmp_path, namespace, OUT_TYPES["declared"])
    assert declared.returncode == 0, declared.stderr
    drifted = syntax_check(tmp_path, namespace, OUT_TYPES["drifted"])
    assert drifted.returncode != 0
    assert f"infer_fast::{namespace}::bn_stat_sums" in drifted.stderr


def test_every_declared_launcher_is_in_the_backend_contract():
    """launchers.inc and the Python backends list the same five launchers."""
    from infer_fast.ops import backends

    text = (CSRC / "launchers.inc").read_text()
    declared = {name for name in backends.LAUNCHERS if f"void {name}(" in text}
    assert declared == set(backends.LAUNCHERS)
    assert text.count("\nvoid ") == len(backends.LAUNCHERS)
