"""CIFAR-10 / CIFAR-100 python pickle batches: :func:`read_cifar_batch`, :func:`read_cifar`
and the writer :func:`write_cifar_batches`.

The pickles are loaded by an unpickler that builds only the data a CIFAR batch holds
(dicts, lists, bytes, numbers, numpy arrays) and refuses every other global, so a crafted
file cannot run code. A bad file raises a ValueError / FileNotFoundError that names it.
"""
from __future__ import annotations

import os
import pickle
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from .._io import check_input_file
from .idx import check_label_range

__all__ = ["read_cifar_batch", "read_cifar", "write_cifar_batches", "cifar_folder", "CIFAR_URLS"]


_CIFAR_LAYOUT = {
    # variant: (folder, train files, test files, meta file, label key, label-names key)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta", "labels", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}
_CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}
CIFAR_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}


def cifar_folder(variant: str) -> str:
    """The folder a CIFAR variant's pickles come in ("cifar-10-batches-py")."""
    return _CIFAR_LAYOUT[variant][0]


# The only globals a CIFAR pickle names: numpy arrays (as numpy 1 and numpy 2 pickle them:
# _reconstruct up to protocol 4, _frombuffer from protocol 5, which only builds an array of a
# plain dtype over the pickled bytes) and bytes pickled with protocol 2 (_codecs.encode). Any
# other global could run code when unpickled (os.system, builtins.eval, ...): refused before it
# is even looked up.
_CIFAR_PICKLE_GLOBALS = frozenset({
    ("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
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
    parts = []
    for name in train_files if split == "train" else test_files:
        path = os.path.join(directory, name)
        parts.append(read_cifar_batch(path, label_key))
        check_label_range(path, parts[-1][1], _CIFAR_CLASSES[variant])
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
    num_classes = _CIFAR_CLASSES[variant]
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
