"""Regenerate the embedded Fashion-MNIST subset (``fashion_mnist_mini/``).

    python -m infer_fast.data.make_fashion_mnist_mini [--source /usr/share/datasets/fashion-mnist] [--out DIR]

Source: the full Fashion-MNIST IDX files (Debian package ``dataset-fashion-mnist``, or any
folder holding them). Selection: for every class, ``TRAIN_PER_CLASS`` training and
``TEST_PER_CLASS`` test images drawn without replacement with numpy's
``default_rng(SEED)`` (classes in order 0..9, train split first); the chosen indices are
kept in their original file order. Output: gzip IDX files (mtime 0, level 9), byte-for-byte
reproducible.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

if __package__ in (None, ""):  # run as a file: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from infer_fast.data.formats import FASHION_MNIST_FILES, read_idx_pair, write_idx  # noqa: E402

SEED = 20170825  # Fashion-MNIST's release date
TRAIN_PER_CLASS = 500
TEST_PER_CLASS = 100
NUM_CLASSES = 10
DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fashion_mnist_mini")


def _find(directory: str, stem: str) -> str:
    for ext in (".gz", ""):
        path = os.path.join(directory, stem + ext)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"{stem}[.gz] not found in {directory}")


def select(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices of every class, sorted (original file order)."""
    chosen = []
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has only {len(members)} images, need {per_class}")
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def make(source: str = DEFAULT_SOURCE, out: str = DEFAULT_OUT) -> None:
    rng = np.random.default_rng(SEED)
    os.makedirs(out, exist_ok=True)
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        img_stem, lbl_stem = FASHION_MNIST_FILES[split]
        images, labels = read_idx_pair(_find(source, img_stem), _find(source, lbl_stem), NUM_CLASSES)
        idx = select(labels.numpy(), per_class, rng)
        write_idx(os.path.join(out, img_stem + ".gz"), images[idx, 0])
        write_idx(os.path.join(out, lbl_stem + ".gz"), labels[idx].to(dtype=images.dtype))
        print(f"{split}: {len(idx)} of {len(labels)} images ({per_class} per class) -> {out}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="folder with the full Fashion-MNIST IDX files")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: the package's fashion_mnist_mini/)")
    args = parser.parse_args(argv)
    make(args.source, args.out)


if __name__ == "__main__":
    main()
