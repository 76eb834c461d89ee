"""Benchmark of RDED (infer_fast/methods/rded.py) at a dataset's recipe: seconds per class of
its scoring (crop, resize, pad, teacher forward, selection, stitching: ``class_images``) on
in-memory candidates, the teacher forward alone on the same number of padded patches (the
bound without the cropping), and images/s of decoding the candidates from JPEG files (the
folder splits' decoder in DataLoader workers, as ``FolderImageSet.batches`` feeds RDED),
with the projected time of a whole split: ImageNet-1k ipc 10 by default (1000 classes x 300
candidates x 5 crops, factor 2, 224 px, one ResNet-18).

    python bench/bench_rded.py               # the ImageNet-1k recipe on the device (GPU when present)
    python bench/bench_rded.py --quick       # smoke run: seconds

Projection: the scoring of every class, plus the decoding of every candidate. RDED decodes
class by class in DataLoader workers that read ahead while the device scores, so the two
overlap: the JSON gives both the overlapped figure (the larger of the two) and the serial one
(their sum) as the range the real run lands in.

Timing: wall clock with a device synchronisation after each class (a class is one call);
one untimed class first (cuDNN's algorithm choice, the allocator); the median over --classes.
Candidates are random pixels (RDED's cost does not depend on the content: the crop boxes come
from the generator, the forward from the shapes), the teachers random weights. Decoding: a
generated set of --files ImageNet-like JPEGs (bench_decode.py's generator: sizes from its
SIZE_MIX, a few grayscale, a CMYK, a PNG named .JPEG), read as RDED reads its candidates: in
batches of one class's candidates, at least two batches per worker in a pass (the files
cycled as often as that takes), since a DataLoader hands each worker whole batches and RDED's
workers read ahead across classes (fewer batches than workers would leave some idle and
understate the rate); one untimed pass to start the workers, then the median of
--decode-rounds passes. --decode-from takes the decode rate of an earlier run's JSON instead
(the GPU session's bf16 runs: the decoding does not depend on the scoring's precision).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
from typing import Dict, List, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_decode import _cores, generate_images, make_source, one_pass, pipeline_run, timed_seconds  # noqa: E402
from bench_ops import save_results, unless_given  # noqa: E402

from infer_fast.data.folders import DEFAULT_DECODER  # noqa: E402
from infer_fast.data.registry import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from infer_fast.data.sets import loader_workers  # noqa: E402
from infer_fast.choices import PRECISIONS  # noqa: E402
from infer_fast.mixed_precision import model_in_layout  # noqa: E402
from infer_fast.methods.rded import DEFAULT_BATCH_SIZE, RECIPES, class_images, true_class_loss  # noqa: E402
from infer_fast.models import create_model  # noqa: E402

IMAGENET_CLASSES = 1000


def seconds_per_call(run, calls: int, device: torch.device) -> List[float]:
    """Seconds of each of ``calls`` timed calls of ``run``, after an untimed one."""
    run()
    return [timed_seconds(run, device) for _ in range(calls)]


def score_seconds(teachers, recipe: Dict, ipc: int, size: int, classes: int, device: torch.device) -> List[float]:
    """Seconds of ``class_images`` per class, ``classes`` timed calls after an untimed one."""
    gen = torch.Generator().manual_seed(0)
    candidates = torch.randint(0, 256, (recipe["candidates_per_class"], 3, size, size), dtype=torch.uint8, generator=gen)
    if device.type == "cuda":
        candidates = candidates.pin_memory()  # (as FolderImageSet.batches gives them to a GPU)

    return seconds_per_call(lambda: class_images(candidates, 0, teachers, IMAGENET_MEAN, IMAGENET_STD, ipc, recipe, gen),
                            classes, device)


def forward_seconds(teachers, recipe: Dict, size: int, classes: int, device: torch.device) -> List[float]:
    """Seconds per class of the teacher forward alone on one class's crops (candidates x crops
    patches of the recipe's size, padded to ``size``): the bound without the cropping."""
    patch = size // recipe["factor"]
    n = recipe["candidates_per_class"] * recipe["crops_per_image"]
    patches = torch.randn((n, 3, patch, patch), device=device)

    return seconds_per_call(lambda: true_class_loss(patches, 0, teachers, size, recipe["batch_size"],
                                                    recipe["precision"], recipe["channels_last"]), classes, device)


def batches_per_pass(workers: int) -> int:
    """Batches of one timed decode pass with ``workers`` DataLoader workers: two per worker (one
    worker's worth, the main process, without), so that every worker decodes all pass long."""
    return 2 * max(workers, 1)


def decode_rows(files: int, size: int, worker_counts: List[int], rounds: int, device: torch.device, seed: int,
                quick: bool, batch: int) -> List[Dict]:
    """images/s of decode + resize + centre crop (the folder splits' decoder) of one generated
    set of ``files`` JPEGs, in batches of ``batch`` (one class's candidates, as RDED reads
    them), with each of ``worker_counts`` DataLoader workers busy (batches_per_pass)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-rded-") as root:
        paths = [s["path"] for s in generate_images(root, files, seed, quick)]
        for workers in worker_counts:
            batches = batches_per_pass(workers)
            read = list(itertools.islice(itertools.cycle(paths), batches * batch))  # (the files again where too few)
            run = pipeline_run(*make_source(DEFAULT_DECODER, read, size, workers, batch, device), lambda images: None)
            run()  # starts the (persistent) workers
            speeds = [one_pass(run, device) for _ in range(rounds)]
            rows.append({"section": "decode", "files": len(paths), "images": len(read), "batch": batch,
                         "batches": batches, "workers": workers, "decoder": DEFAULT_DECODER,
                         "images_per_s": statistics.median(speeds), "images_per_s_rounds": speeds})
            del run  # (its loader's workers end before the next count's start)
    return rows


def decode_rows_of(path: str, size: int) -> List[Dict]:
    """The decode rows of an earlier run's JSON at ``path`` (--decode-from), which must have
    decoded to ``size``; ValueError says why it cannot serve."""
    try:
        with open(path, encoding="utf-8") as f:
            earlier = json.load(f)
        rows = [r for r in earlier["results"] if r["section"] == "decode"]
        earlier_size = earlier["settings"]["size"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read its decode rows ({type(exc).__name__}: {exc})") from None
    if not rows:
        raise ValueError("it has no decode rows")
    if earlier_size != size:
        raise ValueError(f"it decoded to {earlier_size} px, this run's --size is {size}")
    return rows


def projection(score_s: float, forward_s: float, decode: Dict, num_classes: int, candidates: int,
               decode_from: Optional[str] = None) -> Dict:
    """The whole split's time; ``decode_from``: the JSON ``decode`` comes from (None: this run's)."""
    score_total = score_s * num_classes
    decode_total = num_classes * candidates / decode["images_per_s"]
    return {
        "classes": num_classes, "scoring_s": score_total, "forward_only_s": forward_s * num_classes,
        "decoding_s": decode_total, "overlapped_s": max(score_total, decode_total),
        "serial_s": score_total + decode_total,
        "scoring_share_in_forward": forward_s / score_s if score_s > 0 else None,
        "decode_images_per_s": decode["images_per_s"], "decode_workers": decode["workers"],
        "decode_from": decode_from,
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="imagenet", choices=tuple(RECIPES), help="the RDED recipe (default imagenet)")
    parser.add_argument("--ipc", type=int, help="images per class (default 10; --quick 1)")
    parser.add_argument("--size", type=int, help="image side (default 224; --quick 32)")
    parser.add_argument("--candidates", type=int, help="candidates per class (default: the recipe's; --quick 8)")
    parser.add_argument("--crops", type=int, help="crops per candidate (default: the recipe's; --quick 2)")
    parser.add_argument("--num-classes", type=int, default=IMAGENET_CLASSES, help="classes of the projected split")
    parser.add_argument("--classes", type=int, help="classes timed (default 5 on GPU, 1 on CPU; --quick 2)")
    parser.add_argument("--teachers", default="resnet18-imagenet", help="comma-separated model names")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="RDED's option: the scoring forward "
                                                                               "passes' (default fp32)")
    parser.add_argument("--channels-last", action="store_true", help="RDED's option: the scoring forward passes in "
                                                                     "channels_last")
    parser.add_argument("--files", type=int, help="distinct generated JPEGs of the decode rows, read as often as "
                                                  "their batches take (default 256 on GPU, 32 on CPU; --quick 6)")
    parser.add_argument("--workers", help="decode worker counts, comma-separated (default: RDED's own, "
                                          "loader_workers, and every core where that is more); the first projects")
    parser.add_argument("--decode-rounds", type=int, default=3)
    parser.add_argument("--decode-from", help="an earlier run's JSON (at the same --size) whose decode rows project "
                                              "this one's decoding, instead of decoding again")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0, help="of the generated JPEGs")
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds")
    parser.add_argument("--out", help="JSON path (default bench/results/rded-<device>-<date>.json)")
    args = parser.parse_args(argv)
    gpu = args.device.startswith("cuda")
    recipe = RECIPES[args.family]
    args.ipc = unless_given(args.ipc, 1 if args.quick else 10)
    args.size = unless_given(args.size, 32 if args.quick else 224)
    args.candidates = unless_given(args.candidates, 8 if args.quick else recipe["candidates_per_class"])
    args.crops = unless_given(args.crops, 2 if args.quick else recipe["crops_per_image"])
    args.classes = unless_given(args.classes, 2 if args.quick else 5 if gpu else 1)
    args.files = unless_given(args.files, 6 if args.quick else 256 if gpu else 32)
    if args.quick:
        args.decode_rounds = 1
    for name in ("ipc", "size", "candidates", "crops", "classes", "files", "num_classes", "decode_rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    own = loader_workers(args.num_classes * args.candidates)  # (as RDED asks for its split)
    try:
        args.workers = ([int(w) for w in args.workers.split(",")] if args.workers
                        else list(dict.fromkeys([own, max(own, _cores())])))
    except ValueError:
        parser.error(f"--workers takes comma-separated integers, got {args.workers!r}")
    if any(w < 0 for w in args.workers):
        parser.error("--workers must be integers >= 0")
    if args.candidates < args.ipc * recipe["factor"] ** 2:
        parser.error(f"--candidates {args.candidates} is too few for ipc {args.ipc} at factor {recipe['factor']}")
    if args.decode_from:
        try:
            args.decode_rows = decode_rows_of(args.decode_from, args.size)
        except ValueError as exc:
            parser.error(f"--decode-from {args.decode_from}: {exc}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    recipe = {**RECIPES[args.family], "candidates_per_class": args.candidates, "crops_per_image": args.crops,
              "batch_size": DEFAULT_BATCH_SIZE, "precision": args.precision, "channels_last": args.channels_last}
    teachers = [create_model(name, num_classes=IMAGENET_CLASSES, image_size=args.size).to(device).eval()
                for name in args.teachers.split(",")]
    teachers = [model_in_layout(t, args.channels_last) for t in teachers]  # (as rded_set's copies)
    print(f"RDED {args.family} recipe on {device}: {args.candidates} candidates x {args.crops} crops per class, "
          f"factor {recipe['factor']}, {args.size} px, ipc {args.ipc}, teachers {args.teachers}, {args.precision}"
          f"{' channels_last' if args.channels_last else ''}")
    with torch.no_grad():
        score = score_seconds(teachers, recipe, args.ipc, args.size, args.classes, device)
        forward = forward_seconds(teachers, recipe, args.size, args.classes, device)
    if args.decode_from:  # (the earlier run's rows project; this run decodes nothing)
        decodes, decode = [], args.decode_rows[0]
    else:
        decodes = decode_rows(args.files, args.size, args.workers, args.decode_rounds, device, args.seed, args.quick,
                              batch=args.candidates)
        decode = decodes[0]
    score_s, forward_s = statistics.median(score), statistics.median(forward)
    crops = args.candidates * args.crops
    rows = [
        {"section": "scoring", "s_per_class": score_s, "s_per_class_runs": score, "crops_per_s": crops / score_s},
        {"section": "forward only", "s_per_class": forward_s, "s_per_class_runs": forward,
         "crops_per_s": crops / forward_s},
        *decodes,
    ]
    projected = projection(score_s, forward_s, decode, args.num_classes, args.candidates,  # (at the first count)
                           args.decode_from)
    print(f"  scoring      {score_s:8.3f} s/class  {crops / score_s:9.0f} crops/s")
    print(f"  forward only {forward_s:8.3f} s/class  {crops / forward_s:9.0f} crops/s  "
          f"({forward_s / score_s:.0%} of the scoring)")
    for row in decodes:  # (the first: the count the projection takes)
        print(f"  decode       {row['images_per_s']:8.1f} images/s with {row['workers']} workers ({row['decoder']}, "
              f"{row['files']} files, {row['batches']} batches of {row['batch']})")
    if args.decode_from:
        print(f"  decode       {decode['images_per_s']:8.1f} images/s with {decode['workers']} workers, "
              f"from {args.decode_from}")
    print(f"projected {args.num_classes} classes: scoring {projected['scoring_s'] / 60:.1f} min, decoding "
          f"{projected['decoding_s'] / 60:.1f} min; overlapped {projected['overlapped_s'] / 60:.1f} min, "
          f"serial {projected['serial_s'] / 60:.1f} min")
    settings = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "decode_rows"})
    save_results("bench_rded", "rded", device, settings, rows, projected, recipe=recipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
