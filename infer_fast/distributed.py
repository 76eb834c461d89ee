"""torch.distributed helpers: recovery work split across ranks (launched by torchrun).

    torchrun --nproc-per-node 8 -m infer_fast.cli distill --dataset imagenet ... --out sets/in1k

Every rank picks the same natural sets (same seed) and recovers every world-th job (UFC, or
SRe2L image group), checkpointing its share to ``<checkpoint>.rank<r>-of-<w>`` so a killed
rank resumes its own work; the shares are gathered with ``all_gather_object``, checked to
cover every job exactly once, and rank 0 writes the set. Each job is seeded on its own, so
the result equals a single-process run. The ranks must run the same recovery, and their
checkpoints must be on a file system every rank shares (a resume reads every rank's share,
rank 0 removes them all): both are checked at start (distill/jobs.py, distill/checkpoints.py).

What every command torchrun runs on all ranks (distill, train, run) checks before any work
is here too: :func:`same_outcome` (a rank refusing its inputs alone stops every rank, each
with its line, instead of leaving the others waiting for it), :func:`check_ranks_agree` (the
ranks run the same settings on the same inputs) and :func:`check_ranks_share_folder` (they
see the same output folder).
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import glob
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from ._text import first_line
from .checks import is_digits
from .interrupts import stop_when_parent_dies

__all__ = ["rank_and_world", "init_from_env", "all_gather_object", "barrier", "local_device", "shard_path",
           "shard_pattern", "Ranks", "same_outcome", "check_ranks_agree", "check_ranks_share_folder"]


def rank_and_world() -> Tuple[int, int]:
    """(rank, world size) of the initialized default process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# A rank can wait at a collective for as long as another rank's share of the work lasts
# (one UFC more at ImageNet scale: tens of minutes), past NCCL's default 10-minute timeout.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=24)


def launched_world_size() -> int:
    """How many processes torchrun started this one among (its WORLD_SIZE; 1 without torchrun),
    whether or not their group was joined yet. A ValueError in one line where WORLD_SIZE is
    not a positive integer (_launch_variable)."""
    return _launch_variable("WORLD_SIZE", 1, minimum=1, fix="unset it to run one process")


def launched_rank() -> int:
    """This process's RANK among the launched_world_size() ones (0 without torchrun), checked
    below the world size: a ValueError in one line otherwise."""
    world = launched_world_size()
    if world == 1:  # (one process: a RANK left in the environment says nothing)
        return 0
    rank = _launch_variable("RANK", 0, minimum=0, fix=_UNDER_TORCHRUN)
    if rank >= world:
        raise ValueError(f"RANK={rank} is not below WORLD_SIZE={world}: torchrun sets both; {_UNDER_TORCHRUN}")
    return rank


def launched_local_rank() -> int:
    """This process's LOCAL_RANK (its GPU on its node; 0 without torchrun), a ValueError in one
    line where it is not a non-negative integer."""
    if launched_world_size() == 1:
        return 0
    return _launch_variable("LOCAL_RANK", 0, minimum=0, fix=_UNDER_TORCHRUN)


_UNDER_TORCHRUN = "launch with torchrun, or unset WORLD_SIZE to run one process"


def _launch_variable(name: str, default: int, minimum: int, fix: str) -> int:
    """torchrun's variable ``name`` as an integer of at least ``minimum``; ``default`` where it
    is unset or blank (a job script's ``export WORLD_SIZE=$SLURM_NTASKS`` where SLURM set
    none), else a ValueError in one line naming it, its value and ``fix``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not is_digits(text) or int(text) < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{name}={os.environ[name]!r} is not a {kind} integer: torchrun sets it; {fix}")
    return int(text)


# set by torchrun's agent in the environment of the ranks it starts (torch.distributed.elastic)
TORCHRUN_RUN_ID = "TORCHELASTIC_RUN_ID"


def init_from_env(backend: str = "auto") -> Tuple[int, int]:
    """Join the process group described by torchrun's environment (WORLD_SIZE > 1), with NCCL
    on GPUs and gloo otherwise; a no-op for a single process. Returns (rank, world size).
    The group is destroyed at interpreter exit (a gloo group left alive can abort the process).
    A rank torchrun's agent started gets SIGTERM if the agent dies (interrupts.stop_when_parent_dies):
    it saves its work and stops as if the agent had stopped it."""
    world = launched_world_size()
    if world > 1 and dist.is_available() and not dist.is_initialized():
        if os.environ.get(TORCHRUN_RUN_ID):  # a rank torchrun's agent started: it stops if the agent dies
            stop_when_parent_dies()
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        launched_rank()  # (a RANK torch cannot use: said in one line, before joining)
        if torch.cuda.is_available():
            torch.cuda.set_device(launched_local_rank())
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
        atexit.register(_destroy)
    return rank_and_world()


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_gather_object(obj: Any) -> List[Any]:
    """Every rank's ``obj`` (pickled), in rank order; [obj] for a single process."""
    _, world = rank_and_world()
    if world == 1:
        return [obj]
    out: List[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


def local_device(device: str) -> str:
    """``device`` with "auto" resolved to this rank's GPU under torchrun (cuda:LOCAL_RANK)."""
    if device == "auto" and torch.cuda.is_available() and rank_and_world()[1] > 1:
        return f"cuda:{torch.cuda.current_device()}"
    return device


# a rank's share of the file ``path`` under torchrun: ``<path>.rank<r>-of-<w>``
_SHARD_SUFFIX = ".rank{rank}-of-{world}"


def shard_path(path: str, rank: int, world: int) -> str:
    """Where rank ``rank`` of ``world`` keeps its share of the file ``path`` (``path`` itself
    for a single process)."""
    return path if world == 1 else path + _SHARD_SUFFIX.format(rank=rank, world=world)


def shard_pattern(path: str) -> str:
    """The glob pattern of the shares of ``path`` (:func:`shard_path`) of every rank, of any
    world size."""
    return glob.escape(path) + _SHARD_SUFFIX.format(rank="*", world="*")


# how much of another rank's error the others quote (its own line says all of it)
QUOTED_ERROR_CHARS = 200


@contextlib.contextmanager
def same_outcome() -> Iterator[None]:
    """Up-front checks whose outcome every rank shares: the block runs on each rank, then under
    torchrun (every rank must enter it: a collective on the default group) a rank whose block
    raised raises its own error, and every other rank a ValueError naming the first rank that
    did and quoting its error. Without it, a rank that refused alone left the others waiting for
    it in their next collective (joining a group: a wait of hours, with nothing said)."""
    problem: Optional[Exception] = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - shared with the other ranks, then raised below
        problem = exc
    quoted = None if problem is None else first_line(problem, QUOTED_ERROR_CHARS) or type(problem).__name__
    said = all_gather_object(quoted)
    if problem is not None:
        raise problem
    for rank, text in enumerate(said):
        if text is not None:
            raise ValueError(f"rank {rank} stopped before any work ({text}), so every rank stops (its own line "
                             "says why)")


def check_ranks_agree(mine: Mapping[str, Any], todo: str, digests: Optional[Dict[str, str]] = None,
                      labels: Optional[Dict[str, str]] = None) -> None:
    """Under torchrun, before any work: every rank's ``mine`` (what determines its share of the
    results: settings, digests of its inputs) equals rank 0's, else a ValueError on every rank
    naming the first rank and entry that differ, then ``todo``. ``digests``: {entry: what it is
    a digest of} (said as "rank 1's teachers' weights differ from rank 0's", not quoted);
    ``labels``: what the other entries are called (default: their names)."""
    from .run_identity import differing

    views = all_gather_object(dict(mine))
    digests, labels = digests or {}, labels or {}
    for rank, theirs in enumerate(views[1:], start=1):
        names = differing(views[0], theirs)
        if names:
            name = names[0]
            if name in digests:
                differs = f"rank {rank}'s {digests[name]} differ from rank 0's"
            else:
                differs = f"rank {rank}'s {labels.get(name, name)} is {theirs.get(name)!r}, rank 0's {views[0].get(name)!r}"
            raise ValueError(f"{differs}: {todo}")


def check_ranks_share_folder(base: str, found: Sequence[str] = (), what: str = "the output",
                             make: bool = False) -> None:
    """Under torchrun, before any work: every rank sees the same folder at ``base``'s (a file
    rank 0 makes there under a fresh hidden name beside ``base``, which every rank then looks
    for) and the same files ``found`` in it (their names). Else each node would write, or
    resume from, files the others never see: a ValueError on every rank saying ``what`` must
    be on a file system every rank shares. ``make``: rank 0 makes the folder first where it is
    missing. The probe is removed at once (killed meanwhile, it is a temporary file of
    ``base``, which the next writer of the output sweeps away). Every rank must call it
    (collectives on the default group); rank 0's failure to make the folder or the probe is
    raised on every rank."""
    from ._io import TEMP, hidden_sibling

    rank, world = rank_and_world()
    if world == 1:
        return
    folder = os.path.dirname(os.path.abspath(base))
    probe, made = None, None
    try:
        if rank == 0:
            try:
                if make:
                    os.makedirs(folder, exist_ok=True)
                probe = hidden_sibling(base, TEMP)
                open(probe, "x").close()
                made = os.path.basename(probe)
            except OSError as exc:  # every rank raises it, below
                made = exc
        made = all_gather_object(made)[0]
        if isinstance(made, OSError):
            raise made
        views = all_gather_object((os.path.exists(os.path.join(folder, made)), folder,
                                   [os.path.basename(p) for p in found]))
    finally:
        if probe is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(probe)
    _, folder0, files0 = views[0]
    for rank, (seen, folder, files) in enumerate(views[1:], start=1):
        if not seen:
            looking = "" if folder == folder0 else f", looking in {folder},"
            detail = f"rank {rank}{looking} does not see the file rank 0 made there"
        elif files != files0:
            name = sorted(set(files) ^ set(files0))[0]
            detail = (f"rank {rank} sees {name}, rank 0 does not" if name in files
                      else f"rank 0 sees {name}, rank {rank} does not")
        else:
            continue
        raise ValueError(f"the ranks do not see the same files at {folder0}: {what} must be on a file system "
                         f"every rank shares ({detail})")


# Under `infer-fast run` a rank waits while others train a teacher or a student (hours at
# ImageNet scale), far past the default collective timeouts (NCCL's is 10 minutes).
WAIT_TIMEOUT = datetime.timedelta(hours=72)


class Ranks:
    """This process's rank and world size, and the waits between ranks (no-ops for one
    process) on a gloo group of their own with WAIT_TIMEOUT: `infer-fast run`'s ranks wait
    for each other's teachers, sets and students (hours), and a CPU group has no GPU
    watchdog on such waits. Only rank 0 holds the results: the others follow its decisions."""

    def __init__(self) -> None:
        self.rank, self.world = rank_and_world()
        self.group = None
        if self.world > 1 and dist.is_gloo_available():  # a CPU group: no GPU watchdog on long waits
            self.group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier(group=self.group)

    def gather(self, obj: Any) -> List[Any]:
        """Every rank's ``obj``, in rank order."""
        if self.world == 1:
            return [obj]
        out: List[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def any_signal(self, signum: Optional[int]) -> Optional[int]:
        """The stop signal some rank has received (``signum``: this rank's, None for none; of
        several, the highest number), the same answer on every rank: one number all-reduced on
        the host (the gloo group: no device sync, cheap once per recovery iteration)."""
        if self.world == 1:
            return signum
        vote = torch.tensor([signum or 0])
        dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=self.group)
        return int(vote) or None

    def from_rank0(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a wait until rank 0 gets here)."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def close(self) -> None:
        if self.group is not None:
            dist.destroy_process_group(self.group)
            self.group = None
