"""The job scheduler of recovery: the jobs (m, k) of a recovery (one per teacher m and index
k: what a job optimizes is its method's RecoveryKind, variables.py) scheduled teacher by
teacher in batches of the engine, the interrupted batches of a resumed run first, split
across ranks under torchrun, with the checkpoint store (checkpoints.py) written after every
batch and inside batches. :func:`recover` is what a method's recovery calls (INFER's
recover_ufcs, SRe2L's recover_sre2l, in infer_fast/methods/)."""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .. import distributed, interrupts, memory
from ..data.transforms import normalize
from ..models import device_of
from ..ops.bn_hooks import uncompiled
from ..storage.distilled_set import channel_values
from ..teacher import check_distinct_teachers, check_teacher_outputs, teacher_label, teacher_list
from . import engine, plan
from .checkpoints import CheckpointStore, Job, describe_batch, job_range
from .config import RESULT_NEUTRAL, RecoveryConfig
from .variables import RecoveryKind

__all__ = ["RecoveryDivergedError", "recover", "check_common"]


class RecoveryDivergedError(RuntimeError):
    """Some UFCs (or SRe2L groups) hit a non-finite loss; the others were kept."""


def check_common(teachers, mean, std, channels: int, paths: Optional[List[str]] = None,
                 config: Optional[RecoveryConfig] = None) -> List[nn.Module]:
    """The checks every recovery makes of its arguments, before any work: a teacher at least
    (one model is a list of one: teacher_list), each in eval mode and with BatchNorm
    statistics to match unless the ``config``'s r_bn is 0 (a CE-only recovery; no config: they
    are checked) (engine.check_teacher, naming its checkpoint in ``paths`` where given), and
    one mean and std value per channel (storage.channel_values). Returns the teachers as a
    list, a torch.compile'd one as the module it wraps (recovery hooks its BatchNorm layers,
    which a graph compiled before would not run; ``compile`` in the config compiles the
    teacher pass). What the teachers give for the data's images is checked by :func:`recover`.
    A run.LoadedTeachers of models none of which was unwrapped stays one: its digests go on to
    :func:`recover`."""
    from .run import LoadedTeachers, teacher_digests

    given = teachers
    teachers = [uncompiled(t) for t in teacher_list(teachers)]
    if isinstance(given, LoadedTeachers) and all(a is b for a, b in zip(teachers, given)):
        teachers = LoadedTeachers(teachers, teacher_digests(given))  # (the same models: their digests hold)
    if not teachers:
        raise ValueError("recovery needs at least one teacher")
    channel_values("mean", mean, channels)
    channel_values("std", std, channels)
    match_bn = config is None or config.r_bn > 0
    for m, teacher in enumerate(teachers):
        engine.check_teacher(teacher, m, paths[m] if paths else None, match_bn=match_bn, count=len(teachers))
    for device in dict.fromkeys(device_of(t) for t in teachers) if config is not None else ():  # (a lookup each)
        engine.check_compiler(config, device)
    return teachers


def _my_jobs(jobs: List[Job], store: CheckpointStore, split_jobs: bool) -> List[Job]:
    """The jobs this rank starts (not those recovered already or in an interrupted batch):
    under torchrun "jobs" every world-th of them, else all."""
    rank, world = distributed.rank_and_world()
    resumed_jobs = {(s["teacher"], k) for _, s in store.partials for k in s["k"]}
    remaining = [job for job in jobs if job not in store.inherited and job not in resumed_jobs]
    return remaining[rank::world] if split_jobs else remaining


class _JobRunner:
    """The jobs of one recovery on this rank, teacher by teacher, G at a time: ``done`` (job ->
    kept result), the batches' ``stats``, ``failures`` (m, k, iteration) and the last
    ``group_size``; the checkpoint ``store`` written after every batch and, at the cadence of
    config.checkpoint_every / checkpoint_minutes, inside a batch. ``natural``: the method's
    natural sets, uint8 (K, C, ch, H, W) on the host (None: it has none), of which each batch
    normalizes its own (:meth:`natural_sets`). ``stop_vote``: under torchrun "chunks", the
    ranks' vote on a stop signal (distributed.Ranks.any_signal)."""

    def __init__(self, kind: RecoveryKind, teachers: List[nn.Module], natural: Optional[Tensor],
                 num_classes: int, image_shape: Tuple[int, int, int], mean, std, config: RecoveryConfig,
                 store: CheckpointStore, split_jobs: bool, progress: bool, backend: str,
                 keep: Optional[Callable[[Tensor], Tensor]],
                 stop_vote: Optional[Callable[[Optional[int]], Optional[int]]] = None):
        from ..storage import valid_range

        self.kind, self.teachers, self.natural, self.config, self.store = kind, teachers, natural, config, store
        self.mean, self.std = mean, std
        self.num_classes, self.image_shape, self.split_jobs = num_classes, image_shape, split_jobs
        self.progress, self.backend, self.keep, self.stop_vote = progress, backend, keep, stop_vote
        self.lo_cpu, self.hi_cpu = valid_range(mean, std)
        self.done: Dict[Job, Tensor] = {}
        self.stats: List[Dict[str, Any]] = []
        rank, _ = distributed.rank_and_world()
        if store.inherited and (rank == 0 or not split_jobs):  # one rank brings them to the gather
            self.done, self.stats = dict(store.inherited), list(store.inherited_stats.values())
        self.failures: List[Tuple[int, int, int]] = []
        self.group_size = config.group_size

    def run_teacher(self, m: int, teacher: nn.Module, mine: List[Job]) -> None:
        """Teacher m's batches: its interrupted ones (as they were), then its jobs in ``mine``."""
        todo = [k for mm, k in mine if mm == m and (m, k) not in self.done]
        interrupted = [state for (mm, _), state in sorted(self.store.pending.items()) if mm == m]
        if not todo and not interrupted:
            return
        device = device_of(teacher)
        lo, hi = self.lo_cpu.to(device), self.hi_cpu.to(device)
        with engine.recovery_teacher(teacher, self.config) as run_teacher:
            losses = self.kind.losses(run_teacher, self.num_classes, self.config, self.backend)
            try:
                for ks, chunk_size, state, why in self._batches(todo, interrupted, run_teacher, device):
                    self._run_batch(m, ks, chunk_size, state, losses, lo, hi, why)
            except plan.RecoveryOutOfMemoryError as exc:
                where = self.store.where()
                if where is None:
                    raise
                raise plan.RecoveryOutOfMemoryError(
                    f"{exc}; what was recovered before is in {where}: --resume continues from there") from exc
            finally:
                losses.detach()

    def natural_sets(self, ks: List[int], device) -> Optional[Tensor]:
        """The natural sets ``ks``, in that order, normalized: float32 (len(ks), C, ch, H, W) on
        ``device`` (None when the method has none). Made when a batch starts, so memory holds
        one batch's sets in float32, not all K; the same bits as normalizing all K at once
        (normalize is elementwise), and made on the host as before: a CUDA division by a
        scalar (the 255) multiplies by its reciprocal, which could change a bit."""
        if self.natural is None:
            return None
        rows = torch.tensor(ks, dtype=torch.int64)
        return normalize(self.natural.index_select(0, rows), self.mean, self.std).to(device)

    def _batches(self, todo: List[int], interrupted: List[Dict[str, Any]], run_teacher: nn.Module,
                 device) -> List[Tuple[List[int], Optional[int], Optional[Dict[str, Any]], Optional[str]]]:
        """The plan of a teacher: (ks, chunk_size, state to continue from, why it runs in chunks
        (None: the engine's words)), the interrupted batches first (their groups as they were,
        their chunks: :meth:`_resumed_chunks`), then ``todo`` G at a time (G and chunk_size
        from the config, G alone (its chunks: plan.batch_chunk_size), or auto_batch_plan:
        under torchrun "chunks" rank 0's plan for all ranks)."""
        config = self.config
        batches = []
        for state in interrupted:
            chunk_size, why = self._resumed_chunks(state, run_teacher, device)
            batches.append((list(state["k"]), chunk_size, state, why))
        if todo:
            why = None
            if config.group_size and config.chunk_size is not None:
                G, chunk_size = config.group_size, config.chunk_size
            elif config.group_size:  # (the chunks of G groups, from the memory available)
                G = config.group_size
                chunk_size = self._plan(lambda probe: plan.batch_chunk_size(
                    run_teacher, probe, min(G, len(todo)), holds_natural=self.natural is not None), device)
                if min(G, len(todo)) > 1:
                    why = f"{min(G, len(todo))} groups, as --group-size asks, do not fit in memory at once"
            else:
                G, chunk_size = self._plan(lambda probe: plan.auto_batch_plan(
                    run_teacher, probe, len(todo), chunk_size=config.chunk_size,
                    holds_natural=self.natural is not None), device)
            self.group_size = G
            batches += [(todo[start:start + G], chunk_size, None, why) for start in range(0, len(todo), G)]
        return batches

    def _plan(self, make: Callable[[Tensor], Any], device) -> Any:
        """``make(probe)``: a plan from a probe of one group's images (float32 zeros of a natural
        set's shape: what an image costs the teacher does not depend on its values; no set is
        normalized for it), under torchrun "chunks" rank 0's for all ranks."""
        probe = torch.zeros((1, self.num_classes) + tuple(self.image_shape), dtype=torch.float32, device=device)
        made = make(probe)
        del probe
        if distributed.rank_and_world()[1] > 1 and not self.split_jobs:  # "chunks": one plan for all ranks
            made = distributed.all_gather_object(made)[0]
        return made

    def _resumed_chunks(self, state: Dict[str, Any], run_teacher: nn.Module,
                        device) -> Tuple[Optional[int], Optional[str]]:
        """(chunk_size, why it runs in chunks) of the interrupted batch ``state``: its groups are
        its own, its chunks the user's (--chunk-size) where given, else the memory plan's for
        its G, which keeps the chunks it ran in wherever they fit (plan.batch_chunk_size). In
        other chunks (chunked exact mode: the same gradient) it continues equal to an
        uninterrupted run up to float rounding, not bit-identically: a RuntimeWarning says so;
        in the same ones, bit-identically."""
        config, ks = self.config, list(state["k"])
        rows = len(ks) * self.num_classes
        recorded = plan.chunk_rows(state.get("chunk_size"), rows)  # (None: the whole batch at once)
        if config.chunk_size is not None:
            chunk_size = config.chunk_size
        else:
            chunk_size = self._plan(lambda probe: plan.batch_chunk_size(
                run_teacher, probe, len(ks), holds_natural=self.natural is not None, recorded=recorded,
                resumed=True), device)
        chunked = plan.chunk_rows(chunk_size, rows)
        why = None
        if chunked is not None:
            why = ("the chunks it ran in before it was interrupted, kept so that it continues bit-identically"
                   if chunked == recorded else "it does not fit in memory at once"
                   if config.chunk_size is None else "as --chunk-size asks")
        if chunked != recorded and distributed.rank_and_world()[0] == 0:
            before = "the whole batch at once" if recorded is None else f"{recorded} images at a time"
            now = "the whole batch at once" if chunked is None else f"{chunked} images at a time"
            warnings.warn(f"recovery: {describe_batch(state['teacher'], ks, len(self.teachers))} continues at iteration "
                          f"{state['iteration']}/{state['iterations']} in new chunks ({now}; it ran {before} until "
                          "then): the same gradients summed in another order, so its results equal an uninterrupted "
                          "run's up to float rounding, not bit for bit", RuntimeWarning, stacklevel=2)
        return chunk_size, why

    def _run_batch(self, m: int, ks: List[int], chunk_size: Optional[int], state: Optional[Dict[str, Any]],
                   losses, lo: Tensor, hi: Tensor, chunks_why: Optional[str] = None) -> None:
        """One batch, and its results saved. Where this writer checkpoints, a stop signal during
        the batch is acted on at a safe point (interrupts.stop_at_safe_points): between two
        iterations, the batch's state saved first (engine: _Batch.run), or, after its last
        iteration, once its results are saved; nothing of it is lost that was in memory. Ranks
        that share the batch (``stop_vote``) all act on a signal any of them got, at the same
        safe point: none leaves before rank 0 has saved."""
        with interrupts.stop_at_safe_points() if self.store.writes or self.stop_vote else contextlib.nullcontext():
            self._optimize_and_save(m, ks, chunk_size, state, losses, lo, hi, chunks_why)
            if self.stop_vote is not None:  # (a signal after the last iteration's vote: all leave here)
                interrupts.agree_on_stop(self.stop_vote)

    def _optimize_and_save(self, m: int, ks: List[int], chunk_size: Optional[int], state: Optional[Dict[str, Any]],
                           losses, lo: Tensor, hi: Tensor, chunks_why: Optional[str] = None) -> None:
        key, M, noun = (m, tuple(ks)), len(self.teachers), self.kind.noun
        desc = f"{teacher_label(m, count=M)} {noun}{'s' if len(ks) > 1 else ''} k={job_range(ks)}"
        try:
            source = self.natural_sets(ks, lo.device)  # (a captured graph reads it: alive for the whole batch)
        except Exception as exc:
            if not memory.is_out_of_memory(exc):
                raise
            raise plan.out_of_memory_error(exc, lo.device, desc, len(ks), self.num_classes, chunk_size,
                                           resumed=state is not None) from exc

        def save_partial(batch_state: Dict[str, Any]) -> None:
            self.store.save_partial(key, batch_state, self.done, self.stats, self.group_size)

        result, batch_stats = engine.optimize_batch(
            self.kind, source, self.num_classes, self.image_shape, losses, m, ks, self.config, lo, hi, self.progress,
            # (a writer saves in-batch states at the config's cadence, and on a stop signal even without one)
            self.backend, desc, chunk_size, on_checkpoint=save_partial if self.store.writes else None,
            resume_from=state, stop_vote=self.stop_vote, chunks_why=chunks_why,
        )
        finished = {k: r.clone() if self.keep is None else self.keep(r)
                    for k, r in zip(ks, result) if k not in batch_stats["failed"]}
        self.done.update({(m, k): r for k, r in finished.items()})
        self.failures += [(m, k, it) for k, it in batch_stats["failed"].items()]
        self.stats.append(batch_stats)
        del result, source
        memory.release_freed_memory()  # the batch's activations: not held into the next step
        self.store.finish_batch(key, finished, self.done, self.stats, self.group_size)

    def gather(self, method: str, jobs: List[Job]) -> None:
        """Under torchrun "jobs": everyone gets every share (then raises together if any job failed)."""
        shares = distributed.all_gather_object((self.done, self.stats, self.failures))
        done, stats, failures = {}, [], []
        for share_done, share_stats, share_failures in shares:
            if set(share_done) & set(done):
                raise RuntimeError(f"{method} recovery: two ranks returned the same jobs {sorted(set(share_done) & set(done))}")
            done.update(share_done)
            stats += share_stats
            failures += share_failures
        if not failures and set(done) != set(jobs):
            raise RuntimeError(f"{method} recovery: the ranks' shares miss jobs {sorted(set(jobs) - set(done))}")
        self.done, self.stats, self.failures = done, stats, failures

    def check_failures(self, method: str, jobs: List[Job]) -> None:
        if self.failures:
            named = ", ".join(f"{teacher_label(m, count=len(self.teachers))} k={k}"
                              + (f" (iteration {it})" if it > 0 else " (non-finite result)") for m, k, it in self.failures)
            path = self.store.where()  # (none on disk when no job finished: nothing to resume from)
            # A resume keeps the settings and teachers (the checkpoint's identity): it helps where
            # the fault was passing (a flaky device), not where the settings diverge.
            kept = (f"; the other {len(self.done)} are in {path}: --resume retries only the failed ones with the "
                    "same settings and teachers (a passing fault), other lr, r_bn or teachers are a new run "
                    "(delete it first)" if path and self.done else "")
            raise RecoveryDivergedError(
                f"{method} recovery: the loss became non-finite for {len(self.failures)} of {len(jobs)} jobs ({named}); "
                f"lower lr or r_bn, or check the teacher{kept}"
            )


def _run_jobs(
    kind: RecoveryKind, jobs: List[Job], teachers: List[nn.Module], natural: Optional[Tensor],
    num_classes: int, image_shape: Tuple[int, int, int], mean, std, config: RecoveryConfig,
    identity: Dict[str, Any], checkpoint, resume: bool, progress: bool, backend: str,
    keep: Optional[Callable[[Tensor], Tensor]] = None,
) -> Tuple[Dict[Job, Tensor], List[Dict[str, Any]], Optional[int]]:
    """Run the jobs (m, k) teacher by teacher, G at a time, checkpointing after every batch and,
    at the cadence of config.checkpoint_every / checkpoint_minutes, inside a batch.
    Returns ({(m, k): result}, batch stats, last group size). ``keep``: what is kept of a
    job's float32 result, in memory and in the checkpoint (default: a copy of it).

    A checkpoint file (one per writer: the process, rank 0 in "chunks" mode, each rank's share
    in "jobs" mode) lists the finished jobs with the files that hold their results, and
    "partials": the in-batch state of every interrupted batch its writer has to finish. A
    resumed run continues each interrupted batch (the same jobs, from its state) before the
    other jobs of its teacher; under torchrun
    "jobs" a batch from a rank's own share goes to that rank, one from a share of another
    world size to rank i mod world."""
    _, world = distributed.rank_and_world()
    # torchrun, "jobs": every world-th job, each rank with its own checkpoint; "chunks" (or one
    # process): every job here, the chunks of each batch split inside, rank 0 checkpoints
    split_jobs = world > 1 and config.distributed == "jobs"
    _check_ranks_agree(identity, checkpoint, config, split_jobs)
    store = CheckpointStore.open(checkpoint, identity, config, resume, split_jobs)
    # "chunks": every rank works on every batch, so on a signal they stop together (a vote per iteration)
    ranks = distributed.Ranks() if world > 1 and not split_jobs else None
    try:
        runner = _JobRunner(kind, teachers, natural, num_classes, image_shape, mean, std, config, store,
                            split_jobs, progress, backend, keep, stop_vote=ranks.any_signal if ranks else None)
        store.announce(kind.label, len(jobs), resume)
        store.claim_partials(split_jobs)
        mine = _my_jobs(jobs, store, split_jobs)
        # called from Python (no cli.main's handlers): a signal still waits for the batches' safe points
        with interrupts.checkpointed_call(store.where) if store.writes or ranks is not None else contextlib.nullcontext():
            for m, teacher in enumerate(teachers):
                runner.run_teacher(m, teacher, mine)
    finally:
        if ranks is not None:
            ranks.close()
    if split_jobs:
        runner.gather(kind.label, jobs)
    runner.check_failures(kind.label, jobs)
    return runner.done, runner.stats, runner.group_size


# What the ranks name as the digests of their identity (not shown: a digest says nothing to a user).
_DIGESTS = {"teachers_sha256": "teachers' weights", "natural_sha256": "natural images"}
# The other entries of the identity that no flag is named after.
_ENTRIES = {"K": "K (natural sets per teacher, from --ipc and --accounting)", "M": "number of teachers",
            "natural_shape": "natural images' shape", "shape": "image shape", "mean": "dataset mean",
            "std": "dataset std", "checkpoint": "recovery checkpoint (beside --out)"}


def _check_ranks_agree(identity: Dict[str, Any], checkpoint, config: RecoveryConfig, split_jobs: bool) -> None:
    """Under torchrun, before any work: every rank runs the same recovery (``identity``: the
    settings, the teachers' weights, the natural images), with the same checkpoint and the
    same way of sharing the work, else its results would join a set whose manifest records
    rank 0's run. ValueError on every rank naming the first rank and setting that differ."""
    _, world = distributed.rank_and_world()
    if world == 1:
        return
    # how the ranks share the work must match too: "chunks" splits each batch of rank 0's plan
    sharing = ("distributed",) if split_jobs else ("distributed", "group_size", "chunk_size")
    mine = {**identity["config"], **{name: getattr(config, name) for name in sharing},
            **{name: value for name, value in identity.items() if name != "config"},
            "checkpoint": None if checkpoint is None else os.fspath(checkpoint)}
    distributed.check_ranks_agree(mine, "every rank must run the same command on the same files", digests=_DIGESTS,
                                  labels={name: _ENTRIES.get(name, f"--{name.replace('_', '-')}") for name in mine})


def recover(kind: RecoveryKind, run: Dict[str, Any], jobs: List[Job], teachers: List[nn.Module],
             natural: Optional[Tensor], num_classes: int, image_shape: Tuple[int, int, int], mean, std,
             config: RecoveryConfig, checkpoint, resume: bool, progress: bool, backend: str,
             keep: Optional[Callable[[Tensor], Tensor]] = None):
    """The path every recovery shares: its identity (``run``: what the method's jobs are made
    from; then the teachers' weights, normalization and every result-affecting config field),
    which a checkpoint must match to be resumed, and the jobs run (:func:`_run_jobs`), once
    every teacher is known to give logits of ``num_classes`` for images of ``image_shape``
    (teacher.check_teacher_outputs) and the teachers to be distinct (teacher.check_distinct_teachers:
    one given twice would make its jobs twice): before any work. The teachers' digests are those
    a run.LoadedTeachers carries (hashed when loaded), else computed here."""
    from .run import teacher_digests

    check_teacher_outputs(teachers, num_classes, image_shape)
    digests = teacher_digests(teachers)
    check_distinct_teachers(digests)
    identity = {
        "method": kind.method,
        **run,
        "teachers_sha256": digests,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "config": {k: v for k, v in config.to_dict().items() if k not in RESULT_NEUTRAL},
    }
    return _run_jobs(kind, jobs, teachers, natural, num_classes, image_shape, mean, std, config, identity,
                     checkpoint, resume, progress, backend, keep)
