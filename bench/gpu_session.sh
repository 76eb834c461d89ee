#!/usr/bin/env bash
# Everything a lent GPU checks, in one command that ends within 9 minutes on an H200:
#
#   bash bench/gpu_session.sh all
#
# Steps (each also runs alone, e.g. `bash bench/gpu_session.sh ops`):
#   build     the extension with its CUDA kernels, every core (about a minute); fails when a GPU
#             is visible but the CUDA kernels are not built, loaded and registered (info --check)
#   test      the kernel, op and host-path tests on the GPU, pytest-xdist in parallel (pytest-xdist
#             and hypothesis installed with pip when missing, or the summary says what was not)
#   ops       bench_ops.py: the bf16 case (channels_last only), then every backend vs the eager hook
#             and torch.compile of it (fp32, both layouts, the targets' workloads first), each
#             result checked against the float64 reference; target checks in the JSON (a run cut
#             short says INCOMPLETE and the targets it did not measure)
#   overhead  bench_ops.py --overhead: host cost per call at tiny shapes
#   cifar100  bench_recovery.py at CIFAR-100 shapes, with a torch.compile(reduce-overhead) row
#   imagenet  bench_recovery.py at ImageNet shapes, the three teachers (ResNet-18 first: the one a run
#             cut short keeps), 8 iterations, profiled
#   rded      bench_rded.py: RDED's scoring and decoding at the ImageNet-1k ipc 10 recipe, projected
#             to the 1000 classes (issue 22's "in minutes on one GPU"), then its scoring in bf16, and in
#             bf16 + channels_last (their projections with the fp32 run's decode rate); late,
#             so it runs on what is left
#   student   bench_student.py --profile: a ResNet-18 student's step at the ImageNet recipe, the host's
#             batch preparation against the device's step (and where each spends its time), projected
#             to 300 epochs of ImageNet-1k ipc 10; then the same in bf16 + channels_last, with the
#             batches augmented on the host and on the GPU
#   summary   what passed, what was measured, which targets were met (printed last); a step
#             fails when any of its runs did, and the summary names the JSON a step left missing
# `all` gives each step a time limit (STEP_LIMITS below) and skips what no longer fits the
# overall limit (BUDGET_S, default 540 s), so a slow step never costs the summary.
#
# Not in `all` (its budget is spent), each a command of its own, then `summary` again:
#   decode    bench_decode.py on the GPU, a preset sized for about a minute (not yet timed on a GPU):
#             images/s of decode + resize + crop to 224^2 per decoder (Pillow and its draft mode in
#             DataLoader workers, torchvision's decode_jpeg batched on the GPU where torchvision is
#             installed), alone and with a ResNet-18 forward:  bash bench/gpu_session.sh decode
#   rehearsal rehearse_imagenet.py --device cuda: `infer-fast run` of the ImageNet preset at ipc 1
#             on a generated tree of REHEARSAL_CLASSES classes (default 1000), every step on the GPU,
#             each step's time and peak memory; ended after REHEARSAL_LIMIT_S (default 540) s so one
#             10-minute command holds it and the summary:
#             bash bench/gpu_session.sh rehearsal; bash bench/gpu_session.sh summary
#
# Logs and JSON go to $OUT when the device tool sets it (they come back from there; commit
# the JSON under bench/results/), else to bench/results/gpu-session/. Without a GPU the same
# steps run on the CPU with the CPU presets: a dry run of the plumbing.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEST=${OUT:-$PWD/bench/results/gpu-session}
mkdir -p "$DEST"
BUDGET_S=${BUDGET_S:-540}
# (the build's limit is generous: a build cut short leaves nothing to test; the later steps get what is left)
# The limits are caps, not reservations: they add up to more than BUDGET_S, and `all` gives each
# step at most what is left of it, so the total stays within BUDGET_S whatever they are; a higher
# cap costs the last steps (rded, student) only what the step really takes. overhead: 45 s (was 25:
# its Triton kernels compile on their first call, from a cold cache, before 40 rounds of 3 ops).
declare -A STEP_LIMITS=([build]=240 [test]=150 [ops]=120 [overhead]=45 [cifar100]=70 [imagenet]=100 [rded]=120 [student]=100)
REHEARSAL_CLASSES=${REHEARSAL_CLASSES:-1000}
REHEARSAL_LIMIT_S=${REHEARSAL_LIMIT_S:-540}
START=$(date +%s)
GPU=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
# (every test file with GPU rows: tests/test_gpu_session_fixes.py checks that none is missing)
TEST_FILES=(test_bn_stat_loss.py test_bn_eval_stat.py test_ufc_compose.py test_reduction_paths.py test_backends.py test_host_path.py test_recovery_gpu.py test_ops_api.py
            test_bn_hooks.py test_chunked.py test_properties.py test_info_check.py test_api_surface.py test_gpu_session_fixes.py
            test_registered_op_checks.py test_ops_data_edges.py)

run() {  # run STEP COMMAND...: output to the terminal and to $DEST/<step>.log, status to $DEST/<step>.status
  local step=$1
  shift
  echo "== $step: $*"
  "$@" 2>&1 | tee "$DEST/$step.log"
  local status=${PIPESTATUS[0]}
  echo "$status" > "$DEST/$step.status"
  return "$status"
}

build_and_check() {
  # The image's default compiler may not be the one torch was built with: an extension built
  # by another one fails to load, so name the system gcc.
  env MAX_JOBS="$(nproc)" CXX=/usr/bin/g++ CC=/usr/bin/gcc \
    "$PY" -m pip install --no-build-isolation --no-deps -q . || return
  "$PY" -I -m infer_fast.cli info
  # torch's build (its MKL version: oneMKL < 2025.0 has the vector-math start-up race that
  # infer_fast/mkl_vml.py works around on the CPU side)
  "$PY" -I -c "import torch; print(torch.__config__.show())"
  # A GPU whose CUDA kernels were skipped at build, did not load or did not register fails
  # the step (one line saying why), instead of every CUDA test turning into a skip.
  "$PY" -I -m infer_fast.cli info --check
}

step_build() {
  run build build_and_check
}

# What the test step needs beyond pytest, pinned as the Makefile pins hypothesis:
# pytest-xdist for -n, hypothesis for test_properties.py.
TEST_NEEDS=(pytest-xdist==3.8.0 hypothesis==6.170.15)

has_module() { "$PY" -c "import $1" 2>/dev/null; }

test_needs() {  # installs what is missing; HAVE_XDIST / HAVE_HYPOTHESIS say what the tests got
  local missing=() need module
  for need in "${TEST_NEEDS[@]}"; do
    module=${need%%==*}
    module=${module/pytest-xdist/xdist}
    has_module "$module" || missing+=("$need")
  done
  : > "$DEST/test.notes"
  HAVE_XDIST=1 HAVE_HYPOTHESIS=1
  [ ${#missing[@]} -eq 0 ] && return
  echo "== test: installing ${missing[*]}"
  "$PY" -m pip install -q --retries 0 --timeout 5 "${missing[@]}" ||  # (the GPU machine may be offline: fail fast)
    echo "pip could not install ${missing[*]} (offline?)" >> "$DEST/test.notes"
  has_module xdist || HAVE_XDIST=0
  has_module hypothesis || HAVE_HYPOTHESIS=0
  [ "$GPU" = 1 ] && [ "$HAVE_XDIST" = 0 ] && echo "pytest-xdist missing: the tests ran in one process" >> "$DEST/test.notes"
  [ "$HAVE_HYPOTHESIS" = 0 ] && echo "hypothesis missing: test_properties.py was left out" >> "$DEST/test.notes"
}

step_test() {
  test_needs
  local select=(-k "not triton") files=("${@:-${TEST_FILES[@]}}")  # a CPU dry run: the interpreter would take minutes
  if [ "$GPU" = 1 ]; then  # the CPU rows ran in CI already
    select=(-k "cuda or triton or gpu")
    [ "$HAVE_XDIST" = 1 ] && select=(-n 8 "${select[@]}")
  fi
  if [ "$HAVE_HYPOTHESIS" = 0 ]; then
    local kept=() f
    for f in "${files[@]}"; do [ "$f" = test_properties.py ] || kept+=("$f"); done
    files=("${kept[@]}")
  fi
  (cd tests && run test "$PY" -m pytest -q -p no:cacheprovider "${select[@]}" "${files[@]}")
}

ops_runs() {  # ops_runs [args...]: the ops step's runs, each saving its JSON per workload; fails if one did
  local status=0
  if [ "$GPU" = 1 ]; then
    # bf16 first (one workload, its own JSON): the fp32 table compiles torch.compile(hook) per shape
    # from a cold Inductor cache and may not end within the step's limit, so a run after it might never run
    "$PY" bench/bench_ops.py --preset gpu-bf16 --dtype bfloat16 --layouts channels_last --out "$DEST/ops-bf16.json" ||
      status=$?
    "$PY" bench/bench_ops.py --channels-last --out "$DEST/ops.json" "$@" || status=$?
  else
    "$PY" bench/bench_ops.py --preset cpu-target --channels-last --out "$DEST/ops.json" "$@" || status=$?
  fi
  return "$status"
}

step_ops() {
  run ops ops_runs "$@"
}

step_overhead() {
  run overhead "$PY" bench/bench_ops.py --overhead --out "$DEST/ops-overhead.json" "$@"
}

step_recovery() {  # step_recovery cifar100|imagenet [args...]
  local preset=$1 bounded=()
  shift
  case "$GPU:$preset" in
    # the three ImageNet teachers users have, each profiled (where MobileNetV2's and
    # EfficientNet-B0's depthwise convolutions spend their time); CIFAR-100 with a
    # torch.compile(reduce-overhead) row to weigh against the toolkit's own CUDA graph. Each row
    # also runs bench_recovery's STEADY_FROM iterations (its steady-state timing): ImageNet's 8
    # iterations keep the step's time near that of the 10 it ran before
    1:imagenet) bounded=(--teachers resnet18-imagenet,mobilenetv2-imagenet,efficientnet-b0-imagenet --iterations 8
                         --ufcs 3 --reference-ufcs 1 --profile) ;;
    1:cifar100) bounded=(--compile "${COMPILE:-reduce-overhead}") ;;
    # (a CPU dry run: STEADY_FROM + 1 iterations, the fewest with a steady-state timing)
    0:cifar100) bounded=(--classes 4 --size 8 --iterations 5 --ufcs 2 --reference-ufcs 1) ;;
    0:imagenet) bounded=(--classes 4 --size 32 --iterations 5 --ufcs 2 --reference-ufcs 1 --teachers resnet18-imagenet) ;;
  esac
  run "$preset" "$PY" bench/bench_recovery.py --preset "$preset" "${bounded[@]}" --out "$DEST/recovery-$preset.json" "$@"
}

rded_runs() {  # rded_runs [args...]: the rded step's runs, each its own JSON; fails if one did
  local bounded=() status=0
  [ "$GPU" = 1 ] || bounded=(--size 64 --candidates 40 --files 8)  # a CPU dry run: the plumbing, in seconds
  # (the bf16 runs project with this run's decode rate: nothing to project with when it failed)
  "$PY" bench/bench_rded.py "${bounded[@]}" --out "$DEST/rded.json" "$@" || return
  # the scoring in bf16: the decoding does not depend on it, so no decoding of their own
  "$PY" bench/bench_rded.py "${bounded[@]}" --precision bf16 --decode-from "$DEST/rded.json" \
    --out "$DEST/rded-bf16.json" "$@" || status=$?
  "$PY" bench/bench_rded.py "${bounded[@]}" --precision bf16 --channels-last --decode-from "$DEST/rded.json" \
    --out "$DEST/rded-bf16-channels-last.json" "$@" || status=$?
  return "$status"
}

step_rded() {
  run rded rded_runs "$@"
}

student_runs() {  # student_runs [args...]: the student step's runs, each its own JSON; fails if one did
  local bounded=() status=0
  [ "$GPU" = 1 ] || bounded=(--model convnet-w8-d2 --size 32 --steps 2 --rounds 1)  # a CPU dry run: seconds
  "$PY" bench/bench_student.py --profile "${bounded[@]}" --out "$DEST/student.json" "$@" || status=$?
  local fast=(--precision bf16 --channels-last "${bounded[@]}")
  "$PY" bench/bench_student.py "${fast[@]}" --out "$DEST/student-bf16.json" "$@" || status=$?
  "$PY" bench/bench_student.py "${fast[@]}" --augment-on device --out "$DEST/student-bf16-device.json" "$@" ||
    status=$?
  return "$status"
}

step_student() {
  run student student_runs "$@"
}

step_decode() {
  # GPU: 256 generated images, worker counts up to the 16 cores, 2 rounds, one forward batch size
  # (the default preset: 800 images, 6 worker counts, 5 rounds, 2 batch sizes, several minutes)
  local bounded=(--n 256 --workers 0,4,8,16 --rounds 2 --repeats 1 --batch-sizes 128 --forward-rounds 1)
  [ "$GPU" = 1 ] || bounded=(--quick)  # a CPU dry run: seconds
  run decode "$PY" bench/bench_decode.py "${bounded[@]}" --out "$DEST/decode.json" "$@"
}

step_rehearsal() {
  local device=cuda classes=$REHEARSAL_CLASSES
  [ "$GPU" = 1 ] || { device=cpu; classes=4; }  # a CPU dry run: the plumbing, in seconds
  run rehearsal timeout --kill-after=5 "$REHEARSAL_LIMIT_S" \
    "$PY" bench/rehearse_imagenet.py --device "$device" --classes "$classes" --json "$DEST/rehearsal.json" "$@"
  local status=$?
  [ "$status" = 124 ] && echo "timed out after ${REHEARSAL_LIMIT_S} s" > "$DEST/rehearsal.status"
  return "$status"
}

step_summary() {
  "$PY" bench/gpu_summary.py "$DEST" | tee "$DEST/summary.txt"
}

one_step() {  # one_step NAME [args...]
  local step=$1
  shift
  case "$step" in
    build) step_build ;;
    test) step_test "$@" ;;
    ops) step_ops "$@" ;;
    overhead) step_overhead "$@" ;;
    cifar100 | imagenet) step_recovery "$step" "$@" ;;
    rded) step_rded "$@" ;;
    student) step_student "$@" ;;
    decode) step_decode "$@" ;;
    rehearsal) step_rehearsal "$@" ;;
    summary) step_summary ;;
    *) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 2 ;;  # the usage: the comment above
  esac
}

if [ "${1:-}" = all ]; then
  for step in build test ops overhead cifar100 imagenet rded student; do
    limit=${STEP_LIMITS[$step]}
    left=$((BUDGET_S - ($(date +%s) - START) - 15))  # 15 s for the summary
    if [ "$left" -lt 20 ]; then
      echo "== $step: skipped (the session's ${BUDGET_S} s are spent)" | tee "$DEST/$step.log"
      echo skipped > "$DEST/$step.status"
      continue
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    # each step in its own shell under a time limit; `timeout` ends it with status 124
    began=$(date +%s)
    timeout --kill-after=5 "$limit" bash "$0" "$step"
    status=$?
    echo $(($(date +%s) - began)) > "$DEST/$step.seconds"  # (what the next session plans with)
    [ "$status" = 124 ] && echo "timed out after ${limit} s" > "$DEST/$step.status"
    [ "$step" = build ] && [ "$status" != 0 ] && [ "$GPU" = 1 ] && echo "== build failed: later steps use what is installed"
  done
  echo "all steps: $(($(date +%s) - START)) s"
  step_summary
else
  one_step "${1:-}" "${@:2}"
fi
