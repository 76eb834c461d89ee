"""Chunked exact mode: the full-batch INFER/SRe2L gradient in the memory of one chunk.

The teacher is frozen and in eval mode, so its forward on a row never depends on the other
rows; only the BN-statistics loss couples them, through per-group (G, C) statistics. Hence:

* pass 1 (no grad): run the teacher chunk by chunk; a forward pre-hook on every BatchNorm
  call accumulates the shifted sums sum(x - rm), sum((x - rm)^2) per group and channel
  (rows attributed to groups by their global index, so a chunk may straddle groups). Per
  layer, :func:`~infer_fast.ops.reference.finalize_stats` turns them into the loss and the
  statistics the backend's ``bn_stat_backward`` launcher derives dx = a_g + b_g (x - mu_g)
  from, for the whole batch.
* pass 2 (grad): run each chunk again; each BN pre-hook passes its input through an
  identity autograd function whose backward adds that exact dx, and the chunk's share of
  the CE is backpropagated to the chunk. The per-chunk gradients are stitched together and
  pushed once into whatever ``x`` was computed from.

The result is the gradient of the full-batch loss at ~2 forwards + 1 backward of compute,
with the activations of one chunk alive at a time (``x`` and its gradient are full size).
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from . import backends
from ..config import check_int
from .bn_hooks import bn_layers, refuse_training_mode
from .bn_stat_loss import check_inputs
from .layout import as_ncl, kept_format
from .reference import accumulate_dtype, at_least_fp32, finalize_stats


def group_segments(start: int, stop: int, group_size: int) -> Iterator[Tuple[int, int, int, int]]:
    """Split global rows [start, stop) into runs the grouped kernels take.

    Yields (row_lo, row_hi, first_group, num_groups): either whole groups
    (row_lo aligned to ``group_size``, num_groups >= 1) or the part of a single group that
    lies in the range (num_groups == 1). At most three runs per range.
    """
    row = start
    while row < stop:
        group = row // group_size
        whole = (stop - row) // group_size
        if row % group_size == 0 and whole > 0:
            end = row + whole * group_size
            yield row, end, group, whole
        else:
            end = min(stop, (group + 1) * group_size)
            yield row, end, group, 1
        row = end


class _BNSite:
    """One BatchNorm call of the teacher's forward (a layer called twice is two sites)."""

    def __init__(self, name: str, module: nn.Module, x: Tensor, groups: int, backend: str):
        self.name, self.module = name, module
        self.acc = accumulate_dtype(x.dtype)
        self.backend = backends.resolve(backend, x.device)
        self.running_mean = module.running_mean.contiguous()
        self.sums = torch.zeros(2, groups, x.shape[1], dtype=self.acc, device=x.device)
        self.count = 0  # M = n * H * W, set with the first chunk
        self.loss: Optional[Tensor] = None  # (G,) after finish
        self.weight = 0.0

    def accumulate(self, x: Tensor, row0: int, group_size: int) -> None:
        """Add this chunk's shifted sums into the per-group sums (pass 1)."""
        x3 = as_ncl(x)
        self.count = group_size * x3.shape[2]
        sums = backends.launcher(self.backend, "bn_stat_sums")
        for lo, hi, group, k in group_segments(row0, row0 + x3.shape[0], group_size):
            out = torch.empty(2, k, x3.shape[1], dtype=self.acc, device=x.device)
            sums(x3[lo - row0:hi - row0], self.running_mean, k, out)
            self.sums[:, group:group + k] += out

    def finish(self, weight: float) -> None:
        """Loss values and statistics of the whole batch; ``weight``: the upstream gradient
        of every group's loss."""
        groups, channels = self.sums.shape[1:]
        self.loss = self.sums.new_empty(groups)
        self.stats = self.sums.new_empty(groups, 2, channels + 1)
        finalize_stats(self.sums, self.module.running_var, self.count, self.loss, self.stats)
        self.weight = weight
        self.upstream = torch.full_like(self.loss, weight)
        self.sums = None

    def grad_input(self, x: Tensor, row0: int, group_size: int) -> Tensor:
        """dx = a_g + b_g (x - mu_g) for the rows of a chunk starting at global row ``row0``."""
        x3 = as_ncl(x)
        grad = torch.empty_like(x, memory_format=kept_format(x))
        grad3 = as_ncl(grad)
        backward = backends.launcher(self.backend, "bn_stat_backward")
        for lo, hi, group, k in group_segments(row0, row0 + x3.shape[0], group_size):
            rows, cols = slice(lo - row0, hi - row0), slice(group, group + k)
            backward(x3[rows], self.running_mean, self.stats[cols], self.upstream[cols], self.count, grad3[rows])
        return grad


class _InjectBNGrad(torch.autograd.Function):
    """Identity on a BN input whose backward adds the site's exact statistics-loss gradient.

    The second output is a zero scalar summed into the chunk's root, so the backward runs
    (with grad_y None) even when the BN output does not reach the logits."""

    @staticmethod
    def forward(ctx, x, site, row0, group_size):
        ctx.save_for_backward(x)
        ctx.site, ctx.row0, ctx.group_size = site, row0, group_size
        ctx.set_materialize_grads(False)
        return x.view_as(x), x.new_zeros(())

    @staticmethod
    def backward(ctx, grad_y, _grad_anchor):
        (x,) = ctx.saved_tensors
        grad = ctx.site.grad_input(x, ctx.row0, ctx.group_size)
        if grad_y is not None:
            grad.add_(grad_y)
        return grad, None, None, None


class _ChunkHooks:
    """Forward pre-hooks on every BatchNorm of the teacher; sites are identified by their
    position in the execution order, which must be the same for every chunk."""

    def __init__(self, teacher: nn.Module, groups: int, group_size: int, backend: str):
        self.groups, self.group_size, self.backend = groups, group_size, backend
        self.sites: List[_BNSite] = []
        self.injecting = False
        self.anchors: List[Tensor] = []
        self._row0 = self._calls = 0
        self._first_chunk = True
        layers = bn_layers(teacher)
        if not layers:
            raise ValueError(f"teacher {type(teacher).__name__} has no BatchNorm1d/2d layer to match statistics of")
        self._handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in layers]

    def start_chunk(self, row0: int) -> None:
        self._row0, self._calls, self.anchors = row0, 0, []

    def end_chunk(self) -> None:
        if self._calls != len(self.sites):
            raise RuntimeError(
                f"the teacher ran {self._calls} BatchNorm calls on rows from {self._row0} but {len(self.sites)} "
                "on the first chunk: the chunked mode needs the same layers to run for every chunk"
            )
        self._first_chunk = False

    def _hook(self, name: str):
        def hook(module: nn.Module, args):
            x = args[0]
            index, self._calls = self._calls, self._calls + 1
            if self._first_chunk and not self.injecting:
                self.sites.append(self._new_site(name, module, x))
            if index >= len(self.sites) or self.sites[index].module is not module:
                raise RuntimeError(
                    f"BatchNorm call {index + 1} on rows from {self._row0} is layer {name!r}, not the layer of the "
                    "first chunk: the chunked mode needs the same execution order for every chunk"
                )
            site = self.sites[index]
            if not self.injecting:
                site.accumulate(x, self._row0, self.group_size)
                return None
            if site.weight == 0 or not x.requires_grad:
                return None
            y, anchor = _InjectBNGrad.apply(x, site, self._row0, self.group_size)
            self.anchors.append(anchor)
            return (y,) + tuple(args[1:])

        return hook

    def _new_site(self, name: str, module: nn.Module, x: Tensor) -> _BNSite:
        refuse_training_mode(name, module)
        if module.running_mean is None or module.running_var is None:
            raise ValueError(f"teacher: BatchNorm layer {name!r} has no running statistics (track_running_stats=False)")
        check_inputs(x, module.running_mean, module.running_var, 1)
        return _BNSite(name, module, x, self.groups, self.backend)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _check_arguments(x, labels, groups, chunk_size) -> None:
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batched torch.Tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if not x.requires_grad:
        raise ValueError("x must require grad (the gradient is pushed into it and what it was computed from)")
    check_int("groups", groups)
    if x.shape[0] % groups:
        raise ValueError(f"groups={groups} does not divide the batch size N={x.shape[0]} of x")
    check_int("chunk_size", chunk_size)
    if not isinstance(labels, Tensor) or labels.shape != (x.shape[0],):
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a ({x.shape[0]},) tensor of class indices to match x, got {shape}")


def chunked_loss_backward(
    teacher: nn.Module,
    x: Tensor,
    labels: Tensor,
    groups: int,
    r_bn: float,
    first_bn_mult: float,
    chunk_size: int,
    ce_weight: float = 1.0,
    backend: str = "auto",
    split_across_ranks: bool = False,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Backpropagate sum_g (ce_weight * ce_g + r_bn * rbn_g) into ``x``, one chunk at a time.

    Args:
        teacher: frozen teacher whose BatchNorm layers are in eval mode (refused otherwise).
            Its forward must be deterministic and run the same BN layers for every chunk
            (no dropout in training mode). Its parameters get no gradient.
        x: (N, ...) teacher input requiring grad; it may be computed from the optimized
            variable (e.g. compose + augment). N = groups * n; group g owns rows [g*n, (g+1)*n).
        labels: (N,) class indices.
        groups: G; each group has its own BN statistics and its own mean CE.
        r_bn, first_bn_mult: rbn_g = first_bn_mult * R_1 + sum_{l >= 2} R_l over the BN calls
            in execution order (R_l of the whole group, not per chunk), weighted by r_bn.
        chunk_size: at most this many rows go through the teacher at once; chunks may
            straddle group boundaries.
        ce_weight: weight of the CE term (0 for the statistics loss alone).
        backend: fused-op backend of the statistics sums and gradients (see bn_stat_loss).
        split_across_ranks: under torch.distributed, every rank (holding the same ``x``)
            runs every world-th chunk; the pass-1 sums, the input gradient, logits and CE
            are all-reduced, so every rank ends with the whole batch's gradient (the
            statistics cover all ranks' rows, unlike DataParallel hooks).

    Returns detached (ce (G,), rbn (G,), logits (N, classes)): ce_g the mean CE over group
    g, rbn_g as above (fp32, fp64 for fp64 BN inputs). The gradient accumulates into the
    leaves ``x`` depends on, exactly as ``(ce_weight * ce + r_bn * rbn).sum().backward()`` on
    the whole batch would (up to float rounding).
    """
    _check_arguments(x, labels, groups, chunk_size)
    total = x.shape[0]
    group_size = total // groups
    starts = list(range(0, total, chunk_size))
    world = dist.get_world_size() if split_across_ranks and dist.is_available() and dist.is_initialized() else 1
    if world > len(starts):
        raise ValueError(f"split_across_ranks: {len(starts)} chunks of chunk_size={chunk_size} cannot feed {world} ranks")
    mine = starts[dist.get_rank()::world] if world > 1 else starts
    hooks = _ChunkHooks(teacher, groups, group_size, backend)
    try:
        with torch.no_grad():
            for row0 in mine:
                hooks.start_chunk(row0)
                teacher(x[row0:row0 + chunk_size].detach())
                hooks.end_chunk()
        if not hooks.sites:
            raise RuntimeError("no BatchNorm layer of the teacher ran in its forward: there are no statistics to match")
        if world > 1:  # every rank's rows in the statistics
            for site in hooks.sites:
                dist.all_reduce(site.sums)
        multipliers = [float(first_bn_mult)] + [1.0] * (len(hooks.sites) - 1)
        for mult, site in zip(multipliers, hooks.sites):
            site.finish(float(r_bn) * mult)
        hooks.injecting = True
        # zero-filled when split: the rows of the other ranks are added by the all-reduce
        grad_x = torch.zeros_like(x) if world > 1 else torch.empty_like(x)
        logits_all: Optional[Tensor] = None
        ce_rows: Optional[Tensor] = None
        with torch.enable_grad():
            for row0 in mine:
                rows = slice(row0, row0 + chunk_size)
                chunk = x[rows].detach().requires_grad_()
                hooks.start_chunk(row0)
                logits = teacher(chunk)
                hooks.end_chunk()
                ce = F.cross_entropy(at_least_fp32(logits), labels[rows], reduction="none")
                root = ce.sum() * (float(ce_weight) / group_size)
                for anchor in hooks.anchors:
                    root = root + anchor
                grad_x[rows] = torch.autograd.grad(root, chunk)[0]
                if logits_all is None:
                    new = logits.new_zeros if world > 1 else logits.new_empty
                    logits_all = new((total,) + tuple(logits.shape[1:]))
                    ce_rows = ce.new_zeros(total) if world > 1 else ce.new_empty(total)
                logits_all[rows] = logits.detach()
                ce_rows[rows] = ce.detach()
                del logits, ce, root, chunk
    finally:
        hooks.remove()
    if world > 1:
        for t in (grad_x, logits_all, ce_rows):
            dist.all_reduce(t)
    x.backward(grad_x)
    rbn = sum(mult * site.loss for mult, site in zip(multipliers, hooks.sites))
    return ce_rows.view(groups, group_size).mean(dim=1), rbn, logits_all
