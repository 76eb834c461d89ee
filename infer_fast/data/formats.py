"""Readers and writers for the on-disk dataset formats.

Readers (strict: a bad file raises a ValueError / FileNotFoundError that names it):

- IDX (``.gz`` or raw), as used by (Fashion-)MNIST: :func:`read_idx`, :func:`read_idx_pair`.
- CIFAR-10 / CIFAR-100 python pickle batches: :func:`read_cifar_batch`, :func:`read_cifar`.
- Class-per-folder image trees: :func:`scan_class_folders` (generic ``root/<class>/<image>``),
  :func:`scan_tiny_imagenet` (``train/<wnid>/images/*.JPEG``; ``val/images`` with
  ``val/val_annotations.txt``, or val in class-folder form), :func:`scan_imagenet`
  (``train/<wnid>/*``, ``val/<wnid>/*``); :func:`decode_image` turns one file into a uint8
  tensor (shorter side resized, then center crop).
- Fashion-MNIST file search (data root, then the Debian package's directory, then a
  download): :func:`locate_fashion_mnist`.

Writers for the same formats (tests, and to hand data to other tools): :func:`write_idx`,
:func:`write_cifar_batches`, :func:`write_image_folder`.
"""
from __future__ import annotations

import gzip
import os
import pickle
import shutil
import struct
import tempfile
import urllib.error
import urllib.request
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from .._io import check_input_file

__all__ = [
    "IMAGE_EXTENSIONS", "read_idx", "write_idx", "read_idx_pair", "read_cifar_batch", "read_cifar",
    "write_cifar_batches", "scan_class_folders", "scan_tiny_imagenet", "scan_imagenet", "decode_image",
    "write_image_folder", "locate_fashion_mnist", "cache_dir", "FASHION_MNIST_FILES", "FASHION_MNIST_URL",
    "FASHION_MNIST_SYSTEM_DIRS",
]

# --------------------------------------------------------------------------------------- IDX

# IDX type codes (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).newbyteorder("=").str[1:]: k for k, v in _IDX_DTYPES.items()}  # "u1" -> 0x08 ...
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, H, W)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)


def _read_file_bytes(path: str) -> bytes:
    """Whole file content, gunzipped when the file is gzip (by content, not by name)."""
    path = check_input_file(path, "data file")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, gzip.BadGzipFile) as exc:
            raise ValueError(f"{path}: truncated or corrupt gzip file ({exc})") from None
    if path.endswith(".gz"):
        raise ValueError(f"{path}: named .gz but is not a gzip file")
    return raw


def read_idx(path: str, expected_magic: Optional[int] = None) -> torch.Tensor:
    """An IDX file (``.gz`` or raw) as a tensor of the shape its header gives.

    Raises ValueError for a wrong magic number (or one other than ``expected_magic``), a
    truncated file (fewer data bytes than the header's dimensions need) or trailing bytes.
    """
    path = os.fspath(path)
    data = _read_file_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(data)} bytes, no complete header)")
    magic = struct.unpack(">I", data[:4])[0]
    zero, code, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if expected_magic is not None and magic != expected_magic:
        what = {IDX_IMAGES_MAGIC: "images: ubyte, 3 dims", IDX_LABELS_MAGIC: "labels: ubyte, 1 dim"}.get(expected_magic, "")
        raise ValueError(
            f"{path}: wrong magic number 0x{magic:08X}, expected 0x{expected_magic:08X}"
            + (f" (IDX {what})" if what else "")
        )
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(f"{path}: wrong magic number 0x{magic:08X}: not an IDX file")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX file (header needs {header} bytes, file has {len(data)})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    count = int(np.prod(dims, dtype=np.int64))
    need, have = count * dtype.itemsize, len(data) - header
    if have < need:
        raise ValueError(
            f"{path}: truncated IDX file: header says {'x'.join(map(str, dims))} "
            f"({need} data bytes), the file holds {have}"
        )
    if have > need:
        raise ValueError(f"{path}: {have - need} unexpected bytes after the IDX data ({'x'.join(map(str, dims))})")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return torch.from_numpy(arr.astype(dtype.newbyteorder("="), copy=True))


def write_idx(path: str, array) -> str:
    """Write a tensor / array as an IDX file (gzip-compressed when ``path`` ends in ``.gz``)."""
    path = os.fspath(path)
    arr = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    key = arr.dtype.newbyteorder("=").str[1:]
    if key not in _IDX_CODES:
        raise ValueError(f"write_idx: dtype {arr.dtype} has no IDX type (use uint8, int8, int16, int32, float32, float64)")
    if arr.ndim == 0 or arr.ndim > 255:
        raise ValueError(f"write_idx: need 1 to 255 dimensions, got {arr.ndim}")
    code = _IDX_CODES[key]
    body = struct.pack(">I", (code << 8) | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    body += np.ascontiguousarray(arr, dtype=np.dtype(_IDX_DTYPES[code])).tobytes()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".gz"):
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
            f.write(body)
    else:
        with open(path, "wb") as f:
            f.write(body)
    return path


def read_idx_pair(images_path: str, labels_path: str, num_classes: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """An (images, labels) pair of IDX files: uint8 (N, 1, H, W) and int64 (N,)."""
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"label/image count mismatch: {images_path} holds {images.shape[0]} images, "
            f"{labels_path} holds {labels.shape[0]} labels"
        )
    labels = labels.long()
    if num_classes is not None and labels.numel() and int(labels.max()) >= num_classes:
        raise ValueError(f"{labels_path}: label {int(labels.max())} out of range for {num_classes} classes")
    return images.unsqueeze(1).contiguous(), labels


# --------------------------------------------------------------------------- Fashion-MNIST

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Searched after the data root (module-level so that tests and users can override them).
FASHION_MNIST_SYSTEM_DIRS: List[str] = ["/usr/share/datasets/fashion-mnist"]  # Debian: dataset-fashion-mnist
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"  # Zalando's official files
DOWNLOAD_TIMEOUT = 15.0  # seconds per connection attempt


def cache_dir() -> str:
    """Download cache: ``$INFER_FAST_CACHE`` or ``~/.cache/infer_fast``."""
    return os.environ.get("INFER_FAST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "infer_fast")


def _find_pair(directory: str, stems: Sequence[str]) -> Optional[Tuple[str, ...]]:
    """Paths of all ``stems`` (``.gz`` or raw) in ``directory``; None when none is there.

    A directory holding some of the files but not all is an error (it names the missing one)."""
    found = []
    for stem in stems:
        hits = [os.path.join(directory, stem + ext) for ext in (".gz", "")]
        hits = [h for h in hits if os.path.isfile(h)]
        found.append(hits[0] if hits else None)
    if all(f is None for f in found):
        return None
    missing = [s for s, f in zip(stems, found) if f is None]
    if missing:
        raise FileNotFoundError(
            f"{directory} holds part of the dataset but not {', '.join(m + '[.gz]' for m in missing)}"
        )
    return tuple(found)


def _download(url: str, dest: str) -> None:
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".download-", dir=os.path.dirname(dest))
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
            shutil.copyfileobj(response, out, 1 << 20)
        read_idx(tmp)  # a broken or partial download must not land in the cache
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def locate_fashion_mnist(split: str, data_root: Optional[str] = None, download: bool = True) -> Tuple[str, str]:
    """(images, labels) paths of a Fashion-MNIST split.

    Tried in order: (1) ``data_root`` itself, ``data_root/fashion-mnist`` and
    ``data_root/FashionMNIST/raw`` (torchvision's layout); (2) the Debian package's
    directory (:data:`FASHION_MNIST_SYSTEM_DIRS`); (3) the download cache, then a download
    from :data:`FASHION_MNIST_URL` into it (when ``download``). If all fail the
    FileNotFoundError names all three places.
    """
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"fashion-mnist: split must be 'train' or 'test', got {split!r}")
    stems = FASHION_MNIST_FILES[split]
    root_dirs = []
    if data_root is not None:
        data_root = os.fspath(data_root)
        root_dirs = [data_root, os.path.join(data_root, "fashion-mnist"), os.path.join(data_root, "FashionMNIST", "raw")]
    cache = os.path.join(cache_dir(), "fashion-mnist")
    for directory in root_dirs + list(FASHION_MNIST_SYSTEM_DIRS) + [cache]:
        pair = _find_pair(directory, stems) if os.path.isdir(directory) else None
        if pair is not None:
            return pair  # type: ignore[return-value]
    base = FASHION_MNIST_URL if FASHION_MNIST_URL.endswith("/") else FASHION_MNIST_URL + "/"
    if download:
        try:
            paths = []
            for stem in stems:
                dest = os.path.join(cache, stem + ".gz")
                _download(base + stem + ".gz", dest)
                paths.append(dest)
            return paths[0], paths[1]
        except (urllib.error.URLError, OSError, ValueError) as exc:
            outcome = f"failed ({type(exc).__name__}: {exc})"
    else:
        outcome = "not attempted (download=False)"
    tried_root = ", ".join(root_dirs) if root_dirs else "none given"
    raise FileNotFoundError(
        f"Fashion-MNIST {split!r} files ({stems[0]}[.gz], {stems[1]}[.gz]) not found. Tried: "
        f"(1) --data-root: {tried_root}; "
        f"(2) the Debian package dataset-fashion-mnist: {', '.join(FASHION_MNIST_SYSTEM_DIRS) or 'none'} "
        f"(`apt install dataset-fashion-mnist`); "
        f"(3) download from {base} into {cache}: {outcome}. "
        "Pass --data-root with the IDX files, or use the embedded 'fashion-mnist-mini'."
    )


# ----------------------------------------------------------------------------------- CIFAR

_CIFAR_LAYOUT = {
    # variant: (folder, train files, test files, meta file, label key, label-names key)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta", "labels", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}
CIFAR_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}


# The only globals a CIFAR pickle names: numpy arrays (as numpy 1 and numpy 2 pickle them) and
# bytes pickled with protocol 2 (_codecs.encode). Any other global could run code when
# unpickled (os.system, builtins.eval, ...): refused before it is even looked up.
_CIFAR_PICKLE_GLOBALS = frozenset({
    ("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
})


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _DataOnlyUnpickler(pickle.Unpickler):
    """Builds the dicts, lists, bytes, numbers and numpy arrays of a CIFAR pickle; refuses
    every other global (the way a crafted pickle runs code)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_PICKLE_GLOBALS:
            raise _RefusedGlobal(f"{module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: str):
    check_input_file(path, "CIFAR pickle file")
    try:
        with open(path, "rb") as f:
            return _DataOnlyUnpickler(f, encoding="bytes").load()
    except _RefusedGlobal as exc:
        raise ValueError(f"{path}: refused to load: the pickle names {exc}, which could run code (a CIFAR batch "
                         "holds only dicts, lists, bytes and numpy arrays)") from None
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, ImportError, IndexError, KeyError) as exc:
        raise ValueError(f"{path}: truncated or not a CIFAR python pickle ({type(exc).__name__}: {exc})") from None


def _get(d: dict, key: str):
    """A CIFAR dict entry under a bytes key (as the official files) or a str key."""
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def read_cifar_batch(path: str, label_key: str = "labels") -> Tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR pickle batch: uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    path = os.fspath(path)
    d = _unpickle(path)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: not a CIFAR batch (a pickled {type(d).__name__}, expected a dict)")
    data, labels = _get(d, "data"), _get(d, label_key)
    if data is None or labels is None:
        keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in d)
        raise ValueError(f"{path}: CIFAR batch without 'data' and {label_key!r} entries (has {keys})")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: CIFAR 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.shape[0] != data.shape[0]:
        raise ValueError(f"label/image count mismatch in {path}: {data.shape[0]} images, {labels.shape[0]} labels")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.copy())


def _cifar_dir(root: str, variant: str) -> str:
    folder, train_files = _CIFAR_LAYOUT[variant][0], _CIFAR_LAYOUT[variant][1]
    for candidate in (os.path.join(root, folder), root):
        if os.path.isdir(candidate) and any(os.path.exists(os.path.join(candidate, f)) for f in train_files + _CIFAR_LAYOUT[variant][2]):
            return candidate
    raise FileNotFoundError(
        f"{variant}: no {folder}/ under {root!r} (expected {folder}/{train_files[0]} ...; "
        f"get it from {CIFAR_URLS[variant]} and extract it into the data root)"
    )


def read_cifar(root: str, variant: str = "cifar10", split: str = "train") -> Tuple[torch.Tensor, torch.Tensor, Optional[Tuple[str, ...]]]:
    """A CIFAR-10/100 split from ``root`` (holding ``cifar-10-batches-py/`` or
    ``cifar-100-python/``, or being that folder): images, labels, class names (None when
    the meta file is absent)."""
    if variant not in _CIFAR_LAYOUT:
        raise ValueError(f"unknown CIFAR variant {variant!r} (cifar10 or cifar100)")
    if split not in ("train", "test"):
        raise ValueError(f"{variant}: split must be 'train' or 'test', got {split!r}")
    _, train_files, test_files, meta_file, label_key, names_key = _CIFAR_LAYOUT[variant]
    directory = _cifar_dir(os.fspath(root), variant)
    parts = [read_cifar_batch(os.path.join(directory, f), label_key) for f in (train_files if split == "train" else test_files)]
    images = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    names = None
    meta_path = os.path.join(directory, meta_file)
    if os.path.isfile(meta_path):
        meta = _unpickle(meta_path)
        raw = _get(meta, names_key) if isinstance(meta, dict) else None
        if raw is not None:
            names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in raw)
    return images, labels, names


def write_cifar_batches(
    root: str,
    train: Tuple,
    test: Tuple,
    variant: str = "cifar10",
    class_names: Optional[Sequence[str]] = None,
    num_train_batches: int = 5,
) -> str:
    """Write CIFAR python pickles as the official archives do, under ``root``: returns the
    folder (``cifar-10-batches-py`` or ``cifar-100-python``).

    ``train`` / ``test``: (images, labels) with uint8 images (N, 3, 32, 32). CIFAR-10's
    training set is split over ``num_train_batches`` data_batch_i files (5 officially)."""
    if variant not in _CIFAR_LAYOUT:
        raise ValueError(f"unknown CIFAR variant {variant!r} (cifar10 or cifar100)")
    folder, train_files, test_files, meta_file, label_key, names_key = _CIFAR_LAYOUT[variant]
    num_classes = 10 if variant == "cifar10" else 100
    if variant == "cifar10":
        train_files = [f"data_batch_{i}" for i in range(1, num_train_batches + 1)]
    directory = os.path.join(os.fspath(root), folder)
    os.makedirs(directory, exist_ok=True)

    def arrays(pair, what):
        images, labels = pair
        images = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        labels = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if images.dtype != np.uint8 or images.shape[1:] != (3, 32, 32):
            raise ValueError(f"write_cifar_batches: {what} images must be uint8 (N, 3, 32, 32), got {images.dtype} {images.shape}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"write_cifar_batches: {what} needs one label per image")
        return images.reshape(len(images), -1), [int(v) for v in labels]

    def dump(name, data, labels, batch_label):
        d = {b"batch_label": batch_label.encode(), label_key.encode(): labels, b"data": data,
             b"filenames": [f"{name}_{i:05d}.png".encode() for i in range(len(labels))]}
        if variant == "cifar100":
            d[b"coarse_labels"] = [0] * len(labels)
        with open(os.path.join(directory, name), "wb") as f:
            pickle.dump(d, f, protocol=2)

    data, labels = arrays(train, "train")
    chunks = np.array_split(np.arange(len(labels)), len(train_files))
    for i, (name, idx) in enumerate(zip(train_files, chunks)):
        dump(name, data[idx], [labels[j] for j in idx], f"training batch {i + 1} of {len(train_files)}")
    data, labels = arrays(test, "test")
    dump(test_files[0], data, labels, "testing batch 1 of 1")
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(num_classes)]
    meta = {names_key.encode(): [n.encode() for n in names]}
    if variant == "cifar10":
        meta.update({b"num_cases_per_batch": int(len(chunks[0])), b"num_vis": 3072})
    else:
        meta[b"coarse_label_names"] = [b"coarse"]
    with open(os.path.join(directory, meta_file), "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return directory


# ----------------------------------------------------------------------------- image folders

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif")


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            "image-folder datasets need Pillow to decode images: `pip install pillow`"
        ) from None
    return Image


def _image_files(directory: str) -> List[str]:
    """Image files directly in ``directory`` (sorted; other files and hidden files skipped)."""
    with os.scandir(directory) as it:
        names = [e.name for e in it if not e.name.startswith(".") and e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
    return [os.path.join(directory, n) for n in sorted(names)]


def _subdirs(directory: str) -> List[str]:
    with os.scandir(directory) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def scan_class_folders(
    root: str, class_names: Optional[Sequence[str]] = None, inner: Optional[str] = None
) -> Tuple[List[Tuple[str, int]], Tuple[str, ...]]:
    """Samples ``(path, label)`` of a ``root/<class>/<image>`` tree and the class names.

    Classes are the sorted sub-folder names (label = index), as torchvision's ImageFolder,
    unless ``class_names`` fixes them (a val split uses the training classes): a folder
    that is not one of them is an error, a class without a folder has no samples.
    ``inner``: images sit in ``<class>/<inner>/`` when that folder exists (Tiny-ImageNet's
    ``images``). Non-image files are skipped; a class folder without images is an error.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder not found: {root}")
    folders = _subdirs(root)
    if not folders:
        loose = _image_files(root)
        hint = f" (it holds {len(loose)} loose images: put them in one folder per class)" if loose else ""
        raise ValueError(f"no class folders under {root}{hint}")
    if class_names is None:
        class_names = tuple(folders)
    else:
        class_names = tuple(class_names)
        index = set(class_names)
        stray = [f for f in folders if f not in index]
        if stray:
            raise ValueError(f"{root}: class folder(s) {stray[:5]} are not among the {len(class_names)} known classes")
    label_of = {name: i for i, name in enumerate(class_names)}
    samples: List[Tuple[str, int]] = []
    for name in folders:
        directory = os.path.join(root, name)
        if inner and os.path.isdir(os.path.join(directory, inner)):
            directory = os.path.join(directory, inner)
        files = _image_files(directory)
        if not files:
            raise ValueError(f"empty class folder: {directory} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        samples.extend((p, label_of[name]) for p in files)
    return samples, class_names


def _tiny_root(root: str) -> str:
    for candidate in (os.path.join(root, "tiny-imagenet-200"), root):
        if os.path.isfile(os.path.join(candidate, "wnids.txt")) or os.path.isdir(os.path.join(candidate, "train")):
            return candidate
    raise FileNotFoundError(
        f"tiny-imagenet: no tiny-imagenet-200/ (with wnids.txt and train/) under {root!r}; get it from "
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip and extract it into the data root"
    )


def scan_tiny_imagenet(root: str, split: str = "train") -> Tuple[List[Tuple[str, int]], Tuple[str, ...]]:
    """Tiny-ImageNet-200 samples and class names (sorted wnids, as torchvision's ImageFolder).

    ``split``: "train" (``train/<wnid>/images/*.JPEG``) or "val"/"test" (``val/images`` +
    ``val/val_annotations.txt``, or ``val/<wnid>/[images/]*``): the official test split
    has no labels, so val is the test split."""
    base = _tiny_root(os.fspath(root))
    wnids_path = os.path.join(base, "wnids.txt")
    train_dir = os.path.join(base, "train")
    if os.path.isfile(wnids_path):
        with open(wnids_path) as f:
            classes = tuple(sorted({line.strip() for line in f if line.strip()}))
        if not classes:
            raise ValueError(f"{wnids_path} lists no classes")
    elif os.path.isdir(train_dir):
        classes = tuple(_subdirs(train_dir))
    else:
        raise FileNotFoundError(f"tiny-imagenet: neither {wnids_path} nor {train_dir} exists")
    if split == "train":
        samples, _ = scan_class_folders(train_dir, classes, inner="images")
        return samples, classes
    if split not in ("val", "test"):
        raise ValueError(f"tiny-imagenet: split must be 'train' or 'test' (= val), got {split!r}")
    val_dir = os.path.join(base, "val")
    if not os.path.isdir(val_dir):
        raise FileNotFoundError(f"tiny-imagenet: val folder not found: {val_dir}")
    annotations = os.path.join(val_dir, "val_annotations.txt")
    if not os.path.isfile(annotations):
        if os.path.isdir(os.path.join(val_dir, "images")) and "images" not in classes:
            raise FileNotFoundError(f"tiny-imagenet: {val_dir}/images needs its labels file {annotations}")
        samples, _ = scan_class_folders(val_dir, classes, inner="images")
        return samples, classes
    label_of = {c: i for i, c in enumerate(classes)}
    samples = []
    with open(annotations) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise ValueError(f"{annotations}:{lineno}: expected '<file> <wnid> ...', got {line.strip()!r}")
            name, wnid = fields[0], fields[1]
            if wnid not in label_of:
                raise ValueError(f"{annotations}:{lineno}: class {wnid!r} is not in wnids.txt")
            path = os.path.join(val_dir, "images", name)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{annotations}:{lineno}: image file not found: {path}")
            samples.append((path, label_of[wnid]))
    if not samples:
        raise ValueError(f"{annotations} lists no images")
    samples.sort()
    return samples, classes


def scan_imagenet(root: str, split: str = "train") -> Tuple[List[Tuple[str, int]], Tuple[str, ...]]:
    """ImageNet samples and classes: ``train/<wnid>/*.JPEG``; ``val/<wnid>/*.JPEG`` for
    "val"/"test" (val in class-folder form, labels from the training classes)."""
    root = os.fspath(root)
    base = root
    if not any(os.path.isdir(os.path.join(root, s)) for s in ("train", "val")) and os.path.isdir(os.path.join(root, "imagenet")):
        base = os.path.join(root, "imagenet")
    train_dir, val_dir = os.path.join(base, "train"), os.path.join(base, "val")
    if split not in ("train", "val", "test"):
        raise ValueError(f"imagenet: split must be 'train' or 'test' (= val), got {split!r}")
    if split == "train":
        if not os.path.isdir(train_dir):
            raise FileNotFoundError(f"imagenet: training folder not found: {train_dir} (expected train/<wnid>/*.JPEG)")
        return scan_class_folders(train_dir)
    if not os.path.isdir(val_dir):
        raise FileNotFoundError(f"imagenet: validation folder not found: {val_dir} (expected val/<wnid>/*.JPEG)")
    if not _subdirs(val_dir) and _image_files(val_dir):
        raise ValueError(
            f"imagenet: {val_dir} holds flat images; the val split must be in class-folder form "
            "(val/<wnid>/*.JPEG, e.g. with the usual valprep.sh)"
        )
    classes = tuple(_subdirs(train_dir)) if os.path.isdir(train_dir) else None
    return scan_class_folders(val_dir, classes)


def decode_image(path: str, size: int, channels: int = 3) -> torch.Tensor:
    """One image file as uint8 (channels, size, size): the shorter side is resized to
    ``size`` (bilinear, antialiased by Pillow when shrinking), then center-cropped. An image
    already ``size`` x ``size`` is not resampled (exact pixels)."""
    Image = _pillow()
    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            w, h = im.size
            if (w, h) != (size, size):
                scale = size / min(w, h)
                nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                if (nw, nh) != (w, h):
                    im = im.resize((nw, nh), Image.BILINEAR)
                left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
                im = im.crop((left, top, left + size, top + size))
            arr = np.array(im, dtype=np.uint8)  # a writable copy
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow: UnidentifiedImageError is an OSError
        raise ValueError(f"cannot decode image {path}: {exc}") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _safe_folder_name(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_. " else "_" for ch in str(name)).strip()
    if cleaned in ("", ".", ".."):
        raise ValueError(f"class name {name!r} cannot be a folder name")
    return cleaned


def write_image_folder(
    root: str,
    images,
    labels,
    class_names: Optional[Sequence[str]] = None,
    ext: str = "png",
    inner: Optional[str] = None,
    quality: int = 95,
) -> List[str]:
    """Write uint8 images (N, ch, H, W) as ``root/<class>/[<inner>/]<i>.<ext>``; returns the paths.

    Class folders are named by ``class_names`` (characters other than letters, digits,
    ``-_. `` become ``_``) or, by default, by the zero-padded class index, so reading back
    (classes = sorted folder names) gives the same labels. PNG/BMP are lossless; JPEG
    (``quality``) is not."""
    Image = _pillow()
    images = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    labels = torch.as_tensor(labels).reshape(-1)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"write_image_folder: images must be uint8 (N, 1 or 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"write_image_folder: {images.shape[0]} images but {labels.shape[0]} labels")
    num_classes = int(labels.max()) + 1 if labels.numel() else 0
    if class_names is not None:
        folders = [_safe_folder_name(n) for n in class_names]
        if num_classes > len(folders):
            raise ValueError(f"write_image_folder: label {num_classes - 1} has no name among {len(folders)} class names")
        if len(set(folders)) != len(folders):
            raise ValueError("write_image_folder: class names collide as folder names")
    else:
        width = max(1, len(str(max(num_classes - 1, 0))))
        folders = [f"{i:0{width}d}" for i in range(num_classes)]
    ext = ext.lower().lstrip(".")
    arrays = images.detach().cpu().numpy()
    paths = []
    digits = max(5, len(str(len(arrays))))
    for i, (arr, label) in enumerate(zip(arrays, labels.tolist())):
        directory = os.path.join(os.fspath(root), folders[label], inner) if inner else os.path.join(os.fspath(root), folders[label])
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"{i:0{digits}d}.{ext}")
        im = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
        if ext in ("jpg", "jpeg"):
            im.save(path, quality=quality)
        else:
            im.save(path)
        paths.append(path)
    return paths
