"""Datasets: a registry of specs and loaders for the on-disk formats INFER runs on.

    from infer_fast.data import load_dataset, get_spec
    train = load_dataset("fashion-mnist-mini", "train")        # embedded, no download
    train = load_dataset("cifar10", "train", data_root="~/data")
    x = train.per_class(10, seed=0).normalized()               # float32 (100, 3, 32, 32)

Registered: fashion-mnist (IDX; --data-root, then /usr/share/datasets/fashion-mnist/, then a
download), fashion-mnist-mini (embedded subset), cifar10 / cifar100 (python pickles),
tiny-imagenet, imagenet (class folders) and imagefolder (``root/<split>/<class>/<image>``).

Sets that fit in memory are decoded once into uint8 tensors (:class:`ImageSet`); ImageNet
stays on disk by default (:class:`FolderImageSet`, decoded lazily; ``to_memory()`` decodes
everything with worker processes).

Modules: ``registry`` (the specs), ``formats`` (readers and writers of the on-disk formats,
gathered from ``idx``, ``cifar`` and ``folders``), ``transforms`` (normalization and batched
augmentations), ``pixels`` (uint8 pixels <-> normalized space as the distilled-set format
stores them: ``normalize_uint8``, ``denormalize``, ``quantize_images``, ``valid_range``).
"""
from __future__ import annotations

import importlib.resources
import os
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset

from . import formats, transforms
from .formats import (
    decode_image,
    read_cifar,
    read_idx,
    read_idx_pair,
    scan_class_folders,
    scan_imagenet,
    scan_tiny_imagenet,
    write_cifar_batches,
    write_idx,
    write_image_folder,
)
from .registry import FOLDER_DATASETS, DatasetSpec, canonical_name, get_spec, list_datasets
from .transforms import denormalize, normalize, random_crop_with_padding, random_flip, random_resized_crop

__all__ = [
    "DatasetSpec", "ImageSet", "FolderImageSet", "get_spec", "list_datasets", "load_dataset",
    "normalize", "denormalize", "random_crop_with_padding", "random_flip", "random_resized_crop",
    "read_idx", "read_idx_pair", "read_cifar", "write_idx", "write_cifar_batches", "write_image_folder",
    "scan_class_folders", "scan_tiny_imagenet", "scan_imagenet", "decode_image", "embedded_file",
    "formats", "transforms",
]

MINI_PACKAGE_DIR = "fashion_mnist_mini"


def _as_index(indices, n: int) -> torch.Tensor:
    idx = torch.as_tensor(indices)
    if idx.dtype == torch.bool:
        if idx.shape != (n,):
            raise ValueError(f"boolean mask of shape {tuple(idx.shape)} for {n} samples")
        return idx.nonzero().squeeze(1)
    idx = idx.long().reshape(-1)
    if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
        raise IndexError(f"index out of range for {n} samples")
    return idx


def _per_class_indices(labels: torch.Tensor, num_classes: int, per_class: int, seed: int) -> torch.Tensor:
    """``per_class`` random indices of every class (torch.Generator seeded with ``seed``),
    class-major: all of class 0, then class 1, ..."""
    if not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}")
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    chosen, start = [], 0
    short = [(c, k) for c, k in enumerate(counts) if k < per_class]
    if short:
        c, k = short[0]
        raise ValueError(
            f"per_class({per_class}): class {c} has only {k} samples"
            + (f" ({len(short)} classes have fewer than {per_class})" if len(short) > 1 else "")
        )
    for k in counts:
        members = order[start : start + k]
        chosen.append(members[torch.randperm(k, generator=gen)[:per_class]])
        start += k
    return torch.cat(chosen)


class ImageSet(Dataset):
    """A split held in memory: ``images`` uint8 (N, ch, H, W), ``labels`` int64 (N,)."""

    def __init__(self, spec: DatasetSpec, images: torch.Tensor, labels: torch.Tensor, split: str = "train"):
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"ImageSet: images must be a uint8 tensor (N, ch, H, W), got {getattr(images, 'dtype', type(images))} {tuple(getattr(images, 'shape', ()))}")
        expected = (spec.channels, spec.image_size, spec.image_size)
        if tuple(images.shape[1:]) != expected:
            raise ValueError(f"ImageSet {spec.name}: images are {tuple(images.shape[1:])}, the spec says {expected}")
        labels = torch.as_tensor(labels).long().reshape(-1)
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"ImageSet {spec.name}: label/image count mismatch ({images.shape[0]} images, {labels.shape[0]} labels)")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= spec.num_classes):
            raise ValueError(f"ImageSet {spec.name}: labels must lie in [0, {spec.num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
        self.spec, self.images, self.labels, self.split = spec, images, labels, split

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i) -> Tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def __repr__(self) -> str:
        return f"ImageSet({self.spec.name!r}, split={self.split!r}, n={len(self)}, shape={tuple(self.images.shape[1:])}, classes={self.spec.num_classes})"

    def subset(self, indices) -> "ImageSet":
        """The samples at ``indices`` (ints, a tensor, or a boolean mask), in that order."""
        idx = _as_index(indices, len(self))
        return ImageSet(self.spec, self.images[idx], self.labels[idx], self.split)

    def per_class(self, per_class: int, seed: int = 0) -> "ImageSet":
        """A class-balanced random subset: ``per_class`` samples of every class, class-major
        (all of class 0 first); the same seed picks the same samples."""
        return self.subset(_per_class_indices(self.labels, self.spec.num_classes, per_class, seed))

    def shuffled(self, seed: int) -> "ImageSet":
        """All samples in a random order fixed by ``seed``."""
        return self.subset(torch.randperm(len(self), generator=torch.Generator().manual_seed(int(seed))))

    def class_counts(self) -> torch.Tensor:
        """Samples per class, int64 (num_classes,)."""
        return torch.bincount(self.labels, minlength=self.spec.num_classes)

    def normalized(self, indices=None) -> torch.Tensor:
        """float32 images normalized with the spec's mean/std (all, or those at ``indices``)."""
        images = self.images if indices is None else self.images[_as_index(indices, len(self))]
        return normalize(images, self.spec.mean, self.spec.std)


class FolderImageSet(Dataset):
    """A split kept on disk as image files, decoded lazily with Pillow (resized so that the
    shorter side is ``spec.image_size``, then center-cropped): items are (uint8 (ch, S, S), label).
    Labels are known without decoding, so ``per_class`` / ``subset`` are cheap."""

    def __init__(self, spec: DatasetSpec, samples: Sequence[Tuple[str, int]], split: str = "train"):
        self.spec, self.split = spec, split
        self.paths: List[str] = [p for p, _ in samples]
        self.labels = torch.tensor([int(y) for _, y in samples], dtype=torch.long)
        if self.labels.numel() and int(self.labels.max()) >= spec.num_classes:
            raise ValueError(f"FolderImageSet {spec.name}: label {int(self.labels.max())} out of range for {spec.num_classes} classes")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i) -> Tuple[torch.Tensor, int]:
        return decode_image(self.paths[i], self.spec.image_size, self.spec.channels), int(self.labels[i])

    def __repr__(self) -> str:
        return f"FolderImageSet({self.spec.name!r}, split={self.split!r}, n={len(self)}, size={self.spec.image_size}, classes={self.spec.num_classes})"

    def subset(self, indices) -> "FolderImageSet":
        idx = _as_index(indices, len(self)).tolist()
        return FolderImageSet(self.spec, [(self.paths[i], int(self.labels[i])) for i in idx], self.split)

    def per_class(self, per_class: int, seed: int = 0) -> "FolderImageSet":
        """As :meth:`ImageSet.per_class` (same selection for the same labels and seed)."""
        return self.subset(_per_class_indices(self.labels, self.spec.num_classes, per_class, seed))

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=self.spec.num_classes)

    def to_memory(self, num_workers: Optional[int] = None, batch_size: int = 256) -> ImageSet:
        """Decode every image into an :class:`ImageSet`, in order. ``num_workers`` decoding
        processes (DataLoader workers); None: up to 8 for large sets (2,000 images or more)
        on machines with 4 or more cores, none otherwise."""
        n = len(self)
        if num_workers is None:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            num_workers = 0 if n < 2000 or cpus < 4 else min(8, cpus)
        s, ch = self.spec.image_size, self.spec.channels
        images = torch.empty((n, ch, s, s), dtype=torch.uint8)
        if num_workers <= 0:
            for i in range(n):
                images[i] = decode_image(self.paths[i], s, ch)
        else:
            loader = torch.utils.data.DataLoader(self, batch_size=batch_size, shuffle=False, num_workers=num_workers)
            start = 0
            for batch, _ in loader:
                images[start : start + len(batch)] = batch
                start += len(batch)
        return ImageSet(self.spec, images, self.labels.clone(), self.split)


def embedded_file(name: str):
    """A context manager giving a filesystem path to one of the embedded Fashion-MNIST-mini files."""
    return importlib.resources.as_file(importlib.resources.files(__name__).joinpath(MINI_PACKAGE_DIR, name))


def _check_split(name: str, split: str, allowed: Tuple[str, ...]) -> str:
    if split not in allowed:
        raise ValueError(f"{name}: split must be one of {', '.join(allowed)}, got {split!r}")
    return split


def _need_root(name: str, data_root, expected: str) -> str:
    if data_root is None:
        raise FileNotFoundError(f"{name}: pass data_root (--data-root), the folder holding {expected}")
    root = os.path.expanduser(os.fspath(data_root))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{name}: data root {root} does not exist")
    return root


def _check_class_count(name: str, where: str, found: int, requested: Optional[int], default: Optional[int]) -> None:
    expected = requested if requested is not None else default
    if expected is not None and found != expected:
        source = "num_classes requested" if requested is not None else f"{name} has {default}; pass num_classes={found} for a subset"
        raise ValueError(f"{name} at {where}: found {found} classes, expected {expected} ({source})")


def load_dataset(
    name: str,
    split: str = "train",
    data_root: Optional[str] = None,
    num_classes: Optional[int] = None,
    download: bool = True,
    in_memory: Optional[bool] = None,
    *,
    image_size: Optional[int] = None,
    channels: Optional[int] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    num_workers: Optional[int] = None,
) -> Union[ImageSet, FolderImageSet]:
    """Load one split ("train" or "test"; folder datasets also take "val" = "test").

    - ``num_classes``: the class count you expect; a dataset with another raises ValueError.
    - ``download``: fashion-mnist only (the others have no automatic download).
    - ``in_memory``: folder datasets: decode everything into an :class:`ImageSet` (default for
      all but imagenet) or return a lazy :class:`FolderImageSet`. Array datasets are always
      in memory.
    - ``image_size`` (folder datasets), ``channels`` / ``mean`` / ``std`` (imagefolder; 3 /
      0.5 per channel by default), ``num_workers``: decoding processes for ``to_memory``.
    """
    key = canonical_name(name)
    if key == "fashion-mnist" or key == "fashion-mnist-mini":
        _check_split(key, split, ("train", "test"))
        spec = get_spec(key, num_classes, image_size, mean=mean, std=std)
        stems = formats.FASHION_MNIST_FILES[split]
        if key == "fashion-mnist":
            img_path, lbl_path = formats.locate_fashion_mnist(split, data_root, download)
            images, labels = read_idx_pair(img_path, lbl_path, spec.num_classes)
        else:
            with embedded_file(stems[0] + ".gz") as img_path, embedded_file(stems[1] + ".gz") as lbl_path:
                images, labels = read_idx_pair(img_path, lbl_path, spec.num_classes)
        if tuple(images.shape[2:]) != (28, 28):
            raise ValueError(f"{img_path}: Fashion-MNIST images are 28x28, this file holds {tuple(images.shape[2:])}")
        return ImageSet(spec, images, labels, split)

    if key in ("cifar10", "cifar100"):
        _check_split(key, split, ("train", "test"))
        spec = get_spec(key, num_classes, image_size, mean=mean, std=std)
        folder = "cifar-10-batches-py/" if key == "cifar10" else "cifar-100-python/"
        root = _need_root(key, data_root, folder)
        images, labels, names = read_cifar(root, key, split)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= spec.num_classes):
            raise ValueError(f"{key} at {root}: label {int(labels.max())} out of range for {spec.num_classes} classes")
        if names is not None and len(names) != spec.num_classes:
            raise ValueError(f"{key} at {root}: the meta file names {len(names)} classes, expected {spec.num_classes}")
        if names is not None and names != spec.class_names:
            spec = get_spec(key, num_classes, image_size, mean=mean, std=std, class_names=names)
        return ImageSet(spec, images, labels, split)

    assert key in FOLDER_DATASETS
    _check_split(key, split, ("train", "test", "val"))
    if key == "tiny-imagenet":
        root = _need_root(key, data_root, "tiny-imagenet-200/")
        samples, classes = scan_tiny_imagenet(root, split)
        _check_class_count(key, root, len(classes), num_classes, get_spec(key).num_classes)
        spec = get_spec(key, len(classes), image_size, mean=mean, std=std, class_names=classes)
    elif key == "imagenet":
        root = _need_root(key, data_root, "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG")
        samples, classes = scan_imagenet(root, split)
        _check_class_count(key, root, len(classes), num_classes, get_spec(key).num_classes)
        spec = get_spec(key, len(classes), image_size, mean=mean, std=std, class_names=classes)
    else:
        root = _need_root(key, data_root, "<split>/<class>/<image> folders")
        names = [split] + {"test": ["val"], "val": ["test"]}.get(split, [])
        split_dir = next((os.path.join(root, s) for s in names if os.path.isdir(os.path.join(root, s))), None)
        if split_dir is None:
            raise FileNotFoundError(
                f"imagefolder: no {' or '.join(n + '/' for n in names)} folder under {root} "
                f"(expected {root}/{split}/<class>/<image>)"
            )
        train_dir = os.path.join(root, "train")
        classes = None
        if split != "train" and os.path.isdir(train_dir):
            classes = tuple(d for d in sorted(os.listdir(train_dir)) if not d.startswith(".") and os.path.isdir(os.path.join(train_dir, d)))
        samples, classes = scan_class_folders(split_dir, classes)
        _check_class_count(key, split_dir, len(classes), num_classes, None)
        spec = get_spec(key, len(classes), image_size, channels=channels, mean=mean, std=std, class_names=classes)
    lazy = FolderImageSet(spec, samples, split)
    if in_memory is None:
        in_memory = key != "imagenet"
    return lazy.to_memory(num_workers) if in_memory else lazy
