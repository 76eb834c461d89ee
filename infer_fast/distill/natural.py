"""The storage budget (how many natural sets K an ipc allows) and the natural sets themselves:
K real training images per class, chosen at random or by the teachers' confidence."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..choices import ACCOUNTINGS, SELECTIONS
from ..config import check_int
from ..models import device_of


def infer_budget(ipc: int, num_classes: int, num_teachers: int, accounting: str = "fair") -> int:
    """Number of natural sets K for a storage budget of ``ipc`` images per class.

    "fair" (the reference release): K*C natural images + K*M UFCs <= ipc*C, i.e.
    K = floor(ipc*C / (C+M)). "ipc" (the paper's ImageNet compression ratios): K = ipc.
    """
    if accounting not in ACCOUNTINGS:
        raise ValueError(f"unknown budget accounting {accounting!r}; choose one of {', '.join(ACCOUNTINGS)}")
    for name, value in (("ipc", ipc), ("num_classes", num_classes), ("num_teachers", num_teachers)):
        check_int(name, value)
    if accounting == "ipc":
        return ipc
    k = (ipc * num_classes) // (num_classes + num_teachers)
    if k < 1:
        minimum = -(-(num_classes + num_teachers) // num_classes)  # ceil((C + M) / C)
        raise ValueError(
            f"ipc={ipc} is too small for INFER with C={num_classes} classes and M={num_teachers} teachers "
            f"under the fair budget (K = floor(ipc*C/(C+M)) = 0 natural sets): use ipc >= {minimum}"
        )
    return k


@torch.no_grad()
def _true_class_confidence(images_u8: Tensor, label: int, teachers: Sequence[nn.Module], mean, std,
                           batch_size: int = 500) -> Tensor:
    """Softmax probability of ``label`` under the teachers' mean logits, per image (CPU float32)."""
    from ..data.transforms import normalize
    from ..student import ensemble_logits

    device = device_of(teachers[0])
    out = []
    for start in range(0, images_u8.shape[0], batch_size):
        x = normalize(images_u8[start:start + batch_size], mean, std).to(device)
        out.append(ensemble_logits(teachers, x).softmax(1)[:, label].float().cpu())
    return torch.cat(out)


def select_natural_sets(train_set, K: int, seed: int, selection: str = "random",
                        teachers: Optional[Sequence[nn.Module]] = None) -> Tensor:
    """K natural sets, one real training image per class each: uint8 (K, C, ch, H, W).

    ``selection="random"``: within a class the K images are distinct, drawn without
    replacement with a torch.Generator seeded by ``seed`` (the same seed picks the same
    images). ``"confidence"``: the K images of each class to which the teachers' ensemble
    (mean logits, eval mode) gives the highest probability of their own class, ties broken
    by the seeded random order; set k gets the k-th most confident image of every class.
    """
    check_int("K", K)
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    if selection == "confidence" and not teachers:
        raise ValueError("selection='confidence' needs the teachers to score the training images")
    images, labels = train_set.images, train_set.labels
    spec = train_set.spec
    num_classes = spec.num_classes
    if images.dtype != torch.uint8:
        raise ValueError(f"natural sets are stored as uint8 pixels; the training images are {images.dtype}")
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    short = [c for c, n in enumerate(counts) if n < K]
    if short:
        c = short[0]
        raise ValueError(
            f"K={K} natural sets need {K} training images of every class, but class {c} has only {counts[c]}"
            + (f" ({len(short)} classes have fewer than {K})" if len(short) > 1 else "")
        )
    gen = torch.Generator().manual_seed(int(seed))
    out = torch.empty((K, num_classes) + tuple(images.shape[1:]), dtype=torch.uint8)
    for c in range(num_classes):
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        if selection == "confidence":
            score = _true_class_confidence(images[idx], c, list(teachers), spec.mean, spec.std)
            idx = idx[torch.sort(score, descending=True, stable=True).indices]
        out[:, c] = images[idx[:K]]
    return out

