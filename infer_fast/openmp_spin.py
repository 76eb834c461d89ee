"""OpenMP's spin-wait shortened before torch loads libgomp (GOMP_SPINCOUNT, unless the user set it).

torch's CPU wheels run their parallel regions on GNU OpenMP (libgomp). A thread that reaches a
barrier first spins there up to 300,000 times before it sleeps. On a machine whose cores are
all busy (a 2-core machine running anything beside a job), the thread it waits for is not
running, so each spin burns a whole scheduler slice: the many small ops of a recovery or
training step (an Adam update, a loss on a few hundred values) then take milliseconds each.
Measured by bench/openmp_spin.py (bench/results/openmp-spin-*.json): 10,000 spins keep a
quiet machine's speed and cut that slow-down several-fold. libgomp reads its environment once,
as it loads, so this must run before torch is imported; a user's GOMP_SPINCOUNT or
OMP_WAIT_POLICY always wins.
"""
import os
import sys

SPIN_COUNT = 10_000
_USER_SETTINGS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
_set_here = False


def shorten_openmp_spin() -> None:
    """Set GOMP_SPINCOUNT to SPIN_COUNT for libgomp, before torch loads it."""
    global _set_here
    if "torch" in sys.modules or any(name in os.environ for name in _USER_SETTINGS):
        return  # (libgomp already read its environment, or the user chose)
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    _set_here = True


def spin_setting() -> str:
    """What `infer-fast info` shows: the wait setting libgomp started with, and whose it is."""
    if _set_here:
        return f"GOMP_SPINCOUNT={SPIN_COUNT} (set by infer-fast: set GOMP_SPINCOUNT or OMP_WAIT_POLICY to choose)"
    chosen = [f"{name}={os.environ[name]}" for name in _USER_SETTINGS if name in os.environ]
    return ", ".join(chosen) + " (yours)" if chosen else "libgomp's default (torch was imported before infer_fast)"
