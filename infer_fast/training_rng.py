"""The global random generators a training draws from, made its own: dropout and stochastic
depth (EfficientNet, MobileNetV2's ImageNet variant) draw from torch's global CPU and CUDA
generators, which torch seeds differently in every process. A teacher or student trains inside
:func:`training_rng`: the generators seeded from its seed (or set to a checkpoint's state, so a
resume continues the same draws), and the process's own restored after. No other module state."""
from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Dict, Iterator, Optional

import torch


def derived_seed(tag: str, seed: int) -> int:
    """A 63-bit seed for ``tag``'s stream of ``seed`` (e.g. "student-dropout"): not the seed
    itself, whose stream already initialized the weights (and seed + 1 is the next student's)."""
    return int.from_bytes(hashlib.sha256(f"{tag}:{int(seed)}".encode()).digest()[:8], "little") >> 1


def global_rng_state(device: torch.device) -> Dict[str, Any]:
    """The state of the generators a training on ``device`` draws from (what a checkpoint keeps)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


@contextlib.contextmanager
def kept_cpu_rng() -> Iterator[None]:
    """The process's global CPU generator restored after the block, whatever it drew (a model
    built on the CPU only to receive loaded weights: its initialization draws are thrown away)."""
    with torch.random.fork_rng(devices=[]):
        yield


@contextlib.contextmanager
def seeded_cpu_rng(seed: int) -> Iterator[None]:
    """The global CPU generator seeded with ``seed`` while the block runs (a model's weights drawn
    from the seed alone), the process's restored after."""
    with kept_cpu_rng():
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def training_rng(tag: str, seed: int, device: torch.device, state: Optional[Dict[str, Any]] = None) -> Iterator[None]:
    """While the block runs the global generators of the CPU and ``device`` are the training's:
    seeded by (``tag``, ``seed``), or set to ``state`` (:func:`global_rng_state` of a
    checkpoint: a CUDA state is restored only on CUDA); the process's are restored after."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if state is None:
            torch.manual_seed(derived_seed(tag, seed))
        else:
            torch.set_rng_state(state["cpu"])
            if device.type == "cuda" and "cuda" in state:
                torch.cuda.set_rng_state(state["cuda"], device)
        yield
