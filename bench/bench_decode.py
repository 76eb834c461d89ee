"""Benchmark of evaluation's input pipeline on ImageNet-like JPEGs: images/s of decode + resize
+ center crop (infer_fast.data.folders.decode_image and its candidates) in DataLoader workers,
alone and followed by a model forward, plus each decoder's pixel difference to the current one.

    python bench/bench_decode.py                          # generated images, preset for the device
    python bench/bench_decode.py --images /data/imagenet/val --n 1000
    python bench/bench_decode.py --quick                  # smoke run (seconds)

Decoders: ``pillow`` (full decode, then resize: the reference), ``pillow-draft`` (libjpeg's DCT
scaling of big JPEGs before the same resize; see folders.DECODERS) and, where torchvision is
installed, ``torchvision`` (decode_jpeg + antialiased bilinear interpolate: batched in the main
process on the GPU from bytes the workers read; per image in the workers on CPU; files it
cannot decode, e.g. a PNG named .JPEG, go to Pillow and are counted).

Images: ``--images DIR`` (every image file under it, sorted, --n of them evenly spaced) or a
generated set in a temporary folder: photo-like content (gradients, shapes, band-limited texture,
mild noise), JPEG quality 90, sizes from an assumed ImageNet-like mix (SIZE_MIX: mostly a longer
side of 500, some camera-sized, some small), a few grayscale, one CMYK, one PNG named .JPEG. The
share of big images decides what a draft decode gains: the JSON records the set's sizes and
bytes per pixel; run on real files (--images) for the real mix.

Rows: ``per-image`` (ms per image of each Pillow decoder in one process, by size group: each
image decoded by every decoder in turn, best of --repeats, so the comparison is paired and
survives a busy machine); ``decode`` (images/s of DataLoader passes, per worker count);
``forward`` and ``decode+forward`` (the same with a model forward after each batch, and the
forward alone on an in-memory batch: the bound without decoding); ``pixels`` (each decoder
against ``pillow``, uint8 units, over every image).

Timing: wall clock of full passes over the set; rounds interleave the configurations (every
round times each once, in a rotating order) so they share the machine's moments; images/s is
the median over rounds. Decode rows start their workers in an untimed pass first; forward rows
(fewer images: the forward dominates on CPU) include the workers' start unless --forward-warmup.
Decode rows run with one torch thread in the main process, forward rows with --threads. The
forward: eval mode, no grad, fp32, random weights, normalized uint8 input moved to the device.
"""
from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_ops import RESULTS, environment, write_json  # noqa: E402

from infer_fast.data import normalize  # noqa: E402
from infer_fast.data.folders import (DECODERS, DEFAULT_DECODER, IMAGE_EXTENSIONS, decode_image,  # noqa: E402
                                     resize_and_crop_geometry)
from infer_fast.data.registry import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from infer_fast.models import create_model  # noqa: E402

REFERENCE = "pillow"
# An assumed mix, not sampled from ImageNet: (group, share, (width, height) choices).
SIZE_MIX = (
    ("typical", 0.8, ((500, 375), (375, 500), (500, 333), (333, 500), (500, 500), (500, 400))),
    ("large", 0.1, ((1024, 768), (1600, 1200), (2000, 1500), (1500, 2000), (2592, 1944))),
    ("small", 0.1, ((400, 300), (300, 225), (250, 333), (200, 150))),
)
QUICK_LARGE = ((800, 600),)  # --quick: big enough for a draft at its --size, quick to generate
GRAY_EVERY, CMYK_INDEX, PNG_INDEX, LARGE_INDEX = 50, 3, 5, 2  # grayscale at i % 50 == 1


# ----------------------------------------------------------------------------------------
# the image set
# ----------------------------------------------------------------------------------------
def photo_like(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (h, w, 3): a gradient background, a few filled shapes with their own gradients,
    band-limited texture (coarse noise upsampled, as surfaces) and mild sensor noise."""
    from PIL import Image
    y, x = np.arange(h, dtype=np.float32)[:, None] / h, np.arange(w, dtype=np.float32)[None, :] / w
    angle = rng.uniform(0, 2 * np.pi)
    t = np.cos(angle) * x + np.sin(angle) * y
    t = (t - t.min()) / (t.max() - t.min() + 1e-6)
    c0, c1 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    img = c0 + (c1 - c0) * t[..., None]
    for _ in range(rng.integers(4, 12)):
        cx, cy, rx, ry = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.4), rng.uniform(0.05, 0.4)
        rows = slice(max(0, int((cy - ry) * h)), min(h, int((cy + ry) * h) + 1))
        cols = slice(max(0, int((cx - rx) * w)), min(w, int((cx + rx) * w) + 1))
        ys, xs = y[rows], x[:, cols]
        inside = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 < 1 if rng.random() < 0.6 else \
            (abs(xs - cx) < rx) & (abs(ys - cy) < ry)
        fill = rng.uniform(0, 255, 3).astype(np.float32) + rng.uniform(-60, 60, 3).astype(np.float32) * (ys[..., None] - cy)
        region = img[rows, cols]
        region[inside] = np.broadcast_to(fill, region.shape)[inside]
    texture = np.zeros((h, w), dtype=np.float32)
    for cell in (16, 4, 2):
        coarse = rng.standard_normal((h // cell + 2, w // cell + 2), dtype=np.float32) * 28
        texture += np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC))
    texture += rng.standard_normal((h, w), dtype=np.float32) * 8
    img += texture[..., None] * np.array([1.0, 0.9, 0.8], dtype=np.float32)
    img += rng.standard_normal((h, w, 3), dtype=np.float32) * 2
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def _sample_plan(i: int, seed: int, quick: bool):
    rng = np.random.default_rng([seed, i])
    shares = [share for _, share, _ in SIZE_MIX]
    group = "large" if i == LARGE_INDEX else SIZE_MIX[rng.choice(len(SIZE_MIX), p=shares)][0]
    choices = QUICK_LARGE if quick and group == "large" else dict((g, c) for g, _, c in SIZE_MIX)[group]
    w, h = choices[rng.integers(len(choices))]
    kind = "cmyk" if i == CMYK_INDEX else "png-named-jpeg" if i == PNG_INDEX else "gray" if i % GRAY_EVERY == 1 else "rgb"
    return rng, group, kind, w, h


def write_sample(job) -> Dict:
    """Generate and write image ``i`` of the set (one process of the pool)."""
    from PIL import Image
    root, i, seed, quick = job
    rng, group, kind, w, h = _sample_plan(i, seed, quick)
    im = Image.fromarray(photo_like(w, h, rng))
    if kind == "gray":
        im = im.convert("L")
    elif kind == "cmyk":
        im = im.convert("CMYK")
    directory = os.path.join(root, f"n{i % 10:08d}")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"ILSVRC2012_val_{i:08d}.JPEG")
    if kind == "png-named-jpeg":
        im.save(path, format="PNG")
    else:
        im.save(path, format="JPEG", quality=90)
    return {"path": path, "group": group, "kind": kind, "width": w, "height": h, "bytes": os.path.getsize(path)}


def generate_images(root: str, n: int, seed: int, quick: bool) -> List[Dict]:
    jobs = [(root, i, seed, quick) for i in range(n)]
    processes = min(8, _cores(), n)
    if processes <= 1:
        return [write_sample(job) for job in jobs]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        return pool.map(write_sample, jobs, chunksize=1)


def existing_images(directory: str, n: Optional[int]) -> List[Dict]:
    """Every image file under ``directory`` (sorted), ``n`` of them evenly spaced."""
    from PIL import Image
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(directory) for f in files
                   if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
    if not paths:
        raise ValueError(f"--images: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {directory}")
    if n is not None and n < len(paths):
        paths = [paths[int(k * len(paths) / n)] for k in range(n)]
    samples = []
    for path in paths:
        with Image.open(path) as im:  # the header only
            (w, h), mode, fmt = im.size, im.mode, im.format
        kind = "cmyk" if mode == "CMYK" else "gray" if mode == "L" else "rgb" if fmt == "JPEG" else f"{fmt}".lower()
        samples.append({"path": path, "group": "given", "kind": kind, "width": w, "height": h,
                        "bytes": os.path.getsize(path)})
    return samples


def describe_set(samples: List[Dict], source: str) -> Dict:
    pixels = np.array([s["width"] * s["height"] for s in samples], dtype=np.float64)
    sizes = np.array([s["bytes"] for s in samples], dtype=np.float64)
    count = lambda key, value: sum(s[key] == value for s in samples)  # noqa: E731
    return {
        "source": source, "n": len(samples), "mean_pixels": float(pixels.mean()),
        "median_size": sorted((s["width"], s["height"]) for s in samples)[len(samples) // 2],
        "mean_kbytes": float(sizes.mean() / 1e3), "bytes_per_pixel": float(sizes.sum() / pixels.sum()),
        "groups": {g: count("group", g) for g in sorted({s["group"] for s in samples})},
        "kinds": {k: count("kind", k) for k in sorted({s["kind"] for s in samples})},
        "size_mix": [[g, share, [list(c) for c in choices]] for g, share, choices in SIZE_MIX]
        if source == "generated" else None,
    }


# ----------------------------------------------------------------------------------------
# decoders as datasets
# ----------------------------------------------------------------------------------------
class PillowSet(Dataset):
    def __init__(self, paths: Sequence[str], size: int, decoder: str):
        self.paths, self.size, self.decoder = list(paths), size, decoder

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i) -> torch.Tensor:
        return decode_image(self.paths[i], self.size, 3, decoder=self.decoder)


def torchvision_io():
    """torchvision.io, or the reason it cannot be used (a string)."""
    try:
        import torchvision.io as tvio
        tvio.decode_jpeg  # noqa: B018 (older releases lack it)
        return tvio
    except Exception as exc:  # not installed, or built for another torch
        return f"torchvision is not usable next to torch {torch.__version__} ({type(exc).__name__}: {exc})"


def resize_and_crop_tensor(img: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (3, h, w) -> uint8 (3, size, size) with decode_image's geometry (antialiased bilinear)."""
    h, w = img.shape[-2:]
    (nw, nh), (left, top) = resize_and_crop_geometry(w, h, size)
    if (nw, nh) != (w, h):
        img = F.interpolate(img[None].float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
        img = img.round_().clamp_(0, 255).to(torch.uint8)
    return img[:, top:top + size, left:left + size]


def torchvision_decode(datas: List[torch.Tensor], paths: List[str], size: int, device: torch.device):
    """uint8 (B, 3, size, size) on ``device`` and how many files went to Pillow instead: one
    batched decode_jpeg call, per file when the batch fails (a non-JPEG, an unsupported JPEG)."""
    tvio = torchvision_io()
    rgb = tvio.ImageReadMode.RGB
    try:
        decoded = tvio.decode_jpeg(datas, mode=rgb, device=device)
    except Exception:
        decoded = []
        for data in datas:
            try:
                decoded.append(tvio.decode_jpeg(data, mode=rgb, device=device))
            except Exception:
                decoded.append(None)
    out = [resize_and_crop_tensor(img, size) if img is not None else
           decode_image(path, size, 3, decoder=REFERENCE).to(device) for img, path in zip(decoded, paths)]
    return torch.stack(out), sum(img is None for img in decoded)


class TorchvisionSet(Dataset):
    """Items: the file's bytes (decoded later, batched, by ``finish``) or, with
    ``decode_here``, the decoded image (decode_jpeg on the CPU, in the worker)."""

    def __init__(self, paths: Sequence[str], size: int, decode_here: bool):
        self.paths, self.size, self.decode_here = list(paths), size, decode_here

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        with open(self.paths[i], "rb") as f:
            data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
        if self.decode_here:
            return torchvision_decode([data], [self.paths[i]], self.size, torch.device("cpu"))[0][0]
        return data, self.paths[i]


def _as_lists(batch):
    return [data for data, _ in batch], [path for _, path in batch]


def make_source(decoder: str, paths: Sequence[str], size: int, workers: int, batch: int, device: torch.device):
    """(loader, finish): ``finish(batch)`` turns what the loader yields into uint8 (B, 3, S, S)."""
    persistent = dict(num_workers=workers, persistent_workers=workers > 0)
    if decoder != "torchvision":
        loader = DataLoader(PillowSet(paths, size, decoder), batch_size=batch, pin_memory=device.type == "cuda", **persistent)
        return loader, lambda b: b
    if device.type != "cuda":
        return DataLoader(TorchvisionSet(paths, size, decode_here=True), batch_size=batch, **persistent), lambda b: b
    loader = DataLoader(TorchvisionSet(paths, size, decode_here=False), batch_size=batch, collate_fn=_as_lists, **persistent)
    return loader, lambda b: torchvision_decode(b[0], b[1], size, device)[0]


# ----------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------
def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_seconds(run: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``run``, the device synchronised before and after."""
    _sync(device)
    start = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - start

def one_pass(run: Callable[[], int], device: torch.device) -> float:
    """images/s of one call of ``run`` (which returns how many images it handled)."""
    _sync(device)
    start = time.perf_counter()
    count = run()
    _sync(device)
    return count / (time.perf_counter() - start)


def interleaved(runs: Dict[str, Callable[[], int]], rounds: int, warmup: bool, device: torch.device) -> Dict[str, List[float]]:
    """images/s per round of every run; each round times each run once, in a rotating order."""
    if warmup:
        for run in runs.values():
            run()
    names, speeds = list(runs), {name: [] for name in runs}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            speeds[name].append(one_pass(runs[name], device))
    return speeds


def pipeline_run(loader, finish, consume: Callable[[torch.Tensor], None]) -> Callable[[], int]:
    def run() -> int:
        count = 0
        for batch in loader:
            images = finish(batch)
            consume(images)
            count += images.shape[0]
        return count
    return run


def speed_rows(section: str, speeds: Dict, batch: int, images: Callable[[Optional[int]], int]) -> List[Dict]:
    """One row per (decoder, workers); beside the reference decoder at the same worker count,
    the median of the per-round ratios (the rounds' moments of a busy machine cancel)."""
    rows = []
    for (d, w), per_round in speeds.items():
        reference = speeds.get((REFERENCE, w))
        ratio = statistics.median(a / b for a, b in zip(per_round, reference)) if reference and d != REFERENCE else None
        rows.append({"section": section if w is not None else "forward", "decoder": d, "workers": w, "batch": batch,
                     "images": images(w), "images_per_s": statistics.median(per_round), "images_per_s_rounds": per_round,
                     f"ratio_to_{REFERENCE}": ratio})
    return rows


def bench_decode(decoders, paths, size, workers_list, batch, rounds, device) -> List[Dict]:
    sources = {(d, w): make_source(d, paths, size, w, batch, device) for d in decoders for w in workers_list}
    runs = {key: pipeline_run(loader, finish, lambda images: None) for key, (loader, finish) in sources.items()}
    speeds = interleaved(runs, rounds, warmup=True, device=device)
    return speed_rows("decode", speeds, batch, lambda w: len(paths))


def bench_forward(model, decoders, paths, size, workers_list, batch, rounds, warmup, device) -> List[Dict]:
    def forward(images: torch.Tensor) -> None:
        with torch.inference_mode():
            model(normalize(images.to(device, non_blocking=True), IMAGENET_MEAN, IMAGENET_STD))

    in_memory = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    batches = -(-len(paths) // batch)

    def forward_only() -> int:
        for _ in range(batches):
            forward(in_memory)
        return batches * batch

    runs: Dict = {("forward only", None): forward_only}
    for d in decoders:
        for w in workers_list:
            loader, finish = make_source(d, paths, size, w, batch, device)
            runs[(d, w)] = pipeline_run(loader, finish, forward)
    speeds = interleaved(runs, rounds, warmup, device)
    return speed_rows("decode+forward", speeds, batch, lambda w: batches * batch if w is None else len(paths))


def per_image_costs(samples: List[Dict], size: int, repeats: int) -> List[Dict]:
    """ms per image of each Pillow decoder in this process, by image group: every image is
    decoded by each decoder in turn (rotating order), ``repeats`` times, and the best time of
    each is kept (the least disturbed by other processes), so the decoders are compared on
    the same images at the same moments."""
    best = {d: [] for d in DECODERS}
    for k, sample in enumerate(samples):
        times = {d: float("inf") for d in DECODERS}
        for r in range(repeats):
            for d in DECODERS[(k + r) % len(DECODERS):] + DECODERS[:(k + r) % len(DECODERS)]:
                start = time.perf_counter()
                decode_image(sample["path"], size, 3, decoder=d)
                times[d] = min(times[d], time.perf_counter() - start)
        for d in DECODERS:
            best[d].append(times[d])
    groups = {g: [k for k, s in enumerate(samples) if s["group"] == g] for g in sorted({s["group"] for s in samples})}
    groups["all"] = list(range(len(samples)))
    return [{"section": "per-image", "decoder": d, "group": g, "images": len(idx), "repeats": repeats,
             "ms_per_image": 1e3 * float(np.mean([best[d][k] for k in idx])),
             "share_of_decode_time": float(sum(best[d][k] for k in idx) / sum(best[d]))}
            for g, idx in groups.items() for d in DECODERS]


def pixel_differences(decoders, paths, size, device) -> List[Dict]:
    """Each decoder's output against the reference's, image by image (uint8 units)."""
    reference = [decode_image(p, size, 3, decoder=REFERENCE) for p in paths]
    rows = []
    for d in decoders:
        if d == REFERENCE:
            continue
        fallbacks = 0
        if d == "torchvision":
            outputs = []
            for data, path in TorchvisionSet(paths, size, decode_here=False):
                images, fell_back = torchvision_decode([data], [path], size, device)
                outputs.append(images[0].cpu())
                fallbacks += fell_back
        else:
            outputs = [decode_image(p, size, 3, decoder=d) for p in paths]
        diffs = [(o.int() - r.int()).abs() for o, r in zip(outputs, reference)]
        per_image = [float(x.float().mean()) for x in diffs]
        changed = [m for m, x in zip(per_image, diffs) if int(x.max()) > 0]
        rows.append({"section": "pixels", "decoder": d, "against": REFERENCE, "images": len(paths),
                     "mean_abs_diff": float(np.mean(per_image)), "max_abs_diff": max(int(x.max()) for x in diffs),
                     "images_changed": len(changed), "mean_abs_diff_of_changed": float(np.mean(changed)) if changed else 0.0,
                     "max_mean_abs_diff_of_an_image": max(per_image), "pillow_fallbacks": fallbacks})
    return rows


# ----------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------
def print_speed_table(title: str, rows: List[Dict], workers_list: Sequence[int]) -> None:
    print(f"\n{title}")
    print(f"  {'decoder':<22}" + "".join(f"{'w=' + str(w):>10}" for w in workers_list))
    for d in dict.fromkeys(r["decoder"] for r in rows):
        cells = {r["workers"]: r["images_per_s"] for r in rows if r["decoder"] == d}
        if None in cells:
            print(f"  {d:<22}{cells[None]:10.1f}  (no decoding)")
        else:
            print(f"  {d:<22}" + "".join(f"{cells[w]:10.1f}" if w in cells else f"{'-':>10}" for w in workers_list))
    key = f"ratio_to_{REFERENCE}"
    for d in dict.fromkeys(r["decoder"] for r in rows if r.get(key)):
        ratios = {r["workers"]: r[key] for r in rows if r["decoder"] == d and r.get(key)}
        print(f"  {d + ' / ' + REFERENCE:<22}" + "".join(f"{ratios[w]:9.2f}x" if w in ratios else f"{'-':>10}"
                                                          for w in workers_list) + "  (median of per-round ratios)")


def print_report(rows: List[Dict], workers_list, args) -> None:
    per_image = [r for r in rows if r["section"] == "per-image"]
    print(f"\ndecode + resize + crop to {args.size}^2, ms per image in one process (each image by every decoder "
          f"in turn, best of {args.repeats})")
    print(f"  {'group':<10}{'images':>7}" + "".join(f"{d:>14}" for d in DECODERS) + "   share of pillow's time")
    for g in dict.fromkeys(r["group"] for r in per_image):
        cells = {r["decoder"]: r for r in per_image if r["group"] == g}
        print(f"  {g:<10}{cells[REFERENCE]['images']:>7}" + "".join(f"{cells[d]['ms_per_image']:14.2f}" for d in DECODERS)
              + f"   {cells[REFERENCE]['share_of_decode_time']:.2f}")
    decode = [r for r in rows if r["section"] == "decode"]
    print_speed_table(f"decode + resize + crop to {args.size}^2, images/s (median of {args.rounds} rounds, "
                      f"{decode[0]['images']} images, batch {decode[0]['batch']})", decode, workers_list)
    for batch in args.batch_sizes:
        fwd = [r for r in rows if r["section"] in ("forward", "decode+forward") and r["batch"] == batch]
        if fwd:
            print_speed_table(f"+ {args.model} forward, batch {batch}, images/s ({fwd[-1]['images']} images, "
                              f"{args.forward_rounds} round(s))", fwd, workers_list)
    for r in rows:
        if r["section"] == "pixels":
            print(f"\npixels of {r['decoder']} vs {r['against']} over {r['images']} images: mean |diff| "
                  f"{r['mean_abs_diff']:.3f}, max {r['max_abs_diff']}; {r['images_changed']} image(s) changed "
                  f"(their mean |diff| {r['mean_abs_diff_of_changed']:.3f}, "
                  f"worst image {r['max_mean_abs_diff_of_an_image']:.3f})"
                  + (f"; {r['pillow_fallbacks']} decoded by Pillow" if r["pillow_fallbacks"] else ""))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ints = lambda text: [int(v) for v in text.split(",") if v.strip()]  # noqa: E731
    parser.add_argument("--images", help="a folder of images (searched recursively); default: a generated set")
    parser.add_argument("--n", type=int, help="images (default 200 on CPU, 800 on GPU; --quick 6)")
    parser.add_argument("--size", type=int, help="output side (default 224; --quick 64)")
    parser.add_argument("--workers", type=ints, help="DataLoader worker counts, e.g. 0,1,2 (default 0, 1, 2, "
                        "then powers of two up to the core count)")
    parser.add_argument("--batch-sizes", type=ints, help="forward batch sizes (default 50 on CPU, 100,256 on GPU)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds of the decode rows (default 5; --quick 1)")
    parser.add_argument("--repeats", type=int, help="times each image is decoded by each decoder in the per-image "
                        "rows (default 3; --quick 1)")
    parser.add_argument("--forward-images", type=int, help="images of the forward rows (default 2 batches on CPU, "
                        "all on GPU)")
    parser.add_argument("--forward-rounds", type=int, help="rounds of the forward rows (default 1 on CPU, 3 on GPU)")
    parser.add_argument("--forward-warmup", action="store_true", help="an untimed pass of every forward row first "
                        "(default on GPU)")
    parser.add_argument("--no-forward", action="store_true", help="decode rows and pixel differences only")
    parser.add_argument("--model", default="resnet18-imagenet")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch threads of the main process for the forward "
                        "(default 2, the CI machines' cores; --quick 1)")
    parser.add_argument("--seed", type=int, default=0, help="of the generated set")
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds: few small images, one round")
    parser.add_argument("--out", help="JSON path (default bench/results/decode-<device>-<date>.json)")
    args = parser.parse_args(argv)
    gpu = args.device.startswith("cuda")
    cores = _cores()
    quick = dict(n=6, size=64, workers=[0, 1], batch_sizes=[3], rounds=1, repeats=1, forward_images=6,
                 forward_rounds=1, threads=1)
    full = dict(n=800 if gpu else 200, size=224, rounds=5, repeats=3, forward_rounds=3 if gpu else 1,
                batch_sizes=[100, 256] if gpu else [50], threads=2,
                workers=sorted({0, 1, min(2, cores)} | {2 ** k for k in range(1, 8) if 2 ** k <= cores}))
    defaults = quick if args.quick else full
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.forward_images is None:
        args.forward_images = args.n if gpu else 2 * max(args.batch_sizes)
    args.forward_warmup = args.forward_warmup or gpu
    for name in ("n", "size", "rounds", "repeats", "forward_images", "forward_rounds", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not args.workers or min(args.workers) < 0:
        parser.error(f"--workers must be counts >= 0, got {args.workers}")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        parser.error(f"--batch-sizes must be at least 1, got {args.batch_sizes}")
    if args.images is not None and not os.path.isdir(args.images):
        parser.error(f"--images: not a folder: {args.images}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    model = None if args.no_forward else create_model(args.model, 1000, image_size=args.size).to(device).eval()
    tvio = torchvision_io()
    decoders = list(DECODERS) + (["torchvision"] if not isinstance(tvio, str) else [])
    skipped = [] if not isinstance(tvio, str) else [{"decoder": "torchvision", "reason": tvio}]
    env = environment(device, args.threads)
    env.update(cpu_cores=_cores(), load_average_at_start=os.getloadavg(), pillow=_pillow_versions(),
               torchvision=None if isinstance(tvio, str) else __import__("torchvision").__version__,
               default_decoder=DEFAULT_DECODER)
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        if args.images:
            samples, source = existing_images(args.images, args.n), os.path.abspath(args.images)
        else:
            start = time.perf_counter()
            samples, source = generate_images(tmp, args.n, args.seed, args.quick), "generated"
            print(f"generated {len(samples)} images in {time.perf_counter() - start:.1f} s", flush=True)
        image_set = describe_set(samples, source)
        paths = [s["path"] for s in samples]
        print(f"{env['device']} | torch {env['torch']} | Pillow {env['pillow']['version']} "
              f"(libjpeg-turbo {env['pillow']['libjpeg_turbo']}) | threads {args.threads} | {len(paths)} images, "
              f"mean {image_set['mean_pixels'] / 1e3:.0f} kpixels, {image_set['bytes_per_pixel']:.2f} bytes/pixel "
              f"| groups {image_set['groups']} | kinds {image_set['kinds']}", flush=True)
        for s in skipped:
            print(f"skipped torchvision decoder: {s['reason']}; run this bench where torchvision is installed")
        # decode rows: 1 torch thread here (only collation runs in this process); with 2, OpenMP
        # threads waiting on a busy machine's cores halved the speed of w=0 (measured)
        torch.set_num_threads(1)
        rows = pixel_differences(decoders, paths, args.size, device)
        print("per-image rows ...", flush=True)
        rows += per_image_costs(samples, args.size, args.repeats)
        print("decode rows ...", flush=True)
        rows += bench_decode(decoders, paths, args.size, args.workers, args.batch_sizes[0], args.rounds, device)
        if model is not None:
            torch.set_num_threads(args.threads)
            with torch.inference_mode():  # first calls allocate (and pick cuDNN algorithms)
                model(torch.zeros(min(4, args.batch_sizes[0]), 3, args.size, args.size, device=device))
            forward_paths = paths[:args.forward_images]
            for batch in args.batch_sizes:
                print(f"forward rows, batch {batch} ...", flush=True)
                rows += bench_forward(model, decoders, forward_paths, args.size, args.workers, batch,
                                      args.forward_rounds, args.forward_warmup, device)
    print_report(rows, args.workers, args)
    env["load_average_at_end"] = os.getloadavg()  # other processes on the machine share its cores
    out = args.out or os.path.join(RESULTS, f"decode-{'gpu' if device.type == 'cuda' else 'cpu'}"
                                   f"{'-quick' if args.quick else ''}-{datetime.date.today()}.json")
    settings = {k: getattr(args, k) for k in ("size", "workers", "batch_sizes", "rounds", "repeats", "forward_images",
                                              "forward_rounds", "forward_warmup", "model", "quick", "seed")}
    write_json(out, {"environment": env, "settings": settings, "image_set": image_set, "skipped": skipped,
                     "results": rows})
    return 0


def _pillow_versions() -> Dict:
    import PIL
    from PIL import features
    return {"version": PIL.__version__, "libjpeg_turbo": features.version("libjpeg_turbo"),
            "libjpeg": features.version("jpg")}


if __name__ == "__main__":
    sys.exit(main())
