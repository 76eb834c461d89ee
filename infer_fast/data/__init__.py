"""Datasets: a registry of specs and loaders for the on-disk formats INFER runs on.

    from infer_fast.data import load_dataset, get_spec
    train = load_dataset("fashion-mnist-mini", "train")        # embedded, no download
    train = load_dataset("cifar10", "train", data_root="~/data")
    x = train.per_class(10, seed=0).normalized()               # float32 (100, 3, 32, 32)

Registered: fashion-mnist (IDX; --data-root, then /usr/share/datasets/fashion-mnist/, then a
download), fashion-mnist-mini (embedded subset), cifar10 / cifar100 (python pickles),
tiny-imagenet, imagenet (class folders) and imagefolder (``root/<split>/<class>/<image>``).

Sets that fit in memory are decoded once into uint8 tensors (:class:`ImageSet`); ImageNet
stays on disk by default (:class:`FolderImageSet`, decoded lazily by DataLoader workers).
Both have one interface (``sets``): labels without decoding, ``images_at``, ``batches``,
so every step streams a folder split in bounded batches.

Modules: ``sets`` (the two kinds of split, the decode cache), ``registry`` (the specs), ``formats`` (readers and writers of the on-disk formats,
gathered from ``idx``, ``cifar`` and ``folders``), ``transforms`` (normalization and batched
augmentations), ``pixels`` (uint8 pixels <-> normalized space as the distilled-set format
stores them: ``normalize_uint8``, ``denormalize``, ``quantize_images``, ``valid_range``).
"""
from __future__ import annotations

import importlib.resources
import os
from typing import Optional, Sequence, Tuple, Union

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
from .registry import FOLDER_DATASETS, DatasetSpec, canonical_name, dataset_label, dataset_options, get_spec, list_datasets
from .sets import DECODE_LOG_ENV, FolderImageSet, ImageSet, decoded_cache, loader_workers
from .transforms import denormalize, normalize, random_crop_with_padding, random_flip, random_resized_crop

__all__ = [
    "DatasetSpec", "canonical_name", "load_test_split", "dataset_label", "dataset_options", "ImageSet", "FolderImageSet", "decoded_cache", "loader_workers", "DECODE_LOG_ENV", "get_spec", "list_datasets", "load_dataset",
    "normalize", "denormalize", "random_crop_with_padding", "random_flip", "random_resized_crop",
    "read_idx", "read_idx_pair", "read_cifar", "write_idx", "write_cifar_batches", "write_image_folder",
    "scan_class_folders", "scan_tiny_imagenet", "scan_imagenet", "decode_image", "embedded_file",
    "formats", "transforms",
]

MINI_PACKAGE_DIR = "fashion_mnist_mini"


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
        source = ("num_classes requested" if requested is not None else
              f"{name} has {default}; for a subset give the dataset as {{name: {name}, num_classes: {found}}}")
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

    ``name``: a registered name, or a mapping ``{name, num_classes, image_size}`` (see
    ``registry.dataset_options``) whose options are defaults of the arguments below.

    - ``num_classes``: the class count you expect; a dataset with another raises ValueError.
    - ``download``: fashion-mnist only (the others have no automatic download).
    - ``in_memory``: folder datasets: decode everything into an :class:`ImageSet` (default for
      all but imagenet) or return a lazy :class:`FolderImageSet`. Array datasets are always
      in memory.
    - ``image_size`` (folder datasets), ``channels`` / ``mean`` / ``std`` (imagefolder; 3 /
      0.5 per channel by default), ``num_workers``: decoding processes for ``to_memory``.
    """
    key, options = dataset_options(name)  # a name, or {name, num_classes, image_size}
    num_classes = options.get("num_classes") if num_classes is None else num_classes
    image_size = options.get("image_size") if image_size is None else image_size
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


def load_test_split(dataset, data_root: Optional[str] = None, decode_cache: Optional[str] = None,
                    progress: bool = False) -> Union[ImageSet, FolderImageSet]:
    """The test split that students are evaluated on. With ``decode_cache`` (a directory) a
    split read from image files (ImageNet's val) is decoded there once and memory-mapped
    (:func:`decoded_cache`), so repeated evaluations do not decode it again."""
    test = load_dataset(dataset, "test", data_root=data_root)
    if decode_cache is not None and isinstance(test, FolderImageSet):
        return decoded_cache(test, decode_cache, progress=progress)
    return test
