"""Datasets: a registry of specs and loaders for the on-disk formats INFER runs on.

    from infer_fast.data import load_dataset, get_spec
    train = load_dataset("fashion-mnist-mini", "train")        # embedded, no download
    train = load_dataset("cifar10", "train", data_root="~/data")
    x = train.per_class(10, seed=0).normalized()               # float32 (100, 3, 32, 32)

Registered: fashion-mnist (IDX; --data-root, then /usr/share/datasets/fashion-mnist/, then a
download), fashion-mnist-mini (embedded subset), cifar10 / cifar100 (python pickles),
tiny-imagenet, imagenet (class folders) and imagefolder (``root/<split>/<class>/<image>``).

Sets that fit in memory are decoded once into uint8 tensors (:class:`ImageSet`); ImageNet,
and any folder split larger than ``sets.IN_MEMORY_BUDGET`` decoded (or half the memory
available), stays on disk (:class:`FolderImageSet`, decoded lazily by DataLoader workers);
``in_memory: true|false`` in a dataset mapping decides it either way.
Both have one interface (``sets``): labels without decoding, ``images_at``, ``batches``,
so every step streams a folder split in bounded batches.

Modules: ``sets`` (the two kinds of split, the decode cache), ``registry`` (the dataset
entries: spec, loader, layout, splits, train size, recipe family), ``catalog`` (the built-in
entries and their loaders, one per format), ``formats`` (readers and writers of the on-disk formats,
gathered from ``idx``, ``cifar`` and ``folders``), ``transforms`` (normalization and batched
augmentations), ``pixels`` (uint8 pixels <-> normalized space as the distilled-set format
stores them: ``normalize_uint8``, ``denormalize``, ``quantize_images``, ``valid_range``).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence, Union

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
from .catalog import embedded_file
from .registry import (
    Dataset,
    DatasetSpec,
    LoadRequest,
    canonical_name,
    dataset_label,
    dataset_options,
    get_dataset,
    get_spec,
    list_datasets,
    register_dataset,
)
from .sets import DECODE_LOG_ENV, FolderImageSet, ImageSet, decoded_cache, fits_in_memory, loader_workers
from .transforms import denormalize, normalize, random_crop_with_padding, random_flip, random_resized_crop

__all__ = [
    "Dataset", "DatasetSpec", "LoadRequest", "register_dataset", "get_dataset", "canonical_name", "load_test_split", "dataset_label", "dataset_options", "ImageSet", "FolderImageSet", "decoded_cache", "fits_in_memory", "loader_workers", "DECODE_LOG_ENV", "get_spec", "list_datasets", "load_dataset",
    "normalize", "denormalize", "random_crop_with_padding", "random_flip", "random_resized_crop",
    "read_idx", "read_idx_pair", "read_cifar", "write_idx", "write_cifar_batches", "write_image_folder",
    "scan_class_folders", "scan_tiny_imagenet", "scan_imagenet", "decode_image", "embedded_file",
    "formats", "transforms",
]


def load_dataset(
    name: Union[str, Mapping[str, Any]],
    split: str = "train",
    data_root: Optional[Union[str, os.PathLike]] = None,
    num_classes: Optional[int] = None,
    download: bool = True,
    in_memory: Optional[bool] = None,
    *,
    image_size: Optional[int] = None,
    channels: Optional[int] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    num_workers: Optional[int] = None,
    progress: bool = False,
) -> Union[ImageSet, FolderImageSet]:
    """Load one split ("train" or "test"; folder datasets also take "val" = "test") with the
    dataset's registered loader.

    ``name``: a registered name, or a mapping ``{name, num_classes, image_size, in_memory}``
    (see ``registry.dataset_options``) whose options are defaults of the arguments below.

    - ``num_classes``: the class count you expect; a dataset with another raises ValueError.
    - ``download``: fashion-mnist only (the others have no automatic download).
    - ``in_memory``: folder datasets: decode everything into an :class:`ImageSet` or return a
      lazy :class:`FolderImageSet` (default: the dataset's ``in_memory``: False for imagenet;
      for the others, whether the decoded split is small, :func:`fits_in_memory`, decided
      from the scan before any decoding). Array datasets are always in memory.
    - ``image_size`` (folder datasets), ``channels`` / ``mean`` / ``std`` (imagefolder; 3 /
      0.5 per channel by default), ``num_workers``: decoding processes for ``to_memory``.
    - ``progress``: a folder dataset's scan (when it takes more than a few seconds) and its
      decode into memory show progress bars.
    """
    key, options = dataset_options(name)  # a name, or {name, num_classes, image_size, in_memory}
    entry = get_dataset(key)
    if split not in entry.splits:
        raise ValueError(f"{key}: split must be one of {', '.join(entry.splits)}, got {split!r}")
    request = LoadRequest(
        key, split, data_root,
        num_classes=options.get("num_classes") if num_classes is None else num_classes,
        image_size=options.get("image_size") if image_size is None else image_size,
        download=download, channels=channels, mean=mean, std=std, progress=progress,
    )
    loaded = entry.loader(request)
    keep = next((k for k in (in_memory, options.get("in_memory"), entry.in_memory) if k is not None), None)
    if keep is None:  # (an ImageSet is in memory already: its to_memory is itself)
        keep = not isinstance(loaded, FolderImageSet) or fits_in_memory(len(loaded), loaded.image_shape)
    return loaded.to_memory(num_workers, progress=progress) if keep else loaded


def load_test_split(dataset: Union[str, Mapping[str, Any]], data_root: Optional[Union[str, os.PathLike]] = None,
                    decode_cache: Optional[Union[str, os.PathLike]] = None,
                    progress: bool = False, *, cache_asked: bool = True) -> Union[ImageSet, FolderImageSet]:
    """The test split that students are evaluated on. With ``decode_cache`` (a directory) a
    split read from image files (ImageNet's val) is decoded there once and memory-mapped
    (:func:`decoded_cache`), so repeated evaluations do not decode it again; a split of image
    files small enough to be decoded into memory is not cached (with ``progress``, a line says
    so where ``cache_asked``: the caller asked for this cache, e.g. ``--decode-cache``, rather
    than taking a default that caches only where it helps, as ``infer-fast run`` does)."""
    test = load_dataset(dataset, "test", data_root=data_root, progress=progress)
    if decode_cache is not None and isinstance(test, FolderImageSet):
        return decoded_cache(test, decode_cache, progress=progress)
    if decode_cache is not None and progress and cache_asked and getattr(test, "files", None) is not None:
        print(f"decode cache: {test.spec.name}'s test split fits in memory and was decoded into it; "
              f"{decode_cache} is not used", flush=True)
    return test
