"""Small file helpers shared by the long-running jobs."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Dict, Iterable

import torch
from torch import Tensor


def _replace_atomically(path: str, write: Callable[[str], None]) -> None:
    """``write`` a file next to the target, fsync, then rename: a crash never leaves a
    half-written file under ``path`` (the previous version stays until the rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_atomic(obj: Any, path: str) -> None:
    """torch.save ``obj`` to ``path`` atomically."""
    _replace_atomically(path, lambda tmp: torch.save(obj, tmp))


def save_json_atomic(obj: Any, path: str) -> None:
    """``obj`` as indented JSON at ``path``, atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)

    _replace_atomically(path, write)


def content_digest(tensors: Iterable[Tensor]) -> str:
    """SHA-256 of the tensors' dtypes, shapes and values, in order: what a checkpoint records
    of the teachers (their state) or data its result depends on, so a resume with other ones
    is refused."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_digest(model: torch.nn.Module) -> str:
    """content_digest of a model's state (parameters and buffers, by name)."""
    state = model.state_dict()
    return content_digest(state[name] for name in sorted(state))


def read_checkpoint(path: str, format_name: str, what: str, version: int = 1) -> Dict[str, Any]:
    """A torch.save'd dict of ``format_name`` (weights_only), or a ValueError saying why not."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{what} {path!r} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict) or obj.get("format") != format_name:
        raise ValueError(f"{path!r} is not an infer-fast {what}")
    if obj.get("format_version", 0) > version:
        raise ValueError(f"{path!r} was written by a newer infer-fast (format {obj['format_version']}); upgrade infer-fast")
    return obj
