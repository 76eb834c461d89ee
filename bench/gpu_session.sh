#!/usr/bin/env bash
# The GPU checks of issues 2 and 5, in steps that each fit one 10-minute command of a lent
# GPU machine (the device tool keeps the machine and the installed package between calls
# while it stays warm). Run from the repository root, in this order:
#
#   bash bench/gpu_session.sh build      # the extension with its CUDA kernels (a few minutes)
#   bash bench/gpu_session.sh test       # the kernel, hook and chunked tests on the GPU
#   bash bench/gpu_session.sh ops        # bench_ops.py: every backend vs the eager baselines
#   bash bench/gpu_session.sh cifar100   # bench_recovery.py at CIFAR-100 shapes (+ compile row)
#   bash bench/gpu_session.sh imagenet   # bench_recovery.py at ImageNet shapes (+ compile row)
#
# Extra arguments go to pytest (test: e.g. test_bn_eval_stat.py -k cuda, when the whole list
# would not fit one call) or to the benchmark (e.g. --teachers resnet18-imagenet). COMPILE=off
# drops the torch.compile row of the recovery benchmarks (COMPILE=reduce-overhead: CUDA graphs).
#
# JSON results go to bench/results/ and, with the logs, to $OUT when the device tool sets it
# (they come back to the developer's machine from there; commit them under bench/results/).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEST=${OUT:-$PWD/bench/results}
mkdir -p "$DEST" bench/results

run() {  # run STEP COMMAND...: output to the terminal and to $DEST/<step>.log
  local step=$1
  shift
  echo "== $step: $*"
  "$@" 2>&1 | tee "$DEST/$step.log"
}

copy_json() {  # the newest JSON the benchmark wrote, also to $DEST
  local newest
  newest=$(ls -t bench/results/*.json | head -n 1)
  [ "$DEST" = bench/results ] || cp "$newest" "$DEST/"
  echo "wrote $newest"
}

step=${1:-}
shift || true
case "$step" in
  build)
    # The image's default compiler may not be the one torch was built with: an extension
    # built by another one fails to load (undefined symbols), so name the system gcc.
    run build env CXX=/usr/bin/g++ CC=/usr/bin/gcc "$PY" -m pip install --no-build-isolation --no-deps -q .
    "$PY" -I -c "import infer_fast._C as c; assert c.cuda_compiled(), 'built without CUDA kernels'"
    "$PY" -I -m infer_fast.cli info | tee -a "$DEST/build.log"
    ;;
  test)
    files=(test_bn_stat_loss.py test_bn_eval_stat.py test_ufc_compose.py test_backends.py test_bn_hooks.py
           test_chunked.py test_properties.py)
    (cd tests && run test "$PY" -m pytest -q -p no:cacheprovider "${@:-${files[@]}}")
    ;;
  ops)
    run ops "$PY" bench/bench_ops.py --channels-last "$@"
    copy_json
    ;;
  cifar100 | imagenet)
    run "$step" "$PY" bench/bench_recovery.py --preset "$step" --compile "${COMPILE:-default}" "$@"
    copy_json
    ;;
  *)
    sed -n '2,17p' "$0"
    exit 2
    ;;
esac
