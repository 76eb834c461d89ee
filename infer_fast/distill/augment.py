"""The augmentation of a recovery batch: every job's draws from its own generator, applied to
all G groups in one call per iteration (the engine's, see engine.optimize_batch)."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.transforms import RESIZED_CROP_RATIO, resized_crop_boxes
from ..ops import ufc_compose
from .config import RecoveryConfig, crop_scale_at


class Augmentation:
    """The augmentation of a batch of jobs, applied to all G groups in one call per iteration.

    Every job draws from its own generator (so its draws do not depend on which jobs share its
    batch), in the order one draw per iteration makes them: "roll", a shift (sh, sw) in
    [0, max_shift]^2; "imagenet", a RandomResizedCrop box (top, left, h, w) in that iteration's
    scale range (crop_scale_at: a curriculum moves it), a flip and that shift. Given
    ``iterations``, all of them are drawn up front and copied to the device once (no
    host-to-device copy inside the loop). "roll" is the fused compose + roll; "imagenet"
    composes, then crops, resizes (bilinear, as F.interpolate with align_corners=False; the
    crops only ever grow, so antialiasing changes nothing), flips and rolls every group with
    one grid_sample."""

    def __init__(self, config: RecoveryConfig, gens: List[torch.Generator], height: int, width: int, device,
                 iterations: Optional[int] = None):
        self.config, self.gens, self.size, self.device = config, gens, (height, width), torch.device(device)
        # iterations done, on the device: a captured iteration that replays reads and advances it
        self.step = torch.zeros((), dtype=torch.int64, device=self.device)
        self.draws: Optional[Tensor] = None  # (iterations, G, values) int64 on the device
        if iterations and not (config.augmentation == "roll" and config.max_shift == 0):
            self.draws = torch.stack([self._draw(g, iterations) for g in gens], 1).to(self.device)
        self.rows = torch.arange(height, device=self.device)
        self.cols = torch.arange(width, device=self.device)
        # one group's own source row (made once: ufc_compose checks an index tensor's values once)
        self.first_row = torch.zeros(1, dtype=torch.int64, device=self.device)

    def _draw(self, gen: torch.Generator, iterations: int, first: int = 0) -> Tensor:
        """One job's draws for ``iterations`` iterations from iteration ``first``: (iterations, 2)
        shifts, or (iterations, 7) (top, left, h, w, flip, sh, sw)."""
        high = self.config.max_shift + 1
        if self.config.augmentation == "roll":  # one call: the same numbers as a draw per iteration
            return torch.randint(0, high, (iterations, 2), generator=gen)
        height, width = self.size
        rows = []
        for t in range(first, first + iterations):
            box = resized_crop_boxes(1, height, width, crop_scale_at(self.config, t), RESIZED_CROP_RATIO, gen)
            flip = (torch.rand(1, generator=gen, dtype=torch.float32) < 0.5).long()
            rows.append(torch.cat([*box, flip, torch.randint(0, high, (2,), generator=gen)]))
        return torch.stack(rows)

    def _current(self) -> Tensor:
        """This iteration's draws of every group, (G, values), on the device."""
        if self.draws is not None:
            return self.draws.index_select(0, self.step.view(1))[0]
        return torch.stack([self._draw(g, 1, int(self.step))[0] for g in self.gens]).to(self.device)

    def advance(self) -> Optional[Tensor]:
        """This iteration's draws of every group, (G, values) on the device (None: "roll" with
        max_shift 0 draws nothing), and ``step`` advanced to the next iteration."""
        draw = None if self.config.augmentation == "roll" and self.config.max_shift == 0 else self._current()
        self.step.add_(1)
        return draw

    def __call__(self, source: Tensor, variable: Tensor, index: Tensor, backend: str) -> Tensor:
        """The augmented composed batch (G, C, ch, H, W) of the next iteration (advances ``step``)."""
        return self.apply(source, variable, index, self.advance(), backend)

    def apply(self, source: Tensor, variable: Tensor, index: Tensor, draw: Optional[Tensor], backend: str) -> Tensor:
        """Compose ``source[index[g]] + variable[g]`` and augment group g with ``draw[g]``:
        (G, C', ch, H, W) for a source of C' classes. Rows are independent: the rows of any
        classes of a group are the same computed alone."""
        if self.config.augmentation == "roll":  # fused: compose and roll in one pass
            return ufc_compose(source, variable, index, shifts=draw, backend=backend)
        x = ufc_compose(source, variable, index, backend=backend)
        G, C, ch, height, width = x.shape
        out = F.grid_sample(x.reshape(G, C * ch, height, width), self._grid(draw), mode="bilinear",
                            padding_mode="border", align_corners=False)
        return out.view(G, C, ch, height, width)

    def batch_rows(self, source: Tensor, variable: Tensor, source_rows: Sequence[int], draw: Optional[Tensor],
                   num_classes: int, lo: int, hi: int, backend: str) -> Tensor:
        """Rows [lo, hi) of the flattened (G * C, ch, H, W) batch that :meth:`apply` makes
        with ``draw``, computed from those rows' sources alone (group g's from
        ``source[source_rows[g]]``, host indices): what the chunked mode feeds the teacher
        chunk by chunk, with autograd to ``variable`` (and ``source``)."""
        parts = []
        for g in range(lo // num_classes, (hi - 1) // num_classes + 1):
            c0, c1 = max(lo - g * num_classes, 0), min(hi - g * num_classes, num_classes)
            k = source_rows[g]
            part = self.apply(source[k:k + 1, c0:c1], variable[g:g + 1], self.first_row,
                              None if draw is None else draw[g:g + 1], backend)
            parts.append(part.flatten(0, 1))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _grid(self, draw: Tensor) -> Tensor:
        """(G, H, W, 2) grid_sample coordinates: output pixel (i, j) reads the resized crop at
        (r, c) = ((i - sh) mod H, f((j - sw) mod W)), f the flip; the crop's row r reads source
        row top + clamp((r + 0.5) h / H - 0.5, 0, h - 1) (F.interpolate's bilinear sampling),
        and the same for columns."""
        height, width = self.size
        top, left, h, w, flip, sh, sw = (v[:, None] for v in draw.unbind(1))
        r = (self.rows[None] - sh).remainder(height)
        c = (self.cols[None] - sw).remainder(width)
        c = torch.where(flip.bool(), width - 1 - c, c)

        def source(dst: Tensor, start: Tensor, extent: Tensor, size: int) -> Tensor:
            pixel = start + ((dst + 0.5) * (extent / size) - 0.5).clamp(min=0).minimum(extent - 1)
            return (2 * pixel + 1) / size - 1  # grid_sample's normalized coordinate (align_corners=False)

        ys, xs = source(r, top, h, height), source(c, left, w, width)  # (G, H), (G, W)
        return torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1).float()

