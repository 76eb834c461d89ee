"""The per-batch engine of recovery: G jobs (UFCs, or SRe2L image groups) of one teacher
optimized together, with their augmentation, losses, optimizer and schedule (how many jobs
share a batch: plan.auto_batch_plan)."""
from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import time
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import memory
from ..data.transforms import RESIZED_CROP_RATIO, resized_crop_boxes
from ..ops import BNStatTracker, RowsFrom, chunked_loss_backward, ufc_compose
from ..models import device_of
from ..ops.bn_hooks import BN_TYPES, bn_layers, check_eval_mode
from ..ops.reference import at_least_fp32
from ..progress import progress_bar
from .config import RecoveryConfig, crop_scale_at
from .plan import RecoveryOutOfMemoryError, out_of_memory_error


def job_seed(method: str, seed: int, m: int, k: int) -> int:
    """A per-job (one UFC, or one SRe2L image group) generator seed, independent of batching."""
    tag = "infer-ufc" if method == "infer" else method
    digest = hashlib.sha256(f"{tag}:{int(seed)}:{int(m)}:{int(k)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def check_teacher(teacher: nn.Module, m: int) -> None:
    """ValueError naming the layer when a BatchNorm layer of teacher ``m`` is in training mode
    (the one check every path makes: ops.bn_hooks.check_eval_mode); BatchNorm3d refused."""
    bn_layers(teacher)
    check_eval_mode(teacher, who=f"teacher {m}")


@contextlib.contextmanager
def recovery_teacher(teacher: nn.Module, config: RecoveryConfig) -> Iterator[nn.Module]:
    """The teacher as recovery runs it, frozen (no parameter gradients). For a bf16 run a copy
    converted once: convolutions and linear layers in bf16, BatchNorm kept in fp32 (its running
    statistics are what the loss matches, and the kernels accumulate in fp32); with
    channels_last, a copy in that layout. The caller's teacher is left as it was."""
    if config.precision == "bf16" or config.channels_last:
        run = copy.deepcopy(teacher).requires_grad_(False)
        if config.precision == "bf16":
            run.to(compute_dtype(config))
            for module in run.modules():
                if isinstance(module, BN_TYPES):
                    module.float()
        if config.channels_last:
            run.to(memory_format=torch.channels_last)
        yield run
        return
    flags = [(p, p.requires_grad) for p in teacher.parameters()]
    teacher.requires_grad_(False)
    try:
        yield teacher
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def compute_dtype(config: RecoveryConfig) -> torch.dtype:
    """The dtype of the teacher's inputs and activations in recovery."""
    return torch.bfloat16 if config.precision == "bf16" else torch.float32


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
            flip = (torch.rand(1, generator=gen) < 0.5).long()
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
        zero = torch.zeros(1, dtype=torch.int64, device=variable.device)
        for g in range(lo // num_classes, (hi - 1) // num_classes + 1):
            c0, c1 = max(lo - g * num_classes, 0), min(hi - g * num_classes, num_classes)
            k = source_rows[g]
            part = self.apply(source[k:k + 1, c0:c1], variable[g:g + 1], zero,
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


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# With progress, a batch whose iterations took this long on average (or that runs in chunks)
# says when its final pass starts: one more pass of every image through the teacher, which
# no bar covers.
FINAL_PASS_NOTE_S = 5.0

# Tests set this: every iteration after the first then runs under
# torch.cuda.set_sync_debug_mode("error"), so any host synchronisation in the loop raises.
CHECK_HOST_SYNCS = False


class ProgressReadout:
    """The batch's mean CE and R_bn for the progress bar, without a host synchronisation:
    every ``every`` iterations they are copied to pinned host memory asynchronously, and the
    bar shows the last copy that has landed (on a GPU, a few iterations old)."""

    def __init__(self, bar, device: torch.device, every: int = 10):
        self.bar, self.every, self.device = bar, every, device
        self.host = torch.empty(2, pin_memory=device.type == "cuda")
        self.landed: Optional[torch.cuda.Event] = None  # the copy in flight, if any

    def update(self, t: int, ce: Tensor, rbn: Tensor, last: bool) -> None:
        if self.landed is not None and self.landed.query():
            self._show()
        if (t % self.every == 0 or last) and self.landed is None:
            self.host.copy_(torch.stack([ce.mean(), rbn.mean()]).float(), non_blocking=True)
            if self.device.type == "cuda":
                self.landed = torch.cuda.Event()
                self.landed.record()
            else:  # a CPU copy has landed already
                self._show()

    def _show(self) -> None:
        self.landed = None
        ce, rbn = self.host.tolist()  # host memory: no device synchronisation
        self.bar.set_postfix(ce=f"{ce:.4f}", r_bn=f"{rbn:.4f}")


class TeacherLosses:
    """Per-group CE and weighted R_bn (and the logits) of one frozen teacher on a batch of G
    groups x C classes. One BN tracker, and with ``config.compile`` one compiled graph, serve
    every batch with the same G (a new tracker per batch would make torch.compile retrace);
    only one tracker is attached at a time."""

    def __init__(self, teacher: nn.Module, num_classes: int, config: RecoveryConfig, backend: str):
        self.teacher, self.num_classes, self.config, self.backend = teacher, num_classes, config, backend
        self.layout = torch.channels_last if config.channels_last else torch.contiguous_format
        self.dtype = compute_dtype(config)
        self.groups: Optional[int] = None
        self.tracker: Optional[BNStatTracker] = None

    def teacher_input(self, x: Tensor) -> Tensor:
        """(G, C, ch, H, W) -> the teacher's (G*C, ch, H, W) batch in its dtype and layout."""
        return self.teacher_rows(x.flatten(0, 1))

    def teacher_rows(self, rows: Tensor) -> Tensor:
        """(N, ch, H, W) images -> the teacher's batch in its dtype and layout."""
        return rows.to(self.dtype).contiguous(memory_format=self.layout)

    def _build(self, G: int) -> None:
        self.detach()
        config, C = self.config, self.num_classes
        device = device_of(self.teacher)
        tracker = BNStatTracker(self.teacher, groups=G, backend=self.backend, fused=config.fused_bn) if config.r_bn > 0 else None
        labels = torch.arange(C, device=device).repeat(G)

        def losses(x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
            logits = self.teacher(self.teacher_input(x))
            ce = F.cross_entropy(at_least_fp32(logits), labels, reduction="none").view(G, C).mean(1)
            rbn = tracker.weighted_sum(config.first_bn_mult) if tracker is not None else torch.zeros_like(ce)
            return ce, rbn, logits

        self.groups, self.tracker, self.eager, self.compiled = G, tracker, losses, None
        if config.compile != "off":
            mode = None if config.compile == "default" else config.compile
            self.compiled = torch.compile(losses, fullgraph=True, dynamic=False, mode=mode)

    def __call__(self, x: Tensor, compiled: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
        if self.groups != x.shape[0]:
            self._build(x.shape[0])
        if not compiled or self.compiled is None:
            return self.eager(x)
        # every (teacher, G) closure adds a cache entry to the same code object: allow them all
        with torch._dynamo.config.patch(recompile_limit=1 << 16):
            return self.compiled(x)

    def detach(self) -> None:
        """Remove the BN tracker (before the chunked mode attaches its own hooks, and at the end)."""
        if self.tracker is not None:
            self.tracker.remove()
        self.groups, self.tracker = None, None


# Eager iterations before the capture (on a side stream, as CUDA graphs want: lazy
# initialisations, autotuning and the allocator settle first).
GRAPH_WARMUP_ITERATIONS = 3


def uses_cuda_graph(config: RecoveryConfig, device: torch.device, chunked: bool) -> bool:
    """Whether a batch's iterations run as one captured CUDA graph: on CUDA with
    ``config.cuda_graphs``, unless the chunked mode (host-side chunk loop, collectives) or
    torch.compile (its own graphs with mode="reduce-overhead") runs the step."""
    return (device.type == "cuda" and config.cuda_graphs and not chunked and config.compile == "off"
            and config.iterations > GRAPH_WARMUP_ITERATIONS)


def cosine_lr(t, config: RecoveryConfig):
    """lr_t = 0.5 (1 + cos(pi t / T)) lr: for an int t (eager), or a device tensor t (a
    captured iteration computes it on the device)."""
    cos = torch.cos if isinstance(t, Tensor) else math.cos
    return 0.5 * (1.0 + cos(math.pi * t / config.iterations)) * config.lr


@contextlib.contextmanager
def side_stream(device: torch.device) -> Iterator[None]:
    """Work on a side stream of ``device``, ordered after and before the current stream's."""
    current = torch.cuda.current_stream(device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        yield
    current.wait_stream(stream)


class CapturedIteration:
    """One recovery iteration captured as a CUDA graph; ``replay()`` runs the next iteration
    and returns its (CE, R_bn), static tensors that the next replay overwrites."""

    def __init__(self, graph: "torch.cuda.CUDAGraph", outputs: Tuple[Tensor, Tensor]):
        self.graph, self.outputs = graph, outputs

    @classmethod
    def capture(cls, iteration, optimizer, sync_mode) -> Tuple[Optional["CapturedIteration"], str]:
        """(the captured iteration, "captured"), or (None, why) when capture is impossible;
        the batch then goes on eagerly. Capturing runs nothing: the iteration it records is
        the next one replayed. (A sync check armed for the loop is paused for the capture,
        a one-off like the first iteration.)"""
        optimizer.zero_grad(set_to_none=True)  # the captured backward allocates the gradients
        graph = torch.cuda.CUDAGraph()
        if sync_mode is not None:
            torch.cuda.set_sync_debug_mode(sync_mode)
        try:
            with torch.cuda.graph(graph):
                outputs = iteration()
        except Exception as exc:  # any failure to capture: eager is always correct
            why = f"eager: CUDA graph capture failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            warnings.warn(f"recovery: {why}", RuntimeWarning, stacklevel=3)
            return None, why
        finally:
            if sync_mode is not None:
                torch.cuda.set_sync_debug_mode("error")
        return cls(graph, outputs), "captured"

    def replay(self) -> Tuple[Tensor, Tensor]:
        self.graph.replay()
        return self.outputs


def checkpoint_clock() -> float:
    """The host clock (seconds) that times checkpoints inside a batch (no device sync)."""
    return time.monotonic()


def _batch_state(method: str, m: int, ks: List[int], chunk_size: Optional[int], iterations_done: int,
                 config: RecoveryConfig, variable: Tensor, optimizer: torch.optim.Adam, augment: "Augmentation",
                 alive: Tensor, died_at: Tensor) -> Dict[str, Any]:
    """The state of a batch after ``iterations_done`` iterations, on the CPU (copied: the loop
    goes on updating its tensors, a captured graph's static ones included): everything the
    rest of the batch depends on. The batch itself (teacher, ks, chunk_size) is part of it:
    only the same batch continues bit-identically (batching changes float rounding)."""
    adam = optimizer.state[variable]
    return {
        "method": method,
        "teacher": int(m),
        "k": [int(k) for k in ks],
        "chunk_size": chunk_size,
        "iteration": int(iterations_done),  # the batch continues at t = iteration
        "iterations": int(config.iterations),
        "variable": variable.detach().to("cpu", copy=True),
        "exp_avg": adam["exp_avg"].to("cpu", copy=True),
        "exp_avg_sq": adam["exp_avg_sq"].to("cpu", copy=True),
        "adam_step": adam["step"].detach().to("cpu", copy=True),
        "augment_step": int(augment.step),  # the position in the augmentation draws
        "alive": alive.to("cpu", copy=True),
        "died_at": died_at.to("cpu", copy=True),
    }


def _restore_batch_state(state: Dict[str, Any], method: str, m: int, ks: List[int], config: RecoveryConfig,
                         variable: Tensor, optimizer: torch.optim.Adam, augment: "Augmentation", alive: Tensor,
                         died_at: Tensor) -> int:
    """Load a _batch_state into a batch built as from scratch (so its generators have made the
    same draws); returns the iteration it continues at."""
    if (state.get("method"), state.get("teacher"), list(state.get("k", []))) != (method, m, list(ks)):
        raise ValueError(f"the partial batch to resume is {state.get('method')} teacher {state.get('teacher')} "
                         f"k={state.get('k')}, not {method} teacher {m} k={list(ks)}")
    start = int(state["iteration"])
    if not 0 < start < config.iterations or tuple(state["variable"].shape) != tuple(variable.shape):
        raise ValueError(f"the partial batch of teacher {m} k={list(ks)} does not fit this run (iteration {start} of "
                         f"{config.iterations}, variable {tuple(state['variable'].shape)} vs {tuple(variable.shape)})")
    device = variable.device
    with torch.no_grad():
        variable.copy_(state["variable"])
        augment.step.fill_(int(state["augment_step"]))
        alive.copy_(state["alive"])
        died_at.copy_(state["died_at"])
    # Adam's own layout: ``step`` on the device when capturable (a captured step advances it), else on the CPU
    capturable = optimizer.param_groups[0]["capturable"]
    optimizer.state[variable] = {
        "step": state["adam_step"].to(device if capturable else "cpu", copy=True),
        "exp_avg": state["exp_avg"].to(device, copy=True),
        "exp_avg_sq": state["exp_avg_sq"].to(device, copy=True),
    }
    return start


def optimize_batch(
    method: str, source: Optional[Tensor], num_classes: int, image_shape: Tuple[int, int, int],
    losses: TeacherLosses, m: int, ks: List[int], config: RecoveryConfig, lo: Tensor, hi: Tensor,
    progress: bool, backend: str, desc: str, chunk_size: Optional[int] = None,
    on_checkpoint: Optional[Callable[[Dict[str, Any]], None]] = None, resume_from: Optional[Dict[str, Any]] = None,
) -> Tuple[Tensor, Dict[str, Any]]:
    """Optimize the jobs (m, k) for k in ``ks`` together (stats["failed"] lists the jobs whose
    loss became non-finite; their results must not be used).

    Checkpoints inside the batch: with ``on_checkpoint``, after every
    ``config.checkpoint_every`` iterations and once ``config.checkpoint_minutes`` have passed
    since the last one (a host clock read per iteration; the checkpoint itself syncs), it is
    called with the batch's state (_batch_state: the variable, Adam's state, the augmentation
    draws' position, alive/died_at, the iteration; on CUDA read between graph replays). With
    ``resume_from`` (such a state of this same batch: m, ks, chunk_size) the batch is built as
    from scratch, then continues from that state at its iteration: bit-identical to an
    uninterrupted batch (stats["resumed_from_iteration"] says where; its timings cover only
    the resumed part).

    INFER: the variables are the UFCs u_k^m (G, ch, H, W) from zero, composed with the natural
    sets ``source``. SRe2L: the variables are G groups of C images (one per class) from
    Gaussian noise, each group with its own BN statistics (composed as natural = the images,
    u = 0, so both share the fused compose + roll). Returns (result on CPU float32: ufc
    (G, ch, H, W) or clamped images (G, C, ch, H, W), batch stats)."""
    device = lo.device
    G, C = len(ks), num_classes
    gens = [torch.Generator().manual_seed(job_seed(method, config.seed, m, k)) for k in ks]
    if method == "infer":
        index = torch.tensor(ks, dtype=torch.int64, device=device)
        variable = torch.zeros((G,) + image_shape, device=device, requires_grad=True)
        compose_args = lambda v: (source, v, index)  # noqa: E731
        source_rows = list(ks)  # (index on the host)
    else:
        noise = torch.stack([torch.randn((C,) + image_shape, generator=g) for g in gens])
        variable = noise.to(device).requires_grad_()
        index = torch.arange(G, device=device)
        zero_ufc = torch.zeros((G,) + image_shape, device=device)
        compose_args = lambda v: (v, zero_ufc, index)  # noqa: E731
        source_rows = list(range(G))
    labels = torch.arange(C, device=device).repeat(G)
    augment = Augmentation(config, gens, image_shape[1], image_shape[2], device, config.iterations)
    chunked = chunk_size is not None and chunk_size < G * C
    if chunked and (config.fused_bn or config.compile != "off"):  # automatic chunks (validate refuses explicit ones)
        warnings.warn(f"recovery: this teacher's batches run in chunks of {chunk_size} images (one group does not "
                      "fit in memory), where fused_bn and compile do not apply: they are off for these batches",
                      RuntimeWarning, stacklevel=2)
    # (a resumed batch has the same Adam as an uninterrupted one: capturable or not by the config)
    graphed = uses_cuda_graph(config, device, chunked)
    if graphed:  # Adam and its learning rate on the device, so a captured step replays correctly
        lr = torch.full((), config.lr, device=device)
        optimizer = torch.optim.Adam([variable], lr=lr, betas=tuple(config.betas), eps=config.eps, capturable=True)
    else:
        lr = None
        # (foreach: its step holds one temporary the size of the variable, the for-loop one two)
        optimizer = torch.optim.Adam([variable], lr=config.lr, betas=tuple(config.betas), eps=config.eps, foreach=True)
    if chunked:  # the chunked mode attaches its own hooks
        losses.detach()
    split_chunks = config.distributed == "chunks"
    # chunks made row by row (composed and augmented for their rows only, each chunk's gradient
    # straight into the variable): no whole-batch input or gradient alive, which at ImageNet
    # scale is several copies of the batch; ranks sharing chunks all-reduce one whole gradient
    rows_by_chunk = chunked and not split_chunks

    def chunked_losses(x, backward: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
        """The whole-batch statistics, the teacher run chunk by chunk."""
        return chunked_loss_backward(losses.teacher, x, labels, G, config.r_bn, config.first_bn_mult, chunk_size,
                                     backend=backend, split_across_ranks=split_chunks, backward=backward)

    def augmented_losses_and_backward() -> Tuple[Tensor, Tensor]:
        """CE and R_bn of this iteration's augmented batch (advancing the augmentation), with
        the gradient of sum(CE + r_bn R_bn) sent back to the variable."""
        if rows_by_chunk:
            draw = augment.advance()
            make = lambda lo, hi: losses.teacher_rows(  # noqa: E731
                augment.batch_rows(*compose_args(variable)[:2], source_rows, draw, C, lo, hi, backend))
            ce, rbn, _ = chunked_losses(RowsFrom(G * C, make))
            return ce, rbn
        x = augment(*compose_args(variable), backend)  # advances augment.step to t + 1
        if chunked:
            ce, rbn, _ = chunked_losses(losses.teacher_input(x))
            return ce, rbn
        ce, rbn, _ = losses(x)
        (ce + config.r_bn * rbn).sum().backward()
        return ce.detach(), rbn.detach()

    # A non-finite loss stays inside its group (per-group BN statistics, per-row CE, Adam
    # elementwise): the group is marked dead on the device, without a host sync per step,
    # and only it is dropped at the end.
    alive = torch.ones(G, dtype=torch.bool, device=device)
    died_at = torch.full((G,), -1, dtype=torch.int64, device=device)

    def iteration() -> Tuple[Tensor, Tensor]:
        """One iteration, t = augment.step: everything on the device, no host sync, so that it
        can be captured once as a CUDA graph and replayed (gradients: set by the backward)."""
        if lr is not None:
            lr.copy_(cosine_lr(augment.step, config))
        ce, rbn = augmented_losses_and_backward()
        if chunked and device.type == "cpu":
            # the chunks' activations back to the system before Adam's step: freed but kept by the
            # allocator they would add ~2 GB to the step's peak at ImageNet scale (measured)
            memory.release_freed_memory()
        finite = torch.isfinite(ce + config.r_bn * rbn)
        died_at.copy_(torch.where(alive & ~finite, augment.step, died_at))
        alive.logical_and_(finite)
        optimizer.step()
        return ce.detach(), rbn.detach()

    start = 0  # the first iteration to run: everything before it was restored
    if resume_from is not None:
        start = _restore_batch_state(resume_from, method, m, ks, config, variable, optimizer, augment, alive, died_at)
    every = config.checkpoint_every if on_checkpoint is not None else None
    minutes = config.checkpoint_minutes if on_checkpoint is not None else None
    last_checkpoint = checkpoint_clock()

    started = time.perf_counter()
    first_iteration_s = None
    sync_mode = None  # with CHECK_HOST_SYNCS on CUDA: the debug mode to restore after the loop
    graph: Optional[CapturedIteration] = None
    graph_status = "off"
    try:
        bar = progress_bar(range(start, config.iterations), desc=desc, disable=not progress, leave=False,
                           initial=start, total=config.iterations)
        readout = ProgressReadout(bar, device) if progress else None
        for t in bar:
            if t == start + 1:  # the first iteration includes one-off costs (torch.compile, autotuning): one sync
                _synchronize(device)
                first_iteration_s = time.perf_counter() - started
                if CHECK_HOST_SYNCS and device.type == "cuda":
                    sync_mode = torch.cuda.get_sync_debug_mode()
                    torch.cuda.set_sync_debug_mode("error")
            if graphed and graph is None and t == start + GRAPH_WARMUP_ITERATIONS:
                graph, graph_status = CapturedIteration.capture(iteration, optimizer, sync_mode)
                graphed = graph is not None
            if graph is not None:
                last_ce, last_rbn = graph.replay()
            else:
                if lr is None:
                    for group in optimizer.param_groups:
                        group["lr"] = cosine_lr(t, config)
                optimizer.zero_grad(set_to_none=True)
                with side_stream(device) if graphed else contextlib.nullcontext():
                    last_ce, last_rbn = iteration()  # (warm-up of the capture on its own stream)
            if readout is not None:
                readout.update(t, last_ce, last_rbn, last=t + 1 == config.iterations)
            done = t + 1  # (none at the end: the finished batch is checkpointed by the caller)
            if done < config.iterations and (
                (every is not None and done % every == 0)
                or (minutes is not None and checkpoint_clock() - last_checkpoint >= 60.0 * minutes)
            ):
                if sync_mode is not None:  # the copies to the host are this checkpoint's sync: pause the check
                    torch.cuda.set_sync_debug_mode(sync_mode)
                on_checkpoint(_batch_state(method, m, ks, chunk_size, done, config, variable, optimizer, augment,
                                           alive, died_at))
                if sync_mode is not None:
                    torch.cuda.set_sync_debug_mode("error")
                last_checkpoint = checkpoint_clock()
        if sync_mode is not None:
            torch.cuda.set_sync_debug_mode(sync_mode)
            sync_mode = None
        bar.close()
        if first_iteration_s is None:  # a single iteration
            _synchronize(device)
            first_iteration_s = time.perf_counter() - started
        final = variable.detach()
        per_iteration_s = (time.perf_counter() - started) / max(1, config.iterations - start)
        if progress and (chunked or per_iteration_s >= FINAL_PASS_NOTE_S):  # (else over in a moment)
            chunks = f" in chunks of {chunk_size}" if chunked else ""
            print(f"{desc}: final pass over the {G * C} recovered images{chunks} (CE, R_bn, accuracy)", flush=True)
        if not graphed:  # Adam's state and the gradient: not needed any more (a captured graph owns its copies)
            variable.grad = None
            optimizer.state.clear()
        x = ufc_compose(*compose_args(final), lo=lo, hi=hi, backend=backend)
        if chunked:  # (the statistics pass alone: no gradient)
            rows = x.flatten(0, 1)
            with torch.no_grad():
                ce, rbn, logits = chunked_losses(RowsFrom(G * C, lambda a, b: losses.teacher_rows(rows[a:b])),
                                                 backward=False)
        else:
            with torch.no_grad():
                ce, rbn, logits = losses(x, compiled=False)  # (once: not worth a no-grad graph)
        acc = (logits.argmax(1) == labels).view(G, C).float().mean(1)
    except Exception as exc:
        if isinstance(exc, RecoveryOutOfMemoryError) or not memory.is_out_of_memory(exc):
            raise
        raise out_of_memory_error(exc, device, desc, G, C, chunk_size) from exc
    finally:
        if sync_mode is not None:
            torch.cuda.set_sync_debug_mode(sync_mode)
        if chunked:
            losses.detach()
    alive &= torch.isfinite(final.flatten(1)).all(1)
    failed = {k: int(it) for k, ok, it in zip(ks, alive.tolist(), died_at.tolist()) if not ok}
    stats = {
        "teacher": m,
        "k": list(ks),
        "ce": float(ce.mean()),
        "r_bn": float(rbn.mean()),
        "accuracy": float(acc.mean()),
        "ce_per_ufc": ce.tolist(),
        "r_bn_per_ufc": rbn.tolist(),
        "accuracy_per_ufc": acc.tolist(),
        # the optimized objective at the last iteration (augmented, unclamped images)
        "ce_last_iteration": float(last_ce.mean()),
        "r_bn_last_iteration": float(last_rbn.mean()),
        "failed": failed,  # k -> first iteration with a non-finite loss (-1: a non-finite result)
        # wall time of the batch, and of its first iteration (compile and warm-up included)
        "seconds": time.perf_counter() - started,
        "first_iteration_seconds": first_iteration_s,
        "cuda_graph": graph_status,  # "captured", "off", or why this batch ran eagerly
        "chunk_size": chunk_size if chunked else None,  # rows through the teacher at a time (None: all)
        "resumed_from_iteration": start,  # 0, or the iteration of the checkpoint this batch continued from
    }
    result = final if method == "infer" else x
    return result.to("cpu", torch.float32), stats

