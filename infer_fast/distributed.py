"""torch.distributed helpers: recovery work split across ranks (launched by torchrun).

    torchrun --nproc-per-node 8 -m infer_fast.cli distill --dataset imagenet ... --out sets/in1k

Every rank picks the same natural sets (same seed) and recovers every world-th job (UFC, or
SRe2L image group), checkpointing its share to ``<checkpoint>.rank<r>-of-<w>`` so a killed
rank resumes its own work; the shares are gathered with ``all_gather_object``, checked to
cover every job exactly once, and rank 0 writes the set. Each job is seeded on its own, so
the result equals a single-process run. The ranks must run the same recovery, and their
checkpoints must be on a file system every rank shares (a resume reads every rank's share,
rank 0 removes them all): both are checked at start (distill/jobs.py, distill/checkpoints.py).
"""
from __future__ import annotations

import atexit
import datetime
import os
from typing import Any, List, Optional, Tuple

import torch
import torch.distributed as dist

__all__ = ["rank_and_world", "init_from_env", "all_gather_object", "barrier", "local_device", "shard_path", "Ranks"]


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
    whether or not their group was joined yet."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(backend: str = "auto") -> Tuple[int, int]:
    """Join the process group described by torchrun's environment (WORLD_SIZE > 1), with NCCL
    on GPUs and gloo otherwise; a no-op for a single process. Returns (rank, world size).
    The group is destroyed at interpreter exit (a gloo group left alive can abort the process)."""
    world = launched_world_size()
    if world > 1 and dist.is_available() and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
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


def shard_path(path: str, rank: int, world: int) -> str:
    return path if world == 1 else f"{path}.rank{rank}-of-{world}"


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
