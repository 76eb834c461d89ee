"""Packaging: the source distribution holds every source, so that a wheel builds from it on
any machine (CUDA's sources and the headers included, whatever the maker's machine built),
and not the maker's build record; the wheel holds the Triton kernels and the YAML presets;
a build in a tree built before drops the modules deleted since; ``python -m infer_fast``.

setup.py's commands run on a copy of the checkout's files (git's list: tracked, and new ones
not ignored): egg_info writes the file list the sdist is made of, build_py what the wheel's
Python part is; nothing is compiled and nothing is written into the checkout."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what the sdist must hold of the checkout: the package's sources and data, the extension's,
# the presets, the build's files, and the tests with what they run
SHIPPED_FOLDERS = ("infer_fast/", "kernels/", "csrc/", "configs/", "tests/", "bench/", ".ci/")
SHIPPED_FILES = {"setup.py", "pyproject.toml", "MANIFEST.in", "CMakeLists.txt", "Makefile", "README.md"}
BUILD_RECORD = "infer_fast/_build_info.json"


def checkout_files():
    """The checkout's files as git lists them (skips outside a git checkout)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the sources' list comes from git")
    found = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           capture_output=True, timeout=60)
    if found.returncode != 0:
        pytest.skip(f"git ls-files failed: {found.stderr.decode(errors='replace').strip()}")
    # (a tracked file deleted from the working tree is a source no longer)
    return sorted(f for f in found.stdout.decode().split("\0") if f and (ROOT / f).is_file() and not (ROOT / f).is_symlink())


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(the checkout's files, the sdist's files, the wheel's Python files: paths in the
    package), from one run of ``setup.py egg_info build_py`` in a copy of the checkout where a
    build has left its record and a previous build folder holds a module since deleted."""
    files = checkout_files()
    copy = tmp_path_factory.mktemp("checkout")
    for name in files:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    (copy / BUILD_RECORD).write_text('{"cuda_kernels": true}\n')  # (a build wrote it: no sdist ships it)
    lib = copy / "build" / "lib"
    (lib / "infer_fast" / "gone").mkdir(parents=True)
    for stale in ("infer_fast/zz_deleted.py", "infer_fast/gone/__init__.py", "infer_fast/_C.fake.so"):
        (lib / stale).write_text("")
    env = {**os.environ, "INFER_FAST_NO_CUDA": "1"}  # (the CUDA sources ship though not built)
    run = subprocess.run([sys.executable, "setup.py", "egg_info", "build_py", "--build-lib", str(lib)],
                         cwd=copy, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    sdist = (copy / "infer_fast.egg-info" / "SOURCES.txt").read_text().split()
    wheel = sorted(str(p.relative_to(lib)).replace(os.sep, "/") for p in lib.rglob("*") if p.is_file())
    return files, set(sdist), wheel


def test_the_sdist_holds_every_source(built):
    files, sdist, _ = built
    wanted = [f for f in files if f.startswith(SHIPPED_FOLDERS) or f in SHIPPED_FILES]
    assert {"csrc/launchers.inc", "csrc/cuda/bindings.cpp", "configs/fashion-mnist.yaml", "CMakeLists.txt"} <= set(wanted)
    assert [f for f in wanted if f not in sdist] == []


def test_the_sdist_leaves_out_what_a_build_made(built):
    _, sdist, _ = built
    assert BUILD_RECORD not in sdist
    assert [f for f in sdist if f.endswith((".so", ".pyd", ".pyc", ".o"))] == []


def test_the_wheel_holds_the_kernels_and_the_presets(built):
    files, _, wheel = built
    for name in files:
        if name.startswith(("kernels/", "configs/")):  # (infer_fast.kernels, infer_fast/configs/)
            assert f"infer_fast/{name}" in wheel, name
        elif name.startswith("infer_fast/"):
            assert name in wheel, name
    assert "infer_fast/configs/fashion-mnist.yaml" in wheel and "infer_fast/py.typed" in wheel


def test_a_build_drops_the_modules_deleted_since_the_last(built):
    _, _, wheel = built
    assert "infer_fast/zz_deleted.py" not in wheel and "infer_fast/gone/__init__.py" not in wheel
    assert "infer_fast/_C.fake.so" in wheel  # (the compiled extension is build_ext's to redo)


def test_python_dash_m_runs_the_command_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "infer_fast", "--help"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: infer-fast ")


@pytest.mark.parametrize("takes_fopenmp", [True, False])
def test_the_build_decides_openmp_by_what_the_compiler_builds(tmp_path, takes_fopenmp):
    """A C++ compiler that refuses -fopenmp (Apple's clang) builds the kernels without OpenMP,
    said at build and recorded for `infer-fast info`, instead of an install that fails."""
    import json

    copy = tmp_path / "checkout"
    for name in ("setup.py", "README.md", "infer_fast/__init__.py"):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    compiler = tmp_path / "c++"  # the system's compiler, refusing -fopenmp as Apple's clang does where asked
    refuse = "" if takes_fopenmp else \
        'for a in "$@"; do [ "$a" = -fopenmp ] && { echo "clang: error: unsupported option \'-fopenmp\'" >&2; exit 1; }; done\n'
    compiler.write_text(f"#!/bin/sh\n{refuse}exec {os.environ.get('CXX', 'c++')} \"$@\"\n")
    compiler.chmod(0o755)
    run = subprocess.run([sys.executable, "setup.py", "--name"], cwd=copy, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "CXX": str(compiler), "INFER_FAST_NO_CUDA": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    record = json.loads((copy / BUILD_RECORD).read_text())
    assert record["openmp"] is takes_fopenmp
    if takes_fopenmp:
        assert record["openmp_reason"] == f"{compiler} -fopenmp" and "without OpenMP" not in run.stdout
    else:
        assert record["openmp_reason"] == (f"{compiler} does not build OpenMP with -fopenmp "
                                           "(clang: error: unsupported option '-fopenmp')")
        assert f"C++ kernels built without OpenMP (one thread each): {record['openmp_reason']}" in run.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_names_the_python_the_pinned_wheels_need_before_making_the_venv(tmp_path):
    """The pinned wheels exist for Python 3.11+ only: an older interpreter is named with the
    way out, before a venv is made or pip fails with "No matching distribution"."""
    fake_python = tmp_path / "python3.9"  # a Python 3.9 as far as the version test can tell
    fake_python.write_text("#!/bin/sh\n"
                           "case \"$1\" in -V) echo 'Python 3.9.6';; -c) exec "
                           f"{sys.executable} -c 'import sys; sys.exit(1)';; *) exit 0;; esac\n")
    fake_python.chmod(0o755)
    venv = tmp_path / "venv"
    result = subprocess.run(["make", "-C", str(ROOT), f"PYTHON={fake_python}", f"VENV={venv}", f"{venv}/.deps"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"the pinned dependencies need Python >= 3.11, {fake_python} is Python 3.9.6" in result.stdout
    assert "make PYTHON=python3.11 demo" in result.stdout
    assert not venv.exists()


def test_the_cuda_check_reads_setup_pys_openmp_flag():
    """.ci/cuda_check.py reads the build by running setup.py with open() stubbed: the OpenMP
    probe must not depend on writing a file (it did: the check then compiled without -fopenmp,
    and -Werror refused the kernels' `#pragma omp simd`)."""
    sys.path.insert(0, str(ROOT / ".ci"))
    try:
        import cuda_check
    finally:
        sys.path.remove(str(ROOT / ".ci"))
    record_path = ROOT / BUILD_RECORD
    record = record_path.read_bytes() if record_path.exists() else None
    cxx = cuda_check.setup_py_extension("/usr/local/cuda")["extra_compile_args"]["cxx"]
    assert (record_path.read_bytes() if record_path.exists() else None) == record  # (not a build: nothing written)
    local = subprocess.run([os.environ.get("CXX", "c++"), "-fopenmp", "-x", "c++", "-", "-o", os.devnull],
                           input="#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n",
                           capture_output=True, text=True, timeout=120)
    assert ("-fopenmp" in cxx) == (local.returncode == 0), (cxx, local.stderr[-500:])
