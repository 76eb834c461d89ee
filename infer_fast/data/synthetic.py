"""A fake ImageNet tree of the real layout, for rehearsing a run before the data is at hand
(and for the tests): ``train/<wnid>/<wnid>_<i>.JPEG`` and ``val/<wnid>/ILSVRC2012_val_<i>.JPEG``
with what the real files hold: JPEGs of many sizes (160x120 to 2000x1500), a few grayscale
and CMYK ones, and one PNG named ``.JPEG`` (the real train split has such a file).

    from infer_fast.data.synthetic import write_fake_imagenet
    write_fake_imagenet("/tmp/fake-in1k", classes=1000, train_per_class=3, val_per_class=1)

The pixels are smooth random fields (upsampled noise), not photographs: for timing the
input pipeline and memory, not for accuracy.
"""
from __future__ import annotations

import os
from typing import Dict, Tuple

import numpy as np

from ..checks import check_int
from ..imagenet_wnids import IMAGENET_WNIDS

__all__ = ["write_fake_imagenet", "IMAGENET_SIZES"]

# (width, height): the common ImageNet shapes, and the extremes
IMAGENET_SIZES = ((500, 375), (375, 500), (500, 333), (160, 120), (640, 480), (2000, 1500), (500, 500))


def _image(rng: np.random.Generator, size: Tuple[int, int], mode: str):
    from PIL import Image

    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    im = Image.fromarray(coarse, "RGB").resize(size, Image.BILINEAR)
    return im.convert(mode) if mode != "RGB" else im


def write_fake_imagenet(root, classes: int = 1000, train_per_class: int = 3, val_per_class: int = 1,
                        seed: int = 0, quality: int = 85) -> Dict[str, int]:
    """Write the tree under ``root`` (which may exist; files are overwritten); returns the
    counts {"train": n, "val": n, "grayscale": n, "cmyk": n, "png_named_jpeg": 1}. Every 7th
    image is grayscale, every 11th CMYK; the first training image of the second class is a
    PNG named .JPEG. Sizes cycle through :data:`IMAGENET_SIZES`. Class folders are ImageNet's
    wnids (the first ``classes``), so a pretrained teacher's classes match a 1000-class tree."""
    for name, value in (("classes", classes), ("train_per_class", train_per_class), ("val_per_class", val_per_class)):
        check_int(name, value)
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "val": 0, "grayscale": 0, "cmyk": 0, "png_named_jpeg": 0}
    number = 0
    for c in range(classes):
        # the real wnids (the first ``classes`` of them, sorted): a pretrained ImageNet teacher's classes
        wnid = IMAGENET_WNIDS[c] if c < len(IMAGENET_WNIDS) else f"n{90000000 + c:08d}"
        for split, per_class in (("train", train_per_class), ("val", val_per_class)):
            directory = os.path.join(os.fspath(root), split, wnid)
            os.makedirs(directory, exist_ok=True)
            for i in range(per_class):
                number += 1
                mode = "L" if number % 7 == 0 else "CMYK" if number % 11 == 0 else "RGB"
                im = _image(rng, IMAGENET_SIZES[number % len(IMAGENET_SIZES)], mode)
                name = f"{wnid}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{number:08d}.JPEG"
                path = os.path.join(directory, name)
                if split == "train" and c == min(1, classes - 1) and i == 0 and not counts["png_named_jpeg"]:
                    im.convert("RGB").save(path, format="PNG")  # as n02105855_2933.JPEG in the real split
                    counts["png_named_jpeg"] = 1
                else:
                    im.save(path, format="JPEG", quality=quality)
                    counts["grayscale"] += mode == "L"
                    counts["cmyk"] += mode == "CMYK"
                counts[split] += 1
    return counts
