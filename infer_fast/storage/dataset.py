"""The torch Dataset of a distilled set's training images, composed on the fly.

Items follow the training order of :mod:`infer_fast.storage`: for INFER the natural images
first, then the composed ones (clamp(natural + ufc) per channel to the valid pixel range).
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple, Union

import torch
from torch import Tensor

from .._io import PathLike
from ..data.pixels import normalize_uint8, valid_range
from .disk import check_compatible, load_distilled
from .distilled_set import DistilledSet, DistilledSetError


def _unlabelled_message(method_name: str) -> str:
    """What to do with a set of ``method_name`` that has no soft labels: a per-batch method's
    students are labelled by the teachers as they train; any set can be relabelled once."""
    from ..methods.registry import find_method

    method = find_method(method_name)
    if method is not None and method.student_labels == "per-batch":
        return (f"this {method_name} set has no soft labels: its students are labelled by the teachers per batch "
                "(infer-fast train --dynamic --teachers T.pt; a student's dynamic=True), or relabel it "
                "(infer-fast relabel) for static labels")
    return (f"this {method_name} set has no soft labels yet (not relabelled): relabel it (infer-fast relabel), "
            "or train on its hard labels (hard_only=True; a student's labels='hard', --labels hard)")


class DistilledDataset(torch.utils.data.Dataset):
    """Training images of a distilled set, composed on the fly.

    ``ds[i]`` -> (image float32 (ch, H, W) normalized, soft label float32 (C,), hard label
    int), in the training order of :mod:`infer_fast.storage`. With ``hard_only=True`` items are
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
                check_compatible(m, "distilled set", expected_dataset, expected_num_classes)
        else:
            self.set = load_distilled(source, expected_dataset, expected_num_classes)
        if not hard_only and not self.set.has_soft_labels:
            raise DistilledSetError(_unlabelled_message(self.set.method))
        self.hard_only = hard_only
        self.backend = backend
        self.chunk_images = max(1, int(chunk_images))
        s = self.set
        self._n = s.num_training_images()
        self._lo, self._hi = valid_range(s.mean, s.std)
        self._hard = s.hard_labels()
        # fp16 as stored, made float32 a batch (or item) at a time: exact, and half the memory
        self._soft = None if hard_only else s.soft_labels_flat()
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

    def compose_groups(self, g0: int, g1: int) -> Tensor:
        """(g1 - g0, C, ch, H, W) composed images of UFCs g0..g1-1."""
        from ..ops import ufc_compose

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
        from ..ops import ufc_compose

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
            yield s.K * c + g0 * c, self.compose_groups(g0, g1).reshape(-1, s.channels, s.height, s.width)

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
        """fp16 (N, C) soft labels in training order, as stored (None with hard_only): index a
        batch, then ``.float()`` it (fp16 -> float32 is exact)."""
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
        return image, self._soft[i].float(), hard

    def all_images(self) -> Tuple[Tensor, Optional[Tensor], Tensor]:
        """(images float32 (N, ch, H, W) normalized, soft fp16 (N, C) or None (see
        :attr:`soft_labels`), hard int64 (N,)),
        materialized in training order (for in-memory training, or for relabelling). The image
        tensor is the dataset's cache when it fits ``cache_bytes``: do not modify it in place."""
        images = self._cache if self._cache is not None else self._materialize()
        if self._cache_ok:
            self._cache = images
        return images, self._soft, self._hard.clone()
