"""Readers and writers for the on-disk dataset formats, in one namespace.

Readers (strict: a bad file raises a ValueError / FileNotFoundError that names it):

- IDX (``.gz`` or raw), as used by (Fashion-)MNIST: :func:`read_idx`, :func:`read_idx_pair`
  (in :mod:`.idx`).
- CIFAR-10 / CIFAR-100 python pickle batches, loaded without running code:
  :func:`read_cifar_batch`, :func:`read_cifar` (in :mod:`.cifar`).
- Class-per-folder image trees: :func:`scan_class_folders`, :func:`scan_tiny_imagenet`,
  :func:`scan_imagenet`; :func:`decode_image` turns one file into a uint8 tensor (in
  :mod:`.folders`).
- Fashion-MNIST file search (the data root given and only there; else the Debian
  package's directory, then a download): :func:`locate_fashion_mnist` (here; its search
  places are this module's globals, which tests and users may override); a data root
  checked as a directory: :func:`data_root_dir`.

Writers for the same formats (tests, and to hand data to other tools): :func:`write_idx`,
:func:`write_cifar_batches`, :func:`write_image_folder`.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import urllib.error
import urllib.request
from typing import List, Optional, Sequence, Tuple

from .._io import host_writer_tag, remove_dead_writers_files
from ..config import home_expanded
from .cifar import CIFAR_URLS, read_cifar, read_cifar_batch, write_cifar_batches
from .folders import (
    IMAGE_EXTENSIONS,
    decode_image,
    scan_class_folders,
    scan_imagenet,
    scan_tiny_imagenet,
    write_image_folder,
)
from .idx import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_idx, read_idx_pair, write_idx

__all__ = [
    "IMAGE_EXTENSIONS", "read_idx", "write_idx", "read_idx_pair", "read_cifar_batch", "read_cifar",
    "write_cifar_batches", "scan_class_folders", "scan_tiny_imagenet", "scan_imagenet", "decode_image",
    "write_image_folder", "locate_fashion_mnist", "data_root_dir", "cache_dir", "FASHION_MNIST_FILES", "FASHION_MNIST_URL",
    "FASHION_MNIST_SYSTEM_DIRS", "IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC", "CIFAR_URLS",
]


# --------------------------------------------------------------------------- Fashion-MNIST

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Searched when no data root is given (module-level so that tests and users can override them).
FASHION_MNIST_SYSTEM_DIRS: List[str] = ["/usr/share/datasets/fashion-mnist"]  # Debian: dataset-fashion-mnist
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"  # Zalando's official files
DOWNLOAD_TIMEOUT = 15.0  # seconds per connection attempt


def cache_dir() -> str:
    """Download cache: ``$INFER_FAST_CACHE`` or ``~/.cache/infer_fast``."""
    return os.environ.get("INFER_FAST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "infer_fast")


def _files_of(directory: str, stems: Sequence[str]) -> List[Optional[str]]:
    """The path of each of ``stems`` in ``directory`` (``.gz`` or raw), None where it is missing."""
    found = []
    for stem in stems:
        hits = [os.path.join(directory, stem + ext) for ext in (".gz", "")]
        hits = [h for h in hits if os.path.isfile(h)]
        found.append(hits[0] if hits else None)
    return found


def _find_pair(directory: str, stems: Sequence[str]) -> Optional[Tuple[str, ...]]:
    """Paths of all ``stems`` (``.gz`` or raw) in ``directory``; None when none is there.

    A directory holding some of the files but not all is an error (it names the missing one)."""
    found = _files_of(directory, stems)
    if all(f is None for f in found):
        return None
    missing = [s for s, f in zip(stems, found) if f is None]
    if missing:
        raise FileNotFoundError(
            f"{directory} holds part of the dataset but not {', '.join(m + '[.gz]' for m in missing)}"
        )
    return tuple(found)


# a download's temporary file: ".<name>" + this + "<host>-<pid>" beside its destination
_DOWNLOADING_ON = ".download-"


def _download(url: str, dest: str) -> None:
    """``url`` into ``dest``, through a temporary file beside it checked to be an IDX file
    (what killed downloads of this host left there is removed first)."""
    folder = os.path.dirname(dest)
    os.makedirs(folder, exist_ok=True)
    remove_dead_writers_files(folder, _DOWNLOADING_ON)
    tmp = os.path.join(folder, f".{os.path.basename(dest)}{_DOWNLOADING_ON}{host_writer_tag()}")
    try:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
            shutil.copyfileobj(response, out, 1 << 20)
        read_idx(tmp)  # a broken or partial download must not land in the cache
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def data_root_dir(name: str, data_root, expected: str) -> str:
    """The directory ``data_root`` (``~`` expanded) of dataset ``name``; FileNotFoundError
    naming it, the option and ``expected`` (what it should hold) unless it is given and is a
    directory."""
    if data_root is None:
        raise FileNotFoundError(f"{name}: pass data_root (--data-root), the folder holding {expected}")
    root = home_expanded(os.fspath(data_root))
    if not os.path.isdir(root):
        problem = "is not a directory" if os.path.exists(root) else "does not exist"
        raise FileNotFoundError(f"{name}: data_root (--data-root) {root} {problem}; expected the folder holding "
                                f"{expected}")
    return root


def locate_fashion_mnist(split: str, data_root: Optional[str] = None, download: bool = True) -> Tuple[str, str]:
    """(images, labels) paths of a Fashion-MNIST split.

    With ``data_root``, only there: ``data_root`` itself, ``data_root/fashion-mnist`` and
    ``data_root/FashionMNIST/raw`` (torchvision's layout); a FileNotFoundError naming it
    when it is no directory or holds none of them (a root given is never passed over for
    other files). Without: (1) the Debian package's directory
    (:data:`FASHION_MNIST_SYSTEM_DIRS`); (2) the download cache, then a download from
    :data:`FASHION_MNIST_URL` into it (when ``download``). If all fail the
    FileNotFoundError names both places.
    """
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"fashion-mnist: split must be 'train' or 'test', got {split!r}")
    stems = FASHION_MNIST_FILES[split]
    if data_root is not None:
        return _locate_in_root(split, data_root)
    cache = os.path.join(cache_dir(), "fashion-mnist")
    for directory in FASHION_MNIST_SYSTEM_DIRS:
        pair = _find_pair(directory, stems) if os.path.isdir(directory) else None
        if pair is not None:
            return pair  # type: ignore[return-value]
    cached = _files_of(cache, stems)  # (a download that failed after its first file left that one: kept)
    if all(cached):
        return cached[0], cached[1]  # type: ignore[return-value]
    base = FASHION_MNIST_URL if FASHION_MNIST_URL.endswith("/") else FASHION_MNIST_URL + "/"
    if download:
        made = not os.path.isdir(cache)
        try:
            for i, stem in enumerate(stems):
                if cached[i] is None:  # (each file checked, then renamed into the cache: whole or absent)
                    cached[i] = os.path.join(cache, stem + ".gz")
                    _download(base + stem + ".gz", cached[i])
            return cached[0], cached[1]  # type: ignore[return-value]
        except (urllib.error.URLError, OSError, ValueError) as exc:
            outcome = f"failed ({type(exc).__name__}: {exc})"
            if made:  # (nothing landed: no empty folder left in the cache)
                with contextlib.suppress(OSError):
                    os.rmdir(cache)
    else:
        outcome = "not attempted (download=False)"
    raise FileNotFoundError(
        f"Fashion-MNIST {split!r} files ({stems[0]}[.gz], {stems[1]}[.gz]) not found. Tried: "
        f"(1) the Debian package dataset-fashion-mnist: {', '.join(FASHION_MNIST_SYSTEM_DIRS) or 'none'} "
        f"(`apt install dataset-fashion-mnist`); "
        f"(2) download from {base} into {cache}: {outcome}. "
        "Pass --data-root with the IDX files, or use the embedded 'fashion-mnist-mini'."
    )


def _locate_in_root(split: str, data_root) -> Tuple[str, str]:
    """(images, labels) of a Fashion-MNIST split in ``data_root``'s layouts, and nowhere else."""
    stems = FASHION_MNIST_FILES[split]
    wanted = f"the Fashion-MNIST IDX files {stems[0]}[.gz] and {stems[1]}[.gz]"
    root = data_root_dir("fashion-mnist", data_root, wanted)
    places = [root, os.path.join(root, "fashion-mnist"), os.path.join(root, "FashionMNIST", "raw")]
    for directory in places:
        pair = _find_pair(directory, stems) if os.path.isdir(directory) else None
        if pair is not None:
            return pair  # type: ignore[return-value]
    raise FileNotFoundError(f"fashion-mnist: data_root (--data-root) {root} does not hold {wanted} (looked in "
                            f"{', '.join(places)})")
