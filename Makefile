# infer-fast: every target installs what it needs into .venv (created on first use).
#   make demo   - the main job: INFER vs random vs SRe2L on the embedded data (a few minutes)
#   make test   - the test suite (Triton kernels under the CPU interpreter when no GPU)
#   make bench  - op benchmarks, JSON under bench/results/
#   make bench-cpu - the pytest-benchmark suite (host cost, C++ kernels, batches) against its committed baseline
#   make cuda-check - compile setup.py's CUDA build with nvcc for sm_90, check launchers and registers (no GPU needed)
#   make triton-check - compile every Triton launch of `make test` for sm_90, with triton 3.9 and 3.6 (no GPU needed)
#   make data   - the full Fashion-MNIST from Debian's package dataset-fashion-mnist (MIT)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Pinned: torch 2.13.0 resolves to the local CPU wheel here (never a bare "torch": that
# pulls several GB of CUDA packages); triton 3.9.0 + numpy 2.4.6 work together under
# TRITON_INTERPRET=1 (triton 3.6 + numpy >= 2.3 does not).
DEPS := torch==2.13.0 triton==3.9.0 numpy==2.4.6 pybind11==3.1.0 ninja==1.13.2 \
        safetensors==0.8.0 tqdm==4.70.1 pyyaml==6.0.3 pillow==13.0.0 matplotlib==3.11.2 setuptools
TEST_DEPS := pytest==9.2.0 pytest-xdist==3.8.0 hypothesis==6.170.15 pytest-benchmark==5.3.1
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/*.inc csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu csrc/*/*.cuh) \
           $(wildcard infer_fast/*.py infer_fast/*/*.py kernels/*.py configs/*.yaml)
# The list of SOURCES, rewritten only when it changes: a file deleted (or added) makes the
# install out of date, which the files' times alone never say.
SOURCE_LIST := build/sources.list
$(shell mkdir -p build && printf '%s\n' $(sort $(SOURCES)) > $(SOURCE_LIST).new && \
  { cmp -s $(SOURCE_LIST).new $(SOURCE_LIST) || mv -f $(SOURCE_LIST).new $(SOURCE_LIST); }; rm -f $(SOURCE_LIST).new)
export MAX_JOBS ?= 2

.PHONY: demo test bench bench-cpu bench-cpu-baseline cuda-check triton-check install clean data

# The pinned wheels (numpy 2.4.6, triton 3.9.0, pillow 13, matplotlib 3.11) exist for Python
# 3.11+ only: said before pip fails with "No matching distribution" (the package itself: 3.9+)
PINNED_PYTHON := 3.11

$(VENV)/.deps: Makefile
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < tuple(map(int, "$(PINNED_PYTHON)".split("."))))' || \
	  { echo "make: the pinned dependencies need Python >= $(PINNED_PYTHON), $(PYTHON) is $$($(PYTHON) -V 2>&1); run e.g. 'make PYTHON=python$(PINNED_PYTHON) demo'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet $(DEPS) $(TEST_DEPS)
	touch $@

# No build isolation: the extension builds against the torch installed above (a module
# deleted from the tree leaves the build folder too: setup.py's build_py).
$(VENV)/.installed: $(VENV)/.deps $(SOURCES) $(SOURCE_LIST)
	$(PIP) install --quiet --no-build-isolation --no-deps .
	$(PY) -I -c "import infer_fast._C" || (echo "infer_fast._C failed to load" && false)
	$(VENV)/bin/infer-fast info | grep -E "C\+\+ ext|CUDA kernels"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/infer-fast demo

# The tests record every distinct Triton launch they make under the interpreter
# (tests/conftest.py) for triton-check.
TRITON_LAUNCHES := $(CURDIR)/$(VENV)/triton-launches.jsonl
# One pytest-xdist worker per core of the 2-core CI machine: much of the suite waits on the
# CLI processes it starts, so two workers took 19 min where one took 34 (2026-12-07).
# TEST_WORKERS=0 runs the tests in this one process (xdist's -n 0). --dist loadfile: each file's
# tests in one process, in their order, as a run in one process has them.
TEST_WORKERS ?= 2
test: $(VENV)/.installed
	rm -f $(TRITON_LAUNCHES)
	cd tests && INFER_FAST_TRITON_LAUNCHES=$(TRITON_LAUNCHES) ../$(VENV)/bin/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Every Triton kernel specialization that `make test` launched, and those of a real run's
# shapes, compiled for sm_90 by triton's compiler without a GPU (bench/triton_aot_check.py):
# with $(VENV)'s triton and with the lent GPU machine's, TRITON_GPU, in a venv of its own
# that holds that triton alone and reads everything else from $(VENV) (a .pth after its own).
TRITON_GPU := 3.6.0
TRITON_GPU_VENV := $(VENV)-triton$(TRITON_GPU)
$(TRITON_GPU_VENV)/.deps: $(VENV)/.deps
	$(PYTHON) -m venv $(TRITON_GPU_VENV)
	$(TRITON_GPU_VENV)/bin/pip install --quiet triton==$(TRITON_GPU)
	$(PY) -c "import sysconfig; print(sysconfig.get_path('purelib'))" > \
	  "$$($(TRITON_GPU_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib'))")/infer-fast-base.pth"
	touch $@

triton-check: $(VENV)/.installed $(TRITON_GPU_VENV)/.deps
	@test -f $(TRITON_LAUNCHES) || (echo "triton-check: no $(TRITON_LAUNCHES): run make test first (it records the launches)" && false)
	mkdir -p build
	$(PY) bench/triton_aot_check.py --launches $(TRITON_LAUNCHES) --json build/triton-check.json
	$(TRITON_GPU_VENV)/bin/python bench/triton_aot_check.py --launches $(TRITON_LAUNCHES) --json build/triton-check-$(TRITON_GPU).json

bench: $(VENV)/.installed
	$(PY) bench/bench_ops.py $(BENCH_ARGS)

# pytest-benchmark: compare with the baseline committed under bench/results/pytest-benchmark/
# (recorded on the 2-core CI machine kind; fail when a median is 50% slower).
BENCH_STORAGE := file://$(CURDIR)/bench/results/pytest-benchmark
BENCH_FLAGS := -q -p no:cacheprovider --benchmark-storage=$(BENCH_STORAGE) --benchmark-columns=median,iqr,rounds
# Run from bench/ (as the tests from tests/): the installed package, not the source tree.
bench-cpu: $(VENV)/.installed
	cd bench && ../$(PY) -m pytest test_cpu_benchmarks.py $(BENCH_FLAGS) --benchmark-compare --benchmark-compare-fail=median:50%

bench-cpu-baseline: $(VENV)/.installed
	cd bench && ../$(PY) -m pytest test_cpu_benchmarks.py $(BENCH_FLAGS) --benchmark-save=baseline

# The CUDA build setup.py would run, compiled without a GPU: every source, setup.py's flags and
# arch flags, every launcher defined, ptxas's registers (CMakeLists.txt says what and how).
# nvcc and cmake come from PATH, else these pinned PyPI packages are installed into $(VENV)
# (about 130 MB of wheels, seconds to install); it fails when it cannot check, never skips.
# CUDA_CHECK_ARGS: more cmake -D options, e.g. -DINFER_FAST_REGISTER_LIMIT=80.
CUDA_CHECK_PYPI := nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 \
                   nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85 cmake==3.31.10
cuda-check: $(VENV)/.deps
	$(PY) .ci/cuda_check.py run --build-dir build/cuda-check --jobs $(MAX_JOBS) \
	  --pypi "$(CUDA_CHECK_PYPI)" -- $(CUDA_CHECK_ARGS)

# Full runs use the real Fashion-MNIST: Debian's package puts the IDX files under
# /usr/share/datasets/fashion-mnist/, where infer_fast.data looks without --data-root.
FMNIST_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then echo "data: Fashion-MNIST already in $(FMNIST_DIR)"; \
	else $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist && ls $(FMNIST_DIR); fi

clean:
	rm -rf build dist *.egg-info infer_fast/_C*.so infer_fast/_build_info.json
