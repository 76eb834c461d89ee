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

from typing import Callable, List, Optional, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from . import backends
from ..checks import check_int
from .bn_hooks import as_ops_input, bn_layers, matchable, refuse_training_mode, untracked
from .bn_stat_loss import check_inputs
from .layout import as_ncl, kept_format
from .reference import accumulate_dtype, at_least_fp32, finalize_stats


def group_segments(start: int, stop: int, group_size: int) -> List[Tuple[int, int, int, int]]:
    """Split global rows [start, stop) into runs the grouped kernels take.

    Returns (row_lo, row_hi, first_group, num_groups) runs: either whole groups
    (row_lo aligned to ``group_size``, num_groups >= 1) or the part of a single group that
    lies in the range (num_groups == 1). At most three runs per range.
    """
    check_int("start", start, minimum=0)
    check_int("stop", stop, minimum=0)
    check_int("group_size", group_size)
    runs = []
    row = start
    while row < stop:
        group = row // group_size
        whole = (stop - row) // group_size
        if row % group_size == 0 and whole > 0:
            end = row + whole * group_size
            runs.append((row, end, group, whole))
        else:
            end = min(stop, (group + 1) * group_size)
            runs.append((row, end, group, 1))
        row = end
    return runs


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
    position in the execution order, which must be the same for every chunk. Unless the loss
    ``needs`` them (r_bn > 0), a teacher without BatchNorm layers is accepted (CE alone), with
    no hooks (``matching`` False); one with them has its statistics reported as always. A
    BatchNorm without running statistics is refused either way: it normalizes by each batch's
    own statistics even in eval mode, so a chunk's rows would not see the batch's."""

    def __init__(self, teacher: nn.Module, groups: int, group_size: int, backend: str, needs: bool = True):
        self.groups, self.group_size, self.backend = groups, group_size, backend
        self.sites: List[_BNSite] = []
        self.injecting = False
        self.anchors: List[Tensor] = []
        self._row0 = self._calls = 0
        self._first_chunk = True
        layers = bn_layers(teacher)
        self.matching = needs or bool(layers)
        who = f"teacher {type(teacher).__name__}"
        without = untracked(layers) if self.matching and not needs else []
        if without:
            raise ValueError(f"{who}: BatchNorm layer {without[0]!r} has no running statistics "
                             "(track_running_stats=False): it normalizes each batch by its own, so the "
                             "chunked mode's rows would not see the whole batch's; recover it unchunked "
                             "(chunk_size None, and a group_size whose batch fits in memory: the automatic "
                             "plan chunks a group that does not)")
        if self.matching:
            matchable(layers, who)
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
            x = as_ops_input(args[0])  # (a BatchNorm1d's (N, C, L) as (N, C, L, 1))
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
            return (y.view_as(args[0]),) + tuple(args[1:])

        return hook

    def _new_site(self, name: str, module: nn.Module, x: Tensor) -> _BNSite:
        refuse_training_mode(name, module)
        check_inputs(x, module.running_mean, module.running_var, 1)
        return _BNSite(name, module, x, self.groups, self.backend)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class RowsFrom:
    """A teacher input given chunk by chunk instead of as one tensor: ``make(lo, hi)`` returns
    rows [lo, hi) of the (``rows``, ...) batch, computed (with autograd, when grad is enabled)
    from the leaves the gradient goes to, e.g. the optimized images composed and augmented
    for those rows only. :func:`chunked_loss_backward` then backpropagates each chunk into
    the leaves directly: neither the whole input nor its gradient is ever alive, only a
    chunk's. ``make`` must give the same rows every time it is called with the same range
    (each chunk is made twice: once per pass)."""

    def __init__(self, rows: int, make: Callable[[int, int], Tensor]):
        check_int("rows", rows)
        self.rows, self.make = rows, make

    @property
    def shape(self) -> Tuple[int]:
        return (self.rows,)


def _check_arguments(x, labels, groups, chunk_size, backward) -> None:
    if not isinstance(x, RowsFrom):  # (a RowsFrom's rows are checked as they are made)
        if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] == 0:
            raise ValueError(f"x must be a non-empty batched torch.Tensor or a RowsFrom, got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        if backward and not x.requires_grad:
            raise ValueError("x must require grad (the gradient is pushed into it and what it was computed from)")
    check_int("groups", groups)
    if x.shape[0] % groups:
        raise ValueError(f"groups={groups} does not divide the batch size N={x.shape[0]} of x")
    check_int("chunk_size", chunk_size)
    if not isinstance(labels, Tensor) or labels.shape != (x.shape[0],):
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a ({x.shape[0]},) tensor of class indices to match x, got {shape}")
    if labels.dtype != torch.int64:
        raise ValueError(f"labels must be int64 class indices, got {labels.dtype}")


def _check_label_range(labels: Tensor, logits: Tensor) -> None:
    """Once the teacher has said how many classes it has: every label one of them. Labels on
    the CPU only (on a GPU the check would cost a host sync per call; recovery's own labels
    are arange(C))."""
    if labels.device.type == "cpu" and bool(((labels < 0) | (labels >= logits.shape[1])).any()):
        n = logits.shape[1]
        raise ValueError(f"labels must be class indices in [0, {n}) (the teacher has {n} classes), got values from "
                         f"{int(labels.min())} to {int(labels.max())}")


def _chunk_of(x: Union[Tensor, RowsFrom], lo: int, hi: int) -> Tensor:
    """Rows [lo, hi) of the teacher input: made by a RowsFrom (in the current grad mode), or
    a detached slice of the tensor."""
    return x.make(lo, min(hi, x.rows)) if isinstance(x, RowsFrom) else x[lo:hi].detach()


def chunked_loss_backward(
    teacher: nn.Module,
    x: Union[Tensor, RowsFrom],
    labels: Tensor,
    groups: int,
    r_bn: float,
    first_bn_mult: float,
    chunk_size: int,
    ce_weight: float = 1.0,
    backend: str = "auto",
    split_across_ranks: bool = False,
    backward: bool = True,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Backpropagate sum_g (ce_weight * ce_g + r_bn * rbn_g) into ``x``, one chunk at a time.

    Args:
        teacher: frozen teacher whose BatchNorm layers are in eval mode (refused otherwise).
            Its forward must be deterministic and run the same BN layers for every chunk
            (no dropout in training mode). Its parameters get no gradient.
        x: (N, ...) teacher input requiring grad; it may be computed from the optimized
            variable (e.g. compose + augment). N = groups * n; group g owns rows [g*n, (g+1)*n).
            Or a :class:`RowsFrom` making the rows chunk by chunk (each chunk's gradient goes
            straight to its leaves: no whole-batch input or gradient in memory).
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
            statistics cover all ranks' rows, unlike DataParallel hooks). Not with a
            RowsFrom (its leaves' gradients would hold only this rank's chunks).
        backward: False: the losses and logits only, from the statistics pass (one forward
            per chunk, no gradient; ``x`` need not require grad).

    Returns detached (ce (G,), rbn (G,), logits (N, classes)): ce_g the mean CE over group
    g, rbn_g as above (fp32, fp64 for fp64 BN inputs). The gradient accumulates into the
    leaves ``x`` depends on, exactly as ``(ce_weight * ce + r_bn * rbn).sum().backward()`` on
    the whole batch would (up to float rounding).
    """
    _check_arguments(x, labels, groups, chunk_size, backward)
    total = x.shape[0]
    group_size = total // groups
    world, mine = _my_chunks(x, chunk_size, split_across_ranks, backward)
    hooks = _ChunkHooks(teacher, groups, group_size, backend, needs=r_bn != 0)
    outputs = _ChunkOutputs(total, world)
    try:
        multipliers = _statistics_pass(teacher, x, labels, hooks, outputs, mine, chunk_size, world, r_bn,
                                       first_bn_mult, backward)
        if backward:
            _backward_pass(teacher, x, labels, hooks, outputs, mine, chunk_size, group_size, ce_weight, world)
    finally:
        hooks.remove()
    outputs.all_reduce()
    rbn = (sum(mult * site.loss for mult, site in zip(multipliers, hooks.sites)) if hooks.sites
           else outputs.ce_rows.new_zeros(groups))  # (r_bn 0, no BatchNorm layer: no statistics)
    return outputs.ce_rows.view(groups, group_size).mean(dim=1), rbn, outputs.logits


def _my_chunks(x: Union[Tensor, RowsFrom], chunk_size: int, split_across_ranks: bool,
               backward: bool) -> Tuple[int, List[int]]:
    """(world, the first rows of the chunks this rank runs): every chunk, or under
    ``split_across_ranks`` every world-th."""
    starts = list(range(0, x.shape[0], chunk_size))
    world = dist.get_world_size() if split_across_ranks and dist.is_available() and dist.is_initialized() else 1
    if world > 1 and isinstance(x, RowsFrom) and backward:
        raise ValueError("split_across_ranks needs x as one tensor (every rank's input gradient is all-reduced into "
                         "it), not a RowsFrom")
    if world > len(starts):
        raise ValueError(f"split_across_ranks: {len(starts)} chunks of chunk_size={chunk_size} cannot feed {world} ranks")
    return world, (starts[dist.get_rank()::world] if world > 1 else starts)


def _statistics_pass(teacher, x, labels, hooks, outputs, mine, chunk_size, world, r_bn, first_bn_mult,
                     backward) -> List[float]:
    """Pass 1: every chunk forward without a gradient, each BN call's per-group sums
    accumulated (every rank's rows, all-reduced), then each site's loss finished; without
    ``backward`` the chunks' logits and CE recorded. Returns the sites' loss multipliers
    (none without ``hooks.matching``: with a backward to come, then no chunk runs here)."""
    if not hooks.matching and backward:  # (no statistics to gather: the backward pass alone)
        return []
    with torch.no_grad():
        for row0 in mine:
            hooks.start_chunk(row0)
            logits = teacher(_chunk_of(x, row0, row0 + chunk_size))
            hooks.end_chunk()
            if row0 == mine[0]:
                _check_label_range(labels, logits)
            if not backward:
                outputs.add(row0, logits, labels)
            del logits
    if not hooks.matching:
        return []
    if not hooks.sites:
        raise RuntimeError("no BatchNorm layer of the teacher ran in its forward: there are no statistics to match")
    if world > 1:  # every rank's rows in the statistics
        for site in hooks.sites:
            dist.all_reduce(site.sums)
    multipliers = [float(first_bn_mult)] + [1.0] * (len(hooks.sites) - 1)
    for mult, site in zip(multipliers, hooks.sites):
        site.finish(float(r_bn) * mult)
    return multipliers


class _ChunkOutputs:
    """The logits and per-row CE of the whole batch, filled chunk by chunk (zero-filled when
    split across ranks: the other ranks' rows come with the all-reduce)."""

    def __init__(self, total: int, world: int):
        self.total, self.world = total, world
        self.logits: Optional[Tensor] = None
        self.ce_rows: Optional[Tensor] = None

    def add(self, row0: int, logits: Tensor, labels: Tensor) -> Tensor:
        """Record a chunk's logits; returns its per-row CE (with autograd when logits have it)."""
        rows = slice(row0, row0 + logits.shape[0])
        ce = F.cross_entropy(at_least_fp32(logits), labels[rows], reduction="none")
        if self.logits is None:
            new = logits.new_zeros if self.world > 1 else logits.new_empty
            self.logits = new((self.total,) + tuple(logits.shape[1:]))
            self.ce_rows = ce.new_zeros(self.total) if self.world > 1 else ce.new_empty(self.total)
        self.logits[rows] = logits.detach()
        self.ce_rows[rows] = ce.detach()
        return ce

    def all_reduce(self) -> None:
        if self.world > 1:
            for t in (self.logits, self.ce_rows):
                dist.all_reduce(t)


def _backward_pass(teacher, x, labels, hooks, outputs, mine, chunk_size, group_size, ce_weight, world) -> None:
    """Pass 2: every chunk again with grad, each BN input getting its exact statistics-loss
    gradient; the chunk's CE and those gradients go back into the chunk (a RowsFrom: straight
    into its leaves; a tensor: stitched into one gradient of ``x``, all-reduced across ranks,
    and pushed into ``x`` once)."""
    hooks.injecting = True
    rows_from = isinstance(x, RowsFrom)
    grad_x = None if rows_from else (torch.zeros_like(x) if world > 1 else torch.empty_like(x))
    with torch.enable_grad():
        for row0 in mine:
            chunk = _chunk_of(x, row0, row0 + chunk_size)
            if not rows_from:
                chunk.requires_grad_()
            elif not chunk.requires_grad:
                raise ValueError("x: the rows a RowsFrom makes must require grad (computed from the leaves the "
                                 "gradient goes to)")
            hooks.start_chunk(row0)
            logits = teacher(chunk)
            hooks.end_chunk()
            if row0 == mine[0] and not hooks.matching:  # (no first pass ran to check them)
                _check_label_range(labels, logits)
            ce = outputs.add(row0, logits, labels)
            root = ce.sum() * (float(ce_weight) / group_size)
            for anchor in hooks.anchors:
                root = root + anchor
            if rows_from:
                root.backward()
            else:
                grad_x[row0:row0 + chunk.shape[0]] = torch.autograd.grad(root, chunk)[0]
            del logits, ce, root, chunk
    if grad_x is not None:
        if world > 1:
            dist.all_reduce(grad_x)
        x.backward(grad_x)
