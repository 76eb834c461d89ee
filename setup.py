"""Build of infer-fast and its compiled extension ``infer_fast._C``.

One build path: torch's cpp_extension (pybind11 + ninja) against the *installed* torch.
Install with ``pip install --no-build-isolation .`` so pip never fetches another torch.

- C++ CPU kernels (``csrc/*.cpp``, ``csrc/cpu/*.cpp``) are always built, with OpenMP where the
  compiler has it (not Apple's clang: then one thread each, recorded like CUDA's decision).
- CUDA kernels (``csrc/cuda/``) are built only when the installed torch is a CUDA build
  *and* a CUDA toolkit is found (``torch.version.cuda`` and ``CUDA_HOME``): nvcc on PATH
  alone is not enough, a CPU torch cannot host CUDA kernels. Otherwise the build says
  that CUDA kernels were skipped and why (also recorded in ``infer_fast/_build_info.json``
  and shown by ``infer-fast info``). ``INFER_FAST_NO_CUDA=1`` skips them on purpose.
- The Triton kernels in ``kernels/`` ship as the subpackage ``infer_fast.kernels``, the YAML
  presets in ``configs/`` as ``infer_fast/configs/`` (``infer-fast run fashion-mnist``).
- The source distribution (MANIFEST.in) holds every source, CUDA's too, whatever this build is.
"""
import glob
import json
import os
import shlex
import subprocess
import sys
import tempfile

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - build-time message
    sys.exit(
        "infer-fast builds against the installed PyTorch: install torch first, then run "
        "`pip install --no-build-isolation .` (build isolation would fetch another torch)."
    )

ROOT = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.1.0"  # keep in step with infer_fast.__version__


def cuda_build_decision():
    """(build_cuda, reason) for the CUDA kernels."""
    if os.environ.get("INFER_FAST_NO_CUDA") == "1":
        return False, "INFER_FAST_NO_CUDA=1 was set"
    if torch.version.cuda is None:
        return False, f"the installed torch {torch.__version__} is a CPU-only build"
    if cpp_extension.CUDA_HOME is None:
        return False, "no CUDA toolkit found (set CUDA_HOME)"
    return True, f"torch {torch.__version__} with CUDA {torch.version.cuda}, toolkit at {cpp_extension.CUDA_HOME}"


OPENMP_PROBE = "#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n"


def openmp_build_decision():
    """(flags, reason): ``-fopenmp`` where the C++ compiler builds and links an OpenMP program
    with it (gcc, LLVM's clang); Apple's clang refuses the flag, and the C++ kernels then build
    without OpenMP (their sources guard omp.h with _OPENMP): one thread each, said here and by
    ``infer-fast info``, instead of an install that fails. ``INFER_FAST_NO_OPENMP=1`` skips it."""
    if os.environ.get("INFER_FAST_NO_OPENMP") == "1":
        return [], "INFER_FAST_NO_OPENMP=1 was set"
    compiler = shlex.split(os.environ.get("CXX", "c++"))  # (what torch's cpp_extension compiles with)
    with tempfile.TemporaryDirectory() as tmp:
        try:  # (the source on stdin: a reader of this file's build, .ci/cuda_check.py, stubs open())
            probe = subprocess.run(compiler + ["-fopenmp", "-x", "c++", "-", "-o", os.path.join(tmp, "openmp_probe")],
                                   input=OPENMP_PROBE, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):  # (no compiler at all: the build itself says so)
            return ["-fopenmp"], "not probed (the C++ compiler did not run)"
    if probe.returncode != 0:
        said = (probe.stderr.strip().splitlines() or ["no message"])[0]
        return [], f"{' '.join(compiler)} does not build OpenMP with -fopenmp ({said})"
    return ["-fopenmp"], f"{' '.join(compiler)} -fopenmp"


def rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


build_cuda, cuda_reason = cuda_build_decision()
cpp_sources = rel(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")) + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
# What the sources include: setuptools rebuilds the extension only when a file it knows of is
# newer than the built module (ninja then recompiles the objects whose headers changed).
headers = rel(glob.glob(os.path.join(ROOT, "csrc", "*.h")) + glob.glob(os.path.join(ROOT, "csrc", "*.inc"))
              + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.h")))
cuda_headers = rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.h")) + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cuh")))
openmp_flags, openmp_reason = openmp_build_decision()
if not openmp_flags:
    print(f"infer-fast: C++ kernels built without OpenMP (one thread each): {openmp_reason}")
# (without OpenMP its `#pragma omp simd` hints are unknown: not a warning per loop)
cxx_flags = ["-O3", "-std=c++17"] + (openmp_flags or ["-Wno-unknown-pragmas"])
define_macros = []
if build_cuda:
    sources = cpp_sources + rel(
        glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")) + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp"))
    )
    define_macros.append(("INFER_FAST_WITH_CUDA", "1"))
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST")
    # (no --use_fast_math: it makes division and sqrt approximate and flushes denormals, where the
    # Triton kernels are exact; these kernels are memory-bound, so it would buy no speed)
    nvcc_flags = ["-O3", "-std=c++17", "-lineinfo"]
    if not arch_list:  # Hopper (H100/H200) unless the user asks for others
        nvcc_flags += ["-gencode=arch=compute_90,code=sm_90"]
    extension = cpp_extension.CUDAExtension(
        "infer_fast._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        depends=headers + cuda_headers,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=openmp_flags,
    )
    print(f"infer-fast: building CUDA kernels ({cuda_reason})")
else:
    extension = cpp_extension.CppExtension(
        "infer_fast._C",
        cpp_sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        depends=headers,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=openmp_flags,
    )
    print(f"infer-fast: CUDA kernels skipped: {cuda_reason}; building the C++ CPU kernels only")

# Recorded in the package so `infer-fast info` can say what this install contains.
with open(os.path.join(ROOT, "infer_fast", "_build_info.json"), "w") as f:
    json.dump(
        {
            "version": VERSION,
            "cuda_kernels": build_cuda,
            "cuda_reason": cuda_reason,
            "openmp": bool(openmp_flags),
            "openmp_reason": openmp_reason,
            "built_with_torch": torch.__version__,
            "built_with_cuda": torch.version.cuda,
        },
        f,
        indent=1,
    )


class BuildPy(build_py):
    """build_py that also removes, from the build folder, the files of a previous build that
    this one no longer has: pip builds in the source tree and reuses build/lib.*, so a module
    deleted from the tree would still ship (and an import of it still pass its tests). The
    compiled extension there is build_ext's, kept (it is rebuilt when out of date)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # (an editable install copies nothing here)
            return
        keep = {os.path.normpath(p) for p in self.get_outputs()}
        top = os.path.join(self.build_lib, "infer_fast")
        for folder, _, files in os.walk(top, topdown=False):
            for name in files:
                path = os.path.normpath(os.path.join(folder, name))
                if path not in keep and not name.endswith((".so", ".pyd")):
                    self.announce(f"removing {path} (no longer in the sources)", level=2)
                    os.remove(path)
            if folder != top and not os.listdir(folder):
                os.rmdir(folder)


# (find_packages also finds infer_fast.kernels where a checkout links infer_fast/kernels to kernels/)
packages = sorted(set(find_packages(ROOT, include=["infer_fast", "infer_fast.*"]) + ["infer_fast.kernels", "infer_fast.configs"]))

setup(
    name="infer-fast",
    version=VERSION,
    description="Kernel-accelerated INFER dataset distillation (Inter-class Feature Compensator, ICLR 2025)",
    long_description=open(os.path.join(ROOT, "README.md")).read() if os.path.exists(os.path.join(ROOT, "README.md")) else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=packages,
    # configs/ holds data only: infer_fast.configs is a folder of the package, read by infer_fast.config
    package_dir={"infer_fast.kernels": "kernels", "infer_fast.configs": "configs"},
    package_data={
        "infer_fast": ["_build_info.json", "py.typed"],
        "infer_fast.configs": ["*.yaml"],
        # the embedded Fashion-MNIST subset (MIT, attribution in ATTRIBUTION.md)
        "infer_fast.data": ["fashion_mnist_mini/*"],
    },
    ext_modules=[extension],
    cmdclass={"build_py": BuildPy, "build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    # torch 2.7: torch._dynamo.config's recompile_limit (distill/engine.py, compile=...; 2.6 knows
    # only cache_size_limit), above torch.library.register_fake (ops/_library.py, torch 2.4)
    install_requires=["torch>=2.7", "numpy", "safetensors", "tqdm", "pyyaml", "pillow", "matplotlib"],
    extras_require={
        "triton": ["triton>=3.2"],
        "test": ["pytest", "hypothesis", "pytest-benchmark"],
    },
    entry_points={"console_scripts": ["infer-fast=infer_fast.cli:main"]},
    zip_safe=False,
)
