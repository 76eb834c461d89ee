"""Benchmark of the fused ops against the eager baselines, in one run.

For ``bn_stat_loss``: every backend usable on the device, the eager hook used by
SRe2L-style code (mean, permute+contiguous+var, two norms, autograd) and torch.compile of
the naive reference, timed for forward, backward and both over realistic workloads (all
BN inputs of a network at once). For a frozen teacher's BN layer with the loss on its input
(``eval_bn+loss``): the eager BatchNorm plus the eager hook, the BatchNorm plus our loss
(unfused) and ``bn_eval_with_stat_loss`` (one pass each way). For ``ufc_compose``: every backend against the eager
PyTorch composition. Prints tables and writes JSON (device, versions, commit, date).

    python bench/bench_ops.py                      # preset for the device present
    python bench/bench_ops.py --preset cpu-target  # the CPU acceptance shape only
    python bench/bench_ops.py --overhead --check   # host cost at tiny shapes vs the targets

``--overhead``: tiny shapes, where the host path is everything. fwd+bwd per call of each op
against its eager baseline, timed interleaved (every round times every implementation, in a
rotating order) so the ratios come from the same moments of the machine; the reported ratio
is the median of the per-round ratios. Targets (issue 10): ``bn_stat_loss`` at most 0.5x the
eager SRe2L hook, ``bn_eval_with_stat_loss`` at most 0.5x eager BatchNorm + hook, on the
device's fastest backend; ``--check`` exits 1 when one is missed.

Timing: triton.testing.do_bench on GPU (L2 flushed, CUDA events, median);
torch.utils.benchmark on CPU (median of blocked runs). Speed-ups are ratios to the eager
baseline measured in the same run: compare ratios, not raw times across machines.

Correctness: each implementation's first (untimed) call is checked against the float64
reference (the toolkit's naive ops on the same inputs, as the kernel tests check them): its
outputs' and one backward's gradients' largest error relative to the reference's largest
magnitude (``fwd_rel_err``, ``grad_rel_err``) must be within the tests' tolerance for the
dtype (``tolerance``); a row off it has ``correct: false``, never counts as a met target, and
the run exits 1 once its JSON is written. The JSON says ``complete: false`` until the run
ends, and lists the targets it planned but did not measure (``targets_not_measured``: a run
cut short by a time limit, or an implementation that could not run).
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from infer_fast.ops import (available_backends, bn_eval_with_stat_loss, bn_eval_with_stat_loss_naive, bn_stat_loss,
                            bn_stat_loss_naive, ufc_compose, ufc_compose_naive)
from infer_fast._io import save_json_atomic
from infer_fast.ops.backends import resolve
from infer_fast.ops.reference import tolerance

Shape = Tuple[int, ...]

# ResNet-18 BN inputs per image at 224^2: stem, layer1 (4), layer2..4 (4 + downsample each)
RESNET18_224 = [(64, 112, 112)] + [(64, 56, 56)] * 4 + [(128, 28, 28)] * 5 + [(256, 14, 14)] * 5 + [(512, 7, 7)] * 5
# ConvNet-128 depth 3 at 32^2 (BN after each conv, before pooling)
CONVNET_32 = [(128, 32, 32), (128, 16, 16), (128, 8, 8)]


def workload(name: str, batch: int, per_image: Sequence[Shape], groups: int = 1) -> Dict:
    return {"name": name, "shapes": [(batch,) + tuple(s) for s in per_image], "groups": groups}


PRESETS = {
    "cpu-target": [workload("acceptance (64,64,56,56)", 64, [(64, 56, 56)])],
    "cpu": [
        workload("acceptance (64,64,56,56)", 64, [(64, 56, 56)]),
        workload("ResNet-18 224^2 b8", 8, RESNET18_224),
        workload("ConvNet-128 32^2 C10 x G16", 160, CONVNET_32, groups=16),
    ],
    # the workloads of the targets first (ResNet-18 b100: x the eager hook; the single tensors of
    # 256 MB and more: bandwidth), so that a run cut short by the GPU session's time limit has
    # measured them; then the rest of the 2026-11-30 H200 table and whole networks
    "gpu": [
        workload("ResNet-18 224^2 b100", 100, RESNET18_224),
        workload("(100,64,112,112)", 100, [(64, 112, 112)]),
        workload("(800,128,32,32) G8", 800, [(128, 32, 32)], groups=8),
        workload("acceptance (64,64,56,56)", 64, [(64, 56, 56)]),
        workload("(1000,512,7,7)", 1000, [(512, 7, 7)]),
        workload("ConvNet-128 32^2 C10 x G16", 160, CONVNET_32, groups=16),
        workload("ConvNet-128 32^2 C100 x G8", 800, CONVNET_32, groups=8),
    ],
    "gpu-bf16": [workload("(1000,64,56,56)", 1000, [(64, 56, 56)])],  # with --dtype bfloat16
}
# (name, K, C, ch, H, W, G)
COMPOSE_PRESETS = {
    "cpu": [("CIFAR-10 G16", 8, 10, 3, 32, 32, 16), ("CIFAR-100 G8", 8, 100, 3, 32, 32, 8)],
    "gpu": [
        ("CIFAR-10 G64", 8, 10, 3, 32, 32, 64),
        ("CIFAR-100 G32", 8, 100, 3, 32, 32, 32),
        ("ImageNet G1", 2, 1000, 3, 224, 224, 1),
    ],
}
COMPOSE_PRESETS["cpu-target"] = COMPOSE_PRESETS["cpu"][:1]
COMPOSE_PRESETS["gpu-bf16"] = []


def eager_hook_loss(x, running_mean, running_var, groups):
    """The SRe2L-style hook, looped over groups (the reference release has no grouping)."""
    total = []
    for xg in x.chunk(groups):
        c = xg.shape[1]
        mean = xg.mean([0, 2, 3])
        var = xg.permute(1, 0, 2, 3).contiguous().view(c, -1).var(1, unbiased=False)
        total.append(torch.norm(running_var - var, 2) + torch.norm(running_mean - mean, 2))
    return torch.stack(total)


# ----------------------------------------------------------------------------------------
# --overhead: host cost per call at tiny shapes
# ----------------------------------------------------------------------------------------
OVERHEAD_TARGETS = {"bn_stat_loss": 0.5, "eval_bn+loss": 0.5}  # max ratio to the eager baseline


def overhead_cases(device: torch.device, backends: Sequence[str]) -> Dict[str, Tuple[str, Dict[str, Callable]]]:
    """op -> (baseline name, {impl: fwd+bwd of one call}) on tiny tensors."""
    gen = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(shape, generator=gen).to(device)  # noqa: E731
    x = rand(4, 8, 2, 2).requires_grad_()
    rm, rv, weight, bias = rand(8) * 0.1, rand(8).abs() + 0.5, rand(8).abs() + 0.5, rand(8)
    grad_y = torch.ones_like(x)
    fused_upstream = [grad_y, torch.ones(1, device=device)]  # (made once: the timed call is the op's, not an allocation's)
    grad = torch.autograd.grad

    def eager_bn_hook():
        y = torch.nn.functional.batch_norm(x, rm, rv, weight, bias, training=False)
        return grad([y, eager_hook_loss(x, rm, rv, 1).sum()], x, [grad_y, None])

    natural = rand(2, 3, 2, 4, 4)
    ufc = torch.zeros(3, 2, 4, 4, device=device, requires_grad=True)
    index = torch.tensor([0, 1, 1], device=device)
    shifts = torch.tensor([[1, 2], [3, 0], [0, 1]], device=device)
    flips = torch.tensor([True, False, True], device=device)
    compose_grad = torch.ones(3, 3, 2, 4, 4, device=device)
    cases = {
        "bn_stat_loss": ("eager hook", {"eager hook": lambda: grad(eager_hook_loss(x, rm, rv, 1).sum(), x)}),
        "eval_bn+loss": ("eager BN + hook", {"eager BN + hook": eager_bn_hook}),
        "ufc_compose": ("eager", {"eager": lambda: grad(ufc_compose_naive(natural, ufc, index, shifts, flips), ufc,
                                                        compose_grad)}),
    }
    for name in backends:
        cases["bn_stat_loss"][1][name] = lambda name=name: grad(bn_stat_loss(x, rm, rv, 1, backend=name).sum(), x)
        cases["eval_bn+loss"][1][f"fused {name}"] = lambda name=name: grad(
            list(bn_eval_with_stat_loss(x, rm, rv, weight, bias, backend=name)), x, fused_upstream)
        cases["ufc_compose"][1][name] = lambda name=name: grad(
            ufc_compose(natural, ufc, index, shifts, flips, backend=name), ufc, compose_grad)
    return cases


def interleaved_host_times(fns: Dict[str, Callable], baseline: str, device: torch.device, rounds: int,
                           block_seconds: float = 0.01) -> Dict[str, Dict[str, float]]:
    """Per implementation: median microseconds per call and the median over rounds of its
    ratio to ``baseline`` in the same round. Calls are not synchronized one by one (host
    time); each block ends with a device synchronization."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    calls = {}
    for name, fn in fns.items():  # warm up, then size each block to ~block_seconds
        for _ in range(20):
            fn()
        sync()
        start = time.perf_counter()
        for _ in range(20):
            fn()
        sync()
        calls[name] = max(1, int(block_seconds / ((time.perf_counter() - start) / 20)))
    names = list(fns)
    samples: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            for _ in range(calls[name]):
                fns[name]()
            sync()
            samples[name].append((time.perf_counter() - start) / calls[name] * 1e6)
    return {name: {"host_us": statistics.median(times),
                   "ratio": statistics.median(t / b for t, b in zip(times, samples[baseline]))}
            for name, times in samples.items()}


def run_overhead(device: torch.device, backends: Sequence[str], rounds: int,
                 save: Callable[[List[Dict], List[Dict]], None]) -> Tuple[List[Dict], List[Dict]]:
    """(rows, target checks) of the host-cost benchmark, ``save(rows, checks)`` after each op (a
    run cut short by a time limit keeps the ops done)."""
    rows: List[Dict] = []
    checks: List[Dict] = []
    fastest = resolve("auto", device)  # the backend "auto" picks: the one the targets are about
    for op, (baseline, fns) in overhead_cases(device, backends).items():
        print(f"{op}: {len(fns)} implementations x {rounds} rounds ...", flush=True)
        # (the gradients of one call of each, against the eager baseline's: every case is fp32)
        expected = fns[baseline]()
        correctness = {impl: {"grad_rel_err": max_relative_error(fn(), expected),
                              "tolerance": result_tolerance(torch.float32)} for impl, fn in fns.items()}
        for impl, result in interleaved_host_times(fns, baseline, device, rounds).items():
            error = correctness[impl]
            rows.append({"op": op, "impl": impl, "baseline": baseline, "fwd_bwd_host_us": result["host_us"],
                         "ratio_to_baseline": result["ratio"], **error,
                         "correct": within(error["grad_rel_err"], error["tolerance"])})
        if op in OVERHEAD_TARGETS and fastest in backends:
            impl = fastest if op == "bn_stat_loss" else f"fused {fastest}"
            row = next(r for r in rows if r["op"] == op and r["impl"] == impl)
            ratio = row["ratio_to_baseline"]
            checks.append({"op": op, "impl": impl, "baseline": baseline, "ratio": ratio, "correct": row["correct"],
                           "target_max_ratio": OVERHEAD_TARGETS[op],
                           "met": row["correct"] and ratio <= OVERHEAD_TARGETS[op]})
        save(rows, checks)
    print(f"\nhost time per fwd+bwd call ({device.type}, tiny shapes; ratio = median of per-round ratios)")
    print(f"  {'op':<14} {'impl':<18} {'us':>9} {'x baseline':>11}")
    for r in rows:
        print(f"  {r['op']:<14} {r['impl']:<18} {r['fwd_bwd_host_us']:9.1f} {r['ratio_to_baseline']:11.2f}"
              f"{'' if r['correct'] else '  WRONG RESULT'}")
    for c in checks:
        print(f"target {c['op']}: {c['impl']} at {c['ratio']:.2f}x {c['baseline']} "
              f"(<= {c['target_max_ratio']}x): {target_outcome(c)}")
    return rows, checks


def make_timer(device: torch.device) -> Callable[[Callable], float]:
    """fn -> median milliseconds, the right tool for the device."""
    if device.type == "cuda":
        from triton.testing import do_bench

        # (do_bench's default is the mean, which one slow outlier moves)
        return lambda fn: float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    from torch.utils.benchmark import Timer

    return lambda fn: Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=1.0).median * 1e3


def copy_bandwidth_gbps(device: torch.device, timer) -> float:
    """Measured device copy bandwidth (bytes read + written), the roofline reference."""
    src = torch.empty(256 * 2**20 // 4 if device.type == "cuda" else 64 * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / ms / 1e6


def result_tolerance(dtype: torch.dtype) -> float:
    """The largest error a result in ``dtype`` may have against the float64 reference, relative
    to the reference's largest magnitude: the kernel tests' (rtol, atol) for the dtype
    (infer_fast.ops.reference.tolerance), summed, the bound their check |got - want| <= atol * max|want| +
    rtol * |want| implies."""
    rtol, atol = tolerance(dtype)
    return rtol + atol


def max_relative_error(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> Optional[float]:
    """The largest of max|g - w| / max|w| over the pairs of ``got`` and ``want``; None (never
    within a tolerance) where a result is not finite, missing or of another shape."""
    if len(got) != len(want):
        return None
    errors = []
    for g, w in zip(got, want):
        if g is None or g.shape != w.shape:
            return None
        scale = w.abs().max().item() or 1.0  # (an all-zero reference: the absolute error)
        errors.append((g.detach().double() - w.double()).abs().max().item() / scale if g.numel() else 0.0)
    worst = max(errors, default=0.0)
    return worst if math.isfinite(worst) else None


def within(error: Optional[float], tolerance: float) -> bool:
    return error is not None and error <= tolerance


def as_tensors(outputs) -> List[torch.Tensor]:
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def time_passes(name: str, timer, forward: Callable, backward: Callable, reference, dtype) -> Optional[Dict]:
    """{fwd_ms, bwd_ms, fwd_bwd_ms} of ``forward()`` and ``backward(outputs)``, and the errors of
    the first call's outputs and gradients against ``reference`` ((outputs, gradients) in
    float64) with the tolerance of ``dtype`` and whether both are within it (``correct``);
    None when the implementation cannot run here (e.g. torch.compile without a compiler)."""
    try:
        outputs = forward()
        fwd_err = max_relative_error(as_tensors(outputs), reference[0])
        grad_err = max_relative_error(backward(outputs), reference[1])
        times = {"fwd_ms": timer(forward), "bwd_ms": timer(lambda: backward(outputs)),
                 "fwd_bwd_ms": timer(lambda: backward(forward()))}
    except Exception as exc:
        print(f"  {name}: skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
        return None
    tolerance = result_tolerance(dtype)
    correct = within(fwd_err, tolerance) and within(grad_err, tolerance)
    if not correct:
        print(f"  {name}: WRONG RESULT (error {fwd_err} forward, {grad_err} gradient; tolerance {tolerance:.2g})")
    return {**times, "fwd_rel_err": fwd_err, "grad_rel_err": grad_err, "tolerance": tolerance, "correct": correct}


def bn_inputs(work: Dict, dtype, device, channels_last: bool, gen) -> List[torch.Tensor]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return [torch.randn(shape, generator=gen).to(device=device, dtype=dtype).contiguous(memory_format=fmt)
            for shape in work["shapes"]]


def workload_bytes(work: Dict, dtype: torch.dtype) -> int:
    """Bytes of the workload's BN inputs in ``dtype``."""
    return sum(math.prod(shape) for shape in work["shapes"]) * torch.empty((), dtype=dtype).element_size()


def layout_name(channels_last: bool) -> str:
    return "channels_last" if channels_last else "nchw"


def bn_row(work: Dict, op: str, impl: str, dtype, channels_last: bool, passes: Dict, traffic) -> Dict:
    """A result row of ``passes`` (time_passes); ``traffic``: (forward, backward) bytes moved in
    units of x's size."""
    element_bytes = workload_bytes(work, dtype)
    fwd, bwd, both = passes["fwd_ms"], passes["bwd_ms"], passes["fwd_bwd_ms"]
    return {
        "workload": work["name"], "op": op, "impl": impl, "dtype": str(dtype).replace("torch.", ""),
        "layout": layout_name(channels_last), "groups": work["groups"],
        "shapes": work["shapes"], "bytes_x": element_bytes, **passes,
        "fwd_GBps": traffic[0] * element_bytes / fwd / 1e6, "bwd_GBps": traffic[1] * element_bytes / bwd / 1e6,
        "fwd_bwd_GBps": sum(traffic) * element_bytes / both / 1e6,
    }


def bench_bn(work: Dict, dtype, device, impls: Dict[str, Callable], timer, channels_last: bool) -> List[Dict]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    xs = [x.requires_grad_() for x in bn_inputs(work, dtype, device, channels_last, gen)]
    stats = [(0.1 * torch.randn(x.shape[1], generator=gen).to(device), (torch.rand(x.shape[1], generator=gen) + 0.5).to(device))
             for x in xs]
    reference = float64_reference(
        lambda xs64: [sum(bn_stat_loss_naive(x, rm.double(), rv.double(), work["groups"]).sum()
                          for x, (rm, rv) in zip(xs64, stats))], xs)
    rows = []
    for name, fn in impls.items():
        passes = time_passes(
            name, timer,
            forward=lambda: sum(fn(x, rm, rv, work["groups"]).sum() for x, (rm, rv) in zip(xs, stats)),
            backward=lambda loss: torch.autograd.grad(loss, xs, retain_graph=True),
            reference=reference, dtype=dtype,
        )
        if passes is not None:  # bytes: forward reads x; backward reads x and writes dx
            rows.append(bn_row(work, "bn_stat_loss", name, dtype, channels_last, passes, (1, 2)))
    return rows


def float64_reference(forward: Callable[[List[torch.Tensor]], List[torch.Tensor]], inputs: List[torch.Tensor],
                      upstream: Optional[List[torch.Tensor]] = None):
    """(outputs, gradients w.r.t. ``inputs``) of ``forward`` on float64 copies of ``inputs``,
    ``upstream`` the outputs' gradients (float64 too): what each implementation is checked against."""
    inputs64 = [x.detach().double().requires_grad_() for x in inputs]
    outputs = forward(inputs64)
    upstream = None if upstream is None else [g.double() for g in upstream]
    grads = torch.autograd.grad(outputs, inputs64, upstream)
    return [y.detach() for y in outputs], list(grads)


def bench_eval_bn(work: Dict, dtype, device, impls: Dict[str, Callable], timer, channels_last: bool) -> List[Dict]:
    """Eval-mode BN + the statistics loss of its input, every layer of the workload; the
    backward gets a fixed dy for every output (as the rest of the network would give)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    xs = [x.requires_grad_() for x in bn_inputs(work, dtype, device, channels_last, gen)]
    params = [tuple(t.to(device) for t in (0.1 * torch.randn(x.shape[1], generator=gen), torch.rand(x.shape[1], generator=gen) + 0.5,
                                           torch.rand(x.shape[1], generator=gen) + 0.5, 0.1 * torch.randn(x.shape[1], generator=gen)))
              for x in xs]
    grads = bn_inputs(work, dtype, device, channels_last, gen) + [torch.ones((), device=device)]

    def layers(fn, xs, params):
        outs = [fn(x, *p, work["groups"]) for x, p in zip(xs, params)]
        return [y for y, _ in outs] + [sum(loss.sum() for _, loss in outs)]

    params64 = [tuple(t.double() for t in p) for p in params]
    reference = float64_reference(
        lambda xs64: layers(lambda x, rm, rv, w, b, g: bn_eval_with_stat_loss_naive(x, rm, rv, w, b, groups=g),
                            xs64, params64), xs, grads)
    rows = []
    for name, fn in impls.items():
        passes = time_passes(name, timer, lambda: layers(fn, xs, params),
                             backward=lambda outputs: torch.autograd.grad(outputs, xs, grads, retain_graph=True),
                             reference=reference, dtype=dtype)
        if passes is not None:  # bytes (fused): forward reads x, writes y; backward reads x and dy, writes dx
            rows.append(bn_row(work, "eval_bn+loss", name, dtype, channels_last, passes, (2, 3)))
    return rows


def bench_compose(case, dtype, device, impls: Dict[str, Callable], timer) -> List[Dict]:
    name, k, c, ch, h, w, g = case
    gen = torch.Generator(device="cpu").manual_seed(0)
    natural = torch.randn(k, c, ch, h, w, generator=gen).to(device=device, dtype=dtype)
    ufc = torch.zeros(g, ch, h, w, device=device, dtype=dtype, requires_grad=True)
    index = torch.randint(0, k, (g,), generator=gen).to(device)
    shifts = torch.randint(0, 4, (g, 2), generator=gen).to(device)
    flips = (torch.rand(g, generator=gen) < 0.5).to(device)
    lo = torch.full((ch,), -2.0, device=device)
    hi = torch.full((ch,), 2.0, device=device)
    out_bytes = g * c * ch * h * w * natural.element_size()
    grad = torch.ones((g, c, ch, h, w), device=device, dtype=dtype)
    reference = float64_reference(
        lambda ufc64: [ufc_compose_naive(natural.double(), ufc64[0], index, shifts, flips, lo.double(), hi.double())],
        [ufc], [grad])
    rows = []
    for impl, fn in impls.items():
        passes = time_passes(impl, timer, lambda: fn(natural, ufc, index, shifts, flips, lo, hi),
                             backward=lambda out: torch.autograd.grad(out, ufc, grad, retain_graph=True),
                             reference=reference, dtype=dtype)
        if passes is None:
            continue
        fwd, bwd, both = passes["fwd_ms"], passes["bwd_ms"], passes["fwd_bwd_ms"]
        rows.append(
            {
                "workload": name, "op": "ufc_compose", "impl": impl, "dtype": str(dtype).replace("torch.", ""),
                "shape": [g, c, ch, h, w], "bytes_out": out_bytes, **passes,
                # bytes model: forward reads P (once per group) and writes X; backward reads dX (+P for the mask)
                "fwd_GBps": 2 * out_bytes / fwd / 1e6, "bwd_GBps": 2 * out_bytes / bwd / 1e6,
                "fwd_bwd_GBps": 4 * out_bytes / both / 1e6,
            }
        )
    return rows


def environment(device: torch.device, threads: int) -> Dict:
    def version(mod):
        try:
            return __import__(mod).__version__
        except Exception:
            return None

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                                    cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit, "dirty_worktree": dirty,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU: {platform.processor() or platform.machine()}",
        "cpu_threads": threads, "python": platform.python_version(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "triton": version("triton"), "infer_fast": version("infer_fast"),
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
    }


def print_table(rows: List[Dict], baseline: str) -> None:
    by_workload: Dict[str, List[Dict]] = {}
    for row in rows:
        by_workload.setdefault(f"{row['op']} | {row['workload']} | {row['dtype']} {row.get('layout', '')}", []).append(row)
    for title, group in by_workload.items():
        base = next((r for r in group if r["impl"] == baseline), None)
        print(f"\n{title}")
        print(f"  {'impl':<16} {'fwd ms':>9} {'bwd ms':>9} {'both ms':>9} {'GB/s both':>10} {'x fwd':>6} {'x bwd':>6} {'x both':>7}")
        for r in group:
            ratio = lambda key: base[key] / r[key] if base else float("nan")  # noqa: E731
            gbps = r.get("fwd_bwd_GBps", float("nan"))
            print(f"  {r['impl']:<16} {r['fwd_ms']:9.3f} {r['bwd_ms']:9.3f} {r['fwd_bwd_ms']:9.3f} {gbps:10.1f} "
                  f"{ratio('fwd_ms'):6.2f} {ratio('bwd_ms'):6.2f} {ratio('fwd_bwd_ms'):7.2f}"
                  f"{'' if r['correct'] else '  WRONG RESULT'}")
        for r in group:
            r["speedup_vs_" + baseline.replace(" ", "_")] = {k: base[k] / r[k] for k in ("fwd_ms", "bwd_ms", "fwd_bwd_ms")} if base else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="default: 'gpu' on CUDA, 'cpu' otherwise")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2, the CI machines' cores)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--channels-last", action="store_true", help="also time channels_last inputs")
    parser.add_argument("--layouts", help=f"the input layouts timed, comma-separated, of {', '.join(LAYOUTS)} "
                                          "(default nchw; with --channels-last both)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/ops-<device>-<date>.json)")
    parser.add_argument("--overhead", action="store_true", help="host cost per call at tiny shapes (see above)")
    parser.add_argument("--rounds", type=int, default=40, help="--overhead: interleaved rounds")
    parser.add_argument("--check", action="store_true", help="--overhead: exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.layouts is None:
        layouts = [False, True] if args.channels_last else [False]
    elif args.channels_last:
        parser.error("--channels-last and --layouts: give one")
    else:
        names = args.layouts.split(",")
        if not names or set(names) - set(LAYOUTS):
            parser.error(f"--layouts takes comma-separated names of {', '.join(LAYOUTS)}, got {args.layouts!r}")
        layouts = [LAYOUTS[name] for name in dict.fromkeys(names)]

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    preset = args.preset or ("gpu" if device.type == "cuda" else "cpu")
    timer = make_timer(device)
    backends = [b for b in available_backends(device) if not (b == "triton" and device.type == "cpu")]

    if args.overhead:
        env = environment(device, args.threads)
        out = args.out or os.path.join(RESULTS, f"ops-overhead-{device_tag(device)}-{datetime.date.today()}.json")

        def save_overhead(rows: List[Dict], checks: List[Dict], quiet: bool = True) -> None:
            write_json(out, {"environment": env, "mode": "overhead", "results": rows, "targets": checks}, quiet)

        rows, checks = run_overhead(device, backends, args.rounds, save_overhead)
        save_overhead(rows, checks, quiet=False)
        wrong = [f"{r['op']} {r['impl']}" for r in rows if not r["correct"]]
        if wrong:
            print(f"WRONG RESULT against the eager baseline: {', '.join(wrong)}")
        return 1 if wrong or (args.check and not all(c["met"] for c in checks)) else 0

    bn_impls: Dict[str, Callable] = {"eager hook": eager_hook_loss}
    if not args.no_compile:
        # one compiled graph per input shape: lift dynamo's default limit of 8 so no
        # workload silently falls back to eager
        for knob in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, 256)
        # the timer runs one backward many times (retain_graph): no donated buffers
        torch._functorch.config.donated_buffer = False
        compiled = torch.compile(eager_hook_loss, dynamic=False)
        bn_impls["compile(hook)"] = lambda x, rm, rv, g: compiled(x, rm, rv, g)
    for name in backends:
        bn_impls[name] = lambda x, rm, rv, g, name=name: bn_stat_loss(x, rm, rv, g, backend=name)
    eval_bn = lambda x, rm, rv, w, b: torch.nn.functional.batch_norm(x, rm, rv, w, b, training=False)  # noqa: E731
    eval_impls: Dict[str, Callable] = {
        "eager BN + hook": lambda x, rm, rv, w, b, g: (eval_bn(x, rm, rv, w, b), eager_hook_loss(x, rm, rv, g)),
    }
    for name in backends:
        eval_impls[f"BN + {name}"] = lambda x, rm, rv, w, b, g, name=name: (
            eval_bn(x, rm, rv, w, b), bn_stat_loss(x, rm, rv, g, backend=name))
        eval_impls[f"fused {name}"] = lambda x, rm, rv, w, b, g, name=name: bn_eval_with_stat_loss(
            x, rm, rv, w, b, groups=g, backend=name)
    compose_impls: Dict[str, Callable] = {"eager": ufc_compose_naive}
    for name in backends:
        compose_impls[name] = lambda *a, name=name: ufc_compose(*a, backend=name)

    env = environment(device, args.threads)
    env["copy_bandwidth_GBps"] = copy_bandwidth_gbps(device, timer)
    print(f"{env['device']} | torch {env['torch']} | threads {args.threads} | copy bandwidth {env['copy_bandwidth_GBps']:.1f} GB/s")
    out = args.out or os.path.join(RESULTS, f"ops-{device_tag(device)}-{preset}-{datetime.date.today()}.json")
    rows: List[Dict] = []
    # (the targets are of the GPU: issue 10)
    planned = planned_targets(PRESETS[preset], layouts, dtype, bn_impls) if device.type == "cuda" else []

    def save(complete=False) -> None:  # after every workload: a run cut short still leaves its rows, marked so
        bn_rows = [r for r in rows if r["op"] == "bn_stat_loss"]
        checks = kernel_targets(bn_rows, env["copy_bandwidth_GBps"], resolve("auto", device), quiet=not complete) \
            if device.type == "cuda" else []
        not_measured = targets_not_measured(planned, checks)
        if complete:
            for t in not_measured:
                print(f"target [{t['impl']}] {t['case']}: {t['what']}: NOT MEASURED (its row did not run)")
        write_json(out, {"environment": env, "complete": complete, "layouts": [layout_name(cl) for cl in layouts],
                         "results": rows, "targets": checks, "targets_not_measured": not_measured}, not complete)

    save()  # (a run cut short before its first workload ends still lists every target as not measured)
    sections = [("bn_stat_loss", "eager hook", lambda work, cl: bench_bn(work, dtype, device, bn_impls, timer, cl)),
                ("eval_bn+loss", "eager BN + hook",
                 lambda work, cl: bench_eval_bn(work, dtype, device, eval_impls, timer, cl))]
    for op, baseline, bench in sections:
        for work in PRESETS[preset]:
            for channels_last in layouts:
                print(f"{op}: {work['name']}{' channels_last' if channels_last else ''} ...", flush=True)
                rows += bench(work, channels_last)
                save()
        print_table([r for r in rows if r["op"] == op], baseline)
    for case in COMPOSE_PRESETS[preset]:
        print(f"ufc_compose: {case[0]} ...", flush=True)
        rows += bench_compose(case, dtype, device, compose_impls, timer)
        save()
    print_table([r for r in rows if r["op"] == "ufc_compose"], "eager")
    save(complete=True)
    wrong = [f"{r['op']} {r['impl']} ({r['workload']} {r.get('layout', '')})".replace(" )", ")")
             for r in rows if not r["correct"]]
    if wrong:
        print(f"WRONG RESULT against the float64 reference: {'; '.join(wrong)}")
    return 1 if wrong else 0


RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
LAYOUTS = {"nchw": False, "channels_last": True}  # --layouts: name -> channels_last


def device_tag(device: torch.device) -> str:
    return "gpu-" + torch.cuda.get_device_name(device).replace(" ", "_") if device.type == "cuda" else "cpu"


def save_results(benchmark: str, prefix: str, device: torch.device, args: argparse.Namespace, results: List[Dict],
                 projection: Dict, **sections) -> None:
    """The JSON of a benchmark that projects a whole run: its settings (the arguments but
    --out), ``sections``, its rows and the projection, at --out or at
    bench/results/<prefix>-<device>-<date>.json."""
    payload = {
        "benchmark": benchmark, "date": datetime.date.today().isoformat(),
        "environment": environment(device, torch.get_num_threads()),
        "settings": {k: v for k, v in vars(args).items() if k != "out"}, **sections,
        "results": results, "projection": projection,
    }
    write_json(args.out or os.path.join(RESULTS, f"{prefix}-{device_tag(device)}-{payload['date']}.json"), payload)

def profile_ops(fn: Callable[[], None], device: torch.device, top: int = 12) -> Dict:
    """The operators that take the time of ``fn()``: device time on CUDA, host time on CPU."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize(device)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    total = sum(getattr(e, key) for e in events) or 1.0
    ranked = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]
    return {"by": "device time" if cuda else "host time", "total_ms": total / 1e3,
            "top": [{"name": e.key, "ms": getattr(e, key) / 1e3, "share": getattr(e, key) / total, "calls": e.count}
                    for e in ranked]}

def unless_given(value, default):
    """An option's ``value``, or ``default`` where it was not given (None): a given 0 stays 0,
    for the range check to refuse, where ``value or default`` would replace it silently."""
    return default if value is None else value

def write_json(path: str, payload: Dict, quiet: bool = False) -> None:
    """``payload`` at ``path``, replaced whole (the toolkit's atomic JSON writer): a run killed
    while writing (a time limit) leaves the previous version, never half a file."""
    save_json_atomic(payload, path)
    if not quiet:
        print(f"\nwrote {path}")


# GPU targets of bn_stat_loss fwd+bwd (issue 10), per backend that ran.
BANDWIDTH_TARGET = 0.6  # of the measured copy bandwidth, for tensors of BIG_BYTES and more
BIG_BYTES = 256 * 2**20
RESNET18_TARGET = 3.0  # x the eager hook over ResNet-18's 20 BN inputs at batch 100
RESNET18_WORKLOAD = "ResNet-18 224^2 b100"
FASTER_THAN_COMPILE, BANDWIDTH_SHARE, X_EAGER = ("faster than torch.compile(hook)", "fwd+bwd share of copy bandwidth",
                                                 "x the eager hook")
NOT_TARGETED = {"eager hook", "compile(hook)", "torch"}  # the baselines and the reference backend


def case_targets(workload: str, shapes: Sequence[Shape], bytes_x: int, impls) -> Dict[str, float]:
    """what -> target of each check of a targeted implementation's row of a bn_stat_loss case,
    ``impls`` the implementations timed beside it."""
    targets = {}
    if "compile(hook)" in impls:
        targets[FASTER_THAN_COMPILE] = 1.0
    if len(shapes) == 1 and bytes_x >= BIG_BYTES:  # one tensor of 256 MB or more
        targets[BANDWIDTH_SHARE] = BANDWIDTH_TARGET
    if workload.startswith(RESNET18_WORKLOAD) and "eager hook" in impls:
        targets[X_EAGER] = RESNET18_TARGET
    return targets


def planned_targets(workloads: Sequence[Dict], layouts: Sequence[bool], dtype: torch.dtype, impls) -> List[Dict]:
    """The target checks a run of ``workloads`` in ``layouts`` with the bn_stat_loss ``impls``
    makes when every row runs."""
    return [{"impl": impl, "case": f"{work['name']} {layout_name(cl)}", "what": what, "target": target}
            for impl in sorted(set(impls) - NOT_TARGETED) for work in workloads for cl in layouts
            for what, target in case_targets(work["name"], work["shapes"], workload_bytes(work, dtype), impls).items()]


def targets_not_measured(planned: List[Dict], checks: List[Dict]) -> List[Dict]:
    """The ``planned`` targets without a check (their rows did not run: cut short, or skipped)."""
    measured = {(c["impl"], c["case"], c["what"]) for c in checks}
    return [t for t in planned if (t["impl"], t["case"], t["what"]) not in measured]


def kernel_targets(rows: List[Dict], copy_gbps: float, auto: str, quiet: bool = False) -> List[Dict]:
    """Target checks from the bn_stat_loss rows of one run, for the JSON (and printed). A
    check is met only where the rows it compares are correct (a fast wrong result never is)."""
    checks = []
    bn = [r for r in rows if r["op"] == "bn_stat_loss"]
    cases = sorted({(r["workload"], r["layout"]) for r in bn})
    for impl in sorted({r["impl"] for r in bn} - NOT_TARGETED):
        for workload, layout in cases:
            row = {r["impl"]: r for r in bn if (r["workload"], r["layout"]) == (workload, layout)}
            if impl not in row:
                continue
            mine = row[impl]
            # what -> (value, the other row it compares with)
            measures = {FASTER_THAN_COMPILE: lambda: (row["compile(hook)"]["fwd_bwd_ms"] / mine["fwd_bwd_ms"],
                                                      row["compile(hook)"]),
                        BANDWIDTH_SHARE: lambda: (mine["fwd_bwd_GBps"] / copy_gbps, None),
                        X_EAGER: lambda: (row["eager hook"]["fwd_bwd_ms"] / mine["fwd_bwd_ms"], row["eager hook"])}
            for what, target in case_targets(workload, mine["shapes"], mine["bytes_x"], row).items():
                value, other = measures[what]()
                correct = mine["correct"] and (other is None or other["correct"])
                checks.append({"impl": impl, "case": f"{workload} {layout}", "what": what, "value": value,
                               "target": target, "correct": correct, "met": correct and value >= target,
                               "auto": impl == auto})
    if not quiet:
        for c in checks:
            print(f"target [{c['impl']}{' (auto)' if c['auto'] else ''}] {c['case']}: {c['what']} "
                  f"{c['value']:.2f} (>= {c['target']}): {target_outcome(c)}")
    return checks


def target_outcome(check: Dict) -> str:
    """met, MISSED, or FAILED where a row it compares has a wrong result."""
    return "met" if check["met"] else "MISSED" if check.get("correct", True) else "FAILED (wrong result)"


if __name__ == "__main__":
    sys.exit(main())
