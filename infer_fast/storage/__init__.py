"""The distilled-dataset format of infer-fast.

A distilled set is a directory::

    manifest.json          format + version, dataset, classes, resolution, normalization,
                           method + hyperparameters, teachers, budget, seed, toolkit version,
                           and for every tensor file its SHA-256, size and tensors (name,
                           shape, dtype)
    natural.safetensors    INFER: natural (K, C, ch, H, W) uint8 pixels
    ufc.safetensors        INFER: ufc (G, ch, H, W) fp16/fp32 (normalized pixel space),
                           ufc_index (G,) int64 (natural set of each UFC),
                           ufc_teacher (G,) int64 (teacher that produced it)
    images.safetensors     baselines: images (N, ch, H, W) uint8 pixels (random: real images;
                           sre2l: the recovered images quantized; external: imported) or
                           fp16/fp32 normalized (sre2l sets of infer-fast before it stored
                           uint8; still read), labels (N,) int64 hard labels
    labels.safetensors     static soft labels (fp16): INFER natural_labels (K, C, C) and
                           ufc_labels (G, C, C); baselines soft_labels (N, C). Absent until
                           the set is relabelled.

Training-image order (the index of :class:`DistilledDataset`, of soft labels and of
``export_imagefolder``): for INFER the K*C natural images first, i = k*C + c, then the
G*C composed images, i = K*C + g*C + c (composed = clamp(natural[ufc_index[g], c] + ufc[g]));
the hard label of image i is c. For baselines, i indexes ``images`` and the hard label is
``labels[i]``.

Normalization: a uint8 pixel p maps to x = (p / 255 - mean) / std per channel; compensators
and float baseline images live in that normalized space; composed images are clamped per
channel to the valid range [(0 - mean) / std, (1 - mean) / std] (the pixel helpers are
:mod:`infer_fast.data.pixels`).

Writes are atomic and loads verify everything (schema, version, SHA-256, shapes, dtypes),
raising :class:`DistilledSetError` (a ValueError) that names the file and the problem.

The package, one job per module (everything is importable from here):

- :mod:`.distilled_set`: :class:`DistilledSet` in memory, its validation, the errors;
- :mod:`.disk`: the manifest, :func:`save_distilled`, :func:`read_manifest`,
  :func:`verify_files`, :func:`load_distilled`;
- :mod:`.compression`: the compression ratio;
- :mod:`.dataset`: :class:`DistilledDataset`, the torch Dataset composing images on the fly;
- :mod:`.report`: :func:`inspect_report`, :func:`write_preview`, :func:`export_imagefolder`.
"""
from __future__ import annotations

from ..data.pixels import denormalize, normalize_uint8, quantize_images, valid_range
from .compression import (
    ACCOUNTING,
    KNOWN_TRAIN_SIZES,
    compression_ratio_from_counts,
    compression_ratio_from_manifest,
)
from .dataset import DistilledDataset
from .disk import (
    FORMAT_NAME,
    FORMAT_VERSION,
    IMAGE_ORDER,
    MANIFEST,
    MANIFEST_ALLOWANCE,
    build_manifest,
    load_distilled,
    read_manifest,
    save_distilled,
    verify_files,
)
from .distilled_set import DistilledSet, DistilledSetError, OutputExistsError, known_set_methods, set_layout
from .importer import EXTERNAL_METHOD, import_imagefolder
from .report import export_imagefolder, inspect_report, write_preview

__all__ = [
    "DistilledSet", "DistilledSetError", "OutputExistsError", "known_set_methods", "set_layout",
    "FORMAT_NAME", "FORMAT_VERSION", "MANIFEST", "MANIFEST_ALLOWANCE", "IMAGE_ORDER",
    "build_manifest", "save_distilled", "read_manifest", "verify_files", "load_distilled",
    "ACCOUNTING", "KNOWN_TRAIN_SIZES", "compression_ratio_from_counts", "compression_ratio_from_manifest",
    "DistilledDataset", "inspect_report", "write_preview", "export_imagefolder", "import_imagefolder", "EXTERNAL_METHOD",
    "normalize_uint8", "denormalize", "quantize_images", "valid_range",
]
