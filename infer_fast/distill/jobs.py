"""The job runner: the jobs (m, k) of a recovery (one UFC, or one SRe2L image group, per
teacher m and index k) scheduled teacher by teacher in batches of the engine, checkpointed
after every batch and inside batches, resumed from the checkpoints of any world size, split
across ranks under torchrun; and the two recoveries built on it, recover_ufcs (INFER) and
recover_sre2l."""
from __future__ import annotations

import glob
import os
import signal
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .. import distributed, memory
from .._io import content_digest, model_digest, read_checkpoint, save_atomic
from ..checks import check_int
from ..models import device_of
from . import engine, plan
from .config import RESULT_NEUTRAL, RecoveryConfig

CHECKPOINT_FORMAT = "infer-fast-recovery"
# 2: the teachers' content digests are part of the run identity; 3: the results of finished
# batches in files of their own (recovery_results_dir), each written once
CHECKPOINT_VERSION = 3
RESULTS_FORMAT = "infer-fast-recovery-results"


# Tests only (tests/test_cli.py), not a user option: with this set to N, the process SIGKILLs
# itself as soon as the in-batch checkpoint of iteration N is on disk, so a test kills a run at
# a chosen point instead of whenever its poll notices the file.
SIGKILL_AFTER_CHECKPOINT_ENV = "INFER_FAST_TEST_SIGKILL_AFTER_CHECKPOINT"


class RecoveryDivergedError(RuntimeError):
    """Some UFCs (or SRe2L groups) hit a non-finite loss; the others were kept."""


def _load_checkpoint(path: str, identity: Dict[str, Any]) -> Dict[str, Any]:
    ckpt = read_checkpoint(path, CHECKPOINT_FORMAT, "recovery checkpoint", CHECKPOINT_VERSION)
    if ckpt.get("format_version", 0) < CHECKPOINT_VERSION:
        raise ValueError(f"recovery checkpoint {path!r} was written by an older infer-fast (format "
                         f"{ckpt.get('format_version', 0)}, this one reads {CHECKPOINT_VERSION}): finish that run with "
                         "that version, or delete it to start over")
    theirs = ckpt.get("run", {})
    for key, value in identity.items():
        if key == "teachers_sha256" and theirs.get(key) != value:
            changed = [m for m, (a, b) in enumerate(zip(theirs.get(key, []), value)) if a != b]
            raise ValueError(f"recovery checkpoint {path!r} belongs to another run: the weights of teacher "
                             f"{', '.join(map(str, changed))} differ from those it was recovered with (resume with the "
                             "same teachers, or delete it)")
        if key == "config":
            for name, v in value.items():
                if theirs.get("config", {}).get(name) != v:
                    raise ValueError(
                        f"recovery checkpoint {path!r} belongs to another run: config {name}="
                        f"{theirs.get('config', {}).get(name)!r}, this run has {v!r} (delete it or use the same settings)"
                    )
        elif theirs.get(key) != value:
            what = "natural images" if key == "natural_sha256" else key
            shown = "" if key == "natural_sha256" else f": {theirs.get(key)!r} vs this run's {value!r}"
            raise ValueError(f"recovery checkpoint {path!r} belongs to another run (different {what}{shown})")
    return ckpt



def recovery_results_dir(checkpoint: Union[str, os.PathLike]) -> str:
    """The folder beside a recovery's checkpoint that holds the results of its finished batches,
    one file per batch written once (not the whole set of results rewritten after every
    batch: 7.5 GB each time for SRe2L on ImageNet-1k at ipc 50); every rank's, of any world
    size, and the checkpoints list which file holds which job."""
    return os.fspath(checkpoint) + ".results"


def _load_results(path: str, ckpt: Dict[str, Any], results_dir: str) -> Dict[Tuple[int, int], Tuple[Tensor, str]]:
    """{(m, k): (result, its file's name)} of the jobs the checkpoint ``path`` lists."""
    out: Dict[Tuple[int, int], Tuple[Tensor, str]] = {}
    for entry in ckpt.get("results", []):
        file = os.path.join(results_dir, entry["file"])
        if not os.path.exists(file):
            raise ValueError(f"recovery checkpoint {path!r} lists results in {file!r}, which is missing: delete the "
                             f"checkpoint and {results_dir!r} to start over")
        data = read_checkpoint(file, RESULTS_FORMAT, "recovery results file", CHECKPOINT_VERSION)
        results = {(int(m), int(k)): r for (m, k), r in zip(data["jobs"], data["results"])}
        for m, k in entry["jobs"]:
            if (m, k) not in results:
                raise ValueError(f"recovery checkpoint {path!r}: job m={m} k={k} is not in {file!r}; delete the "
                                 f"checkpoint and {results_dir!r} to start over")
            out[(m, k)] = (results[(m, k)], entry["file"])
    return out


def recovery_checkpoints(checkpoint: Union[str, os.PathLike]) -> List[str]:
    """The existing checkpoint files of a recovery run: ``checkpoint`` itself (one process,
    or "chunks") and the per-rank shares ``<checkpoint>.rank<r>-of-<w>`` of any world size."""
    base = os.fspath(checkpoint)
    shares = sorted(glob.glob(glob.escape(base) + ".rank*-of-*"))
    return ([base] if os.path.exists(base) else []) + shares


def _check_common(teachers, mean, std, channels: int, config: RecoveryConfig) -> List[nn.Module]:
    config.validate()
    teachers = list(teachers)
    if not teachers:
        raise ValueError("recovery needs at least one teacher")
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need one value per channel ({channels}), got {len(mean)} and {len(std)}")
    for m, teacher in enumerate(teachers):
        engine.check_teacher(teacher, m)
    return teachers


def _live_partials(found: List[Tuple[str, Dict[str, Any]]], inherited) -> List[Tuple[str, Dict[str, Any]]]:
    """The interrupted batches to continue, as (file, state), in a fixed order: of several
    states of one batch (a share of an earlier world size, and the file of the run that went
    on with it) the furthest; none whose jobs are recovered already."""
    best: Dict[Tuple[int, Tuple[int, ...]], Tuple[str, Dict[str, Any]]] = {}
    for path, state in found:
        key = (state["teacher"], tuple(state["k"]))
        if key not in best or state["iteration"] > best[key][1]["iteration"]:
            best[key] = (path, state)
    live, taken = [], set(inherited)
    for key in sorted(best):
        jobs = {(key[0], k) for k in key[1]}
        if not jobs & taken:  # (a batch is always resumed whole, so states of one batch have the same ks)
            live.append(best[key])
            taken |= jobs
    return live


def _describe_batch(m: int, ks: Sequence[int]) -> str:
    return f"teacher {m} batch k={ks[0]}..{ks[-1]}" if len(ks) > 1 else f"teacher {m} batch k={ks[0]}"


def _run_jobs(
    method: str, jobs: List[Tuple[int, int]], teachers: List[nn.Module], natural_cpu: Optional[Tensor],
    num_classes: int, image_shape: Tuple[int, int, int], mean, std, config: RecoveryConfig,
    identity: Dict[str, Any], checkpoint, resume: bool, progress: bool, backend: str,
    keep: Optional[Callable[[Tensor], Tensor]] = None,
) -> Tuple[Dict[Tuple[int, int], Tensor], List[Dict[str, Any]], Optional[int]]:
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
    from ..storage import valid_range

    lo_cpu, hi_cpu = valid_range(mean, std)
    rank, world = distributed.rank_and_world()
    # torchrun, "jobs": every world-th job, each rank with its own checkpoint; "chunks" (or one
    # process): every job here, the chunks of each batch split inside, rank 0 checkpoints
    split_jobs = world > 1 and config.distributed == "jobs"
    writer = split_jobs or rank == 0
    done: Dict[Tuple[int, int], Tensor] = {}
    stats: List[Dict[str, Any]] = []
    inherited: Dict[Tuple[int, int], Tensor] = {}
    partials: List[Tuple[str, Dict[str, Any]]] = []  # (file, state) of the interrupted batches
    # what this writer's file held: listed again with its own results, so rewriting the file
    # never drops a job or a batch state that no other file has
    kept: Dict[Tuple[int, int], Tensor] = {}
    kept_stats: List[Dict[str, Any]] = []
    result_files: Dict[Tuple[int, int], str] = {}  # job -> the file (in results_dir) that holds its result
    if checkpoint is not None:
        base = os.fspath(checkpoint)
        results_dir = recovery_results_dir(base)
        found = recovery_checkpoints(base)
        distributed.barrier()  # every rank has looked before any writes its own (all see the same files)
        checkpoint = distributed.shard_path(base, rank, world if split_jobs else 1)
        if found and not resume:
            raise ValueError(
                f"recovery checkpoint {found[0]!r} exists: pass resume=True to continue that run, or delete it"
            )
        # every checkpoint of the run, whatever number of ranks wrote it: a restart with
        # another world size (or one process) loses nothing
        inherited_stats: Dict[Tuple[int, Tuple[int, ...]], Dict[str, Any]] = {}
        found_partials: List[Tuple[str, Dict[str, Any]]] = []
        for path in found:
            ckpt = _load_checkpoint(path, identity)
            for key, (u, file) in _load_results(path, ckpt, results_dir).items():
                inherited[key], result_files[key] = u, file
                if path == checkpoint:
                    kept[key] = u
            for batch in ckpt.get("stats", []):
                inherited_stats[(batch["teacher"], tuple(batch["k"]))] = batch
            kept_stats += ckpt.get("stats", []) if path == checkpoint else []
            # (none in the files of infer-fast before checkpoints inside a batch)
            found_partials += [(path, state) for state in ckpt.get("partials", [])]
        distributed.barrier()  # every rank has read the files before any rewrites its own
        if inherited and (rank == 0 or not split_jobs):  # one rank brings them to the gather
            done, stats = dict(inherited), list(inherited_stats.values())
        partials = _live_partials(found_partials, inherited)
        # what a resume found and where it continues: said even without progress bars (rank 0)
        if found and rank == 0:
            continues = "".join(f"; {_describe_batch(s['teacher'], s['k'])} continues at iteration "
                                f"{s['iteration']}/{s['iterations']}" for _, s in partials)
            recovered = f"{len(inherited)}/{len(jobs)} {method} jobs already recovered"
            print(f"{', '.join(found)}: resuming, {recovered}{continues}", flush=True)
        elif resume and rank == 0:
            print(f"no recovery checkpoint at {base}: starting from the beginning", flush=True)

    def owner(index: int, path: str) -> int:
        """The rank that continues the index-th interrupted batch, found in ``path``."""
        if not split_jobs:
            return rank  # every rank works on every batch
        writers = [distributed.shard_path(base, r, world) for r in range(world)]
        orphans = [i for i, (p, _) in enumerate(partials) if p not in writers]
        return writers.index(path) if path in writers else orphans.index(index) % world

    # my interrupted batches, (m, ks) -> their latest state: in my checkpoint until they finish
    pending = {(s["teacher"], tuple(s["k"])): s for i, (path, s) in enumerate(partials) if owner(i, path) == rank}
    resumed_jobs = {(s["teacher"], k) for _, s in partials for k in s["k"]}
    remaining = [job for job in jobs if job not in inherited and job not in resumed_jobs]
    mine = remaining[rank::world] if split_jobs else remaining

    def write_results(m: int, finished: Dict[int, Tensor]) -> None:
        """A finished batch's results, in a file of their own (once)."""
        name = f"{os.path.basename(checkpoint)}.m{m}-k{min(finished)}-n{len(finished)}.pt"
        os.makedirs(results_dir, exist_ok=True)
        save_atomic({"format": RESULTS_FORMAT, "format_version": CHECKPOINT_VERSION,
                     "jobs": [[m, k] for k in finished], "results": list(finished.values())},
                    os.path.join(results_dir, name))
        for k in finished:
            result_files[(m, k)] = name

    def write_checkpoint(group_size: Optional[int]) -> None:
        """The index of the run (which results file holds each job recovered so far), the
        stats of the finished batches and the state of the batches in progress."""
        files: Dict[str, List[List[int]]] = {}
        for m, k in sorted({**kept, **done}):
            files.setdefault(result_files[(m, k)], []).append([m, k])
        batches = {(b["teacher"], tuple(b["k"])): b for b in kept_stats + stats}
        save_atomic(
            {
                "format": CHECKPOINT_FORMAT,
                "format_version": CHECKPOINT_VERSION,
                "run": identity,
                "config": config.to_dict(),
                "group_size": group_size,
                "results": [{"file": file, "jobs": jobs} for file, jobs in files.items()],
                "stats": list(batches.values()),
                "partials": [pending[key] for key in sorted(pending)],
            },
            checkpoint,
        )

    in_batch_checkpoints = checkpoint is not None and writer and (
        config.checkpoint_every is not None or config.checkpoint_minutes is not None)
    M = len(teachers)
    group_size = config.group_size
    failures: List[Tuple[int, int, int]] = []
    noun = "UFC" if method == "infer" else "SRe2L group"
    for m, teacher in enumerate(teachers):
        todo = [k for mm, k in mine if mm == m and (m, k) not in done]
        interrupted = [state for (mm, _), state in sorted(pending.items()) if mm == m]
        if not todo and not interrupted:
            continue
        device = device_of(teacher)
        source = None if natural_cpu is None else natural_cpu.to(device)
        lo, hi = lo_cpu.to(device), hi_cpu.to(device)
        with engine.recovery_teacher(teacher, config) as run_teacher:
            losses = engine.TeacherLosses(run_teacher, num_classes, config, backend)
            try:
                # (ks, chunk_size, state to continue from): the interrupted batches first, as they were
                batches = [(list(state["k"]), state["chunk_size"], state) for state in interrupted]
                if todo:
                    probe = source if source is not None else torch.zeros((1, num_classes) + image_shape, device=device)
                    if config.group_size:
                        G, chunk_size = config.group_size, config.chunk_size
                    else:
                        G, auto_chunk = plan.auto_batch_plan(run_teacher, probe, len(todo))
                        chunk_size = config.chunk_size or auto_chunk
                        if world > 1 and not split_jobs:  # "chunks": one plan for all ranks (rank 0's)
                            G, chunk_size = distributed.all_gather_object((G, chunk_size))[0]
                    group_size = G
                    batches += [(todo[start:start + G], chunk_size, None) for start in range(0, len(todo), G)]
                for ks, chunk_size, state in batches:
                    key = (m, tuple(ks))
                    desc = f"teacher {m + 1}/{M} {noun}s k={ks[0]}..{ks[-1]}" if len(ks) > 1 else f"teacher {m + 1}/{M} {noun} k={ks[0]}"

                    def save_partial(batch_state: Dict[str, Any], key=key) -> None:
                        pending[key] = batch_state
                        write_checkpoint(group_size)
                        if os.environ.get(SIGKILL_AFTER_CHECKPOINT_ENV) == str(batch_state["iteration"]):
                            os.kill(os.getpid(), signal.SIGKILL)  # (tests: a kill at a chosen point)

                    result, batch_stats = engine.optimize_batch(
                        method, source, num_classes, image_shape, losses, m, ks, config, lo, hi, progress, backend,
                        desc, chunk_size, on_checkpoint=save_partial if in_batch_checkpoints else None,
                        resume_from=state,
                    )
                    finished = {k: r.clone() if keep is None else keep(r)
                                for k, r in zip(ks, result) if k not in batch_stats["failed"]}
                    done.update({(m, k): r for k, r in finished.items()})
                    if checkpoint is not None and writer and finished:
                        write_results(m, finished)
                    failures += [(m, k, it) for k, it in batch_stats["failed"].items()]
                    stats.append(batch_stats)
                    del result
                    memory.release_freed_memory()  # the batch's activations: not held into the next step
                    had_state = pending.pop(key, None) is not None
                    if checkpoint is not None and writer and (len(batch_stats["failed"]) < len(ks) or had_state):
                        write_checkpoint(group_size)
            except plan.RecoveryOutOfMemoryError as exc:
                if checkpoint is None or not writer or not os.path.exists(checkpoint):
                    raise
                raise plan.RecoveryOutOfMemoryError(
                    f"{exc}; what was recovered before is in {checkpoint}: --resume continues from there") from exc
            finally:
                losses.detach()
    if split_jobs:  # everyone gets every share (then raises together if any job failed)
        shares = distributed.all_gather_object((done, stats, failures))
        done, stats, failures = {}, [], []
        for share_done, share_stats, share_failures in shares:
            if set(share_done) & set(done):
                raise RuntimeError(f"{method} recovery: two ranks returned the same jobs {sorted(set(share_done) & set(done))}")
            done.update(share_done)
            stats += share_stats
            failures += share_failures
        if not failures and set(done) != set(jobs):
            raise RuntimeError(f"{method} recovery: the ranks' shares miss jobs {sorted(set(jobs) - set(done))}")
    if failures:
        named = ", ".join(f"m={m} k={k}" + (f" (iteration {it})" if it > 0 else " (non-finite result)") for m, k, it in failures)
        kept = f"; the other {len(done)} are in {checkpoint} and --resume retries only the failed ones" if checkpoint else ""
        raise RecoveryDivergedError(
            f"{method} recovery: the loss became non-finite for {len(failures)} of {len(jobs)} jobs ({named}); "
            f"lower lr or r_bn, or check the teacher{kept}"
        )
    return done, stats, group_size


def recover_ufcs(
    natural_u8: Tensor,
    teachers: Sequence[nn.Module],
    mean: Sequence[float],
    std: Sequence[float],
    config: Optional[RecoveryConfig] = None,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    resume: bool = False,
    progress: bool = True,
    backend: str = "auto",
) -> Dict[str, Any]:
    """Recover the K*M UFCs of ``natural_u8`` (uint8 (K, C, ch, H, W)) for every teacher.

    Returns a dict: ``ufc`` float32 (K*M, ch, H, W) in normalized space, teacher-major
    (row m*K + k is u_k^m), ``ufc_index`` int64 (k), ``ufc_teacher`` int64 (m), ``stats``
    (one dict per optimized batch: teacher, k, CE, R_bn and accuracy of the final clamped,
    unaugmented composed images, batch means and per UFC, plus ce/r_bn_last_iteration, the
    objective at the last step; batches restored from a checkpoint keep their recorded
    stats) and ``group_size`` (the last one used).

    Teachers must be frozen and in eval mode; each runs on its own device. ``checkpoint``:
    a file written atomically after every batch, and inside a batch every
    ``config.checkpoint_every`` iterations and ``config.checkpoint_minutes`` minutes (the
    batch's variables, Adam state and augmentation position), so a kill loses at most that
    much; ``resume=True`` continues from it (it must belong to the same run: natural images,
    the teachers' weights (content digests), K, M, normalization and every result-affecting
    config field; a mismatch is refused naming it), an interrupted batch from its iteration,
    bit-identically to an uninterrupted run, and says (with ``progress``) what it found and
    where it continues, or that there was no checkpoint. An existing checkpoint without
    ``resume`` is refused.
    """
    config = RecoveryConfig() if config is None else config
    if not isinstance(natural_u8, Tensor) or natural_u8.dtype != torch.uint8 or natural_u8.dim() != 5:
        raise ValueError(
            f"natural_u8 must be a uint8 tensor (K, C, ch, H, W), got "
            f"{getattr(natural_u8, 'dtype', type(natural_u8).__name__)} {tuple(getattr(natural_u8, 'shape', ()))}"
        )
    K, C, ch = natural_u8.shape[:3]
    teachers = _check_common(teachers, mean, std, ch, config)
    if K < 1 or C < 1:
        raise ValueError(f"natural_u8 must hold at least one set and one class, got {tuple(natural_u8.shape)}")
    M = len(teachers)
    natural_u8 = natural_u8.detach().cpu().contiguous()
    from ..data.transforms import normalize

    natural_cpu = normalize(natural_u8, mean, std).contiguous()
    identity = {
        "method": "infer",
        "K": int(K),
        "M": int(M),
        "natural_shape": list(natural_u8.shape),
        "natural_sha256": content_digest([natural_u8]),
        "teachers_sha256": [model_digest(t) for t in teachers],
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "config": {k: v for k, v in config.to_dict().items() if k not in RESULT_NEUTRAL},
    }
    jobs = [(m, k) for m in range(M) for k in range(K)]
    done, stats, group_size = _run_jobs(
        "infer", jobs, teachers, natural_cpu, C, tuple(natural_u8.shape[2:]), mean, std, config, identity,
        checkpoint, resume, progress, backend,
    )
    return {
        "ufc": torch.stack([done[key] for key in jobs]).to(torch.float32),
        "ufc_index": torch.tensor([k for _, k in jobs], dtype=torch.int64),
        "ufc_teacher": torch.tensor([m for m, _ in jobs], dtype=torch.int64),
        "stats": stats,
        "group_size": group_size,
    }


def recover_sre2l(
    ipc: int,
    num_classes: int,
    image_shape: Sequence[int],
    teachers: Sequence[nn.Module],
    mean: Sequence[float],
    std: Sequence[float],
    config: Optional[RecoveryConfig] = None,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    resume: bool = False,
    progress: bool = True,
    backend: str = "auto",
) -> Dict[str, Any]:
    """The SRe2L baseline: ``ipc`` images per class recovered from Gaussian noise with the same
    CE + BN-statistics loss, optimizer and augmentation as INFER (INFER_METHOD.md §6).

    Images are optimized in groups of C (one per class, labels 0..C-1) with BN statistics
    per group, like one SRe2L batch; group j uses teacher j mod M (with one teacher this is
    SRe2L exactly). Default config: ``RecoveryConfig.sre2l()`` (r_bn 0.01). Returns
    ``pixels`` uint8 (ipc*C, ch, H, W): the recovered images (clamped to the valid range)
    quantized, round(clamp(x * std + mean, 0, 1) * 255), group-major (row j*C + c has class c),
    ``labels`` int64, ``teacher`` int64 per image, ``stats``, ``group_size``. Each group is
    quantized as it finishes: memory and checkpoints hold a quarter of float32 images (7.5 GB
    instead of 30 for ImageNet-1k at ipc 50). Checkpoint/resume as :func:`recover_ufcs`."""
    config = RecoveryConfig.sre2l() if config is None else config
    for name, value in (("ipc", ipc), ("num_classes", num_classes)):
        check_int(name, value)
    image_shape = tuple(int(s) for s in image_shape)
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"image_shape must be (channels, H, W), got {image_shape}")
    teachers = _check_common(teachers, mean, std, image_shape[0], config)
    M = len(teachers)
    identity = {
        "method": "sre2l",
        "ipc": int(ipc),
        "M": int(M),
        "shape": [int(num_classes), *image_shape],
        "teachers_sha256": [model_digest(t) for t in teachers],
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "config": {k: v for k, v in config.to_dict().items() if k not in RESULT_NEUTRAL},
    }
    from ..data.pixels import quantize_images

    jobs = [(j % M, j) for j in range(ipc)]
    done, stats, group_size = _run_jobs(
        "sre2l", jobs, teachers, None, num_classes, image_shape, mean, std, config, identity,
        checkpoint, resume, progress, backend, keep=lambda images: quantize_images(images, mean, std),
    )
    pixels = torch.empty((ipc * num_classes, *image_shape), dtype=torch.uint8)
    for j, key in enumerate(jobs):  # group by group, each freed once copied: no second copy of the set
        pixels[j * num_classes:(j + 1) * num_classes] = done.pop(key)
    return {
        "pixels": pixels,
        "labels": torch.arange(num_classes, dtype=torch.int64).repeat(ipc),
        "teacher": torch.tensor([m for m, _ in jobs], dtype=torch.int64).repeat_interleave(num_classes),
        "stats": stats,
        "group_size": group_size,
    }

