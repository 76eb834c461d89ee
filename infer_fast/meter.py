"""Time and peak memory of the steps of a run, as `infer-fast run` records them in
results.json (``timing.steps``): what a user sizing a machine for ImageNet needs to know.

Peak memory is this process's peak resident set (Linux ``VmHWM``), reset at the start of
each step (``/proc/self/clear_refs``), so each step reports its own peak; DataLoader worker
processes (decoding) are not included. Elsewhere the peak is unknown (None).
"""
from __future__ import annotations

import re
import time
from typing import Any, Dict, Optional

__all__ = ["peak_rss_bytes", "reset_peak_rss", "StepMeter"]

_STATUS = "/proc/self/status"


def peak_rss_bytes() -> Optional[int]:
    """This process's peak resident set size since start (or the last reset), or None."""
    try:
        with open(_STATUS) as f:
            found = re.search(r"^VmHWM:\s+(\d+)\s+kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None


def reset_peak_rss() -> bool:
    """Start a new peak (Linux >= 4.0); False where it cannot be reset."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class StepMeter:
    """Records ``steps[name] = {"seconds", "peak_rss_gib"}`` for consecutive steps: ``start``
    ends the step in progress and begins the next; ``stop`` ends the last. The peak is that of
    the step alone where it can be reset, else None."""

    def __init__(self, steps: Dict[str, Any]):
        self.steps = steps
        self.name: Optional[str] = None
        self.started = 0.0
        self.own_peak = False

    def start(self, name: str) -> None:
        self.stop()
        self.name, self.own_peak, self.started = name, reset_peak_rss(), time.perf_counter()

    def stop(self) -> None:
        if self.name is None:
            return
        peak = peak_rss_bytes() if self.own_peak else None
        self.steps[self.name] = {"seconds": round(time.perf_counter() - self.started, 3),
                                 "peak_rss_gib": None if peak is None else round(peak / 2**30, 3)}
        self.name = None
