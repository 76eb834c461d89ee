"""A dataset split behind one interface, held in memory or streamed from image files.

Every step of the toolkit reads real data through these methods, so the same code serves
Fashion-MNIST in memory and ImageNet-1k on disk, with peak memory set by the batch size:

- ``labels`` (int64, known without decoding), ``class_counts()``, ``subset(indices)``,
  ``per_class(n, seed)``: choosing images costs nothing;
- ``images_at(indices)``: uint8 (n, ch, S, S) of just those images;
- ``batches(batch_size, indices)``: (uint8 images, labels) in bounded batches, in order
  (a DataLoader with worker processes that decode, resize and crop for a folder split);
- ``to_memory()``, ``digest()`` (what a teacher checkpoint ties its resume to).

:class:`ImageSet` holds uint8 pixels (decoded once, or memory-mapped from a decode cache:
:func:`decoded_cache`); :class:`FolderImageSet` decodes files on demand with Pillow.
Setting ``INFER_FAST_DECODE_LOG=FILE`` appends the path of every decoded file to FILE, in
every process (worker processes and torchrun ranks too): how a run's reads can be audited.
"""
from __future__ import annotations

import atexit
import contextlib
import glob
import hashlib
import json
import mmap
import multiprocessing
import os
import weakref
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .. import interrupts
from ..checks import check_images_per_class, check_int, split_label
from ..progress import SHORT_PHASE_S, progress_bar
from .folders import DEFAULT_DECODER, check_crop, decode_image
from .registry import DatasetSpec
from .transforms import normalize

__all__ = ["ImageSet", "MappedImageSet", "FolderImageSet", "loader_workers", "decoded_cache", "fits_in_memory", "DECODE_LOG_ENV",
           "IN_MEMORY_BUDGET", "IN_MEMORY_SHARE"]

DECODE_LOG_ENV = "INFER_FAST_DECODE_LOG"
# A folder split is decoded into memory by default only when its uint8 pixels take at most
# IN_MEMORY_BUDGET bytes and at most IN_MEMORY_SHARE of the CPU memory available now (the rest
# is the run's); a larger one is streamed. 2 GiB holds Tiny-ImageNet's train split (1.2 GB at
# 64^2) and CIFAR-sized folders, not 100 ImageNet classes at 224^2 (19 GB).
IN_MEMORY_BUDGET = 2 << 30
IN_MEMORY_SHARE = 0.5
MIN_IMAGES_FOR_WORKERS = 256  # fewer: decoding in this process beats forking worker processes
# Under the spawn and forkserver start methods (macOS' and Windows' default, Linux's from Python 3.14) a
# worker is a new interpreter that imports torch and infer_fast before its first batch: measured 1.2-1.6 s
# for a pool of 1-2 (4.5 s on a loaded 2-core machine), against ~0.1 s forked. Decoding in this process
# took 3-5 ms per 500x375 JPEG cropped to 224^2 (ImageNet's) and 0.2-0.3 ms per small PNG, so a pool of 8
# pays for a 1.5-3 s start from ~400-900 ImageNet images and ~10,000 small ones: at 1024 either wrong
# choice costs about one pool start at most.
MIN_IMAGES_FOR_SPAWNED_WORKERS = 1024
MAX_WORKERS = 8


def _workers_are_forked() -> bool:
    """Whether DataLoader workers start by fork: they use multiprocessing's default context, its
    start method as set, else the platform's default (read without fixing it, which would refuse
    a later set_start_method)."""
    method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
    return method == "fork"


def _available_cpus() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def loader_workers(n_images: int, requested: Optional[int] = None) -> int:
    """DataLoader worker processes for decoding ``n_images`` files: ``requested`` when given,
    else none for a few images (fewer than MIN_IMAGES_FOR_WORKERS where workers are forked,
    MIN_IMAGES_FOR_SPAWNED_WORKERS where each starts a new interpreter), one per available core
    (at most 8) otherwise."""
    if requested is not None:
        check_int("num_workers", requested, minimum=0)
        return requested
    minimum = MIN_IMAGES_FOR_WORKERS if _workers_are_forked() else MIN_IMAGES_FOR_SPAWNED_WORKERS
    if n_images < minimum:
        return 0
    return min(MAX_WORKERS, _available_cpus())


def _as_index(indices, n: int) -> Tensor:
    idx = torch.as_tensor(indices)
    if idx.dtype == torch.bool:
        if idx.shape != (n,):
            raise ValueError(f"boolean mask of shape {tuple(idx.shape)} for {n} samples")
        return idx.nonzero().squeeze(1)
    idx = idx.long().reshape(-1)
    if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
        raise IndexError(f"index out of range for {n} samples")
    return idx


def per_class_indices(labels: Tensor, num_classes: int, per_class: int, seed: int, where: str = "the data") -> Tensor:
    """``per_class`` random indices of every class (torch.Generator seeded with ``seed``),
    class-major: all of class 0, then class 1, ...; a ValueError (``where`` names the data)
    when a class has fewer."""
    check_int("per_class", per_class)
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    # (in the caller's terms: an ipc of n, or n candidates per class, is n images of every class)
    check_images_per_class(counts, per_class, where, f"a subset of {per_class} per class (ipc {per_class})")
    chosen, start = [], 0
    for k in counts:
        members = order[start : start + k]
        chosen.append(members[torch.randperm(k, generator=gen)[:per_class]])
        start += k
    return torch.cat(chosen)


def fits_in_memory(n_images: int, image_shape: Tuple[int, int, int]) -> bool:
    """Whether ``n_images`` uint8 images of ``image_shape`` are decoded into memory by default:
    at most IN_MEMORY_BUDGET bytes and IN_MEMORY_SHARE of the CPU memory available now
    (the budget alone where that cannot be read), shared by the processes that torchrun
    started on this machine (LOCAL_WORLD_SIZE: each rank holds its own copy). Ranks decide
    alone (a collective here could wait on a rank that never loads); where they differ they
    still read the same pixels and digest the split alike (ImageSet.digest)."""
    from ..memory import available_memory

    decoded = n_images * int(np.prod(image_shape))
    available = available_memory("cpu")
    local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return decoded <= IN_MEMORY_BUDGET and (available is None or decoded * local_ranks <= IN_MEMORY_SHARE * available)


class _Split(Dataset):
    """What both kinds share: ``spec``, ``labels``, ``split`` and choosing by labels."""

    spec: DatasetSpec
    labels: Tensor
    split: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """(channels, height, width) of every image of the split."""
        return (self.spec.channels, self.spec.image_size, self.spec.image_size)

    def class_counts(self) -> Tensor:
        """Samples per class, int64 (num_classes,)."""
        return torch.bincount(self.labels, minlength=self.spec.num_classes)

    def subset(self, indices):
        raise NotImplementedError

    def per_class(self, per_class: int, seed: int = 0):
        """A class-balanced random subset: ``per_class`` samples of every class, class-major
        (all of class 0 first); the same labels and seed pick the same samples."""
        return self.subset(per_class_indices(self.labels, self.spec.num_classes, per_class, seed, split_label(self)))

    def batches(self, batch_size: int, indices=None, *, num_workers: Optional[int] = None, pin_memory: bool = False,
                progress: bool = False, desc: str = "images", delay: float = 0.0) -> Iterator[Tuple[Tensor, Tensor]]:
        raise NotImplementedError

    def images_at(self, indices, *, num_workers: Optional[int] = None, progress: bool = False,
                  desc: str = "decoding") -> Tensor:
        """uint8 (n, ch, S, S): the images at ``indices``, in that order."""
        idx = _as_index(indices, len(self))
        out = torch.empty((idx.numel(),) + self.image_shape, dtype=torch.uint8)
        start = 0
        for images, _ in self.batches(256, idx, num_workers=num_workers, progress=progress, desc=desc):
            out[start:start + images.shape[0]] = images
            start += images.shape[0]
        return out

    def normalized(self, indices=None) -> Tensor:
        """float32 images normalized with the spec's mean/std (all, or those at ``indices``)."""
        idx = torch.arange(len(self)) if indices is None else indices
        return normalize(self.images_at(idx), self.spec.mean, self.spec.std)


class ImageSet(_Split):
    """A split held in memory: ``images`` uint8 (N, ch, H, W), ``labels`` int64 (N,);
    ``files``: the :class:`FolderImageSet` they were decoded from, row for row (None for
    arrays), which gives the split its identity (:meth:`digest`)."""

    def __init__(self, spec: DatasetSpec, images: Tensor, labels: Tensor, split: str = "train",
                 files: Optional["FolderImageSet"] = None):
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"ImageSet: images must be a uint8 tensor (N, ch, H, W), got {getattr(images, 'dtype', type(images))} {tuple(getattr(images, 'shape', ()))}")
        expected = (spec.channels, spec.image_size, spec.image_size)
        if tuple(images.shape[1:]) != expected:
            raise ValueError(f"ImageSet {spec.name}: images are {tuple(images.shape[1:])}, the spec says {expected}")
        labels = torch.as_tensor(labels)
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            # (.long() would truncate 2.7 to 2 and -0.5 to 0 silently)
            raise ValueError(f"ImageSet {spec.name}: labels must be an integer tensor, got {labels.dtype}")
        labels = labels.long().reshape(-1)
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"ImageSet {spec.name}: label/image count mismatch ({images.shape[0]} images, {labels.shape[0]} labels)")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= spec.num_classes):
            raise ValueError(f"ImageSet {spec.name}: labels must lie in [0, {spec.num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
        if files is not None and len(files) != images.shape[0]:
            raise ValueError(f"ImageSet {spec.name}: {images.shape[0]} images decoded from {len(files)} files")
        self.spec, self.images, self.labels, self.split, self.files = spec, images, labels, split, files

    def __getitem__(self, i) -> Tuple[Tensor, int]:
        return self.images[i], int(self.labels[i])

    def __repr__(self) -> str:
        return f"ImageSet({self.spec.name!r}, split={self.split!r}, n={len(self)}, shape={tuple(self.images.shape[1:])}, classes={self.spec.num_classes})"

    def subset(self, indices) -> "ImageSet":
        """The samples at ``indices`` (ints, a tensor, or a boolean mask), in that order."""
        idx = _as_index(indices, len(self))
        files = None if self.files is None else self.files.subset(idx)
        return ImageSet(self.spec, self.images[idx], self.labels[idx], self.split, files)

    def shuffled(self, seed: int) -> "ImageSet":
        """All samples in a random order fixed by ``seed``."""
        return self.subset(torch.randperm(len(self), generator=torch.Generator().manual_seed(int(seed))))

    def images_at(self, indices, **_) -> Tensor:
        return self.images[_as_index(indices, len(self))]

    def batches(self, batch_size: int, indices=None, *, num_workers: Optional[int] = None, pin_memory: bool = False,
                progress: bool = False, desc: str = "images", delay: float = 0.0) -> Iterator[Tuple[Tensor, Tensor]]:
        """(uint8 images, labels) of ``indices`` (default: every sample, in order) in consecutive
        batches of ``batch_size``: slices of the held tensors (the worker options are for
        folder splits); ``progress``: a bar, shown once it has run ``delay`` seconds."""
        idx = None if indices is None else _as_index(indices, len(self))
        n = len(self) if idx is None else idx.numel()
        starts = range(0, n, batch_size)
        for start in progress_bar(starts, desc=desc, disable=not progress, leave=False, unit="batch", delay=delay):
            rows = slice(start, start + batch_size) if idx is None else idx[start:start + batch_size]
            yield self.images[rows], self.labels[rows]

    def to_memory(self, num_workers: Optional[int] = None, batch_size: int = 256, progress: bool = False) -> "ImageSet":
        return self

    def digest(self, progress: bool = False) -> str:
        """The identity of the split: its files' listing digest when it was decoded from
        files (the same as when it is streamed: whether a split is held in memory depends on
        the memory free at the time, and must not change what a checkpoint ties its resume
        to), else content_digest of the images and labels (in memory: no progress to show)."""
        from .._io import content_digest

        if self.files is not None:
            return self.files.digest(progress)
        return content_digest([self.images, self.labels])


# The loader iterators whose worker processes may be running. At exit, multiprocessing stops
# the workers left with SIGTERM, which they ignore, then joins them without a time limit: a
# batches() generator that a failed consumer still holds (in a traceback) would hang the exit.
# Registered after torch's and multiprocessing's exit handlers (torch is imported above), this
# one runs before them: exit handlers run last registered first.
_RUNNING_LOADERS: "weakref.WeakSet" = weakref.WeakSet()


def _shut_down(iterator) -> None:
    """Stop ``iterator``'s worker processes now and wait for them (torch's multiprocessing
    iterator has ``_shutdown_workers``; a repeated call does nothing)."""
    _RUNNING_LOADERS.discard(iterator)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


@atexit.register
def _shut_down_running_loaders() -> None:
    """At exit: the workers of the loaders still running, shut down (see _RUNNING_LOADERS)."""
    for iterator in list(_RUNNING_LOADERS):
        _shut_down(iterator)


def _whole_batches(loader: torch.utils.data.DataLoader) -> Iterator[Tuple[Tensor, Tensor]]:
    """The loader's batches, a stop signal (Ctrl-C, SIGTERM) acted on between two of them
    (interrupts.stop_at_safe_points): never inside the iterator's start (a half-built
    iterator's clean-up fails: AttributeError ... _workers_status) nor while a batch arrives
    from a worker (which then fails on the closed connection: BrokenPipeError in
    multiprocessing's resource_sharer). The workers ignore the signals (interrupts.ignore_in_worker),
    so they are shut down here whatever ends the loop (the last batch, a worker's error such as
    a file that does not decode, the consumer letting go), not left to garbage collection: a
    traceback that still holds the iterator would keep them running until the interpreter's
    exit, which then waits on them forever."""
    iterator = None
    try:
        with interrupts.stop_at_safe_points():
            iterator = iter(loader)
            _RUNNING_LOADERS.add(iterator)
        while True:
            with interrupts.stop_at_safe_points():
                batch = next(iterator, None)
            if batch is None:
                return
            yield batch
    finally:
        if iterator is not None:
            with interrupts.stop_at_safe_points():  # (a first signal waits for the workers to be gone)
                _shut_down(iterator)


class FolderImageSet(_Split):
    """A split kept on disk as image files, decoded lazily with Pillow (the shorter side resized
    to ``spec.image_size / crop``, then the central ``spec.image_size`` square cropped; ``crop``:
    the share of the shorter side kept, ``Dataset.crop_fraction``): items are (uint8 (ch, S, S),
    label). Labels are known without decoding, so ``per_class`` / ``subset`` are cheap."""

    def __init__(self, spec: DatasetSpec, samples: Sequence[Tuple[str, int]], split: str = "train",
                 crop: float = 1.0):
        self.spec, self.split, self.crop = spec, split, check_crop(crop)
        # (absolute: a split held in a notebook reads the files it scanned after a change of
        # directory, never a same-named tree under the new one)
        self.paths: List[str] = [os.path.abspath(p) for p, _ in samples]
        self.labels = torch.tensor([int(y) for _, y in samples], dtype=torch.long)
        if self.labels.numel() and int(self.labels.max()) >= spec.num_classes:
            raise ValueError(f"FolderImageSet {spec.name}: label {int(self.labels.max())} out of range for {spec.num_classes} classes")

    def __getitem__(self, i) -> Tuple[Tensor, int]:
        path = self.paths[i]
        image = decode_image(path, self.spec.image_size, self.spec.channels, crop=self.crop)
        log = os.environ.get(DECODE_LOG_ENV)
        if log:  # one short append per decode: atomic across processes
            with open(log, "a", encoding="utf-8") as f:
                f.write(path + "\n")
        return image, int(self.labels[i])

    def __repr__(self) -> str:
        return f"FolderImageSet({self.spec.name!r}, split={self.split!r}, n={len(self)}, size={self.spec.image_size}, classes={self.spec.num_classes})"

    def subset(self, indices) -> "FolderImageSet":
        idx = _as_index(indices, len(self)).tolist()
        return FolderImageSet(self.spec, [(self.paths[i], int(self.labels[i])) for i in idx], self.split, self.crop)

    def batches(self, batch_size: int, indices=None, *, num_workers: Optional[int] = None, pin_memory: bool = False,
                progress: bool = False, desc: str = "images", delay: float = 0.0) -> Iterator[Tuple[Tensor, Tensor]]:
        """(uint8 images, labels) of ``indices`` (default: every sample, in order) in consecutive
        batches of ``batch_size``, decoded (decode, resize, crop) by ``num_workers`` DataLoader
        worker processes (default :func:`loader_workers`), ``pin_memory`` for a GPU consumer.
        At most a few batches per worker are held at a time, whatever the split's size.
        ``progress``: a bar, shown once it has run ``delay`` seconds."""
        idx = torch.arange(len(self)) if indices is None else _as_index(indices, len(self))
        order = idx.tolist()
        chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
        workers = loader_workers(len(order), num_workers)
        if workers == 0:
            iterator = ((torch.stack([self[i][0] for i in chunk]), self.labels[chunk]) for chunk in chunks)
        else:
            loader = torch.utils.data.DataLoader(self, batch_sampler=chunks, num_workers=workers,
                                                 pin_memory=pin_memory and torch.cuda.is_available(),
                                                 worker_init_fn=interrupts.ignore_in_worker,
                                                 # (the workers' base seed from a generator of its own,
                                                 # not the user's global one: they draw nothing random)
                                                 generator=torch.Generator())
            iterator = _whole_batches(loader)
        yield from progress_bar(iterator, total=len(chunks), desc=desc, disable=not progress, leave=False, unit="batch",
                                delay=delay)

    def to_memory(self, num_workers: Optional[int] = None, batch_size: int = 256, progress: bool = False) -> ImageSet:
        """Decode every image into an :class:`ImageSet`, in order (``num_workers`` decoding
        processes; default :func:`loader_workers`). Only for splits that fit in memory."""
        images = torch.empty((len(self),) + self.image_shape, dtype=torch.uint8)
        start = 0
        for batch, _ in self.batches(batch_size, num_workers=num_workers, progress=progress, desc=f"decoding {self.spec.name} {self.split}"):
            images[start:start + len(batch)] = batch
            start += len(batch)
        return ImageSet(self.spec, images, self.labels.clone(), self.split, files=self)

    def folder(self) -> Optional[str]:
        """The folder that holds every file of the split (their common path; None when empty)."""
        if not self.paths:
            return None
        return os.path.commonpath(self.paths) if len(self.paths) > 1 else os.path.dirname(self.paths[0])

    def digest(self, progress: bool = False) -> str:
        """SHA-256 of the listing: every file's path below the split's common folder, label and
        size (the content of a million files is not read: a changed file of the same size and
        name goes unnoticed; nor is its time, so a copied tree keeps its identity and the
        checkpoints tied to it resume). ``progress``: a bar once it has run SHORT_PHASE_S (a
        size check per file: minutes for ImageNet's train split on a cold disk)."""
        return self.listing_digests(progress)[0]

    def listing_digests(self, progress: bool = False) -> Tuple[str, str]:
        """(:meth:`digest`, the decode cache's key) from one stat per file. The key adds what
        decides the decoded pixels beyond the listing: every file's modification time (a file
        rewritten at the same size is decoded again) and the decode's crop and decoder."""
        head = f"{self.spec.name}:{self.spec.image_size}:{self.spec.channels}"
        identity = hashlib.sha256(head.encode())
        key = hashlib.sha256(f"{head}:crop {self.crop!r}:decoder {DEFAULT_DECODER}".encode())
        if self.paths:
            root = self.folder()
            listing = progress_bar(zip(self.paths, self.labels.tolist()), total=len(self.paths), unit="file",
                                   desc=f"listing digest {self.spec.name} {self.split}", delay=SHORT_PHASE_S,
                                   disable=not progress)
            for path, label in listing:
                stat = os.stat(path)
                line = f"{os.path.relpath(path, root)}\0{label}\0{stat.st_size}"
                identity.update(f"{line}\n".encode())
                key.update(f"{line}\0{stat.st_mtime_ns}\n".encode())
        return identity.hexdigest(), key.hexdigest()


def decoded_cache(split: FolderImageSet, directory: str, progress: bool = False,
                  num_workers: Optional[int] = None) -> ImageSet:
    """``split`` decoded once into a uint8 file under ``directory`` (named by the split's
    digest, resolution and channels) and returned as an :class:`ImageSet` memory-mapped from
    it: later calls, and other processes, reuse the file instead of decoding again (the
    many student evaluations of a run). Written beside itself and renamed when complete, then
    its record (``.json``: shape, source, digest and key) written: a file without its record, a
    record that does not parse or name this split (its folder, resolved, and its key: the
    files' times and the decode's crop, :meth:`FolderImageSet.listing_digests`), or a file of
    another size is decoded again; the temporary files that killed decodes on this host left
    are removed first, and so are the caches of this split's folder made before its files
    changed (:func:`_remove_outdated_caches`). Named by the key: two folders of the same listing
    (whose files' times differ) each keep their own. Processes sharing ``directory`` decode a
    split once: one decodes holding the cache's lock (output_lock), the others wait for it and
    map its file."""
    from .._io import save_json_atomic
    from ..output_lock import LockUnsupportedError, output_lock

    digest, key = split.listing_digests(progress=progress)
    shape = (len(split),) + split.image_shape
    stem = f"{split.spec.name}-{split.split}-{split.spec.image_size}px-{key[:16]}"  # (a folder's own file)
    path = os.path.join(os.fspath(directory), stem + ".u8")
    meta_path = path + ".json"
    files_folder = split.folder()
    source = {"dataset": split.spec.name, "num_classes": split.spec.num_classes, "split": split.split,
              "image_size": split.spec.image_size, "channels": split.spec.channels,
              "folder": files_folder and os.path.realpath(files_folder)}
    record = {"shape": list(shape), **source, "digest": digest, "key": key}
    if not _cache_matches(path, meta_path, record):  # (a cache in a folder we cannot write is still read)
        with contextlib.ExitStack() as held:
            try:  # one decode of the split for every process sharing the folder: the others wait for it
                held.enter_context(output_lock(path, "decode cache", wait=True))
            except LockUnsupportedError:
                pass  # (a file system without flock: each process decodes its own copy)
            if not _cache_matches(path, meta_path, record):  # (the one we waited for may have written it)
                _decode_into(split, path, int(np.prod(shape)), stem, source, key, progress, num_workers)
                save_json_atomic(record, meta_path)  # (a reader never sees half a record)
    return MappedImageSet(split.spec, path, shape, split.labels.clone(), split.split, files=split)


def _decode_into(split: FolderImageSet, path: str, nbytes: int, stem: str, source: Dict[str, Any], key: str,
                 progress: bool, num_workers: Optional[int]) -> None:
    """Decode ``split`` (``nbytes`` of pixels) into the cache file ``path`` (beside itself, then
    renamed), after removing what killed decodes and outdated caches left (:func:`decoded_cache`)."""
    from .._io import check_writable, host_writer_tag, remove_dead_writers_files

    folder = os.path.dirname(os.path.abspath(path))
    remove_dead_writers_files(folder, _DECODING_ON)  # (whichever split's: its files may have changed since)
    _remove_outdated_caches(folder, source, key, progress)
    check_writable(path, "decode cache", need_bytes=nbytes)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{stem}{_DECODING_ON}{host_writer_tag()}")
    try:
        write_raw_images(tmp, (images for images, _ in split.batches(
            256, num_workers=num_workers, progress=progress, desc=f"decode cache {split.spec.name} {split.split}")),
            nbytes)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_raw_images(path: str, batches: Iterator[Tensor], nbytes: int) -> None:
    """The uint8 ``batches`` into ``path`` as raw bytes, one after the other (the decode
    cache's format: the shape is in its .json), checked to make ``nbytes``. Written, not
    mapped: a mapping would keep every written page resident in this process (7.3 GiB for
    ImageNet's val split, against 0.3 GiB written: bench/decode_cache_memory.py)."""
    with open(path, "wb") as out:
        for images in batches:
            out.write(images.numpy().tobytes())
    written = os.path.getsize(path)
    if written != nbytes:
        raise RuntimeError(f"{path}: wrote {written} bytes, expected {nbytes}")


class MappedImageSet(ImageSet):
    """An :class:`ImageSet` whose images are a private mapping of a raw uint8 file (the decode
    cache): nothing is read until used, and batches read in order give their pages back once
    the next batch is asked for, so going through the whole split (an evaluation) holds about a
    batch of it in this process, not the file (measured: 7.1 GiB resident after one pass over
    ImageNet's 50,000 val images without this; the kernel's page cache keeps the file either
    way; bench/decode_cache_memory.py). The tensor is writable (copy-on-write: the file never
    changes), but writes to it do not last."""

    def __init__(self, spec: DatasetSpec, path: str, shape: Tuple[int, ...], labels: Tensor, split: str = "test",
                 files: Optional["FolderImageSet"] = None):
        with open(path, "rb") as f:
            self._mapping = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        super().__init__(spec, torch.from_numpy(np.frombuffer(self._mapping, dtype=np.uint8).reshape(shape)),
                         labels, split, files)

    def batches(self, batch_size: int, indices=None, **options) -> Iterator[Tuple[Tensor, Tensor]]:
        """ImageSet.batches; in order (no ``indices``), each batch's pages are released when
        the next one is asked for (a batch still held is read again from the file if used)."""
        if indices is not None or not hasattr(self._mapping, "madvise"):
            yield from super().batches(batch_size, indices, **options)
            return
        row_bytes, released = int(np.prod(self.images.shape[1:])), 0
        for done, batch in enumerate(super().batches(batch_size, **options), start=1):
            yield batch
            end = min(done * batch_size, len(self)) * row_bytes // mmap.PAGESIZE * mmap.PAGESIZE  # (whole pages)
            if end > released:
                self._mapping.madvise(mmap.MADV_DONTNEED, released, end - released)
                released = end


# a decode's temporary file: ".<stem>" + this + "<host>-<pid>" (_decode_into; _io.remove_dead_writers_files)
_DECODING_ON = ".u8.tmp-"


def _remove_outdated_caches(directory: str, source: Dict[str, Any], key: str, progress: bool) -> None:
    """Remove the decode caches in ``directory`` whose record names the same ``source`` (dataset,
    classes, split, resolution, channels and folder) with another key: made before the folder's files
    changed, never read again (ImageNet's val split: 7.5 GB each), and in the way of the new
    cache's free-space check. Caches of other folders, and records older than the folder field,
    are left alone."""
    for meta_path in glob.glob(os.path.join(glob.escape(directory), "*.u8.json")):
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
            outdated = (isinstance(meta, dict) and meta.get("key") != key and source["folder"] is not None
                        and all(meta.get(k) == v for k, v in source.items()))
        except (OSError, ValueError):
            continue
        if outdated:
            cache = meta_path[:-len(".json")]
            size = os.path.getsize(cache) if os.path.exists(cache) else 0
            for stale in (meta_path, cache):  # (the record first: a cache without it is never trusted)
                try:
                    os.unlink(stale)
                except FileNotFoundError:  # (another process removed it first)
                    pass
            if progress:
                print(f"decode cache: removed {cache} ({size / 2**30:.2f} GiB), made before {source['folder']} changed")


def _cache_matches(path: str, meta_path: str, record: Dict[str, Any]) -> bool:
    """Whether the decode cache at ``path`` is complete and of this split: its record at
    ``meta_path`` is ``record`` (shape, source with the folder, digest and key; a record
    without the key is of an older decode) and the file holds the shape's bytes
    (memory-mapping a shorter file would fail)."""
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        return (isinstance(meta, dict) and all(meta.get(k) == v for k, v in record.items())
                and os.path.getsize(path) == int(np.prod(record["shape"])))
    except (OSError, ValueError, TypeError):
        return False
