"""The per-batch engine of recovery: G jobs of one teacher optimized together, with their
augmentation, losses, optimizer and schedule. What a job optimizes (its variable, how it is
composed, what it keeps) is its method's RecoveryKind (variables.py); how many jobs share a
batch: plan.auto_batch_plan; the natural sets a batch is composed with: its own, made by the
job scheduler (jobs.py) when the batch starts."""
from __future__ import annotations

import contextlib
import copy
import math
import os
import signal
import time
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import interrupts, memory
from ..grad_mode import autograd_usable, holds_inference_tensors, training_grad_mode
from ..ops import BNStatTracker, RowsFrom, chunked_loss_backward, ufc_compose
from ..mixed_precision import model_in_layout
from ..models import device_of, is_float32
from ..ops.backends import resolve as resolve_backend
from ..ops.bn_hooks import BN_TYPES, bn_layers, check_eval_mode, check_no_compiled_submodule
from ..ops.reference import at_least_fp32
from ..progress import progress_bar, say
from ..teacher import teacher_label
from .augment import Augmentation
from .config import RecoveryConfig
from .cuda_graphs import GRAPH_WARMUP_ITERATIONS, CapturedIteration, SideStream, uses_cuda_graph
from .plan import RecoveryOutOfMemoryError, chunk_rows, out_of_memory_error
from .variables import RecoveryKind


def check_teacher(teacher: nn.Module, m: int, path: Optional[str] = None, match_bn: bool = True,
                  count: Optional[int] = None) -> None:
    """ValueError naming teacher ``m`` of ``count`` (and its checkpoint ``path`` where known:
    teacher.teacher_label) unless its
    BatchNorm statistics can be matched (ops.bn_hooks.matchable: a BatchNorm1d/2d layer at
    least, each with running statistics; BatchNorm3d refused), where ``match_bn`` (r_bn > 0: a
    CE-only recovery needs none) with no torch.compile'd submodule, whose hooks would not run
    (ops.bn_hooks.check_no_compiled_submodule), and every BatchNorm layer is in eval mode
    (ops.bn_hooks.check_eval_mode): the one check every path makes, before any work."""
    from ..ops.bn_hooks import matchable

    who = teacher_label(m, path, count)
    if match_bn:
        matchable(bn_layers(teacher), who)
        check_no_compiled_submodule(teacher, who)
    check_eval_mode(teacher, who=who)


def check_compiler(config: RecoveryConfig, device: torch.device) -> None:
    """ValueError naming compile where ``config`` compiles the teacher pass on the CPU and
    inductor finds no working C++ compiler (it would fail at the first iteration). Checked with
    inductor's own lookup; a torch without it is left to fail where it compiles."""
    if config.compile == "off" or device.type != "cpu":
        return
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:
        return
    try:
        get_cpp_compiler()
    except Exception as exc:  # (InvalidCxxCompiler, or the failure of the one found)
        raise ValueError(f"compile={config.compile!r} on the CPU needs a working C++ compiler for torch.compile "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())}): install one (g++) or set CXX to it, "
                         "or turn it off (--compile off; in a run config, compile: 'off' in the method's section: "
                         "recovery, sre2l, method_options)") from None


@contextlib.contextmanager
def recovery_teacher(teacher: nn.Module, config: RecoveryConfig) -> Iterator[nn.Module]:
    """The teacher as recovery runs it, frozen (no parameter gradients). For a bf16 run a copy
    converted once: convolutions and linear layers in bf16, BatchNorm kept in fp32 (its running
    statistics are what the loss matches, and the kernels accumulate in fp32); with
    channels_last, a copy in that layout; for a teacher made under torch.inference_mode (whose
    tensors a backward cannot save), a copy of normal tensors; for a teacher that is not float32
    (float16, bfloat16, float64: models.is_float32), a float32 copy (then bf16's conversion), as
    one on another device is copied there. The caller's teacher is left as it was."""
    if (config.precision == "bf16" or config.channels_last or holds_inference_tensors(teacher)
            or not is_float32(teacher)):
        with training_grad_mode():  # (copied and converted outside inference mode: normal tensors)
            run = copy.deepcopy(teacher).requires_grad_(False).float()
            if config.precision == "bf16":
                run.to(compute_dtype(config))
                for module in run.modules():
                    if isinstance(module, BN_TYPES):
                        module.float()
            run = model_in_layout(run, config.channels_last)
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

# Tests only (tests/test_interrupts.py), not a user option: "SIGTERM:40" makes the process send
# itself SIGTERM as iteration 40 of a batch starts, so a test stops a run inside a batch at a
# chosen iteration on any machine (the signal lands while that iteration is under way).
SIGNAL_AT_ITERATION_ENV = "INFER_FAST_TEST_SIGNAL_AT_ITERATION"


def _test_signal() -> Tuple[Optional[int], Optional[int]]:
    """(iteration, signal) of SIGNAL_AT_ITERATION_ENV, or (None, None) when it is not set."""
    value = os.environ.get(SIGNAL_AT_ITERATION_ENV)
    if not value:
        return None, None
    name, _, iteration = value.partition(":")
    return int(iteration), signal.Signals[name]


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


def cosine_lr(t, config: RecoveryConfig):
    """lr_t = 0.5 (1 + cos(pi t / T)) lr: for an int t (eager), or a device tensor t (a
    captured iteration computes it on the device)."""
    cos = torch.cos if isinstance(t, Tensor) else math.cos
    return 0.5 * (1.0 + cos(math.pi * t / config.iterations)) * config.lr


def checkpoint_clock() -> float:
    """The host clock (seconds) that times checkpoints inside a batch (no device sync)."""
    return time.monotonic()


class _Batch:
    """One batch of G jobs (m, k) of one teacher being optimized: its variable (built by the
    ``kind``'s hooks), augmentation, Adam and the iteration; optimize_batch runs it. The
    loop's tensors (alive, died_at, the variable, Adam's state) live here so that a
    checkpoint can read them between iterations."""

    def __init__(self, kind: RecoveryKind, source: Optional[Tensor], num_classes: int,
                 image_shape: Tuple[int, int, int], losses: TeacherLosses, m: int, ks: List[int],
                 config: RecoveryConfig, backend: str, chunk_size: Optional[int], device: torch.device,
                 chunks_why: Optional[str] = None, resumed: bool = False, desc: str = ""):
        self.kind, self.losses, self.m, self.ks, self.config = kind, losses, m, list(ks), config
        self.backend, self.chunk_size, self.device = backend, chunk_size, device
        G, C = self.G, self.C = len(ks), num_classes
        gens = [torch.Generator().manual_seed(kind.job_seed(config.seed, m, k)) for k in ks]
        self.var = kind.variable(source, gens, ks, num_classes, image_shape, device)
        self.variable = self.var.tensor
        self.labels = torch.arange(C, device=device).repeat(G)
        self.augment = Augmentation(config, gens, image_shape[1], image_shape[2], device, config.iterations)
        self.chunked = chunk_rows(chunk_size, G * C) is not None
        # planned chunks, or a resumed batch's (validate refuses explicit ones): ``chunks_why`` says why
        if self.chunked and (config.fused_bn or config.compile != "off"):
            which, these = ((f"the resumed batch {desc} runs", "this batch") if resumed
                            else ("this teacher's batches run", "these batches"))
            why = chunks_why or ("it does not fit in memory at once" if resumed else "one group does not fit in memory")
            warnings.warn(f"recovery: {which} in chunks of {chunk_size} images ({why}), where fused_bn and compile "
                          f"do not apply: they are off for {these}", RuntimeWarning, stacklevel=3)
        # (a resumed batch has the same Adam as an uninterrupted one: capturable or not by the config)
        self.graphed = uses_cuda_graph(config, device, self.chunked)
        self.side_stream = SideStream(device)  # one per batch: its warm-up and capture (made on first use)
        adam = dict(betas=tuple(config.betas), eps=config.eps)
        if self.graphed:  # Adam and its learning rate on the device, so a captured step replays correctly
            self.lr: Optional[Tensor] = torch.full((), config.lr, device=device)
            self.optimizer = torch.optim.Adam([self.variable], lr=self.lr, **adam, capturable=True)
        else:
            self.lr = None
            # (foreach: its step holds one temporary the size of the variable, the for-loop one two)
            self.optimizer = torch.optim.Adam([self.variable], lr=config.lr, **adam, foreach=True)
        if self.chunked:  # the chunked mode attaches its own hooks
            losses.detach()
        self.split_chunks = config.distributed == "chunks"
        # chunks made row by row (composed and augmented for their rows only, each chunk's gradient
        # straight into the variable): no whole-batch input or gradient alive, which at ImageNet
        # scale is several copies of the batch; ranks sharing chunks all-reduce one whole gradient
        self.rows_by_chunk = self.chunked and not self.split_chunks
        # A non-finite loss stays inside its group (per-group BN statistics, per-row CE, Adam
        # elementwise): the group is marked dead on the device, without a host sync per step,
        # and only it is dropped at the end.
        self.alive = torch.ones(G, dtype=torch.bool, device=device)
        self.died_at = torch.full((G,), -1, dtype=torch.int64, device=device)
        self.sync_mode = None  # with CHECK_HOST_SYNCS on CUDA: the debug mode to restore after the loop
        self.graph_status = "off"

    def chunked_losses(self, x, backward: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
        """The whole-batch statistics, the teacher run chunk by chunk."""
        config = self.config
        return chunked_loss_backward(self.losses.teacher, x, self.labels, self.G, config.r_bn, config.first_bn_mult,
                                     self.chunk_size, backend=self.backend, split_across_ranks=self.split_chunks,
                                     backward=backward)

    def augmented_losses_and_backward(self) -> Tuple[Tensor, Tensor]:
        """CE and R_bn of this iteration's augmented batch (advancing the augmentation), with
        the gradient of sum(CE + r_bn R_bn) sent back to the variable."""
        augment, losses, compose_args, variable = self.augment, self.losses, self.var.compose_args, self.variable
        if self.rows_by_chunk:
            draw = augment.advance()
            make = lambda lo, hi: losses.teacher_rows(  # noqa: E731
                augment.batch_rows(*compose_args(variable)[:2], self.var.source_rows, draw, self.C, lo, hi,
                                   self.backend))
            ce, rbn, _ = self.chunked_losses(RowsFrom(self.G * self.C, make))
            return ce, rbn
        x = augment(*compose_args(variable), self.backend)  # advances augment.step to t + 1
        if self.chunked:
            ce, rbn, _ = self.chunked_losses(losses.teacher_input(x))
            return ce, rbn
        ce, rbn, _ = losses(x)
        (ce + self.config.r_bn * rbn).sum().backward()
        return ce.detach(), rbn.detach()

    def iteration(self) -> Tuple[Tensor, Tensor]:
        """One iteration, t = augment.step: everything on the device, no host sync, so that it
        can be captured once as a CUDA graph and replayed (gradients: set by the backward)."""
        if self.lr is not None:
            self.lr.copy_(cosine_lr(self.augment.step, self.config))
        ce, rbn = self.augmented_losses_and_backward()
        if self.chunked and self.device.type == "cpu":
            # the chunks' activations back to the system before Adam's step: freed but kept by the
            # allocator they would add ~2 GB to the step's peak at ImageNet scale (measured)
            memory.release_freed_memory()
        finite = torch.isfinite(ce + self.config.r_bn * rbn)
        self.died_at.copy_(torch.where(self.alive & ~finite, self.augment.step, self.died_at))
        self.alive.logical_and_(finite)
        self.optimizer.step()
        return ce.detach(), rbn.detach()

    def run(self, start: int, on_checkpoint, progress: bool, desc: str, started: float,
            stop_vote: Optional[Callable[[Optional[int]], Optional[int]]] = None) -> Tuple[Tensor, Tensor, float]:
        """Iterations ``start`` .. config.iterations - 1, checkpointing between them; returns the
        last iteration's (CE, R_bn) and the seconds until the first iteration was done.

        A stop requested by a signal (interrupts.STOP, set inside a safe-point region: the
        caller's) is acted on between two iterations, where the state is whole: the batch is
        checkpointed there as at its cadence (with ``on_checkpoint``), then the stop raises.
        With ``stop_vote`` (ranks sharing the batch) the ranks vote after each iteration and
        all stop after the same one (interrupts.agree_on_stop). After the last iteration it is
        left to the caller (that state cannot be resumed: the finished batch is saved whole by
        the caller, before its region raises the stop)."""
        config, device = self.config, self.device
        every = config.checkpoint_every if on_checkpoint is not None else None
        minutes = config.checkpoint_minutes if on_checkpoint is not None else None
        last_checkpoint = checkpoint_clock()
        first_iteration_s = None
        graph: Optional[CapturedIteration] = None
        stop = interrupts.STOP
        signal_at, signum = _test_signal()
        bar = progress_bar(range(start, config.iterations), desc=desc, disable=not progress, leave=False,
                           initial=start, total=config.iterations)
        readout = ProgressReadout(bar, device) if progress else None
        try:
            for t in bar:
                if t == signal_at:
                    os.kill(os.getpid(), signum)  # (tests: a signal at a chosen iteration)
                if t == start + 1:  # the first iteration includes one-off costs (torch.compile, autotuning)
                    first_iteration_s = self._first_iteration_done(started)
                last_ce, last_rbn, graph = self._iterate(t, start, graph)
                if readout is not None:
                    readout.update(t, last_ce, last_rbn, last=t + 1 == config.iterations)
                done = t + 1  # (none at the end: the finished batch is checkpointed by the caller)
                stopping = done < config.iterations and (
                    stop.signum is not None if stop_vote is None else interrupts.agree_on_stop(stop_vote) is not None)
                if done < config.iterations and on_checkpoint is not None and (
                    stopping
                    or (every is not None and done % every == 0)
                    or (minutes is not None and checkpoint_clock() - last_checkpoint >= 60.0 * minutes)
                ):
                    self.checkpoint(on_checkpoint, done)
                    last_checkpoint = checkpoint_clock()
                if stopping:
                    raise interrupts.requested_stop()
        finally:
            self.restore_sync_mode()
            bar.close()
        if first_iteration_s is None:  # a single iteration
            _synchronize(device)
            first_iteration_s = time.perf_counter() - started
        return last_ce, last_rbn, first_iteration_s

    def _first_iteration_done(self, started: float) -> float:
        """The seconds since ``started`` once the first iteration is done (one sync); from then
        on, with CHECK_HOST_SYNCS on CUDA, any host sync in the loop raises."""
        _synchronize(self.device)
        elapsed = time.perf_counter() - started
        if CHECK_HOST_SYNCS and self.device.type == "cuda":
            self.sync_mode = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error")
        return elapsed

    def _iterate(self, t: int, start: int,
                 graph: Optional[CapturedIteration]) -> Tuple[Tensor, Tensor, Optional[CapturedIteration]]:
        """Iteration t: replayed from the captured graph (captured once its warm-up is done), or
        eagerly; returns its (CE, R_bn) and the graph."""
        if self.graphed and graph is None and t == start + GRAPH_WARMUP_ITERATIONS:
            graph, self.graph_status = CapturedIteration.capture(self.iteration, self.optimizer, self.sync_mode,
                                                                 self.side_stream)
            self.graphed = graph is not None
        if graph is not None:
            return (*graph.replay(), graph)
        if self.lr is None:
            for group in self.optimizer.param_groups:
                group["lr"] = cosine_lr(t, self.config)
        self.optimizer.zero_grad(set_to_none=True)
        with self.side_stream() if self.graphed else contextlib.nullcontext():
            ce, rbn = self.iteration()  # (warm-up of the capture on its own stream)
        return ce, rbn, graph

    def checkpoint(self, on_checkpoint: Callable[[Dict[str, Any]], None], done: int) -> None:
        """``on_checkpoint`` of the state after ``done`` iterations (between two iterations: the
        one path of every in-batch checkpoint, by cadence or on a stop, so a resume from either
        is bit-identical). Its copies to the host are its sync: CHECK_HOST_SYNCS pauses."""
        if self.sync_mode is not None:
            torch.cuda.set_sync_debug_mode(self.sync_mode)
        on_checkpoint(self.state(done))
        if self.sync_mode is not None:
            torch.cuda.set_sync_debug_mode("error")

    def restore_sync_mode(self) -> None:
        if self.sync_mode is not None:
            torch.cuda.set_sync_debug_mode(self.sync_mode)
            self.sync_mode = None

    def final_pass(self, lo: Tensor, hi: Tensor, progress: bool, desc: str,
                   per_iteration_s: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The final variable, its composed images clamped to [lo, hi], and their CE, R_bn and
        accuracy: one more pass through the teacher, unaugmented, without a gradient."""
        G, C, chunked = self.G, self.C, self.chunked
        final = self.variable.detach()
        if progress and (chunked or per_iteration_s >= FINAL_PASS_NOTE_S):  # (else over in a moment)
            chunks = f" in chunks of {self.chunk_size}" if chunked else ""
            say(f"{desc}: final pass over the {G * C} recovered images{chunks} (CE, R_bn, accuracy)")
        if not self.graphed:  # Adam's state and the gradient: not needed any more (a captured graph owns its copies)
            self.variable.grad = None
            self.optimizer.state.clear()
        x = ufc_compose(*self.var.compose_args(final), lo=lo, hi=hi, backend=self.backend)
        if chunked:  # (the statistics pass alone: no gradient)
            rows = x.flatten(0, 1)
            with torch.no_grad():
                ce, rbn, logits = self.chunked_losses(
                    RowsFrom(G * C, lambda a, b: self.losses.teacher_rows(rows[a:b])), backward=False)
        else:
            with torch.no_grad():
                ce, rbn, logits = self.losses(x, compiled=False)  # (once: not worth a no-grad graph)
        acc = (logits.argmax(1) == self.labels).view(G, C).float().mean(1)
        return final, x, ce, rbn, acc

    def state(self, iterations_done: int) -> Dict[str, Any]:
        """The state of the batch after ``iterations_done`` iterations, on the CPU (copied: the
        loop goes on updating its tensors, a captured graph's static ones included): everything
        the rest of the batch depends on. The batch itself (teacher, ks, chunk_size) is part of
        it: only the same batch continues bit-identically (batching changes float rounding), in
        the same chunks (others: equal up to float rounding)."""
        adam = self.optimizer.state[self.variable]
        return {
            "method": self.kind.method,
            "teacher": int(self.m),
            "k": [int(k) for k in self.ks],
            "chunk_size": self.chunk_size,
            "iteration": int(iterations_done),  # the batch continues at t = iteration
            "iterations": int(self.config.iterations),
            "variable": self.variable.detach().to("cpu", copy=True),
            "exp_avg": adam["exp_avg"].to("cpu", copy=True),
            "exp_avg_sq": adam["exp_avg_sq"].to("cpu", copy=True),
            "adam_step": adam["step"].detach().to("cpu", copy=True),
            "augment_step": int(self.augment.step),  # the position in the augmentation draws
            "alive": self.alive.to("cpu", copy=True),
            "died_at": self.died_at.to("cpu", copy=True),
        }

    def restore(self, state: Dict[str, Any]) -> int:
        """Load a :meth:`state` into this batch, built as from scratch (so its generators have
        made the same draws); returns the iteration it continues at."""
        method, m, ks, config, variable = self.kind.method, self.m, self.ks, self.config, self.variable
        if (state.get("method"), state.get("teacher"), list(state.get("k", []))) != (method, m, list(ks)):
            recorded = state.get("teacher")
            recorded = teacher_label(recorded) if isinstance(recorded, int) else f"teacher {recorded!r}"
            raise ValueError(f"the partial batch to resume is {state.get('method')} {recorded} "
                             f"k={state.get('k')}, not {method} {teacher_label(m)} k={list(ks)}")
        start = int(state["iteration"])
        if not 0 < start < config.iterations or tuple(state["variable"].shape) != tuple(variable.shape):
            raise ValueError(f"the partial batch of {teacher_label(m)} k={list(ks)} does not fit this run (iteration {start} "
                             f"of {config.iterations}, variable {tuple(state['variable'].shape)} vs "
                             f"{tuple(variable.shape)})")
        device = variable.device
        with torch.no_grad():
            variable.copy_(state["variable"])
            self.augment.step.fill_(int(state["augment_step"]))
            self.alive.copy_(state["alive"])
            self.died_at.copy_(state["died_at"])
        # Adam's own layout: ``step`` on the device when capturable (a captured step advances it), else on the CPU
        capturable = self.optimizer.param_groups[0]["capturable"]
        self.optimizer.state[variable] = {
            "step": state["adam_step"].to(device if capturable else "cpu", copy=True),
            "exp_avg": state["exp_avg"].to(device, copy=True),
            "exp_avg_sq": state["exp_avg_sq"].to(device, copy=True),
        }
        return start

    def stats(self, final: Tensor, ce: Tensor, rbn: Tensor, acc: Tensor, last_ce: Tensor, last_rbn: Tensor,
              started: float, first_iteration_s: float, start: int) -> Dict[str, Any]:
        """The batch's stats (and its failed jobs, once ``final`` is known: a non-finite result
        fails its job too)."""
        self.alive &= torch.isfinite(final.flatten(1)).all(1)
        failed = {k: int(it) for k, ok, it in zip(self.ks, self.alive.tolist(), self.died_at.tolist()) if not ok}
        return {
            "teacher": self.m,
            "k": list(self.ks),
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
            "cuda_graph": self.graph_status,  # "captured", "off", or why this batch ran eagerly
            "backend": resolve_backend(self.backend, self.device),  # the kernels that ran ("auto" resolved)
            "chunk_size": self.chunk_size if self.chunked else None,  # rows through the teacher at a time (None: all)
            "resumed_from_iteration": start,  # 0, or the iteration of the checkpoint this batch continued from
        }


@training_grad_mode()  # (every recovery method's batches: gradients on whatever the caller's grad mode)
def optimize_batch(
    kind: RecoveryKind, source: Optional[Tensor], num_classes: int, image_shape: Tuple[int, int, int],
    losses: TeacherLosses, m: int, ks: List[int], config: RecoveryConfig, lo: Tensor, hi: Tensor,
    progress: bool, backend: str, desc: str, chunk_size: Optional[int] = None,
    on_checkpoint: Optional[Callable[[Dict[str, Any]], None]] = None, resume_from: Optional[Dict[str, Any]] = None,
    stop_vote: Optional[Callable[[Optional[int]], Optional[int]]] = None, chunks_why: Optional[str] = None,
) -> Tuple[Tensor, Dict[str, Any]]:
    """Optimize the jobs (m, k) for k in ``ks`` together (stats["failed"] lists the jobs whose
    loss became non-finite; their results must not be used).

    ``kind`` (variables.RecoveryKind) says what is optimized: its variable (G groups, each
    composed into C images, one per class, with its own BN statistics), composed with
    ``source`` (the batch's natural sets, float32 (G, C, ch, H, W) on the device, group g's
    in source[g]; None for a method without), and the result (``kind.result``) returned on CPU as float32, with the batch
    stats. Every job draws from its own generator (``kind.job_seed``).

    Checkpoints inside the batch: with ``on_checkpoint``, after every
    ``config.checkpoint_every`` iterations and once ``config.checkpoint_minutes`` have passed
    since the last one (a host clock read per iteration; the checkpoint itself syncs), it is
    called with the batch's state (_Batch.state: the variable, Adam's state, the augmentation
    draws' position, alive/died_at, the iteration; on CUDA read between graph replays). With
    ``resume_from`` (such a state of this same batch: m, ks) the batch is built as from scratch,
    then continues from that state at its iteration: bit-identical to an uninterrupted batch
    in the chunks it ran in (its state's chunk_size), equal up to float rounding in others
    (chunked exact mode: the same gradients summed in another order; the job scheduler says
    so) (stats["resumed_from_iteration"] says where; its timings cover only the resumed
    part). ``chunks_why``: why the batch runs in chunks, for the warning that fused_bn and
    compile are off in them (None: one group does not fit in memory). Inside the caller's interrupts.stop_at_safe_points region a stop signal
    is acted on between two iterations: the state is checkpointed there by the same path,
    then interrupts.Interrupted is raised (_Batch.run); with ``stop_vote`` (ranks that share
    the batch: distributed.Ranks.any_signal) every rank stops after the same iteration."""
    device = lo.device
    # (a caller's tensors made under torch.inference_mode: copies that the backward can save)
    source, lo, hi = autograd_usable(source), autograd_usable(lo), autograd_usable(hi)
    batch = _Batch(kind, source, num_classes, image_shape, losses, m, ks, config, backend, chunk_size, device,
                   chunks_why=chunks_why, resumed=resume_from is not None, desc=desc)
    start = 0 if resume_from is None else batch.restore(resume_from)  # the first iteration to run
    started = time.perf_counter()
    try:
        last_ce, last_rbn, first_iteration_s = batch.run(start, on_checkpoint, progress, desc, started, stop_vote)
        per_iteration_s = (time.perf_counter() - started) / max(1, config.iterations - start)
        final, x, ce, rbn, acc = batch.final_pass(lo, hi, progress, desc, per_iteration_s)
    except Exception as exc:
        if isinstance(exc, RecoveryOutOfMemoryError) or not memory.is_out_of_memory(exc):
            raise
        raise out_of_memory_error(exc, device, desc, batch.G, batch.C, chunk_size,
                                  resumed=resume_from is not None) from exc
    finally:
        batch.restore_sync_mode()
        if batch.chunked:
            losses.detach()
    stats = batch.stats(final, ce, rbn, acc, last_ce, last_rbn, started, first_iteration_s, start)
    return kind.result(final, x).to("cpu", torch.float32), stats
