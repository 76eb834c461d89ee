"""The built-in datasets: one :class:`~.registry.Dataset` entry each (its spec, loader,
layout, splits, train-split size, recipe family, aliases), and one loader per on-disk format:
IDX (Fashion-MNIST, and its embedded subset), CIFAR python pickles, the Tiny-ImageNet tree,
ImageNet class folders, and a generic ``root/<split>/<class>/<image>`` folder.

A loader takes a :class:`~.registry.LoadRequest` (name canonical, split already checked) and
returns an :class:`ImageSet`, or a lazy :class:`FolderImageSet` that ``load_dataset`` decodes
into memory when asked (or by the entry's default: ImageNet never, the other folder datasets
when their decoded size is small, ``sets.fits_in_memory``).
"""
from __future__ import annotations

import importlib.resources
import os
from typing import Optional, Sequence, Tuple

from .cifar import cifar_folder
from .formats import (
    FASHION_MNIST_FILES,
    data_root_dir,
    locate_fashion_mnist,
    read_cifar,
    read_idx_pair,
    scan_class_folders,
    scan_imagenet,
    scan_tiny_imagenet,
)
from .registry import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_CLASSES,
    CIFAR100_MEAN,
    CIFAR100_STD,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGEFOLDER,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TINY_IMAGENET_MEAN,
    TINY_IMAGENET_STD,
    Dataset,
    DatasetSpec,
    LoadRequest,
    get_dataset,
    register_dataset,
)
from .sets import FolderImageSet, ImageSet

MINI_PACKAGE_DIR = "fashion_mnist_mini"
ARRAY_SPLITS = ("train", "test")
FOLDER_SPLITS = ("train", "test", "val")  # "val" = "test"


def embedded_file(name: str):
    """A context manager giving a filesystem path to one of the embedded Fashion-MNIST-mini files."""
    return importlib.resources.as_file(importlib.resources.files(__package__).joinpath(MINI_PACKAGE_DIR, name))


def _check_class_count(name: str, where: str, found: int, requested: Optional[int], default: Optional[int]) -> None:
    expected = requested if requested is not None else default
    if expected is not None and found != expected:
        source = ("num_classes requested" if requested is not None else
                  f"{name} has {default}; for a subset give the dataset as {{name: {name}, num_classes: {found}}}")
        raise ValueError(f"{name} at {where}: found {found} classes, expected {expected} ({source})")


# ---- loaders, one per format ------------------------------------------------------------------

def _idx_split(request: LoadRequest, img_path, lbl_path) -> ImageSet:
    spec = request.spec()
    images, labels = read_idx_pair(img_path, lbl_path, spec.num_classes)
    if tuple(images.shape[2:]) != (28, 28):
        raise ValueError(f"{img_path}: Fashion-MNIST images are 28x28, this file holds {tuple(images.shape[2:])}")
    return ImageSet(spec, images, labels, request.split)


def load_fashion_mnist(request: LoadRequest) -> ImageSet:
    """IDX files from data_root, the Debian package's folder or a download (see
    :func:`~.formats.locate_fashion_mnist`)."""
    request.spec()  # (the requested classes/size checked before any file is looked for)
    img_path, lbl_path = locate_fashion_mnist(request.split, request.data_root, request.download)
    return _idx_split(request, img_path, lbl_path)


def load_fashion_mnist_mini(request: LoadRequest) -> ImageSet:
    """The IDX files embedded in the package."""
    request.spec()
    stems = FASHION_MNIST_FILES[request.split]
    with embedded_file(stems[0] + ".gz") as img_path, embedded_file(stems[1] + ".gz") as lbl_path:
        return _idx_split(request, img_path, lbl_path)


def load_cifar(request: LoadRequest) -> ImageSet:
    """CIFAR-10/100 python pickles under data_root (the class names from their meta file)."""
    key, spec = request.name, request.spec()
    root = data_root_dir(key, request.data_root, cifar_folder(key) + "/")
    images, labels, names = read_cifar(root, key, request.split)  # (labels checked in range, naming the file)
    if names is not None and len(names) != spec.num_classes:
        raise ValueError(f"{key} at {root}: the meta file names {len(names)} classes, expected {spec.num_classes}")
    if names is not None and names != spec.class_names:
        spec = request.spec(class_names=names)
    return ImageSet(spec, images, labels, request.split)


def _scanned(request: LoadRequest, root: str, samples: Sequence[Tuple[str, int]], classes: Sequence[str],
             **spec_changes) -> FolderImageSet:
    """The lazy split of a scanned class-folder tree, its class count checked against the
    request (else the dataset's fixed count), decoded with the dataset's crop for the split."""
    entry = get_dataset(request.name)
    fixed = entry.spec
    _check_class_count(request.name, root, len(classes), request.num_classes, fixed and fixed.num_classes)
    spec = request.spec(len(classes), class_names=classes, **spec_changes)
    return FolderImageSet(spec, samples, request.split, crop=entry.crop_fraction(request.split, request.image_size))


def load_tiny_imagenet(request: LoadRequest) -> FolderImageSet:
    """The tiny-imagenet-200/ tree (wnids.txt, train/<wnid>/images/, val_annotations.txt)."""
    root = data_root_dir(request.name, request.data_root, "tiny-imagenet-200/")
    samples, classes = scan_tiny_imagenet(root, request.split, progress=request.progress)
    return _scanned(request, root, samples, classes)


def load_imagenet(request: LoadRequest) -> FolderImageSet:
    """ImageNet's train/<wnid>/ and val/<wnid>/ class folders."""
    root = data_root_dir(request.name, request.data_root, "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG")
    samples, classes = scan_imagenet(root, request.split, progress=request.progress)
    return _scanned(request, root, samples, classes)


def load_image_folder(request: LoadRequest) -> FolderImageSet:
    """``root/<split>/<class>/<image>`` (test and val stand in for each other); a test
    split's classes are the train split's folders when there is one."""
    split = request.split
    root = data_root_dir(request.name, request.data_root, "<split>/<class>/<image> folders")
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
        classes = tuple(d for d in sorted(os.listdir(train_dir))
                        if not d.startswith(".") and os.path.isdir(os.path.join(train_dir, d)))
    samples, classes = scan_class_folders(split_dir, classes, progress=request.progress, classes_from=f"of {train_dir}")
    return _scanned(request, split_dir, samples, classes, channels=request.channels)


# ---- the built-in entries -------------------------------------------------------------------

def _arrays(spec: DatasetSpec, loader, train_size: int, aliases: Tuple[str, ...]) -> Dataset:
    return Dataset(spec.name, spec, loader, "arrays", ARRAY_SPLITS, train_size, "cifar", in_memory=True, aliases=aliases)


FASHION_MNIST = register_dataset(_arrays(
    DatasetSpec("fashion-mnist", 10, 1, 28, FASHION_MNIST_MEAN, FASHION_MNIST_STD, FASHION_MNIST_CLASSES,
                "Fashion-MNIST (Zalando), 60k/10k grayscale 28x28, IDX files"),
    load_fashion_mnist, 60000, ("fashion_mnist", "fashionmnist", "fmnist"),
))
FASHION_MNIST_MINI = register_dataset(_arrays(
    DatasetSpec("fashion-mnist-mini", 10, 1, 28, FASHION_MNIST_MEAN, FASHION_MNIST_STD, FASHION_MNIST_CLASSES,
                "embedded Fashion-MNIST subset, 500/class train + 100/class test, no download"),
    load_fashion_mnist_mini, 5000, ("fashion_mnist_mini", "fmnist-mini"),
))
CIFAR10 = register_dataset(_arrays(
    DatasetSpec("cifar10", 10, 3, 32, CIFAR10_MEAN, CIFAR10_STD, CIFAR10_CLASSES,
                "CIFAR-10, 50k/10k RGB 32x32, python pickle batches (cifar-10-batches-py/)"),
    load_cifar, 50000, ("cifar-10", "cifar_10"),
))
CIFAR100 = register_dataset(_arrays(
    DatasetSpec("cifar100", 100, 3, 32, CIFAR100_MEAN, CIFAR100_STD, CIFAR100_CLASSES,
                "CIFAR-100 (fine labels), 50k/10k RGB 32x32, python pickles (cifar-100-python/)"),
    load_cifar, 50000, ("cifar-100", "cifar_100"),
))
TINY_IMAGENET = register_dataset(Dataset(
    "tiny-imagenet",
    DatasetSpec("tiny-imagenet", 200, 3, 64, TINY_IMAGENET_MEAN, TINY_IMAGENET_STD, None,
                "Tiny-ImageNet-200, 100k/10k RGB 64x64, folders (tiny-imagenet-200/)"),
    load_tiny_imagenet, "folders", FOLDER_SPLITS, 100000, "tiny-imagenet",
    aliases=("tinyimagenet", "tiny_imagenet", "tiny-imagenet-200"),
))
IMAGENET = register_dataset(Dataset(
    "imagenet",
    DatasetSpec("imagenet", 1000, 3, 224, IMAGENET_MEAN, IMAGENET_STD, None,
                "ImageNet-1k (ILSVRC2012), train/ and val/ class folders, 224x224"),
    load_imagenet, "folders", FOLDER_SPLITS, 1281167, "imagenet",
    in_memory=False,  # 1.28M JPEGs: decoded lazily by DataLoader workers
    aliases=("imagenet-1k", "imagenet1k", "ilsvrc2012"),
))
IMAGE_FOLDER = register_dataset(Dataset(
    IMAGEFOLDER, None, load_image_folder, "folders", FOLDER_SPLITS, None, "cifar",
    aliases=("image-folder", "image_folder"),
))
