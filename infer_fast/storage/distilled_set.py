"""The distilled set in memory (:class:`DistilledSet`), its validation, and its errors.

Layouts, image order and normalization: see :mod:`infer_fast.storage`. Writing and reading
sets is :mod:`.disk`'s job.
"""
from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .compression import compression_ratio_from_counts, counts_from_shapes, resolve_train_size
from ..choices import ACCOUNTINGS
from ..checks import check_int
from ..data.pixels import valid_range
from ..models import image_size_pair

EXTERNAL_METHOD = "external"  # the method of a set made elsewhere and imported
SOFT_LABEL_DTYPE = torch.float16  # soft labels (logits) as every set stores them
SOFT_LABEL_BLOCK = 1 << 22  # set_soft_labels converts and checks this many values at a time
SOFT_LABEL_NAMES = ("natural_labels", "ufc_labels", "soft_labels")  # the tensors that hold soft labels


def set_layout(method: str) -> Optional[str]:
    """How a set of ``method`` is stored: "compensated" (INFER's natural sets and
    compensators) or "images" (images and labels: every other registered method, and
    imported sets); None for a name no registered method has."""
    from ..methods import set_layout as registered_layout

    return "images" if method == EXTERNAL_METHOD else registered_layout(method)


def known_set_methods() -> Tuple[str, ...]:
    """The methods a stored set can come from (for messages)."""
    from ..methods import distill_method_names

    return distill_method_names() + (EXTERNAL_METHOD,)


class DistilledSetError(ValueError):
    """A distilled set that is missing, corrupt, inconsistent or incompatible."""


def channel_values(name: str, values: Any, channels: Optional[int] = None) -> Tuple[float, ...]:
    """A normalization's ``values`` (its mean or std: a list, tuple or 1-d tensor of numbers,
    one per channel, a 1-channel set's too) as a tuple of floats; a ValueError naming ``name``
    for a lone number, a string, a value that is no number or, given ``channels``, another count."""
    listed = values.tolist() if isinstance(values, Tensor) else values
    if isinstance(listed, (str, bytes, Mapping)) or not isinstance(listed, Iterable):
        raise ValueError(f"{name} must be a list of numbers, one per channel, got {values!r}")
    listed = list(listed)
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in listed):
        raise ValueError(f"{name} must be a list of numbers, one per channel, got {values!r}")
    if channels is not None and len(listed) != channels:
        raise ValueError(f"{name} needs one value per channel ({channels}), got {len(listed)}: {values!r}")
    return tuple(float(v) for v in listed)


def _as_set_error(check: Callable[..., None], *args: Any) -> None:
    """``check(*args)`` (one of infer_fast.checks), its ValueError raised as a DistilledSetError."""
    try:
        check(*args)
    except ValueError as exc:
        raise DistilledSetError(str(exc)) from None


# budget fields a set records as counts: (lowest value, what it counts)
_BUDGET_INTS = {"ipc": (1, "images per class"), "K": (0, "natural sets"), "M": (0, "teachers")}


def check_records(budget: Any, toolkit_version: Any = None, created: Any = None) -> None:
    """The recorded budget and stamps a hand edit can break (one check for a set in memory
    and for a manifest): budget a dict whose ipc/K/M, where recorded, are integers (not
    bool or float); the writer's version and date strings. DistilledSetError naming the field."""
    err = DistilledSetError
    if not isinstance(budget, dict):
        raise err(f"budget must be an object, got {budget!r}")
    for key, (lowest, what) in _BUDGET_INTS.items():
        value = budget.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < lowest):
            raise err(f"budget.{key} ({what}) must be an integer >= {lowest}, got {value!r}")
    for key, value in (("toolkit_version", toolkit_version), ("created", created)):
        if value is not None and not isinstance(value, str):
            raise err(f"{key} must be a string, got {value!r}")


def check_dataset_classes(dataset: str, num_classes: int) -> None:
    """A set of a registered dataset has at most that dataset's classes (a set of a class
    subset, 100 ImageNet classes, has fewer): a DistilledSetError otherwise, since every per-class
    table (a student's head, export's class folders) is sized by the count. An image folder's,
    or an unknown dataset's, count is the set's own."""
    from ..data.registry import get_dataset

    try:
        entry = get_dataset(dataset)
    except ValueError:  # (a dataset this infer-fast does not know: nothing to compare with)
        return
    if entry.spec is not None and num_classes > entry.spec.num_classes:
        raise DistilledSetError(f"num_classes {num_classes}: dataset {entry.name!r} has {entry.spec.num_classes} classes")


def check_method_records(method: str, hyperparameters: Dict[str, Any]) -> None:
    """The hyperparameters the set's method reads back (its students' settings: RDED's
    factor) are recorded and usable, so train/evaluate refuse the set before any work."""
    from ..methods.registry import get_method

    try:
        settings = get_method(method).student_settings
    except ValueError:  # (an imported set: no method of ours reads its records)
        return
    if settings is None:
        return
    try:
        settings(hyperparameters)
    except KeyError as exc:
        raise DistilledSetError(f"method {method!r} needs hyperparameters.{exc.args[0]}, not recorded") from None
    except (TypeError, ValueError) as exc:
        raise DistilledSetError(f"method {method!r} cannot use the recorded hyperparameters: {exc}") from None


class OutputExistsError(DistilledSetError, FileExistsError):
    """The output path exists (catchable as ValueError and as FileExistsError)."""

    @classmethod
    def new_output_taken(cls, path, why: str = "") -> "OutputExistsError":
        """A new output's path that already exists (``why``: what else to say, e.g. " (...)")."""
        return cls(f"{path} already exists; choose another output directory{why}")


def dtype_name(dtype: torch.dtype) -> str:
    """A torch dtype as the manifest writes it: "uint8", "float16"..."""
    return str(dtype).replace("torch.", "")


def _check_float(name: str, t: Tensor) -> None:
    if not t.dtype.is_floating_point:
        raise DistilledSetError(f"{name} must be float soft labels (logits), got dtype {dtype_name(t.dtype)}")


def _overflow_error(name: str, t: Tensor) -> DistilledSetError:
    """Finite soft labels ``t`` that became inf in fp16."""
    return DistilledSetError(f"{name}: {dtype_name(t.dtype)} values up to {float(t.abs().max()):.4g} overflow "
                             "float16, the stored dtype (|logit| <= 65504)")


def fp16_soft_labels(name: str, t: Tensor) -> Tensor:
    """Soft labels ``t`` (any float dtype) as stored, fp16; an error naming the dtype where
    they are not float or do not fit fp16 (a finite value beyond +-65504 would become inf)."""
    _check_float(name, t)
    half = t.to(SOFT_LABEL_DTYPE)
    # (the fp16 copy checked first: finite, as nearly always, it is the one pass over them)
    if t.numel() and not torch.isfinite(half).all() and torch.isfinite(t).all():
        raise _overflow_error(name, t)
    return half


def _all_finite(t: Tensor) -> bool:
    """Whether every value of ``t`` is finite, checked SOFT_LABEL_BLOCK values at a time (no
    full-size temporary: a set's soft labels are its largest tensor at ImageNet scale)."""
    flat = t.reshape(-1)
    return all(bool(torch.isfinite(flat[i:i + SOFT_LABEL_BLOCK]).all()) for i in range(0, flat.numel(), SOFT_LABEL_BLOCK))


def store_soft_label_rows(out: Tensor, start: int, logits: Tensor, name: str = "soft labels") -> None:
    """Write ``logits`` (B, C), any float dtype, into rows ``start``.. of ``out`` (fp16 (N, C)),
    rounded as fp16_soft_labels rounds them; DistilledSetError when one is not finite there (a
    finite logit beyond +-65504, or one that was inf/nan already). How relabel fills a set's
    labels a chunk at a time (and set_soft_labels a block): no full-size temporary."""
    _check_float(name, logits)
    rows = out[start:start + logits.shape[0]]
    rows.copy_(logits)
    if not torch.isfinite(rows).all():
        if torch.isfinite(logits).all():
            raise _overflow_error(name, logits)
        raise DistilledSetError(f"{name} contain inf/nan")


@dataclass(eq=False)
class DistilledSet:
    """A distilled set in memory. See :mod:`infer_fast.storage` for layouts and image order.

    INFER (method "infer"): ``natural`` (K, C, ch, H, W) uint8 pixels; ``ufc`` (G, ch, H, W)
    float16/float32 normalized; ``ufc_index`` (G,) int64 natural set of each UFC;
    ``ufc_teacher`` (G,) int64 teacher of each UFC; soft labels (fp16 logits)
    ``natural_labels`` (K, C, C) and ``ufc_labels`` (G, C, C), None until relabelled.
    Baselines ("random", "sre2l") and imported sets ("external"): ``images`` (N, ch, H, W) uint8 pixels or float16/32
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
    # the request that made the set (distill.run.request_identity): a rerun with --resume of the
    # same request finds it done (distill.run.finished_set); None: not recorded
    request: Optional[Dict[str, Any]] = None

    def __post_init__(self):
        try:
            self.image_size = image_size_pair(self.image_size)
            self.mean, self.std = channel_values("mean", self.mean), channel_values("std", self.std)
        except ValueError as exc:
            raise DistilledSetError(str(exc)) from None
        for name in ("natural", "ufc", "ufc_index", "ufc_teacher", "natural_labels", "ufc_labels",
                     "images", "labels", "soft_labels"):
            t = getattr(self, name)
            if t is None:
                continue
            if not isinstance(t, Tensor):
                raise DistilledSetError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
            t = t.detach().cpu()
            if name in SOFT_LABEL_NAMES and t.dtype != SOFT_LABEL_DTYPE:
                t = fp16_soft_labels(name, t)
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
        """Stored as INFER's natural sets and compensators (the "compensated" layout)."""
        return set_layout(self.method) == "compensated"

    @property
    def real_dataset(self) -> Dict[str, Any]:
        """The real dataset it was distilled from, as ``load_dataset`` takes it: its name with
        the set's class count and resolution (a class subset or another size of a folder
        dataset loads as the set saw it)."""
        return {"name": self.dataset, "num_classes": self.num_classes, "image_size": self.height}

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
        size, source = resolve_train_size(self.dataset, full_train_size if full_train_size is not None else self.full_train_size)
        if full_train_size is not None:
            source = "argument"
        if size is None:
            raise DistilledSetError(
                f"the compression ratio needs the size of the real training set: dataset {self.dataset!r} "
                "records no full_train_size and is not in infer_fast.storage.KNOWN_TRAIN_SIZES"
            )
        counts = counts_from_shapes(self.method, self.tensor_shapes())
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

    def soft_label_nbytes(self) -> int:
        """Bytes of the soft labels of every training image as stored: N x C fp16."""
        return self.num_training_images() * self.num_classes * SOFT_LABEL_DTYPE.itemsize

    def empty_soft_labels(self) -> Tensor:
        """An uninitialised (N, C) fp16 tensor for the soft labels, to fill with store_soft_label_rows."""
        return torch.empty((self.num_training_images(), self.num_classes), dtype=SOFT_LABEL_DTYPE)

    def set_soft_labels(self, soft: Tensor, copy: bool = True) -> None:
        """Store (N, C) soft labels (logits, training order) as fp16, converted and checked a
        block of rows at a time (store_soft_label_rows: no full-size temporary). ``copy=False``
        takes ``soft`` itself, no copy: an fp16 CPU tensor of empty_soft_labels whose every row
        store_soft_label_rows wrote (relabel's), that the caller no longer changes."""
        n, c = self.num_training_images(), self.num_classes
        if not isinstance(soft, Tensor) or tuple(soft.shape) != (n, c):
            got = tuple(soft.shape) if isinstance(soft, Tensor) else type(soft).__name__
            raise DistilledSetError(f"soft labels must be ({n}, {c}) (one C-vector per training image), got {got}")
        if copy:
            stored, block = self.empty_soft_labels(), max(1, SOFT_LABEL_BLOCK // c)
            for start in range(0, n, block):
                store_soft_label_rows(stored, start, soft[start:start + block].detach().cpu())
        elif soft.dtype != SOFT_LABEL_DTYPE or soft.device.type != "cpu" or not soft.is_contiguous():
            raise ValueError(f"set_soft_labels(copy=False) takes a contiguous fp16 CPU tensor (empty_soft_labels), "
                             f"got {dtype_name(soft.dtype)} on {soft.device}")
        else:
            stored = soft.detach()
        if self.is_infer:  # (views of the one tensor)
            kc = self.K * c
            self.natural_labels = stored[:kc].view(self.K, c, c)
            self.ufc_labels = stored[kc:].view(self.G, c, c)
        else:
            self.soft_labels = stored

    # ---- validation -----------------------------------------------------------------------
    def nbytes(self, relabelled: bool = False) -> int:
        """Bytes of the stored tensors (what the set's files hold, less their headers); with
        ``relabelled``, as they will be once relabelled: the soft labels of every training image
        (soft_label_nbytes) in place of those it holds."""
        kept = {n: t for n, t in self._tensors().items() if not (relabelled and n in SOFT_LABEL_NAMES)}
        return sum(t.numel() * t.element_size() for t in kept.values()) + (self.soft_label_nbytes() if relabelled else 0)

    def _tensors(self) -> Dict[str, Tensor]:
        names = ("natural", "ufc", "ufc_index", "ufc_teacher", "natural_labels", "ufc_labels") if self.is_infer \
            else ("images", "labels", "soft_labels")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def validate(self) -> "DistilledSet":
        """Check fields, shapes, dtypes and value ranges; raise DistilledSetError if wrong."""
        self._check_fields()
        img = (self.channels, self.height, self.width)
        if self.is_infer:
            self._check_compensated(img)
        else:
            self._check_images(img)
        for name in SOFT_LABEL_NAMES:
            t = getattr(self, name)
            if t is not None and not _all_finite(t):
                raise DistilledSetError(f"{name} contains inf/nan (fp16 overflow?)")
        return self

    def _check_fields(self) -> None:
        """The non-tensor fields: method, dataset, sizes, normalization, records."""
        err = DistilledSetError
        if set_layout(self.method) is None:
            raise err(f"unknown method {self.method!r}; known: {', '.join(known_set_methods())}")
        if not isinstance(self.dataset, str) or not self.dataset:
            raise err("dataset must be a non-empty string")
        c, ch = self.num_classes, self.channels
        _as_set_error(check_int, "num_classes", c)
        _as_set_error(check_int, "channels", ch)
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise err(f"image_size must be (H, W) with positive sizes, got {self.image_size}")
        if len(self.mean) != ch or len(self.std) != ch:
            raise err(f"mean and std need one value per channel ({ch}), got {len(self.mean)} and {len(self.std)}")
        if not all(math.isfinite(v) for v in self.mean) or not all(math.isfinite(s) and s > 0 for s in self.std):
            raise err(f"mean must be finite and std positive, got mean {self.mean} std {self.std}")
        if self.class_names is not None and (len(self.class_names) != c or not all(isinstance(n, str) for n in self.class_names)):
            raise err(f"class_names must be {c} strings")
        self._check_records()

    def _check_records(self) -> None:
        """What the set records beside its tensors: budget, train size, seed, hyperparameters, teachers."""
        err = DistilledSetError
        check_records(self.budget, self.toolkit_version, self.created)
        if self.budget.get("accounting") is not None:
            if self.budget["accounting"] not in ACCOUNTINGS:
                raise err(f"budget accounting must be one of {ACCOUNTINGS}, got {self.budget['accounting']!r}")
        _as_set_error(check_int, "full_train_size", self.full_train_size, 1, "not recorded")
        _as_set_error(check_int, "seed", self.seed, None, "not recorded")
        if not isinstance(self.hyperparameters, dict):
            raise err(f"hyperparameters must be a dict, got {type(self.hyperparameters).__name__}")
        check_method_records(self.method, self.hyperparameters)
        if not isinstance(self.teachers, list) or not all(isinstance(t, dict) for t in self.teachers):
            raise err("teachers must be a list of dicts (name/path/model/accuracy, free-form)")
        if self.request is not None and not isinstance(self.request, dict):
            raise err(f"request must be a dict or None, got {type(self.request).__name__}")
        try:
            json.dumps({"h": self.hyperparameters, "t": self.teachers, "b": self.budget, "r": self.request},
                       allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise err(f"hyperparameters, teachers, budget and request must be JSON-serializable: {exc}") from None

    def _need(self, name: str, shape: Sequence[int], dtypes: Sequence[torch.dtype]) -> None:
        """Tensor ``name`` is present, of ``shape`` and one of ``dtypes``."""
        t = getattr(self, name)
        if t is None:
            raise DistilledSetError(f"method {self.method!r} needs {name}")
        if tuple(t.shape) != tuple(shape):
            raise DistilledSetError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
        if t.dtype not in dtypes:
            raise DistilledSetError(
                f"{name} must be {' or '.join(dtype_name(d) for d in dtypes)}, got {dtype_name(t.dtype)}"
                + (" (store natural images as uint8 pixels: see quantize_images)" if name == "natural" else ""))

    def _check_compensated(self, img: Tuple[int, int, int]) -> None:
        """INFER's layout: natural sets, compensators, their indices and soft labels."""
        err, c = DistilledSetError, self.num_classes
        for name in ("images", "labels", "soft_labels"):
            if getattr(self, name) is not None:
                raise err(f"an INFER set stores natural + ufc, not {name}")
        if self.natural is None or self.natural.dim() != 5:
            raise err(f"natural must be (K, C, ch, H, W) uint8, got "
                      f"{None if self.natural is None else tuple(self.natural.shape)}")
        k = int(self.natural.shape[0])
        if k < 1:
            raise err("natural must hold at least one natural set (K >= 1)")
        self._need("natural", (k, c) + img, (torch.uint8,))
        if self.ufc is None or self.ufc.dim() != 4:
            raise err(f"ufc must be (G, ch, H, W), got {None if self.ufc is None else tuple(self.ufc.shape)}")
        g = int(self.ufc.shape[0])
        self._need("ufc", (g,) + img, (torch.float16, torch.float32))
        self._need("ufc_index", (g,), (torch.int64,))
        self._need("ufc_teacher", (g,), (torch.int64,))
        if g and not torch.isfinite(self.ufc).all():
            raise err("ufc contains inf/nan")
        if g and (int(self.ufc_index.min()) < 0 or int(self.ufc_index.max()) >= k):
            raise err(f"ufc_index values must lie in [0, {k}) (K = {k} natural sets)")
        if g and int(self.ufc_teacher.min()) < 0:
            raise err("ufc_teacher values must be >= 0")
        if g and self.teachers and int(self.ufc_teacher.max()) >= len(self.teachers):
            raise err(f"ufc_teacher values must lie in [0, {len(self.teachers)}) ({len(self.teachers)} teachers recorded)")
        if self.natural_labels is not None:
            self._need("natural_labels", (k, c, c), (SOFT_LABEL_DTYPE,))
        if self.ufc_labels is not None:
            self._need("ufc_labels", (g, c, c), (SOFT_LABEL_DTYPE,))
        if self.budget.get("K") is not None and self.budget["K"] != k:
            raise err(f"budget records K = {self.budget['K']} but natural holds {k} sets")

    def _check_images(self, img: Tuple[int, int, int]) -> None:
        """The images layout: images, hard labels, soft labels."""
        err, c = DistilledSetError, self.num_classes
        for name in ("natural", "ufc", "ufc_index", "ufc_teacher", "natural_labels", "ufc_labels"):
            if getattr(self, name) is not None:
                raise err(f"a {self.method!r} baseline stores images + labels, not {name}")
        if self.images is None or self.images.dim() != 4:
            raise err(f"images must be (N, ch, H, W), got {None if self.images is None else tuple(self.images.shape)}")
        n = int(self.images.shape[0])
        if n < 1:  # (nothing to train a student on or to relabel)
            raise err("images.safetensors holds no images (N = 0): a set needs at least one training image")
        self._need("images", (n,) + img, (torch.uint8, torch.float16, torch.float32))
        self._need("labels", (n,), (torch.int64,))
        if n and (int(self.labels.min()) < 0 or int(self.labels.max()) >= c):
            raise err(f"labels must lie in [0, {c})")
        if self.images.dtype != torch.uint8:
            self._check_normalized_images()
        if self.soft_labels is not None:
            self._need("soft_labels", (n, c), (SOFT_LABEL_DTYPE,))

    def _check_normalized_images(self) -> None:
        """Float images are finite and normalized: within one whole pixel range (0..1) beyond
        the normalized values of pixels 0 and 1 (room for recovered images left unclamped), far
        below un-normalized 0..255 pixels, which would train silently and badly. One min/max
        pass, on every validate (as on every load), like the finiteness check it includes."""
        low, high = (float(v) for v in torch.aminmax(self.images))  # (nan, or +-inf where one is)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise DistilledSetError("images contain inf/nan")
        lo, hi = valid_range(self.mean, self.std)
        margin = hi - lo  # (one pixel range, per channel)
        if low < float((lo - margin).min()) or high > float((hi + margin).max()):
            raise DistilledSetError(
                f"images look like un-normalized pixels (values {low:.4g} to {high:.4g}, where normalized pixels 0..1 "
                f"lie in [{float(lo.min()):.3g}, {float(hi.max()):.3g}]): store uint8 pixels or normalize them "
                "(normalize_uint8)")

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n}={list(s)}" for n, s in self.tensor_shapes().items())
        return f"DistilledSet(method={self.method!r}, dataset={self.dataset!r}, C={self.num_classes}, {shapes})"

    # ---- files ------------------------------------------------------------------------------
    def tensor_files(self) -> Dict[str, Dict[str, Tensor]]:
        """{file name: {tensor name: tensor}}: what :func:`~.disk.save_distilled` writes."""
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
