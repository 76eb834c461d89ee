"""Benchmark of a student's training at a dataset's recipe (infer_fast/student.py): where a
step's time goes, and the time of the protocol's whole run projected from it. ImageNet-1k
ipc 10 by default: 10,000 training images, a ResNet-18 at 224 px, the ImageNet recipe (300
epochs, batch 100, RandomResizedCrop + flip + CutMix, soft labels at T 20).

    python bench/bench_student.py               # ImageNet-1k ipc 10 on the device (GPU when present)
    python bench/bench_student.py --quick       # smoke run: seconds

Rows, each the median over --rounds:
  host prep    ms per batch of the host's part of a step: the batch's images, its augmentation
               and mixing (``mixed_batch``: the CPU, the run's generator), which the device
               never waits for only if it runs while the device works on the step before
  device step  ms per step of the device's part (``step``: the copy to the device, forward,
               loss, backward, AdamW) on batches made beforehand, --steps in a row, one sync
  train loop   ms per step of whole epochs of ``train_epoch`` (both parts, as a run does them),
               after one untimed epoch
--profile adds, to the first two rows, the operators that take their time (torch.profiler: the
host's time for the host part, the device's time for the device step on a GPU).
The JSON also gives the loop's time against the two parts': "serial" (their sum: nothing
overlaps) and "overlapped" (the larger: the host's work hidden behind the device's or the
reverse); where the loop lands between them says how much of the smaller part is hidden.

--precision bf16 and --channels-last time a student that computes so (StudentConfig's options:
bf16 autocast for the forward passes, channels_last weights and batches); --augment-on device one
whose batches the device augments and mixes (the "host prep" row is then that work, timed to its
end on the device: it runs on the device's stream, so the loop is near the parts' sum).

--dynamic TEACHERS times an INFER+Dyn student instead: the teachers (random weights) label every
mixed batch on the device, in the device's part.

Projection: the recipe's epochs (--epochs: another count, e.g. INFER+Dyn's round(epochs / (M + 1))
in `infer-fast run`) x ceil(--images / batch) steps x the loop's ms per step, and the same at the
overlapped bound. The set is random pixels with random soft labels (a step's
cost does not depend on the content), --steps batches of the recipe's size; the student's
weights start from the recipe's seed.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
from typing import Dict, List, Tuple

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_decode import timed_seconds  # noqa: E402
from bench_ops import profile_ops, save_results, unless_given  # noqa: E402

from infer_fast.choices import AUGMENTATION_PLACES, PRECISIONS  # noqa: E402
from infer_fast.data import get_spec  # noqa: E402
from infer_fast.models import create_model  # noqa: E402
from infer_fast.storage import DistilledSet  # noqa: E402
from infer_fast.student import StudentConfig, StudentRun, recipe_of  # noqa: E402

MODELS = {"imagenet": "resnet18-imagenet", "cifar100": "resnet18"}  # --dataset (the projected split): its protocol's student


def random_set(dataset: str, size: int, images: int, seed: int) -> DistilledSet:
    """A set of ``images`` random pixels at ``size`` px with random soft labels."""
    spec = get_spec(dataset)
    gen = torch.Generator().manual_seed(seed)
    return DistilledSet(
        method="random", dataset=spec.name, num_classes=spec.num_classes, channels=spec.channels, image_size=size,
        mean=spec.mean, std=spec.std,
        images=torch.randint(0, 256, (images, spec.channels, size, size), dtype=torch.uint8, generator=gen),
        labels=torch.arange(images) % spec.num_classes,
        soft_labels=torch.randn(images, spec.num_classes, generator=gen))


def _ms_per(run, count: int, device: torch.device) -> float:
    """Milliseconds per unit of one call of ``run`` doing ``count`` units."""
    return 1000 * timed_seconds(run, device) / count


def measure(student: StudentRun, steps: int, rounds: int, device: torch.device,
            profile: bool = False) -> Tuple[Dict[str, List[float]], Dict[str, Dict]]:
    """ms per step of the host's part, the device's part and the loop, ``rounds`` times each;
    with ``profile``, where the time of each part goes (the host's: host time; the device's:
    device time on a GPU)."""
    batch = student.cfg.batch_size
    order = torch.randperm(student.n, generator=torch.Generator().manual_seed(0))
    indices = [order[s * batch:(s + 1) * batch] for s in range(steps)]
    student.model.train()
    student.train_epoch(0, progress=False)  # untimed: cuDNN's algorithm choice, the allocator, lazy inits
    made: List = []

    def prepare() -> None:
        made[:] = [student.mixed_batch(idx) for idx in indices]

    # (augmented on the device: the prep's work is queued there, so it is timed to its end there)
    prep_device = device if student.cfg.augment_on == "device" else torch.device("cpu")
    host = [_ms_per(prepare, steps, prep_device) for _ in range(rounds)]
    device_ms = [_ms_per(lambda: [student.step(x, z, batch) for x, z in made], steps, device) for _ in range(rounds)]
    loop = [_ms_per(lambda: student.train_epoch(0, progress=False), steps, device) for _ in range(rounds)]
    profiles = {}
    if profile:
        profiles["host prep"] = profile_ops(prepare, torch.device("cpu"))
        profiles["device step"] = profile_ops(lambda: [student.step(x, z, batch) for x, z in made], device)
    return {"host prep": host, "device step": device_ms, "train loop": loop}, profiles


def projection(ms: Dict[str, float], epochs: int, images: int, batch: int) -> Dict:
    steps = epochs * math.ceil(images / batch)
    overlapped = max(ms["host prep"], ms["device step"])
    return {
        "images": images, "epochs": epochs, "steps": steps,
        "loop_h": steps * ms["train loop"] / 3600e3, "overlapped_h": steps * overlapped / 3600e3,
        "serial_h": steps * (ms["host prep"] + ms["device step"]) / 3600e3,
        # 1: the loop takes the parts' sum (nothing overlaps); overlapped_of_serial: all hidden
        "loop_of_serial": ms["train loop"] / (ms["host prep"] + ms["device step"]),
        "overlapped_of_serial": overlapped / (ms["host prep"] + ms["device step"]),
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="imagenet", choices=tuple(MODELS),
                        help="the split and its recipe (default imagenet: the ImageNet recipe, 224 px)")
    parser.add_argument("--ipc", type=int, default=10, help="images per class of the projected set (default 10)")
    parser.add_argument("--images", type=int, help="training images of the projected set (default ipc x classes; "
                                                   "an INFER set trains on its natural and composed images)")
    parser.add_argument("--model", help="student model (default: the protocol's ResNet-18; --quick convnet-w8-d2)")
    parser.add_argument("--size", type=int, help="image side (default: the dataset's; --quick 32)")
    parser.add_argument("--batch-size", type=int, help="default: the recipe's; --quick 8")
    parser.add_argument("--epochs", type=int, help="epochs of the projected run (default: the recipe's)")
    parser.add_argument("--dynamic", metavar="TEACHERS", help="comma-separated teacher models: an INFER+Dyn student, "
                                                             "its batches labelled by them")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="the student's (default fp32)")
    parser.add_argument("--channels-last", action="store_true", help="weights and batches in channels_last")
    parser.add_argument("--augment-on", choices=AUGMENTATION_PLACES, default="host",
                        help="where the batches are augmented and mixed (default host)")
    parser.add_argument("--steps", type=int, help="batches timed per round (default 20 on GPU, 4 on CPU; --quick 2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each row (default 3; --quick 1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--profile", action="store_true", help="also where each part's time goes (top operators)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds")
    parser.add_argument("--out", help="JSON path (default bench/results/student-<device>-<date>.json)")
    args = parser.parse_args(argv)
    gpu = args.device.startswith("cuda")
    spec = get_spec(args.dataset)
    args.model = unless_given(args.model, "convnet-w8-d2" if args.quick else MODELS[args.dataset])
    args.size = unless_given(args.size, 32 if args.quick else spec.image_size)
    args.recipe = recipe_of(spec.name)
    args.batch_size = unless_given(args.batch_size, 8 if args.quick else StudentConfig.from_recipe(args.recipe).batch_size)
    args.steps = unless_given(args.steps, 2 if args.quick else 20 if gpu else 4)
    if args.quick:
        args.rounds = 1
    args.images = unless_given(args.images, args.ipc * spec.num_classes)
    for name in ("ipc", "images", "size", "batch_size", "steps", "rounds") + (("epochs",) if args.epochs is not None else ()):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    overrides = {} if args.epochs is None else {"epochs": args.epochs}
    cfg = StudentConfig.from_recipe(args.recipe, model=args.model, batch_size=args.batch_size, device=args.device,
                                    dynamic=args.dynamic is not None, precision=args.precision,
                                    channels_last=args.channels_last, augment_on=args.augment_on, **overrides)
    distilled = random_set(args.dataset, args.size, args.steps * args.batch_size, seed=0)
    teachers = None if args.dynamic is None else [
        create_model(name, num_classes=distilled.num_classes, image_size=args.size).to(device).eval()
        for name in args.dynamic.split(",")]
    student = StudentRun(distilled, None, cfg, teachers=teachers, ddp=False)
    labels = "soft labels" if teachers is None else f"labelled by {args.dynamic} on every batch"
    print(f"student {args.model} ({labels}) on {device}, the {args.recipe} recipe ({cfg.augmentation}, {cfg.mix}, batch "
          f"{cfg.batch_size}, {cfg.epochs} epochs), {args.size} px, {cfg.precision}"
          f"{' channels_last' if cfg.channels_last else ''}, augmented on the {cfg.augment_on}: {args.steps} steps x "
          f"{args.rounds} rounds")
    runs, profiles = measure(student, args.steps, args.rounds, device, args.profile)
    ms = {name: statistics.median(values) for name, values in runs.items()}
    rows = [{"section": name, "ms_per_step": ms[name], "ms_per_step_rounds": runs[name],
             "images_per_s": 1000 * cfg.batch_size / ms[name], **({"profile": profiles[name]} if name in profiles else {})}
            for name in runs]
    projected = projection(ms, cfg.epochs, args.images, cfg.batch_size)
    for row in rows:
        print(f"  {row['section']:<12} {row['ms_per_step']:9.2f} ms/step  {row['images_per_s']:9.0f} images/s")
        for op in row.get("profile", {}).get("top", [])[:6]:
            print(f"      {op['share']:6.1%} of its {row['profile']['by']}  {op['calls']:5d} calls  {op['name'][:60]}")
    print(f"  the loop takes {projected['loop_of_serial']:.0%} of the parts' sum (all overlapped: "
          f"{projected['overlapped_of_serial']:.0%})")
    print(f"projected {args.images} images x {cfg.epochs} epochs ({projected['steps']} steps): "
          f"{projected['loop_h']:.2f} h at the loop's speed; {projected['overlapped_h']:.2f} h overlapped, "
          f"{projected['serial_h']:.2f} h serial")
    save_results("bench_student", "student", device, args, rows, projected, config=dataclasses.asdict(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
