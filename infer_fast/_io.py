"""Small file helpers shared by the long-running jobs."""
from __future__ import annotations

import os
from typing import Any

import torch


def save_atomic(obj: Any, path: str) -> None:
    """torch.save next to the target, fsync, then rename: a crash never leaves a
    half-written file under ``path`` (the previous version stays until the rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
