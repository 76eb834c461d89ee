"""The storage budget (how many natural sets K an ipc allows) and the natural sets themselves:
K real training images per class, chosen at random or by the teachers' confidence."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..choices import ACCOUNTINGS, SELECTIONS
from ..checks import check_int
from ..models import device_of
from ..progress import progress_bar


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
def _true_class_confidence(train_set, indices: Tensor, label: int, teachers: Sequence[nn.Module],
                           batch_size: int = 500) -> Tensor:
    """Softmax probability of ``label`` under the teachers' mean logits, per image of
    ``train_set`` at ``indices`` (CPU float32), streamed in batches."""
    from ..data.transforms import normalize
    from ..relabel import ensemble_logits

    device = device_of(teachers[0])
    spec = train_set.spec
    out = []
    for images, _ in train_set.batches(batch_size, indices, pin_memory=device.type == "cuda"):
        x = normalize(images.to(device, non_blocking=True), spec.mean, spec.std)
        out.append(ensemble_logits(teachers, x).softmax(1)[:, label].float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def select_natural_sets(train_set, K: int, seed: int, selection: str = "random",
                        teachers: Optional[Sequence[nn.Module]] = None, progress: bool = False) -> Tensor:
    """K natural sets, one real training image per class each: uint8 (K, C, ch, H, W).

    ``selection="random"``: within a class the K images are distinct, drawn without
    replacement with a torch.Generator seeded by ``seed`` (the same seed picks the same
    images). ``"confidence"``: the K images of each class to which the teachers' ensemble
    (mean logits, eval mode) gives the highest probability of their own class, ties broken
    by the seeded random order; set k gets the k-th most confident image of every class.

    The images are chosen from the labels alone and only the K*C chosen ones are decoded
    (a folder split streams; "confidence" reads every image once to score it).
    """
    check_int("K", K)
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    if selection == "confidence" and not teachers:
        raise ValueError("selection='confidence' needs the teachers to score the training images")
    labels = train_set.labels
    num_classes = train_set.spec.num_classes
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    short = [c for c, n in enumerate(counts) if n < K]
    if short:
        c = short[0]
        raise ValueError(
            f"K={K} natural sets need {K} training images of every class, but class {c} has only {counts[c]}"
            + (f" ({len(short)} classes have fewer than {K})" if len(short) > 1 else "")
        )
    gen = torch.Generator().manual_seed(int(seed))
    chosen = torch.empty((num_classes, K), dtype=torch.int64)  # chosen[c, k]: the image of class c in set k
    classes = progress_bar(range(num_classes), desc="scoring natural images", leave=False, unit="class",
                           disable=not (progress and selection == "confidence"))
    for c in classes:
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        if selection == "confidence":
            score = _true_class_confidence(train_set, idx, c, list(teachers))
            idx = idx[torch.sort(score, descending=True, stable=True).indices]
        chosen[c] = idx[:K]
    # set-major (k, c): one decode of the K*C chosen images
    images = train_set.images_at(chosen.t().reshape(-1), progress=progress, desc="decoding natural images")
    return images.view((K, num_classes) + tuple(images.shape[1:]))
