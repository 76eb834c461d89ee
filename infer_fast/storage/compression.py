"""The compression ratio of a distilled set: every stored element counted as one value.

:func:`compression_ratio_from_counts` does the arithmetic; :func:`compression_ratio_from_manifest`
applies it to a set on disk from its manifest alone (tensor shapes);
:meth:`DistilledSet.compression_ratio <infer_fast.storage.DistilledSet.compression_ratio>`
to a set in memory. The real training set's size is the recorded ``full_train_size``, else
the dataset entry's ``train_size`` (:data:`KNOWN_TRAIN_SIZES` is a read-only view of them).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from ..data.registry import TrainSizes, known_train_size

ACCOUNTING = (
    "every stored element counted as one value: images (natural + compensators/synthetic) "
    "ch*H*W each, soft labels C each, index tensors (hard labels, ufc_index, ufc_teacher) 1 "
    "each; full set = full_train_size images of ch*H*W (its hard labels not counted)"
)
# Training-set sizes used when a set does not record full_train_size (reported as such): a
# read-only view of the dataset entries' train_size, by every accepted spelling.
KNOWN_TRAIN_SIZES: Mapping[str, int] = TrainSizes()


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


def counts_from_shapes(method: str, shapes: Dict[str, Sequence[int]]) -> Dict[str, int]:
    """Stored counts from tensor shapes {name: shape} (from a DistilledSet or a manifest)."""
    def numel(name):
        return math.prod(shapes[name]) if name in shapes else 0

    if "natural" in shapes:  # INFER's layout: natural sets and compensators
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


def resolve_train_size(dataset: str, full_train_size: Optional[int]) -> Tuple[Optional[int], str]:
    """(size of the real training set, where it comes from: "recorded", "built-in table" or
    "unknown"): ``full_train_size`` when given, else the dataset entry's train size."""
    if full_train_size is not None:
        return int(full_train_size), "recorded"
    size = known_train_size(dataset)
    return size, ("built-in table" if size is not None else "unknown")


def compression_ratio_from_manifest(manifest: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The compression ratio computed from a manifest alone (tensor shapes), or None when
    the real training-set size is neither recorded nor known for the dataset."""
    shapes = {name: info["shape"] for f in manifest["files"].values() for name, info in f["tensors"].items()}
    counts = counts_from_shapes(manifest["method"], shapes)
    size, source = resolve_train_size(manifest["dataset"], manifest.get("full_train_size"))
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
