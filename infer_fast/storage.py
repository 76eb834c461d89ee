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
    images.safetensors     baselines: images (N, ch, H, W) uint8 pixels (random real) or
                           fp16/fp32 normalized (sre2l), labels (N,) int64 hard labels
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
channel to the valid range [(0 - mean) / std, (1 - mean) / std].

Writes are atomic: everything goes into a temporary directory next to the target (tensor
files first, manifest last, all fsynced), which is then renamed into place, so a crash
never leaves a half-written set under the target name. Loads verify the manifest schema and
format version, the SHA-256 of every tensor file and every tensor's name, shape and dtype,
and raise :class:`DistilledSetError` (a ValueError) naming the file and the problem.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ._io import PathLike, check_writable, format_bytes, safetensors_save
from .data import transforms

FORMAT_NAME = "infer-fast-distilled"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_ALLOWANCE = 64 << 10  # room for manifest.json and the tensor files' headers when checking free space
METHODS = ("infer", "random", "sre2l")
BASELINE_METHODS = ("random", "sre2l")
BUDGET_ACCOUNTINGS = ("fair", "ipc")
ACCOUNTING = (
    "every stored element counted as one value: images (natural + compensators/synthetic) "
    "ch*H*W each, soft labels C each, index tensors (hard labels, ufc_index, ufc_teacher) 1 "
    "each; full set = full_train_size images of ch*H*W (its hard labels not counted)"
)
IMAGE_ORDER = (
    "INFER: natural images first, i = k*C + c; then composed images, i = K*C + g*C + c, "
    "composed = clamp(natural[ufc_index[g], c] + ufc[g], (0-mean)/std, (1-mean)/std); hard label c. "
    "Baselines: i indexes images, hard label labels[i]."
)
# Training-set sizes used when a set does not record full_train_size (reported as such).
KNOWN_TRAIN_SIZES = {
    "cifar10": 50000,
    "cifar100": 50000,
    "tiny-imagenet": 100000,
    "tinyimagenet": 100000,
    "imagenet": 1281167,
    "imagenet1k": 1281167,
    "imagenet-1k": 1281167,
    "fashion-mnist": 60000,
    "fashionmnist": 60000,
    "mnist": 60000,
}

# file -> (required tensors, optional tensors), per layout
_INFER_FILES = {
    "natural.safetensors": (("natural",), ()),
    "ufc.safetensors": (("ufc", "ufc_index", "ufc_teacher"), ()),
    "labels.safetensors": ((), ("natural_labels", "ufc_labels")),
}
_BASELINE_FILES = {
    "images.safetensors": (("images", "labels"), ()),
    "labels.safetensors": (("soft_labels",), ()),
}
_OPTIONAL_FILES = ("labels.safetensors",)
_DTYPES = {
    "uint8": torch.uint8, "int64": torch.int64, "float16": torch.float16,
    "float32": torch.float32,
}


class DistilledSetError(ValueError):
    """A distilled set that is missing, corrupt, inconsistent or incompatible."""


class OutputExistsError(DistilledSetError, FileExistsError):
    """The output path exists (catchable as ValueError and as FileExistsError)."""


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# --------------------------------------------------------------------------------------
# pixel <-> normalized space
# --------------------------------------------------------------------------------------

def normalize_uint8(pixels: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 pixels (..., ch, H, W) -> float32 normalized (p / 255 - mean) / std."""
    if pixels.dtype != torch.uint8:
        raise ValueError(f"pixels must be uint8, got {pixels.dtype}")
    return transforms.normalize(pixels, mean, std)


def denormalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Normalized float (..., ch, H, W) -> float32 pixel values x * std + mean (not clamped)."""
    return transforms.denormalize(images.to(torch.float32), mean, std)


def quantize_images(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Normalized float (..., ch, H, W) -> uint8 pixels round(clamp(x * std + mean, 0, 1) * 255).

    Use it to store natural images (recovered in normalized float) in the uint8 format.
    """
    return transforms.denormalize(images.detach().to(torch.float32), mean, std, to_uint8=True)


def valid_range(mean: Sequence[float], std: Sequence[float]) -> Tuple[Tensor, Tensor]:
    """(lo, hi) float32 (ch,): the normalized values of pixel 0 and pixel 1 per channel."""
    m = torch.tensor([float(v) for v in mean], dtype=torch.float32)
    s = torch.tensor([float(v) for v in std], dtype=torch.float32)
    return (0.0 - m) / s, (1.0 - m) / s


# --------------------------------------------------------------------------------------
# compression ratio
# --------------------------------------------------------------------------------------

def compression_ratio_from_counts(
    *,
    stored_images: int,
    image_shape: Sequence[int],
    soft_labels: int,
    num_classes: int,
    full_train_size: int,
    index_elements: int = 0,
) -> Dict[str, Any]:
    """Compression ratio of a distilled set, counting every stored element as one value.

    stored_images: images stored (INFER: K*C natural + G compensators; baselines: N);
    image_shape: (ch, H, W); soft_labels: number of stored C-dim soft labels (INFER:
    K*C + G*C once relabelled); index_elements: stored index/hard-label values;
    full_train_size: number of images of the real training set (ch*H*W values each).
    """
    for name, value in (("stored_images", stored_images), ("soft_labels", soft_labels),
                        ("index_elements", index_elements)):
        if int(value) < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if int(full_train_size) <= 0:
        raise ValueError(f"full_train_size must be > 0, got {full_train_size}")
    per_image = math.prod(int(v) for v in image_shape)
    image_elements = int(stored_images) * per_image
    label_elements = int(soft_labels) * int(num_classes)
    stored = image_elements + label_elements + int(index_elements)
    full = int(full_train_size) * per_image
    ratio = stored / full
    return {
        "ratio": ratio,
        "percent": 100.0 * ratio,
        "stored_elements": stored,
        "full_elements": full,
        "image_elements": image_elements,
        "label_elements": label_elements,
        "index_elements": int(index_elements),
        "full_train_size": int(full_train_size),
        "accounting": ACCOUNTING,
    }


def _counts_from_shapes(method: str, shapes: Dict[str, Sequence[int]]) -> Dict[str, int]:
    """Stored counts from tensor shapes {name: shape} (from a DistilledSet or a manifest)."""
    def numel(name):
        return math.prod(shapes[name]) if name in shapes else 0

    if method == "infer":
        k, c = shapes["natural"][0], shapes["natural"][1]
        g = shapes["ufc"][0]
        soft = (numel("natural_labels") + numel("ufc_labels")) // max(c, 1)
        return {"stored_images": k * c + g, "soft_labels": soft, "index_elements": 2 * g,
                "training_images": k * c + g * c, "K": k, "G": g, "C": c}
    n = shapes["images"][0]
    c = shapes["soft_labels"][1] if "soft_labels" in shapes else None
    soft = shapes["soft_labels"][0] if "soft_labels" in shapes else 0
    return {"stored_images": n, "soft_labels": soft, "index_elements": numel("labels"),
            "training_images": n, "N": n, "C": c}


def _train_size(dataset: str, full_train_size: Optional[int]) -> Tuple[Optional[int], str]:
    if full_train_size is not None:
        return int(full_train_size), "recorded"
    size = KNOWN_TRAIN_SIZES.get(dataset.lower())
    return size, ("built-in table" if size is not None else "unknown")


def compression_ratio_from_manifest(manifest: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The compression ratio computed from a manifest alone (tensor shapes), or None when
    the real training-set size is neither recorded nor in :data:`KNOWN_TRAIN_SIZES`."""
    shapes = {name: info["shape"] for f in manifest["files"].values() for name, info in f["tensors"].items()}
    counts = _counts_from_shapes(manifest["method"], shapes)
    size, source = _train_size(manifest["dataset"], manifest.get("full_train_size"))
    if size is None:
        return None
    ch = manifest["channels"]
    h, w = manifest["image_size"]
    out = compression_ratio_from_counts(
        stored_images=counts["stored_images"], image_shape=(ch, h, w), soft_labels=counts["soft_labels"],
        num_classes=manifest["num_classes"], full_train_size=size, index_elements=counts["index_elements"],
    )
    out["full_train_size_source"] = source
    return out


# --------------------------------------------------------------------------------------
# the in-memory set
# --------------------------------------------------------------------------------------

@dataclass(eq=False)
class DistilledSet:
    """A distilled set in memory. See the module docstring for layouts and image order.

    INFER (method "infer"): ``natural`` (K, C, ch, H, W) uint8 pixels; ``ufc`` (G, ch, H, W)
    float16/float32 normalized; ``ufc_index`` (G,) int64 natural set of each UFC;
    ``ufc_teacher`` (G,) int64 teacher of each UFC; soft labels (fp16 logits)
    ``natural_labels`` (K, C, C) and ``ufc_labels`` (G, C, C), None until relabelled.
    Baselines ("random", "sre2l"): ``images`` (N, ch, H, W) uint8 pixels or float16/32
    normalized, ``labels`` (N,) int64, ``soft_labels`` (N, C) fp16 or None.

    Soft labels given as another float dtype are stored as fp16 (an error if they overflow);
    integer index tensors become int64; float64/bfloat16 compensators become float32.
    """

    method: str
    dataset: str
    num_classes: int
    channels: int
    image_size: Union[int, Tuple[int, int]]
    mean: Sequence[float]
    std: Sequence[float]
    natural: Optional[Tensor] = None
    ufc: Optional[Tensor] = None
    ufc_index: Optional[Tensor] = None
    ufc_teacher: Optional[Tensor] = None
    natural_labels: Optional[Tensor] = None
    ufc_labels: Optional[Tensor] = None
    images: Optional[Tensor] = None
    labels: Optional[Tensor] = None
    soft_labels: Optional[Tensor] = None
    class_names: Optional[List[str]] = None
    hyperparameters: Dict[str, Any] = field(default_factory=dict)
    teachers: List[Dict[str, Any]] = field(default_factory=list)
    budget: Dict[str, Any] = field(default_factory=dict)
    seed: Optional[int] = None
    full_train_size: Optional[int] = None
    toolkit_version: Optional[str] = None  # set on load (the writer's version)
    created: Optional[str] = None  # set on load

    def __post_init__(self):
        if isinstance(self.image_size, int):
            self.image_size = (self.image_size, self.image_size)
        else:
            self.image_size = tuple(int(v) for v in self.image_size)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        for name in ("natural", "ufc", "ufc_index", "ufc_teacher", "natural_labels", "ufc_labels",
                     "images", "labels", "soft_labels"):
            t = getattr(self, name)
            if t is None:
                continue
            if not isinstance(t, Tensor):
                raise DistilledSetError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
            t = t.detach().cpu()
            if name in ("natural_labels", "ufc_labels", "soft_labels") and t.dtype != torch.float16:
                if not t.dtype.is_floating_point:
                    raise DistilledSetError(f"{name} must be float soft labels (logits), got {t.dtype}")
                t = t.to(torch.float16)
            elif name in ("ufc_index", "ufc_teacher", "labels") and t.dtype != torch.int64:
                if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
                    raise DistilledSetError(f"{name} must be an integer tensor, got {t.dtype}")
                t = t.to(torch.int64)
            elif name == "ufc" and t.dtype in (torch.float64, torch.bfloat16):
                t = t.to(torch.float32)
            setattr(self, name, t)

    # ---- shapes and counts ------------------------------------------------------------
    @property
    def height(self) -> int:
        return self.image_size[0]

    @property
    def width(self) -> int:
        return self.image_size[1]

    @property
    def is_infer(self) -> bool:
        return self.method == "infer"

    @property
    def K(self) -> int:
        return int(self.natural.shape[0]) if self.is_infer else 0

    @property
    def G(self) -> int:
        return int(self.ufc.shape[0]) if self.is_infer else 0

    @property
    def has_soft_labels(self) -> bool:
        """True when every training image has a stored soft label."""
        if self.is_infer:
            return self.natural_labels is not None and (self.ufc_labels is not None or self.G == 0)
        return self.soft_labels is not None

    def num_training_images(self) -> int:
        """INFER: K*C natural + G*C composed; baselines: N."""
        if self.is_infer:
            return self.K * self.num_classes + self.G * self.num_classes
        return int(self.images.shape[0])

    def num_stored_images(self) -> int:
        """Images stored (the budget unit): INFER K*C + G (one UFC counts as one image); baselines N."""
        return self.K * self.num_classes + self.G if self.is_infer else int(self.images.shape[0])

    def tensor_shapes(self) -> Dict[str, Tuple[int, ...]]:
        return {name: tuple(t.shape) for name, t in self._tensors().items()}

    def compression_ratio(self, full_train_size: Optional[int] = None) -> Dict[str, Any]:
        """{"ratio", "percent", "stored_elements", "full_elements", "image_elements",
        "label_elements", "index_elements", "full_train_size", "accounting",
        "full_train_size_source"}. The training-set size is ``full_train_size`` (argument,
        else the recorded one, else :data:`KNOWN_TRAIN_SIZES`); an error if none is known."""
        size, source = _train_size(self.dataset, full_train_size if full_train_size is not None else self.full_train_size)
        if full_train_size is not None:
            source = "argument"
        if size is None:
            raise DistilledSetError(
                f"the compression ratio needs the size of the real training set: dataset {self.dataset!r} "
                "records no full_train_size and is not in infer_fast.storage.KNOWN_TRAIN_SIZES"
            )
        counts = _counts_from_shapes(self.method, self.tensor_shapes())
        out = compression_ratio_from_counts(
            stored_images=counts["stored_images"], image_shape=(self.channels, self.height, self.width),
            soft_labels=counts["soft_labels"], num_classes=self.num_classes, full_train_size=size,
            index_elements=counts["index_elements"],
        )
        out["full_train_size_source"] = source
        return out

    # ---- labels in training order -------------------------------------------------------
    def hard_labels(self) -> Tensor:
        """(N,) int64 hard labels in training order."""
        if self.is_infer:
            return torch.arange(self.num_classes, dtype=torch.int64).repeat(self.K + self.G)
        return self.labels.clone()

    def soft_labels_flat(self) -> Optional[Tensor]:
        """(N, C) fp16 soft labels in training order, or None when not (fully) relabelled."""
        if not self.has_soft_labels:
            return None
        if not self.is_infer:
            return self.soft_labels
        c = self.num_classes
        parts = [self.natural_labels.reshape(-1, c)]
        if self.G:
            parts.append(self.ufc_labels.reshape(-1, c))
        return torch.cat(parts)

    def set_soft_labels(self, soft: Tensor) -> None:
        """Store (N, C) soft labels (logits, training order); kept as fp16."""
        n, c = self.num_training_images(), self.num_classes
        if not isinstance(soft, Tensor) or tuple(soft.shape) != (n, c):
            got = tuple(soft.shape) if isinstance(soft, Tensor) else type(soft).__name__
            raise DistilledSetError(f"soft labels must be ({n}, {c}) (one C-vector per training image), got {got}")
        soft = soft.detach().cpu().to(torch.float16)
        if not torch.isfinite(soft).all():
            raise DistilledSetError("soft labels contain inf/nan after conversion to fp16 (logits beyond +-65504?)")
        if self.is_infer:
            kc = self.K * c
            self.natural_labels = soft[:kc].reshape(self.K, c, c).clone()
            self.ufc_labels = soft[kc:].reshape(self.G, c, c).clone()
        else:
            self.soft_labels = soft.clone()

    # ---- validation -----------------------------------------------------------------------
    def nbytes(self) -> int:
        """Bytes of the stored tensors (what the set's files hold, less their headers)."""
        return sum(t.numel() * t.element_size() for t in self._tensors().values())

    def _tensors(self) -> Dict[str, Tensor]:
        names = ("natural", "ufc", "ufc_index", "ufc_teacher", "natural_labels", "ufc_labels") if self.is_infer \
            else ("images", "labels", "soft_labels")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def validate(self) -> "DistilledSet":
        """Check fields, shapes, dtypes and value ranges; raise DistilledSetError if wrong."""
        err = DistilledSetError
        if self.method not in METHODS:
            raise err(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")
        if not isinstance(self.dataset, str) or not self.dataset:
            raise err("dataset must be a non-empty string")
        c, ch = self.num_classes, self.channels
        if not isinstance(c, int) or c < 1:
            raise err(f"num_classes must be a positive int, got {c!r}")
        if not isinstance(ch, int) or ch < 1:
            raise err(f"channels must be a positive int, got {ch!r}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise err(f"image_size must be (H, W) with positive sizes, got {self.image_size}")
        if len(self.mean) != ch or len(self.std) != ch:
            raise err(f"mean and std need one value per channel ({ch}), got {len(self.mean)} and {len(self.std)}")
        if not all(math.isfinite(v) for v in self.mean) or not all(math.isfinite(s) and s > 0 for s in self.std):
            raise err(f"mean must be finite and std positive, got mean {self.mean} std {self.std}")
        if self.class_names is not None and (len(self.class_names) != c or not all(isinstance(n, str) for n in self.class_names)):
            raise err(f"class_names must be {c} strings")
        if self.budget.get("accounting") is not None and self.budget["accounting"] not in BUDGET_ACCOUNTINGS:
            raise err(f"budget accounting must be one of {BUDGET_ACCOUNTINGS}, got {self.budget['accounting']!r}")
        if self.full_train_size is not None and (not isinstance(self.full_train_size, int) or self.full_train_size < 1):
            raise err(f"full_train_size must be a positive int or None, got {self.full_train_size!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise err(f"seed must be an int or None, got {self.seed!r}")
        for name, value in (("hyperparameters", self.hyperparameters), ("budget", self.budget)):
            if not isinstance(value, dict):
                raise err(f"{name} must be a dict, got {type(value).__name__}")
        if not isinstance(self.teachers, list) or not all(isinstance(t, dict) for t in self.teachers):
            raise err("teachers must be a list of dicts (name/path/model/accuracy, free-form)")
        try:
            json.dumps({"h": self.hyperparameters, "t": self.teachers, "b": self.budget}, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise err(f"hyperparameters, teachers and budget must be JSON-serializable: {exc}") from None
        img = (ch, self.height, self.width)

        def need(name, shape, dtypes):
            t = getattr(self, name)
            if t is None:
                raise err(f"method {self.method!r} needs {name}")
            if tuple(t.shape) != tuple(shape):
                raise err(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
            if t.dtype not in dtypes:
                raise err(f"{name} must be {' or '.join(_dtype_name(d) for d in dtypes)}, got {_dtype_name(t.dtype)}"
                          + (" (store natural images as uint8 pixels: see quantize_images)" if name == "natural" else ""))

        if self.is_infer:
            for name in ("images", "labels", "soft_labels"):
                if getattr(self, name) is not None:
                    raise err(f"an INFER set stores natural + ufc, not {name}")
            if self.natural is None or self.natural.dim() != 5:
                raise err(f"natural must be (K, C, ch, H, W) uint8, got "
                          f"{None if self.natural is None else tuple(self.natural.shape)}")
            k = int(self.natural.shape[0])
            if k < 1:
                raise err("natural must hold at least one natural set (K >= 1)")
            need("natural", (k, c) + img, (torch.uint8,))
            if self.ufc is None or self.ufc.dim() != 4:
                raise err(f"ufc must be (G, ch, H, W), got {None if self.ufc is None else tuple(self.ufc.shape)}")
            g = int(self.ufc.shape[0])
            need("ufc", (g,) + img, (torch.float16, torch.float32))
            need("ufc_index", (g,), (torch.int64,))
            need("ufc_teacher", (g,), (torch.int64,))
            if g and not torch.isfinite(self.ufc).all():
                raise err("ufc contains inf/nan")
            if g and (int(self.ufc_index.min()) < 0 or int(self.ufc_index.max()) >= k):
                raise err(f"ufc_index values must lie in [0, {k}) (K = {k} natural sets)")
            if g and int(self.ufc_teacher.min()) < 0:
                raise err("ufc_teacher values must be >= 0")
            if g and self.teachers and int(self.ufc_teacher.max()) >= len(self.teachers):
                raise err(f"ufc_teacher values must lie in [0, {len(self.teachers)}) ({len(self.teachers)} teachers recorded)")
            if self.natural_labels is not None:
                need("natural_labels", (k, c, c), (torch.float16,))
            if self.ufc_labels is not None:
                need("ufc_labels", (g, c, c), (torch.float16,))
            if "K" in self.budget and self.budget["K"] is not None and int(self.budget["K"]) != k:
                raise err(f"budget records K = {self.budget['K']} but natural holds {k} sets")
        else:
            for name in ("natural", "ufc", "ufc_index", "ufc_teacher", "natural_labels", "ufc_labels"):
                if getattr(self, name) is not None:
                    raise err(f"a {self.method!r} baseline stores images + labels, not {name}")
            if self.images is None or self.images.dim() != 4:
                raise err(f"images must be (N, ch, H, W), got {None if self.images is None else tuple(self.images.shape)}")
            n = int(self.images.shape[0])
            need("images", (n,) + img, (torch.uint8, torch.float16, torch.float32))
            need("labels", (n,), (torch.int64,))
            if n and (int(self.labels.min()) < 0 or int(self.labels.max()) >= c):
                raise err(f"labels must lie in [0, {c})")
            if self.images.dtype != torch.uint8 and n and not torch.isfinite(self.images).all():
                raise err("images contain inf/nan")
            if self.soft_labels is not None:
                need("soft_labels", (n, c), (torch.float16,))
        for name in ("natural_labels", "ufc_labels", "soft_labels"):
            t = getattr(self, name)
            if t is not None and t.numel() and not torch.isfinite(t).all():
                raise err(f"{name} contains inf/nan (fp16 overflow?)")
        return self

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n}={list(s)}" for n, s in self.tensor_shapes().items())
        return f"DistilledSet(method={self.method!r}, dataset={self.dataset!r}, C={self.num_classes}, {shapes})"

    # ---- files ------------------------------------------------------------------------------
    def _tensor_files(self) -> Dict[str, Dict[str, Tensor]]:
        if self.is_infer:
            files = {
                "natural.safetensors": {"natural": self.natural},
                "ufc.safetensors": {"ufc": self.ufc, "ufc_index": self.ufc_index, "ufc_teacher": self.ufc_teacher},
            }
            labels = {n: getattr(self, n) for n in ("natural_labels", "ufc_labels") if getattr(self, n) is not None}
        else:
            files = {"images.safetensors": {"images": self.images, "labels": self.labels}}
            labels = {"soft_labels": self.soft_labels} if self.soft_labels is not None else {}
        if labels:
            files["labels.safetensors"] = labels
        return files


# --------------------------------------------------------------------------------------
# save
# --------------------------------------------------------------------------------------

def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _owned(t: Tensor, seen: set) -> Tensor:
    """A contiguous tensor that owns its storage (safetensors refuses shared/partial views)."""
    t = t.contiguous()
    storage = t.untyped_storage()
    if t.storage_offset() or storage.nbytes() != t.numel() * t.element_size() or storage.data_ptr() in seen:
        t = t.clone()
    if t.numel():
        seen.add(t.untyped_storage().data_ptr())
    return t


def _write_tensor_file(path: Path, tensors: Dict[str, Tensor]) -> Dict[str, Any]:
    """Write one safetensors file, fsync it, and return its manifest entry."""
    seen: set = set()
    safetensors_save({n: _owned(t, seen) for n, t in tensors.items()}, path, metadata={"format": FORMAT_NAME})
    _fsync_path(path)
    return {
        "sha256": _sha256(path),
        "bytes": path.stat().st_size,
        "tensors": {n: {"shape": list(t.shape), "dtype": _dtype_name(t.dtype)} for n, t in tensors.items()},
    }


def _toolkit_version() -> str:
    from . import __version__

    return __version__


def build_manifest(ds: DistilledSet, files: Dict[str, Any]) -> Dict[str, Any]:
    """The manifest of ``ds`` given the entries of its written tensor files."""
    lo, hi = valid_range(ds.mean, ds.std)
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "toolkit_version": _toolkit_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "method": ds.method,
        "dataset": ds.dataset,
        "num_classes": ds.num_classes,
        "class_names": list(ds.class_names) if ds.class_names is not None else None,
        "channels": ds.channels,
        "image_size": list(ds.image_size),
        "normalization": {
            "mean": list(ds.mean),
            "std": list(ds.std),
            "uint8": "x = (p / 255 - mean) / std",
            "valid_range": {"lo": [float(v) for v in lo], "hi": [float(v) for v in hi]},
        },
        "hyperparameters": ds.hyperparameters,
        "teachers": ds.teachers,
        "budget": ds.budget,
        "seed": ds.seed,
        "full_train_size": ds.full_train_size,
        "counts": {
            "stored_images": ds.num_stored_images(),
            "training_images": ds.num_training_images(),
            **({"K": ds.K, "G": ds.G} if ds.is_infer else {}),
            "soft_labels": ds.has_soft_labels,
        },
        "image_order": IMAGE_ORDER,
        "files": files,
    }


def _is_distilled_dir(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


def _cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def save_distilled(ds: DistilledSet, directory: PathLike, overwrite: bool = False) -> Path:
    """Write ``ds`` to ``directory`` atomically; returns the directory.

    Everything is written into a temporary directory next to the target (tensor files
    first, manifest.json last, each fsynced), then renamed into place. An existing
    directory is refused unless ``overwrite=True``; then it must be an infer-fast distilled
    set (or empty), and it is replaced by renaming it aside, renaming the new set in and
    deleting the old one. Before writing, the parent must be writable with room for the
    set (OutputPathError otherwise); a failed write leaves nothing behind.
    """
    ds.validate()
    directory = Path(directory)
    check_writable(directory, "output directory", kind="directory", need_bytes=ds.nbytes() + MANIFEST_ALLOWANCE)
    if directory.exists() or directory.is_symlink():
        if not overwrite:
            raise OutputExistsError(f"{directory} already exists (pass overwrite=True to replace it)")
        if not directory.is_dir() or directory.is_symlink():
            raise DistilledSetError(f"refusing to replace {directory}: it is not a directory")
        if any(directory.iterdir()) and not _is_distilled_dir(directory):
            raise DistilledSetError(f"refusing to replace {directory}: it is not an infer-fast distilled set")
    parent = directory.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        files = {}
        for fname, tensors in ds._tensor_files().items():
            files[fname] = _write_tensor_file(tmp / fname, tensors)
        manifest = build_manifest(ds, files)
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=2, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_path(tmp)
        if directory.exists():
            old = parent / f".{directory.name}.old-{uuid.uuid4().hex[:12]}"
            os.rename(directory, old)
            os.rename(tmp, directory)
            _fsync_path(parent)  # the new set is in place before the old one goes
            _cleanup(old)
        else:
            os.rename(tmp, directory)
            _fsync_path(parent)
    except BaseException:
        _cleanup(tmp)
        raise
    return directory


# --------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------

def _missing_hint(directory: Path) -> str:
    parent = directory.absolute().parent
    if parent.is_dir():
        olds = sorted(parent.glob(f".{directory.name}.old-*"))
        for old in olds:
            if _is_distilled_dir(old):
                return f" (an interrupted overwrite left the previous set at {old}; rename it back to recover)"
    return ""


def read_manifest(directory: PathLike) -> Dict[str, Any]:
    """Parse and schema-check ``directory/manifest.json`` (no tensor file is read)."""
    directory = Path(directory)
    err = DistilledSetError
    if not directory.exists():
        raise err(f"{directory}: no such distilled set{_missing_hint(directory)}")
    if not directory.is_dir():
        raise err(f"{directory}: not a directory (a distilled set is a directory with {MANIFEST})")
    path = directory / MANIFEST
    if not path.is_file():
        raise err(f"{path}: missing manifest (not a distilled set, or an incomplete write)")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise err(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise err(f"{path}: not an infer-fast distilled-set manifest (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise err(f"{path}: format_version must be an integer, got {version!r}")
    if version != FORMAT_VERSION:
        newer = " (written by a newer infer-fast: upgrade)" if version > FORMAT_VERSION else ""
        raise err(f"{path}: unknown format version {version}; this infer-fast reads format version {FORMAT_VERSION}{newer}")

    def need(key, types, what):
        if key not in manifest:
            raise err(f"{path}: missing key {key!r}")
        value = manifest[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,))):
            raise err(f"{path}: {key!r} must be {what}, got {value!r}")
        return value

    method = need("method", str, "a string")
    if method not in METHODS:
        raise err(f"{path}: unknown method {method!r}; this infer-fast knows {', '.join(METHODS)}")
    need("dataset", str, "a string")
    need("num_classes", int, "an integer")
    need("channels", int, "an integer")
    size = need("image_size", list, "[H, W]")
    if len(size) != 2 or not all(isinstance(v, int) for v in size):
        raise err(f"{path}: 'image_size' must be [H, W], got {size!r}")
    norm = need("normalization", dict, "an object")
    for key in ("mean", "std"):
        if not isinstance(norm.get(key), list) or not all(isinstance(v, (int, float)) for v in norm[key]):
            raise err(f"{path}: normalization.{key} must be a list of numbers")
    need("hyperparameters", dict, "an object")
    need("teachers", list, "a list")
    need("budget", dict, "an object")
    for key in ("seed", "full_train_size"):
        if manifest.get(key) is not None and (not isinstance(manifest[key], int) or isinstance(manifest[key], bool)):
            raise err(f"{path}: {key!r} must be an integer or null, got {manifest[key]!r}")
    files = need("files", dict, "an object")
    layout = _INFER_FILES if method == "infer" else _BASELINE_FILES
    for fname in layout:
        if fname not in files and fname not in _OPTIONAL_FILES:
            raise err(f"{path}: lists no {fname} (required for method {method!r})")
    for fname, entry in files.items():
        if fname not in layout:
            raise err(f"{path}: unexpected file {fname!r} for method {method!r} (expected {', '.join(layout)})")
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not isinstance(entry.get("tensors"), dict):
            raise err(f"{path}: entry for {fname} needs 'sha256' and 'tensors'")
        required, optional = layout[fname]
        names = set(entry["tensors"])
        missing = set(required) - names
        extra = names - set(required) - set(optional)
        if missing or extra or not names:
            raise err(f"{path}: {fname} must hold tensors {list(required) or list(optional)}, lists {sorted(names)}")
        for name, info in entry["tensors"].items():
            if (not isinstance(info, dict) or not isinstance(info.get("shape"), list)
                    or not all(isinstance(v, int) and v >= 0 for v in info["shape"]) or info.get("dtype") not in _DTYPES):
                raise err(f"{path}: {fname}: tensor {name!r} needs 'shape' (list of ints) and 'dtype' (one of {list(_DTYPES)})")
    return manifest


def _check_compatible(manifest, where, expected_dataset, expected_num_classes, expected_image_size=None):
    if expected_dataset is not None and manifest["dataset"].lower() != str(expected_dataset).lower():
        raise DistilledSetError(f"{where}: incompatible set: distilled from dataset {manifest['dataset']!r}, expected {expected_dataset!r}")
    if expected_num_classes is not None and manifest["num_classes"] != int(expected_num_classes):
        raise DistilledSetError(f"{where}: incompatible set: {manifest['num_classes']} classes, expected {expected_num_classes}")
    if expected_image_size is not None:
        want = [expected_image_size] * 2 if isinstance(expected_image_size, int) else list(expected_image_size)
        if manifest["image_size"] != want:
            raise DistilledSetError(f"{where}: incompatible set: images {manifest['image_size']}, expected {want}")


def verify_files(directory: PathLike, manifest: Optional[Dict[str, Any]] = None) -> Dict[str, str]:
    """Check every tensor file's presence, size and SHA-256 against the manifest.

    Returns {file: sha256}; raises DistilledSetError naming the first bad file."""
    directory = Path(directory)
    manifest = read_manifest(directory) if manifest is None else manifest
    out = {}
    for fname, entry in manifest["files"].items():
        path = directory / fname
        if not path.is_file():
            raise DistilledSetError(f"{path}: missing tensor file (listed in {MANIFEST})")
        size = path.stat().st_size
        if "bytes" in entry and size != entry["bytes"]:
            raise DistilledSetError(f"{path}: size {size} bytes, {MANIFEST} records {entry['bytes']} (truncated or replaced)")
        digest = _sha256(path)
        if digest != entry["sha256"]:
            raise DistilledSetError(f"{path}: SHA-256 checksum mismatch (file is corrupt or was modified): "
                                    f"{digest[:16]}... != {entry['sha256'][:16]}... recorded in {MANIFEST}")
        out[fname] = digest
    return out


def load_distilled(
    directory: PathLike,
    expected_dataset: Optional[str] = None,
    expected_num_classes: Optional[int] = None,
    expected_image_size: Union[None, int, Sequence[int]] = None,
    verify_checksums: bool = True,
) -> DistilledSet:
    """Load and verify a distilled set (manifest schema + format version, SHA-256 of every
    tensor file, tensor names/shapes/dtypes against the manifest, then field consistency).

    ``expected_*`` refuse a set of another dataset / class count / resolution. Every
    problem raises :class:`DistilledSetError` (a ValueError) naming the file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    manifest = read_manifest(directory)
    _check_compatible(manifest, directory / MANIFEST, expected_dataset, expected_num_classes, expected_image_size)
    if verify_checksums:
        verify_files(directory, manifest)
    tensors: Dict[str, Tensor] = {}
    for fname, entry in manifest["files"].items():
        path = directory / fname
        if not path.is_file():
            raise DistilledSetError(f"{path}: missing tensor file (listed in {MANIFEST})")
        try:
            loaded = load_file(str(path))
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise DistilledSetError(f"{path}: cannot read safetensors file ({exc})") from None
        if set(loaded) != set(entry["tensors"]):
            raise DistilledSetError(f"{path}: holds tensors {sorted(loaded)}, {MANIFEST} lists {sorted(entry['tensors'])}")
        for name, info in entry["tensors"].items():
            t = loaded[name]
            if list(t.shape) != info["shape"]:
                raise DistilledSetError(f"{path}: tensor {name!r} has shape {list(t.shape)}, {MANIFEST} records {info['shape']}")
            if _dtype_name(t.dtype) != info["dtype"]:
                raise DistilledSetError(f"{path}: tensor {name!r} has dtype {_dtype_name(t.dtype)}, {MANIFEST} records {info['dtype']}")
            tensors[name] = t
    norm = manifest["normalization"]
    try:
        ds = DistilledSet(
            method=manifest["method"], dataset=manifest["dataset"], num_classes=manifest["num_classes"],
            channels=manifest["channels"], image_size=tuple(manifest["image_size"]),
            mean=norm["mean"], std=norm["std"], class_names=manifest.get("class_names"),
            hyperparameters=manifest["hyperparameters"], teachers=manifest["teachers"], budget=manifest["budget"],
            seed=manifest.get("seed"), full_train_size=manifest.get("full_train_size"),
            toolkit_version=manifest.get("toolkit_version"), created=manifest.get("created"), **tensors,
        )
        ds.validate()
    except DistilledSetError as exc:
        raise DistilledSetError(f"{directory}: inconsistent distilled set: {exc}") from None
    return ds


# --------------------------------------------------------------------------------------
# torch Dataset
# --------------------------------------------------------------------------------------

class DistilledDataset(torch.utils.data.Dataset):
    """Training images of a distilled set, composed on the fly.

    ``ds[i]`` -> (image float32 (ch, H, W) normalized, soft label float32 (C,), hard label
    int), in the training order of the module docstring. With ``hard_only=True`` items are
    (image, hard label) and soft labels are not needed; otherwise a set that is not
    relabelled yet is refused.

    INFER images are composed through :func:`infer_fast.ops.ufc_compose` (float32, clamped
    per channel to [(0 - mean)/std, (1 - mean)/std]); natural images are uint8 -> normalized
    float32. When all training images fit in ``cache_bytes`` (float32), they are composed
    once, in chunks, on first access and then indexed; otherwise each item is composed
    alone (one ufc_compose call on a 1-set, 1-class slice). With DataLoader workers, call
    :meth:`all_images` first so forked workers share the cache instead of each building one.
    """

    def __init__(
        self,
        source: Union[DistilledSet, PathLike],
        hard_only: bool = False,
        backend: str = "auto",
        cache_bytes: int = 1 << 30,
        chunk_images: int = 4096,
        expected_dataset: Optional[str] = None,
        expected_num_classes: Optional[int] = None,
    ):
        if isinstance(source, DistilledSet):
            self.set = source.validate()
            if expected_dataset is not None or expected_num_classes is not None:
                m = {"dataset": source.dataset, "num_classes": source.num_classes}
                _check_compatible(m, "distilled set", expected_dataset, expected_num_classes)
        else:
            self.set = load_distilled(source, expected_dataset, expected_num_classes)
        if not hard_only and not self.set.has_soft_labels:
            raise DistilledSetError(
                f"this {self.set.method} set has no soft labels yet (not relabelled); relabel it, "
                "or pass hard_only=True to get (image, hard label) items"
            )
        self.hard_only = hard_only
        self.backend = backend
        self.chunk_images = max(1, int(chunk_images))
        s = self.set
        self._n = s.num_training_images()
        self._lo, self._hi = valid_range(s.mean, s.std)
        self._hard = s.hard_labels()
        soft = None if hard_only else s.soft_labels_flat()
        self._soft = None if soft is None else soft.to(torch.float32)
        self._ufc32 = s.ufc.to(torch.float32) if s.is_infer else None
        self._zero_index = torch.zeros(1, dtype=torch.int64)
        image_bytes = s.channels * s.height * s.width * 4
        self._cache_ok = self._n * image_bytes <= cache_bytes
        self._cache: Optional[Tensor] = None
        # normalized natural sets, kept when they fit (composition reads them for every UFC)
        self._keep_natural = s.is_infer and s.K * s.num_classes * image_bytes <= max(cache_bytes, 1 << 28)
        self._natural_all: Optional[Tensor] = None

    def __len__(self) -> int:
        return self._n

    # ---- composition --------------------------------------------------------------------------
    def _natural(self, k, c=slice(None)) -> Tensor:
        return normalize_uint8(self.set.natural[k, c], self.set.mean, self.set.std)

    def _compose_groups(self, g0: int, g1: int) -> Tensor:
        """(g1 - g0, C, ch, H, W) composed images of UFCs g0..g1-1."""
        from .ops import ufc_compose

        index = self.set.ufc_index[g0:g1]
        if self._keep_natural:
            if self._natural_all is None:
                self._natural_all = self._natural(slice(None))
            natural = self._natural_all
        else:  # only the natural sets this chunk uses
            used, index = torch.unique(index, return_inverse=True)
            natural = self._natural(used)
        return ufc_compose(natural, self._ufc32[g0:g1], index.to(torch.int64),
                           lo=self._lo, hi=self._hi, backend=self.backend)

    def _compose_one(self, g: int, c: int) -> Tensor:
        from .ops import ufc_compose

        k = int(self.set.ufc_index[g])
        natural = self._natural(slice(k, k + 1), slice(c, c + 1))  # (1, 1, ch, H, W)
        out = ufc_compose(natural, self._ufc32[g:g + 1], self._zero_index, lo=self._lo, hi=self._hi, backend=self.backend)
        return out[0, 0]

    def _plain(self, rows) -> Tensor:
        images = self.set.images[rows]
        if images.dtype == torch.uint8:
            return normalize_uint8(images, self.set.mean, self.set.std)
        return images.to(torch.float32)

    def iter_chunks(self, max_images: Optional[int] = None) -> Iterator[Tuple[int, Tensor]]:
        """Yield (start, images float32 (n, ch, H, W)) covering all training images in order."""
        step = max(1, int(max_images or self.chunk_images))
        s = self.set
        if not s.is_infer:
            for start in range(0, self._n, step):
                yield start, self._plain(slice(start, min(self._n, start + step)))
            return
        c = s.num_classes
        per = max(1, step // c)  # natural sets / UFC groups per chunk (each C images)
        for k0 in range(0, s.K, per):
            k1 = min(s.K, k0 + per)
            natural = self._natural_all[k0:k1] if self._natural_all is not None else self._natural(slice(k0, k1))
            yield k0 * c, natural.reshape(-1, s.channels, s.height, s.width)
        for g0 in range(0, s.G, per):
            g1 = min(s.G, g0 + per)
            yield s.K * c + g0 * c, self._compose_groups(g0, g1).reshape(-1, s.channels, s.height, s.width)

    def image(self, i: int) -> Tensor:
        """Training image ``i`` as float32 (ch, H, W), normalized."""
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"index {i} out of range for {self._n} training images")
        if self._cache is None and self._cache_ok:
            self._cache = self._materialize()
        if self._cache is not None:
            return self._cache[i].clone()  # callers may augment in place
        s = self.set
        if not s.is_infer:
            return self._plain(slice(i, i + 1))[0]
        c = s.num_classes
        if i < s.K * c:
            k, cls = divmod(i, c)
            return self._natural(k, cls)
        g, cls = divmod(i - s.K * c, c)
        return self._compose_one(g, cls)

    @property
    def soft_labels(self) -> Optional[Tensor]:
        """float32 (N, C) soft labels in training order (None with hard_only)."""
        return self._soft

    @property
    def fits_in_memory(self) -> bool:
        """Whether all training images fit ``cache_bytes`` (then they are materialized once)."""
        return self._cache_ok

    def images_at(self, index: Tensor) -> Tensor:
        """Training images ``index`` (int64 (B,)) as float32 (B, ch, H, W), composed on the fly
        with the same arithmetic as the materialized set (for sets too large to hold)."""
        index = torch.as_tensor(index, dtype=torch.int64)
        if self._cache is not None:
            return self._cache[index]
        s = self.set
        if not s.is_infer:
            return self._plain(index)
        c = s.num_classes
        natural_rows = s.K * c
        composed = index >= natural_rows
        group = torch.where(composed, index - natural_rows, torch.zeros_like(index)) // c
        k = torch.where(composed, s.ufc_index[group], index // c)
        x = normalize_uint8(s.natural[k, index % c], s.mean, s.std)
        if bool(composed.any()):  # clamp(natural + u) on the composed rows only
            rows = composed.nonzero().squeeze(1)
            view = (1, -1, 1, 1)
            x[rows] = torch.clamp(x[rows] + self._ufc32[group[rows]], self._lo.view(view), self._hi.view(view))
        return x

    def _materialize(self) -> Tensor:
        s = self.set
        out = torch.empty(self._n, s.channels, s.height, s.width, dtype=torch.float32)
        for start, images in self.iter_chunks():
            out[start:start + images.shape[0]] = images
        return out

    def __getitem__(self, i: int):
        i = int(i)
        image = self.image(i)
        if i < 0:
            i += self._n
        hard = int(self._hard[i])
        if self.hard_only:
            return image, hard
        return image, self._soft[i], hard

    def all_images(self) -> Tuple[Tensor, Optional[Tensor], Tensor]:
        """(images float32 (N, ch, H, W) normalized, soft float32 (N, C) or None, hard int64 (N,)),
        materialized in training order (for in-memory training, or for relabelling). The image
        tensor is the dataset's cache when it fits ``cache_bytes``: do not modify it in place."""
        images = self._cache if self._cache is not None else self._materialize()
        if self._cache_ok:
            self._cache = images
        return images, self._soft, self._hard.clone()


# --------------------------------------------------------------------------------------
# inspect / preview / export
# --------------------------------------------------------------------------------------

def inspect_report(directory: PathLike) -> str:
    """Human summary of a distilled set, after full verification (load_distilled)."""
    directory = Path(directory)
    ds = load_distilled(directory)  # verifies checksums, shapes, consistency
    manifest = read_manifest(directory)
    c = ds.num_classes
    lines = [f"distilled set {directory}"]

    def row(key, value):
        lines.append(f"  {key:<18} {value}")

    row("format", f"{FORMAT_NAME} v{manifest['format_version']} (written by infer-fast {manifest.get('toolkit_version')}"
        f"{', ' + manifest['created'] if manifest.get('created') else ''})")
    row("method", ds.method)
    row("dataset", f"{ds.dataset}: {c} classes, images {ds.channels}x{ds.height}x{ds.width}")
    row("normalization", f"mean {tuple(round(v, 4) for v in ds.mean)} std {tuple(round(v, 4) for v in ds.std)}")
    b = ds.budget
    if b:
        row("budget", ", ".join(f"{k} {v}" for k, v in b.items()))
    if ds.is_infer:
        stored = f"{ds.K * c} natural ({ds.K} sets x {c} classes, uint8) + {ds.G} compensators " \
                 f"({_dtype_name(ds.ufc.dtype)}) = {ds.num_stored_images()} images"
        if b.get("ipc") is not None:
            stored += f" (budget ipc*C = {int(b['ipc']) * c})"
        row("stored", stored)
        if ds.G:
            per_set = torch.bincount(ds.ufc_index, minlength=ds.K)
            per_teacher = torch.bincount(ds.ufc_teacher)
            row("compensators", f"{int(per_set.min())}-{int(per_set.max())} per natural set, per teacher {per_teacher.tolist()}")
        n = ds.num_training_images()
        row("training images", f"{n} ({ds.K * c} natural + {ds.G * c} composed), {n // c} per class")
    else:
        counts = torch.bincount(ds.labels, minlength=c)
        row("stored", f"{ds.images.shape[0]} images ({_dtype_name(ds.images.dtype)}"
            f"{' pixels' if ds.images.dtype == torch.uint8 else ' normalized'}), "
            f"{int(counts.min())}-{int(counts.max())} per class")
        row("training images", str(ds.num_training_images()))
    soft = ds.soft_labels_flat()
    row("soft labels", f"{soft.shape[0]} x {c} fp16 (static)" if soft is not None else "none (not relabelled yet)")
    cr = compression_ratio_from_manifest(manifest)
    if cr is None:
        row("compression ratio", f"unknown (no full_train_size recorded for dataset {ds.dataset!r})")
    else:
        row("compression ratio", f"{cr['percent']:.4f}% = {cr['stored_elements']:,} / {cr['full_elements']:,} elements "
            f"(images {cr['image_elements']:,}, soft labels {cr['label_elements']:,}, indices {cr['index_elements']:,}; "
            f"full set {cr['full_train_size']:,} images, {cr['full_train_size_source']})")
        row("accounting", cr["accounting"])
    if ds.teachers:
        for i, t in enumerate(ds.teachers):
            row("teacher" if i == 0 else "", f"[{i}] " + ", ".join(f"{k}={v}" for k, v in t.items()))
    else:
        row("teachers", "none recorded")
    row("seed", str(ds.seed))
    if ds.hyperparameters:
        row("hyperparameters", json.dumps(ds.hyperparameters, sort_keys=True))
    for fname, entry in manifest["files"].items():
        tensors = ", ".join(f"{n} {i['dtype']}{i['shape']}" for n, i in entry["tensors"].items())
        row("file", f"{fname} {format_bytes(entry.get('bytes', 0))} sha256 {entry['sha256'][:12]}... OK ({tensors})")
    row("checksums", f"all {len(manifest['files'])} tensor files OK")
    return "\n".join(lines)


def write_preview(
    source: Union[DistilledSet, PathLike],
    png_path: PathLike,
    max_sets: int = 4,
    max_classes: int = 10,
    backend: str = "auto",
    padding: int = 2,
) -> Path:
    """PNG preview grid, denormalized to [0, 1], ``max_classes`` columns.

    INFER: rows of natural sets (first ``max_sets``), then a row of their compensators
    (pixel-space delta u*std, scaled symmetrically around mid-gray per image), then one row
    of composed images per shown compensator (at most ``max_sets`` rows). Baselines: for
    each of the first ``max_classes`` classes a column of up to ``max_sets`` images.
    """
    from .viz import make_grid, stack_grids, write_png

    check_writable(png_path, "preview")
    ds = source if isinstance(source, DistilledSet) else load_distilled(source)
    ds.validate()
    if ds.channels not in (1, 3):
        raise DistilledSetError(f"a PNG preview needs 1 or 3 channels, this set has {ds.channels}")
    cols = max(1, min(ds.num_classes, max_classes))
    max_sets = max(1, int(max_sets))
    blank = torch.ones(ds.channels, ds.height, ds.width)
    grids = []
    if ds.is_infer:
        ks = list(range(min(ds.K, max_sets)))
        natural = torch.stack([normalize_uint8(ds.natural[k, :cols], ds.mean, ds.std) for k in ks])
        grids.append(make_grid(denormalize(natural.reshape(-1, ds.channels, ds.height, ds.width), ds.mean, ds.std),
                               nrow=cols, padding=padding))
        shown = [g for g in range(ds.G) if int(ds.ufc_index[g]) in ks][: max_sets * cols]
        if shown:
            std = torch.tensor(ds.std, dtype=torch.float32).view(1, -1, 1, 1)
            delta = ds.ufc[shown].to(torch.float32) * std
            grids.append(make_grid(delta, nrow=cols, padding=padding, scale="symmetric"))
            sub = DistilledDataset(ds, hard_only=True, backend=backend, cache_bytes=0)
            rows = shown[:max_sets]
            composed = torch.cat([sub._compose_groups(g, g + 1)[0, :cols] for g in rows])
            grids.append(make_grid(denormalize(composed, ds.mean, ds.std), nrow=cols, padding=padding))
    else:
        picks = [torch.nonzero(ds.labels == c).flatten()[:max_sets].tolist() for c in range(cols)]
        depth = max(1, max(len(p) for p in picks))
        tiles = []
        for r in range(depth):
            for c in range(cols):
                if r < len(picks[c]):
                    x = ds.images[picks[c][r]]
                    x = normalize_uint8(x, ds.mean, ds.std) if x.dtype == torch.uint8 else x.to(torch.float32)
                    tiles.append(denormalize(x, ds.mean, ds.std))
                else:
                    tiles.append(blank)
        grids.append(make_grid(torch.stack(tiles), nrow=cols, padding=padding))
    return write_png(stack_grids(grids, spacing=3 * padding + 2), png_path)


def _safe_name(name: str) -> str:
    out = "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in name).strip(".")
    return out or "_"


def export_imagefolder(
    directory: Union[DistilledSet, PathLike],
    out_dir: PathLike,
    naming: str = "index",
    backend: str = "auto",
    chunk_images: int = 1024,
) -> int:
    """Write every training image as PNG: ``out_dir/<class>/<i>.png``; returns the count.

    ``naming="index"``: class folders are zero-padded class indices (so torchvision's
    ImageFolder, which sorts folder names, maps folder -> the same class index);
    ``naming="name"``: the set's class names (sorted order may then differ from the class
    index: see export.json). ``<i>`` is the zero-padded training index. Images are composed
    in float, denormalized, clamped to [0, 1] and quantized to uint8 only here. Also writes
    ``export.json`` (source, class folders, order) and, when the set has soft labels,
    ``soft_labels.safetensors`` ((N, C) fp16, row i = training image i). Refuses a
    non-empty ``out_dir``.
    """
    from .viz import write_png

    if naming not in ("index", "name"):
        raise ValueError(f"naming must be 'index' or 'name', got {naming!r}")
    ds = directory if isinstance(directory, DistilledSet) else load_distilled(directory)
    ds.validate()
    if ds.channels not in (1, 3):
        raise DistilledSetError(f"PNG export needs 1 or 3 channels, this set has {ds.channels}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputExistsError(f"{out} exists and is not an empty directory; refusing to overwrite")
    c = ds.num_classes
    if naming == "name":
        if ds.class_names is None:
            raise DistilledSetError("naming='name' needs class_names, this set records none")
        folders = [_safe_name(n) for n in ds.class_names]
        if len(set(folders)) != c:
            raise DistilledSetError("class names are not unique as folder names; use naming='index'")
    else:
        folders = [f"{i:0{len(str(c - 1))}d}" for i in range(c)]
    data = DistilledDataset(ds, hard_only=True, backend=backend, cache_bytes=0)
    n = len(data)
    check_writable(out, "export directory", kind="directory", need_bytes=n * ds.channels * ds.height * ds.width)
    # written into a temporary directory beside ``out`` and renamed into place at the end:
    # an export that fails (disk full...) leaves nothing behind
    parent = out.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        for f in folders:
            (tmp / f).mkdir()
        hard = ds.hard_labels()
        width = len(str(max(n - 1, 0)))
        files = []
        for start, images in data.iter_chunks(chunk_images):
            pixels = quantize_images(images, ds.mean, ds.std)
            for j in range(pixels.shape[0]):
                i = start + j
                rel = f"{folders[int(hard[i])]}/{i:0{width}d}.png"
                write_png(pixels[j], tmp / rel)
                files.append(rel)
        soft = ds.soft_labels_flat()
        if soft is not None:
            safetensors_save({"soft_labels": soft.contiguous()}, tmp / "soft_labels.safetensors")
        meta = {
            "source_format": FORMAT_NAME, "source_format_version": FORMAT_VERSION,
            "source": str(directory) if not isinstance(directory, DistilledSet) else None,
            "method": ds.method, "dataset": ds.dataset, "num_classes": c,
            "class_folders": folders, "class_names": ds.class_names,
            "normalization": {"mean": list(ds.mean), "std": list(ds.std)},
            "image_order": IMAGE_ORDER, "files": files,
            "soft_labels": "soft_labels.safetensors (N, C) fp16 logits, row i = files[i]" if soft is not None else None,
        }
        (tmp / "export.json").write_text(json.dumps(meta, indent=1) + "\n")
        if out.exists():  # an empty directory: replaced
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        _cleanup(tmp)
        raise
    return n
