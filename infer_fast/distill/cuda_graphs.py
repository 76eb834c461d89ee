"""A recovery iteration as one captured CUDA graph (the engine's, on CUDA with
``config.cuda_graphs``): when a batch uses one, the side stream its warm-up and capture run
on, and the capture."""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor

from .config import RecoveryConfig

# Eager iterations before the capture (on a side stream, as CUDA graphs want: lazy
# initialisations, autotuning and the allocator settle first).
GRAPH_WARMUP_ITERATIONS = 3


def uses_cuda_graph(config: RecoveryConfig, device: torch.device, chunked: bool) -> bool:
    """Whether a batch's iterations run as one captured CUDA graph: on CUDA with
    ``config.cuda_graphs``, unless the chunked mode (host-side chunk loop, collectives) or
    torch.compile (its own graphs with mode="reduce-overhead") runs the step."""
    return (device.type == "cuda" and config.cuda_graphs and not chunked and config.compile == "off"
            and config.iterations > GRAPH_WARMUP_ITERATIONS)


class SideStream:
    """The side stream of one batch: its warm-up iterations and its capture, made on first use
    and reused. (The caching allocator keeps freed blocks per stream: a new stream for each
    warm-up iteration could not reuse what the previous one freed, so at ImageNet shapes the
    warm-up would hold several iterations' memory or hit the allocator's out-of-memory retry,
    which empties the cache with a device sync.)"""

    def __init__(self, device: torch.device):
        self.device = device
        self._stream: Optional["torch.cuda.Stream"] = None

    def stream(self) -> "torch.cuda.Stream":
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        return self._stream

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        """Work on the side stream, ordered after and before the current stream's."""
        current, stream = torch.cuda.current_stream(self.device), self.stream()
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
    def capture(cls, iteration, optimizer, sync_mode,
                side: SideStream) -> Tuple[Optional["CapturedIteration"], str]:
        """(the captured iteration, "captured"), or (None, why) when capture is impossible;
        the batch then goes on eagerly. Capturing runs nothing: the iteration it records is
        the next one replayed. It is captured on ``side``, the stream of the warm-up. (A sync
        check armed for the loop is paused for the capture, a one-off like the first iteration.)"""
        optimizer.zero_grad(set_to_none=True)  # the captured backward allocates the gradients
        graph = torch.cuda.CUDAGraph()
        if sync_mode is not None:
            torch.cuda.set_sync_debug_mode(sync_mode)
        try:
            with torch.cuda.graph(graph, stream=side.stream()):
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

