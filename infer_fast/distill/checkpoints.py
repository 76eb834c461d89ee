"""The checkpoint store of a recovery run: the checkpoint files of every writer of any world
size (one process, rank 0 in "chunks" mode, each rank's share in "jobs" mode), read and
checked against the run on resume; the results of finished batches, each in a file of its own
written once; the in-batch states of the batches in progress; and the files' names, which
``run.py`` removes once the set is saved."""
from __future__ import annotations

import glob
import os
import shutil
import signal
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from torch import Tensor

from .. import distributed
from .._io import read_checkpoint, recovery_results_dir, recovery_results_name, save_atomic
from ..run_identity import check_same_run, flattened
from ..teacher import TEACHERS_WEIGHTS_LABEL, teacher_label
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

Job = Tuple[int, int]  # (teacher m, index k)
BatchKey = Tuple[int, Tuple[int, ...]]  # (teacher m, the batch's ks)


def recovery_checkpoints(checkpoint: Union[str, os.PathLike]) -> List[str]:
    """The existing checkpoint files of a recovery run: ``checkpoint`` itself (one process,
    or "chunks") and the per-rank shares ``<checkpoint>.rank<r>-of-<w>`` of any world size."""
    base = os.fspath(checkpoint)
    shares = sorted(glob.glob(distributed.shard_pattern(base)))
    return ([base] if os.path.exists(base) else []) + shares


def job_range(ks: Sequence[int]) -> str:
    """"3", "0..4" (consecutive) or "0,2,4" (SRe2L's teacher j mod M takes every M-th group,
    a torchrun rank every world-th job)."""
    if len(ks) > 1 and list(ks) == list(range(ks[0], ks[-1] + 1)):
        return f"{ks[0]}..{ks[-1]}"
    return ",".join(str(k) for k in ks)


def describe_batch(m: int, ks: Sequence[int], count: int) -> str:
    """A batch of teacher ``m`` (from 0) of ``count`` as messages name it: "teacher 1/2 batch k=0..3"."""
    return f"{teacher_label(m, count=count)} batch k={job_range(ks)}"


_IDENTITY_LABELS = {"teachers_sha256": TEACHERS_WEIGHTS_LABEL, "natural_sha256": "the natural images"}


def _load_checkpoint(path: str, identity: Dict[str, Any]) -> Dict[str, Any]:
    ckpt = read_checkpoint(path, CHECKPOINT_FORMAT, "recovery checkpoint", CHECKPOINT_VERSION)
    if ckpt.get("format_version", 0) < CHECKPOINT_VERSION:
        raise ValueError(f"recovery checkpoint {path!r} was written by an older infer-fast (format "
                         f"{ckpt.get('format_version', 0)}, this one reads {CHECKPOINT_VERSION}): finish that run with "
                         "that version, or delete it to start over")
    check_same_run("recovery checkpoint", path, flattened(ckpt.get("run", {})), flattened(identity),
                   "resume with the same teachers, images and settings, or delete it", ignore=RESULT_NEUTRAL,
                   defaults=RecoveryConfig().to_dict(), labels=_IDENTITY_LABELS)
    return ckpt


def _load_results(path: str, ckpt: Dict[str, Any], results_dir: str) -> Dict[Job, Tuple[Tensor, str]]:
    """{(m, k): (result, its file's name)} of the jobs the checkpoint ``path`` lists."""
    out: Dict[Job, Tuple[Tensor, str]] = {}
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


def _live_partials(found: List[Tuple[str, Dict[str, Any]]], inherited) -> List[Tuple[str, Dict[str, Any]]]:
    """The interrupted batches to continue, as (file, state), in a fixed order: of several
    states of one batch (a share of an earlier world size, and the file of the run that went
    on with it) the furthest; none whose jobs are recovered already."""
    best: Dict[BatchKey, Tuple[str, Dict[str, Any]]] = {}
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


def exists_resume_message(what: str, path: str, start_over: str) -> str:
    """The refusal of an existing checkpoint without resume (distillation's and RDED's), for a
    CLI user first: the flag, then Python's argument; ``start_over``: the other way out."""
    return (f"{what} {path!r} exists: run the same command with --resume (resume=True from Python) to continue it, "
            f"or {start_over}")


class CheckpointStore:
    """This process's view of a recovery run's checkpoints. Opened (:meth:`open`), it holds
    what every checkpoint of the run, whatever number of ranks wrote it, had recovered
    (``inherited``: a restart with another world size, or one process, loses nothing) and the
    interrupted batches to continue (``partials``). A writer (``writes``) keeps its own file
    at ``path``: the index of the run (which results file holds each job recovered so far),
    the stats of the finished batches, and ``pending``: the states of its batches in progress.
    Without a checkpoint (``base`` None) it holds nothing and writes nothing."""

    def __init__(self, base: Optional[str], identity: Dict[str, Any], config, path: Optional[str], writes: bool):
        self.base, self.identity, self.config, self.path = base, identity, config, path
        self.writes = writes and path is not None
        self.results_dir = None if base is None else recovery_results_dir(base)
        self.found: List[str] = []
        self.inherited: Dict[Job, Tensor] = {}
        self.inherited_stats: Dict[BatchKey, Dict[str, Any]] = {}
        self.partials: List[Tuple[str, Dict[str, Any]]] = []  # (file, state) of the interrupted batches
        # what this writer's file held: listed again with its own results, so rewriting the file
        # never drops a job or a batch state that no other file has
        self.kept: Dict[Job, Tensor] = {}
        self.kept_stats: List[Dict[str, Any]] = []
        self.result_files: Dict[Job, str] = {}  # job -> the file (in results_dir) that holds its result
        self.pending: Dict[BatchKey, Dict[str, Any]] = {}  # my interrupted batches -> their latest state

    @classmethod
    def open(cls, checkpoint: Optional[Union[str, os.PathLike]], identity: Dict[str, Any], config, resume: bool,
             split_jobs: bool) -> "CheckpointStore":
        """The store of ``checkpoint`` (None: no checkpoints) for this rank: under torchrun
        "jobs" every rank writes its own share, else rank 0 writes ``checkpoint``. Every
        checkpoint of the run is read and checked against ``identity`` (an existing one without
        ``resume`` is refused); all ranks look, and read, before any writes, and must see the
        same files (:func:`_check_ranks_see_the_same_files`)."""
        rank, world = distributed.rank_and_world()
        if checkpoint is None:
            return cls(None, identity, config, None, False)
        base = os.fspath(checkpoint)
        found = recovery_checkpoints(base)
        _check_ranks_see_the_same_files(base, found)  # (a wait too: every rank has looked before any writes its own)
        store = cls(base, identity, config, distributed.shard_path(base, rank, world if split_jobs else 1),
                    split_jobs or rank == 0)
        if found and not resume:
            raise ValueError(exists_resume_message("recovery checkpoint", found[0], "delete it"))
        store._read(found)
        distributed.barrier()  # every rank has read the files before any rewrites its own
        return store

    def _read(self, found: List[str]) -> None:
        self.found = found
        found_partials: List[Tuple[str, Dict[str, Any]]] = []
        for path in found:
            ckpt = _load_checkpoint(path, self.identity)
            for key, (u, file) in _load_results(path, ckpt, self.results_dir).items():
                self.inherited[key], self.result_files[key] = u, file
                if path == self.path:
                    self.kept[key] = u
            for batch in ckpt.get("stats", []):
                self.inherited_stats[(batch["teacher"], tuple(batch["k"]))] = batch
            self.kept_stats += ckpt.get("stats", []) if path == self.path else []
            # (none in the files of infer-fast before checkpoints inside a batch)
            found_partials += [(path, state) for state in ckpt.get("partials", [])]
        self.partials = _live_partials(found_partials, self.inherited)

    def announce(self, method: str, jobs: int, resume: bool) -> None:
        """What a resume found and where it continues: said even without progress bars (rank 0)."""
        if self.base is None or distributed.rank_and_world()[0] != 0:
            return
        if self.found:
            count = len(self.identity["teachers_sha256"])
            continues = "".join(f"; {describe_batch(s['teacher'], s['k'], count)} continues at iteration "
                                f"{s['iteration']}/{s['iterations']}" for _, s in self.partials)
            recovered = f"{len(self.inherited)}/{jobs} {method} jobs already recovered"
            print(f"{', '.join(self.found)}: resuming, {recovered}{continues}", flush=True)
        elif resume:
            print(f"no recovery checkpoint at {self.base}: starting from the beginning", flush=True)

    def claim_partials(self, split_jobs: bool) -> None:
        """Which interrupted batches this rank continues (its ``pending``, in its file until they
        finish): every one, unless under torchrun "jobs", where a batch from a rank's own share
        goes to that rank and one from a share of another world size (an orphan) to rank
        i mod world, i its place among the orphans."""
        rank, world = distributed.rank_and_world()

        def owner(index: int, path: str) -> int:
            if not split_jobs:
                return rank  # every rank works on every batch
            writers = [distributed.shard_path(self.base, r, world) for r in range(world)]
            orphans = [i for i, (p, _) in enumerate(self.partials) if p not in writers]
            return writers.index(path) if path in writers else orphans.index(index) % world

        self.pending = {(s["teacher"], tuple(s["k"])): s for i, (path, s) in enumerate(self.partials)
                        if owner(i, path) == rank}

    def write_results(self, m: int, finished: Dict[int, Tensor]) -> None:
        """A finished batch's results, in a file of their own (once)."""
        name = recovery_results_name(self.path, m, min(finished), len(finished))
        os.makedirs(self.results_dir, exist_ok=True)
        save_atomic({"format": RESULTS_FORMAT, "format_version": CHECKPOINT_VERSION,
                     "jobs": [[m, k] for k in finished], "results": list(finished.values())},
                    os.path.join(self.results_dir, name))
        for k in finished:
            self.result_files[(m, k)] = name

    def write_index(self, done: Dict[Job, Tensor], stats: List[Dict[str, Any]], group_size: Optional[int]) -> None:
        """This writer's file: the index of the run (which results file holds each job
        recovered so far: ``done`` and what the file held), the stats of the finished batches
        and the state of the batches in progress."""
        files: Dict[str, List[List[int]]] = {}
        for m, k in sorted({**self.kept, **done}):
            files.setdefault(self.result_files[(m, k)], []).append([m, k])
        batches = {(b["teacher"], tuple(b["k"])): b for b in self.kept_stats + stats}
        save_atomic(
            {
                "format": CHECKPOINT_FORMAT,
                "format_version": CHECKPOINT_VERSION,
                "run": self.identity,
                "config": self.config.to_dict(),
                "group_size": group_size,
                "results": [{"file": file, "jobs": jobs} for file, jobs in files.items()],
                "stats": list(batches.values()),
                "partials": [self.pending[key] for key in sorted(self.pending)],
            },
            self.path,
        )

    def save_partial(self, key: BatchKey, state: Dict[str, Any], done: Dict[Job, Tensor],
                     stats: List[Dict[str, Any]], group_size: Optional[int]) -> None:
        """The state of the batch ``key`` in progress, written with the index."""
        self.pending[key] = state
        self.write_index(done, stats, group_size)
        if os.environ.get(SIGKILL_AFTER_CHECKPOINT_ENV) == str(state["iteration"]):
            os.kill(os.getpid(), signal.SIGKILL)  # (tests: a kill at a chosen point)

    def finish_batch(self, key: BatchKey, finished: Dict[int, Tensor], done: Dict[Job, Tensor],
                     stats: List[Dict[str, Any]], group_size: Optional[int]) -> None:
        """After the batch ``key``: its ``finished`` results (the jobs that did not fail) in a
        file of their own, its state out of ``pending``, and the index rewritten when either
        changed."""
        if self.writes and finished:
            self.write_results(key[0], finished)
        had_state = self.pending.pop(key, None) is not None
        if self.writes and (finished or had_state):
            self.write_index(done, stats, group_size)

    def where(self) -> Optional[str]:
        """This writer's file, when it is on disk (None: no checkpoint of this process's)."""
        return self.path if self.writes and os.path.exists(self.path) else None


def _check_ranks_see_the_same_files(base: str, found: List[str]) -> None:
    """Under torchrun: every rank sees the same folder at ``base``'s and the same checkpoint
    files ``found`` in it (distributed.check_ranks_share_folder). Else each node would resume
    from its own files, or keep the shares rank 0 cannot remove: ValueError on every rank,
    before anything is read or written."""
    distributed.check_ranks_share_folder(base, found, "the output")


def remove_recovery_checkpoints(checkpoint: Union[str, os.PathLike]) -> None:
    """Every checkpoint file of the run (every rank's share, of any world size) and its results."""
    for path in recovery_checkpoints(checkpoint):
        Path(path).unlink(missing_ok=True)
    shutil.rmtree(recovery_results_dir(checkpoint), ignore_errors=True)
