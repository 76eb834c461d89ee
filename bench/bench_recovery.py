"""Benchmark of the recovery step (INFER_METHOD.md §3): the reference release's loop against
the toolkit's ``recover_ufcs``, in one run on the same device.

    python bench/bench_recovery.py --preset cifar100                  # C=100, 32^2, ResNet-18
    python bench/bench_recovery.py --preset imagenet                  # C=1000, 224^2, 3 teachers
    python bench/bench_recovery.py --preset imagenet --classes 10 --size 64 --iterations 2   # reduced (CPU)

Rows, per teacher:
  reference   a re-creation of the reference release's loop: fp32, eager, one UFC at a time
              (fresh zero u and fresh Adam per UFC), SRe2L-style forward hooks per BN layer
              (mean, permute+contiguous+var, two norms), cosine lr, CE + r_bn * R_bn.
  toolkit     recover_ufcs: G UFCs per teacher pass (per-group BN statistics), fused kernels.
  toolkit fused BN
              the same with RecoveryConfig(fused_bn=True): eval BN + statistics loss fused.
  toolkit fused BN + channels_last
              fused BN in channels_last, fp32: what the layout alone gives (on the CPU).
  toolkit bf16+channels_last
              the same with precision="bf16", channels_last=True, fused_bn=True.
  toolkit fused BN + compile (with --compile MODE)
              fused BN with torch.compile of the teacher pass; its steady state (the first
              iteration of each batch, which compiles, is left out).
Both loops use the same hyperparameters and augmentation (RecoveryConfig of the preset): roll
by randint(0, 4) for CIFAR; RandomResizedCrop + flip + roll by up to 32 for ImageNet
(--augmentation roll: the roll only, in both).

Timing: wall clock (CUDA synchronized) after a one-iteration warm-up. Each row runs T
iterations per UFC and S = STEADY_FROM (the CUDA graph's warm-up iterations + 1), and reports
the steady state: ms per UFC iteration = (T(T) - T(S)) / ((T - S) x UFCs), from which every
per-call cost cancels (the toolkit's CUDA-graph warm-up iterations and capture, host
transfers, the final evaluation pass), as it nearly does over the 1000-2000 iterations of a
real run; the total T(T) / (T x UFCs) is kept beside it. With T <= S only the total is
measured; each row says which it reports (per_iteration_timing). images/s = C / ms per UFC iteration. Peak memory: torch.cuda.max_memory_allocated per row on GPU; on CPU the
process's peak resident set so far (cumulative, not per row). Projections: UFCs x iterations
x ms per UFC iteration for ImageNet-1k ipc 10 / 50 (K = ipc, M = 3, 2000 iterations) and
CIFAR-100 ipc 50 (K = 48, M = 4, 1000 iterations), from the matching preset.

Targets of the project (issue 5), for reference only: on one H100, >= 10x the reference loop
at CIFAR-100 shapes, >= 2x at ImageNet shapes, ImageNet-1k ipc 10 projected under 1 GPU-hour.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import random
import resource
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_ops import environment, profile_ops, write_json  # noqa: E402

from infer_fast.data import get_spec, normalize  # noqa: E402
from infer_fast.data.transforms import resized_crop_boxes  # noqa: E402  (the toolkit's own box draw)
from infer_fast.data.transforms import RESIZED_CROP_RATIO  # noqa: E402
from infer_fast.distill import RecoveryConfig, auto_batch_plan, infer_budget, recover_ufcs  # noqa: E402
from infer_fast.distill.cuda_graphs import GRAPH_WARMUP_ITERATIONS  # noqa: E402
from infer_fast.memory import first_line, is_out_of_memory  # noqa: E402
from infer_fast.models import create_model, list_models  # noqa: E402
from infer_fast.ops.backends import BACKENDS  # noqa: E402

# The shorter run of each row's steady-state timing: the shortest run that captures its CUDA
# graph and replays it, so the two runs differ by replayed iterations only.
STEADY_FROM = GRAPH_WARMUP_ITERATIONS + 1

PRESETS = {
    "cifar100": {"dataset": "cifar100", "classes": 100, "size": 32, "teachers": ["resnet18"], "recipe": RecoveryConfig,
                 "real_K": infer_budget(50, 100, 4)},
    # ResNet-18 first: the teacher a run cut short (gpu_session.sh's time limit) must have measured
    "imagenet": {"dataset": "imagenet", "classes": 1000, "size": 224,
                 "teachers": ["resnet18-imagenet", "mobilenetv2-imagenet", "efficientnet-b0-imagenet"],
                 "recipe": RecoveryConfig.imagenet, "real_K": infer_budget(50, 1000, 3, "ipc")},
}
# The real runs projected: (name, preset, UFCs = K*M, iterations per UFC)
PROJECTIONS = [
    ("ImageNet-1k ipc 10", "imagenet", infer_budget(10, 1000, 3, "ipc") * 3, 2000),
    ("ImageNet-1k ipc 50", "imagenet", infer_budget(50, 1000, 3, "ipc") * 3, 2000),
    ("CIFAR-100 ipc 50", "cifar100", infer_budget(50, 100, 4) * 4, 1000),
]
REFERENCE, TOOLKIT, TOOLKIT_FUSED, TOOLKIT_FUSED_CL, TOOLKIT_BF16, TOOLKIT_BF16_EAGER, TOOLKIT_COMPILED = (
    "reference", "toolkit", "toolkit fused BN", "toolkit fused BN + channels_last", "toolkit bf16+channels_last",
    "toolkit bf16+cl, no CUDA graph", "toolkit fused BN + compile")
ROW_DESCRIPTIONS = {
    REFERENCE: "reference release's loop: fp32 eager, one UFC at a time, SRe2L-style BN forward hooks",
    TOOLKIT: "infer_fast.distill.recover_ufcs, fp32, G UFCs per teacher pass, fused kernels (on CUDA each "
             f"batch's iteration a replayed CUDA graph after {GRAPH_WARMUP_ITERATIONS} eager warm-up iterations)",
    TOOLKIT_FUSED: "recover_ufcs with fused_bn=True (eval BN + statistics loss fused: one kernel pass each way)",
    TOOLKIT_FUSED_CL: "the fused BN row in channels_last (fp32: the layout's own gain)",
    TOOLKIT_BF16: "recover_ufcs with precision='bf16', channels_last=True, fused_bn=True",
    TOOLKIT_BF16_EAGER: "the bf16 row with cuda_graphs=False: every iteration eager (CUDA only)",
    TOOLKIT_COMPILED: "recover_ufcs with fused_bn=True and compile=--compile (steady state: the first "
                      "iteration of each batch, which traces and compiles, is left out)",
}


# --------------------------------------------------------------------------------------
# (a) the reference release's loop
# --------------------------------------------------------------------------------------

class SRe2LBNHook:
    """The reference's per-BN forward hook: R = ||running_var - var||_2 + ||running_mean - mean||_2
    of the layer's input, computed the eager way (its cost is what is being measured)."""

    def __init__(self, module: nn.Module):
        self.r_feature: Optional[Tensor] = None
        self.handle = module.register_forward_hook(self.hook_fn)

    def hook_fn(self, module, inputs, output) -> None:
        x = inputs[0]
        nch = x.shape[1]
        mean = x.mean([0, 2, 3])
        var = x.permute(1, 0, 2, 3).contiguous().view([nch, -1]).var(1, unbiased=False)
        self.r_feature = torch.norm(module.running_var.data - var, 2) + torch.norm(module.running_mean.data - mean, 2)


def reference_augment(x: Tensor, config: RecoveryConfig) -> Tensor:
    """The reference's augmentation of the whole batch: one draw for all C images (torchvision
    transforms on a batched tensor), then a roll by random.randint(0, max_shift) on H and W."""
    if config.augmentation == "imagenet":
        height, width = x.shape[-2:]
        top, left, h, w = (int(v) for v in resized_crop_boxes(1, height, width, tuple(config.crop_scale), RESIZED_CROP_RATIO, None))
        x = F.interpolate(x[:, :, top:top + h, left:left + w], size=(height, width), mode="bilinear",
                          align_corners=False, antialias=True)
        if random.random() < 0.5:
            x = x.flip(-1)
    shifts = (random.randint(0, config.max_shift), random.randint(0, config.max_shift))
    return torch.roll(x, shifts=shifts, dims=(2, 3))


def reference_recover(natural: Tensor, teacher: nn.Module, config: RecoveryConfig, ufcs: int, iterations: int) -> None:
    """``ufcs`` UFCs of ``iterations`` steps each, one after another, on the normalized natural
    sets ``natural`` (K, C, ch, H, W) (UFC j uses set j mod K). The results are discarded."""
    C = natural.shape[1]
    targets = torch.arange(C, device=natural.device)
    hooks = [SRe2LBNHook(m) for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        for j in range(ufcs):
            images = natural[j % natural.shape[0]]
            u = torch.zeros((1,) + tuple(natural.shape[2:]), device=natural.device, requires_grad=True)
            optimizer = torch.optim.Adam([u], lr=config.lr, betas=tuple(config.betas), eps=config.eps)
            for t in range(iterations):
                for group in optimizer.param_groups:
                    group["lr"] = 0.5 * (1 + math.cos(math.pi * t / iterations)) * config.lr
                x = reference_augment(images + u, config)
                optimizer.zero_grad()
                loss_ce = F.cross_entropy(teacher(x), targets)
                rescale = [config.first_bn_mult] + [1.0] * (len(hooks) - 1)
                loss_bn = sum(hook.r_feature * scale for hook, scale in zip(hooks, rescale))
                (loss_ce + config.r_bn * loss_bn).backward()
                optimizer.step()
                # (the reference clamps the composed images in the loop: no effect on u, left out)
    finally:
        for hook in hooks:
            hook.handle.remove()


# --------------------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------------------

def wall_seconds(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def measure(row: str, teacher: str, C: int, ufcs: int, iterations: int, device: torch.device,
            run: Callable[[int], Optional[Dict]], **extra) -> Dict:
    """One table row: ``run(1)`` untimed (the warm-up), then ``run(iterations)`` and, where
    iterations > STEADY_FROM, ``run(STEADY_FROM)`` on the wall clock (module docstring: the
    steady state). ``run(n)`` runs n iterations per UFC and may return fields for the row.
    Out of memory is recorded in the row (the reference holds all C images of a set at once;
    recover_ufcs raises its RecoveryOutOfMemoryError), and the next row runs."""
    reset_peak_memory(device)
    result = {"teacher": teacher, "row": row, "description": ROW_DESCRIPTIONS[row], "ufcs": ufcs,
              "iterations": iterations, **extra}

    def timed(n: int) -> Tuple[float, int, Dict]:
        outcome: Dict = {}
        seconds = wall_seconds(lambda: outcome.update(run(n) or {}), device)
        # a compiled row leaves out its first iteration per batch (the compile), as it reports
        return seconds - outcome.get("seconds_excluded", 0.0), n - outcome.get("iterations_excluded", 0), outcome

    try:
        run(1)
        seconds, timed_iterations, outcome = timed(iterations)
        base = timed(STEADY_FROM)[0] if iterations > STEADY_FROM else None
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        result["error"] = f"out of memory: {first_line(exc, 160)}"
        print(f"  {row}: {result['error']}", flush=True)
        return result
    result.update(outcome)
    total_ms = seconds * 1e3 / (timed_iterations * ufcs)
    if base is not None and seconds > base:
        ms = (seconds - base) * 1e3 / ((iterations - STEADY_FROM) * ufcs)
        timing = f"steady state: (T({iterations}) - T({STEADY_FROM})) / {iterations - STEADY_FROM} iterations"
    else:  # (too few iterations, or a difference lost in the noise)
        ms = total_ms
        timing = f"total: T({iterations}) / {timed_iterations} iterations, warm-up, capture and per-call costs included"
    result.update(seconds_total=seconds, ms_per_ufc_iteration=ms, ms_per_ufc_iteration_total=total_ms,
                  per_iteration_timing=timing, images_per_s=C / ms * 1e3, peak_memory_mib=peak_memory_mib(device))
    total = f"; total {total_ms:.2f}" if ms != total_ms else ""
    print(f"  {row}: {ms:.2f} ms per UFC iteration ({timing.split(':')[0]}{total})", flush=True)
    return result


def speedup(row: Dict, reference: Dict) -> Optional[float]:
    """The row's speed-up over its teacher's reference row, None where either has no time."""
    ms = reference.get("ms_per_ufc_iteration")
    return ms / row["ms_per_ufc_iteration"] if ms and "ms_per_ufc_iteration" in row else None


def reference_row(name: str, teacher: nn.Module, natural_u8: Tensor, ufcs: int, mean, std, config: RecoveryConfig,
                  device: torch.device) -> Dict:
    """Row (a): ``ufcs`` UFCs on the sets of ``natural_u8`` (normalized, on the device only meanwhile)."""
    natural = normalize(natural_u8[:ufcs], mean, std).to(device)
    return measure(REFERENCE, name, natural.shape[1], ufcs, config.iterations, device,
                   run=lambda n: reference_recover(natural, teacher, config, ufcs, n), group_size=1, chunk_size=None)


def _variant(row: str, config: RecoveryConfig, **changes) -> Tuple[str, Union[RecoveryConfig, str]]:
    """(row, ``config`` with ``changes``), or (row, why not) where the config refuses them."""
    try:
        return row, dataclasses.replace(config, **changes)
    except ValueError as exc:
        return row, str(exc)


def bench_teacher(name: str, args, preset: Dict, mean, std, device: torch.device, all_rows: List[Dict],
                  save: Callable[[], None]) -> None:
    """The rows of teacher ``name``, appended to ``all_rows``, ``save()`` after each one."""
    rows: List[Dict] = []  # this teacher's; the first is the reference

    def add(row: Dict) -> None:  # saved once measured: a run cut short (a time limit) keeps it
        row["speedup_vs_reference"] = speedup(row, rows[0] if rows else row)
        rows.append(row)
        all_rows.append(row)
        save()

    C, size = args.classes, args.size
    torch.manual_seed(0)  # random weights: the timing does not depend on them
    teacher = create_model(name, num_classes=C, in_channels=3, image_size=size).to(device).eval().requires_grad_(False)
    natural_probe = normalize(torch.randint(0, 256, (1, C, 3, size, size), dtype=torch.uint8), mean, std).to(device)
    # the group size (and chunking) a real run of this preset would use
    # (each image of a batch holds its float32 natural image beside the activations, as in recover_ufcs)
    planned_G, planned_chunk = auto_batch_plan(teacher, natural_probe, preset["real_K"], holds_natural=True)
    del natural_probe
    ufcs = args.ufcs or (max(2, planned_G) if device.type == "cuda" else 2)
    group_size = min(args.group_size or planned_G, ufcs)
    chunk_size = args.chunk_size or planned_chunk
    if group_size < planned_G:
        print(f"  note: toolkit batch G={group_size} is smaller than a real run's G={planned_G} "
              f"(pass --ufcs {planned_G} to time a full batch)")
    reference_ufcs = args.reference_ufcs or min(ufcs, 3)

    gen = torch.Generator().manual_seed(0)
    natural_u8 = torch.randint(0, 256, (ufcs, C, 3, size, size), dtype=torch.uint8, generator=gen)
    config = preset["recipe"](iterations=args.iterations, augmentation=args.augmentation, group_size=group_size,
                              chunk_size=chunk_size, seed=0)
    add(reference_row(name, teacher, natural_u8, reference_ufcs, mean, std, config, device))
    bf16 = dict(precision="bf16", channels_last=True, fused_bn=True)
    variants = [(TOOLKIT, config), _variant(TOOLKIT_FUSED, config, fused_bn=True)]
    if device.type == "cpu":  # (a GPU session's time goes to the rows a GPU run would use)
        variants.append(_variant(TOOLKIT_FUSED_CL, config, fused_bn=True, channels_last=True))
    variants.append(_variant(TOOLKIT_BF16, config, **bf16))
    if device.type == "cuda":
        variants.append(_variant(TOOLKIT_BF16_EAGER, config, **bf16, cuda_graphs=False))
    if args.compile != "off":
        variants.append(_variant(TOOLKIT_COMPILED, config, fused_bn=True, compile=args.compile))
    for row, cfg in variants:
        if isinstance(cfg, str):  # a row this plan does not allow (fused_bn or compile with a chunk_size)
            print(f"  {row}: does not apply: {cfg}", flush=True)
            add({"teacher": name, "row": row, "description": ROW_DESCRIPTIONS[row], "ufcs": ufcs,
                 "iterations": args.iterations, "group_size": group_size, "chunk_size": chunk_size,
                 "error": f"does not apply: {cfg}"})
            continue

        def run(iterations: int, cfg=cfg):
            cfg = dataclasses.replace(cfg, iterations=iterations)
            out = recover_ufcs(natural_u8, [teacher], mean, std, cfg, progress=False, backend=args.backend)
            outcome = {"cuda_graph": sorted({b["cuda_graph"] for b in out["stats"]})}
            if cfg.compile == "off":
                return outcome
            # torch.compile traces in the first iteration of a batch: time the steady state
            # (each UFC is in one batch, so every UFC loses one timed iteration)
            return {**outcome, "iterations_excluded": 1, "compile_mode": cfg.compile,
                    "seconds_excluded": sum(b["first_iteration_seconds"] for b in out["stats"]),
                    "first_iteration_seconds": [b["first_iteration_seconds"] for b in out["stats"]]}

        add(measure(row, name, C, ufcs, args.iterations, device, run=run, group_size=group_size,
                    chunk_size=chunk_size, planned_group_size=planned_G))
    if args.profile:
        best = min((r for r in rows[1:] if "error" not in r), key=lambda r: r["ms_per_ufc_iteration"], default=None)
        if best is not None:
            cfg = dict(variants)[best["row"]]
            try:
                best["profile"] = profile_ops(lambda: recover_ufcs(natural_u8[:group_size], [teacher], mean, std, cfg,
                                                                   progress=False, backend=args.backend), device)
            except Exception as exc:  # (the profiler's own memory on top of the row's: its rows stand)
                if not is_out_of_memory(exc):
                    raise
                best["profile_error"] = f"out of memory: {first_line(exc, 160)}"
                print(f"  profile of '{best['row']}': {best['profile_error']}", flush=True)
            else:
                print(f"  where the time of '{best['row']}' goes (top operators by {best['profile']['by']}):")
                for op in best["profile"]["top"]:
                    print(f"    {op['share']:6.1%}  {op['ms']:9.2f} ms  {op['calls']:6d} calls  {op['name'][:70]}")
            save()


def projections(rows: List[Dict], preset_name: str, hours_unit: str) -> List[Dict]:
    """Hours of the real runs of this preset: UFCs x iterations x ms per UFC iteration, the
    ms averaged over the teachers measured for that row."""
    out = []
    for what, preset, ufc_count, iterations in PROJECTIONS:
        if preset != preset_name:
            continue
        for row in ROW_DESCRIPTIONS:
            measured = [r for r in rows if r["row"] == row and "ms_per_ufc_iteration" in r]
            if not measured:
                continue
            ms = sum(r["ms_per_ufc_iteration"] for r in measured) / len(measured)
            out.append({"run": what, "row": row, "ufcs": ufc_count, "iterations": iterations,
                        "teachers_measured": [r["teacher"] for r in measured], "ms_per_ufc_iteration": ms,
                        "hours": ufc_count * iterations * ms / 3.6e6, "unit": hours_unit})
    return out


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iterations", type=int, help="iterations per UFC (default 20 on GPU, 2 on CPU)")
    parser.add_argument("--ufcs", type=int, help="UFCs timed in the toolkit rows (default: one full batch on GPU, "
                                                 "at least 2; 2 on CPU)")
    parser.add_argument("--reference-ufcs", type=int, help="UFCs timed in the reference row (default min(--ufcs, 3): "
                                                           "one at a time, so its per-UFC cost does not depend on it)")
    parser.add_argument("--group-size", type=int, help="toolkit UFCs per batch (default: auto_batch_plan; capped at --ufcs)")
    parser.add_argument("--chunk-size", type=int, help="toolkit rows per teacher pass (default: auto_batch_plan)")
    parser.add_argument("--teachers", help="comma-separated model names (default: the preset's)")
    parser.add_argument("--classes", type=int, help="shrink C (a reduced run, labelled as such)")
    parser.add_argument("--size", type=int, help="shrink the image size (a reduced run, labelled as such)")
    parser.add_argument("--augmentation", choices=["preset", "roll"], default="preset",
                        help="'preset': the preset's (CIFAR roll; ImageNet crop+flip+roll), 'roll': the roll only")
    parser.add_argument("--backend", default="auto", choices=["auto", *BACKENDS], help="toolkit ops backend")
    parser.add_argument("--compile", default="off", choices=["off", "default", "reduce-overhead", "max-autotune"],
                        help="also time recover_ufcs with this torch.compile mode (default off)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2, the CI machines' cores)")
    parser.add_argument("--out", help="JSON path (default bench/results/recovery-<device>-<preset>-<date>.json)")
    parser.add_argument("--profile", action="store_true",
                        help="per teacher, profile one batch of the fastest toolkit row: where its time goes")
    args = parser.parse_args(argv)

    preset = PRESETS[args.preset]
    args.classes = preset["classes"] if args.classes is None else args.classes
    args.size = preset["size"] if args.size is None else args.size
    args.teachers = preset["teachers"] if args.teachers is None else [t.strip() for t in args.teachers.split(",") if t.strip()]
    if args.iterations is None:
        args.iterations = 20 if args.device.startswith("cuda") else 2
    for flag in ("iterations", "ufcs", "reference_ufcs", "group_size", "chunk_size", "classes", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    if args.compile != "off" and args.iterations < 2:
        parser.error("--compile times the iterations after the first (which compiles): give --iterations 2 or more")
    # the ImageNet-layout models downsample 32x; the CIFAR ones 8x
    min_size = 32 if args.preset == "imagenet" else 8
    if args.size < min_size:
        parser.error(f"--size must be at least {min_size} for the {args.preset} preset's models, got {args.size}")
    unknown = [t for t in args.teachers if t not in list_models()]
    if not args.teachers or unknown:
        parser.error(f"--teachers: unknown model(s) {', '.join(unknown) or '(none given)'}; "
                     f"choose from {', '.join(list_models())}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available")
    default_augmentation = "imagenet" if args.preset == "imagenet" else "roll"
    args.augmentation = default_augmentation if args.augmentation == "preset" else "roll"
    return args


def default_out(device: torch.device, preset: str) -> str:
    tag = "gpu-" + torch.cuda.get_device_name(device).replace(" ", "_") if device.type == "cuda" else "cpu"
    return os.path.join(HERE, "results", f"recovery-{tag}-{preset}-{datetime.date.today()}.json")


def print_table(rows: List[Dict], memory_label: str) -> None:
    print(f"\n  {'teacher':<26} {'row':<28} {'G':>4} {'ms/UFC-it':>10} {'images/s':>10} {'x ref':>7} {memory_label:>18}")
    for r in rows:
        if "error" in r:
            print(f"  {r['teacher']:<26} {r['row']:<28} {r['group_size']:>4} {r['error']}")
            continue
        speedup = f"{r['speedup_vs_reference']:.2f}" if r["speedup_vs_reference"] else "n/a"
        print(f"  {r['teacher']:<26} {r['row']:<28} {r['group_size']:>4} {r['ms_per_ufc_iteration']:10.2f} "
              f"{r['images_per_s']:10.1f} {speedup:>7} {r['peak_memory_mib']:18.0f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    spec = get_spec(preset["dataset"])
    reduced = (args.classes, args.size) != (preset["classes"], preset["size"])
    hours_unit = "GPU-hours" if device.type == "cuda" else f"CPU-hours ({args.threads} threads)"
    memory_label = "peak MiB (cuda)" if device.type == "cuda" else "peak RSS MiB (cum.)"
    augmentation_rule = preset["recipe"](augmentation=args.augmentation).describe_augmentation()

    env = environment(device, args.threads)
    env["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32  # "fp32" convolutions may run in TF32 (both loops alike)
    shape = f"C={args.classes}, 3x{args.size}x{args.size}"
    print(f"{env['device']} | torch {env['torch']} | threads {args.threads} | preset {args.preset}: {shape}"
          + (f" -- REDUCED (real: C={preset['classes']}, 3x{preset['size']}x{preset['size']})" if reduced else ""))
    print(f"augmentation (both loops): {augmentation_rule}; {args.iterations} iterations per UFC")

    out = args.out or default_out(device, args.preset)
    rows: List[Dict] = []

    def save(complete: bool = False) -> None:  # after every row: a run cut short keeps what it measured
        write_json(out, {
            "environment": env, "preset": args.preset,
            "shapes": {"classes": args.classes, "channels": 3, "size": args.size},
            "real_shapes": {"classes": preset["classes"], "channels": 3, "size": preset["size"]},
            "reduced": reduced, "augmentation": augmentation_rule, "iterations": args.iterations,
            "teachers": args.teachers,
            "complete": complete,  # False: the run ended (was ended) before its last row
            "peak_memory": "torch.cuda.max_memory_allocated per row" if device.type == "cuda"
            else "process peak resident set (ru_maxrss), cumulative over the run",
            "timing": f"wall clock after a one-iteration warm-up; ms_per_ufc_iteration: the steady state "
                      f"(T(iterations) - T({STEADY_FROM})) / (iterations - {STEADY_FROM}) per UFC where "
                      f"iterations > {STEADY_FROM}, else the total (each row's per_iteration_timing says which); "
                      f"ms_per_ufc_iteration_total: T(iterations) / (iterations x UFCs), the toolkit's CUDA-graph "
                      f"warm-up and capture and its per-call costs (host transfers, final evaluation pass) included",
            "rows": rows, "projections": projections(rows, args.preset, hours_unit), "projection_unit": hours_unit,
        }, quiet=not complete)

    for name in args.teachers:
        print(f"{name} ...", flush=True)
        bench_teacher(name, args, preset, spec.mean, spec.std, device, rows, save)
    print_table(rows, memory_label)

    projected = projections(rows, args.preset, hours_unit)
    print(f"\nprojections ({hours_unit}; UFCs x iterations x ms per UFC iteration"
          + ("; from REDUCED shapes: not the real workload" if reduced else "") + ")")
    for p in projected:
        print(f"  {p['run']:<20} {p['ufcs']:>4} UFCs x {p['iterations']} it  {p['row']:<28} {p['hours']:10.3f} h"
              f"  (teachers measured: {', '.join(p['teachers_measured'])})")
    if args.preset == "cifar100":
        print("  (CIFAR-100 uses M = 4 teachers; the mean of the teachers measured here stands for all four)")

    save(complete=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
