"""How torch's OpenMP threads wait at a barrier (libgomp's spin-wait), as `infer-fast info` shows it.

torch's CPU wheels run their parallel regions on GNU OpenMP (libgomp). A thread that reaches a
barrier first spins there (300,000 times by default) before it sleeps. On a machine whose
cores are all busy (a 2-core machine running anything beside a job) the thread it waits for
is not running, so the spinning takes scheduler slices from it. bench/openmp_spin.py measured
INFER's recovery on 2 cores (bench/results/openmp-spin-2026-12-06.json): beside one busy
single-thread job, OMP_WAIT_POLICY=PASSIVE ran it 3.2x faster than the default and
GOMP_SPINCOUNT=10000 2.0x; on a quiet machine both were slower (1.28x and 1.10x the default's
time). So infer-fast sets nothing (a dedicated machine, a GPU's host, keeps the default's
speed): the README tells users of shared machines what to set. libgomp reads these variables
once, as torch loads it.
"""
import os

WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def spin_setting() -> str:
    """The wait settings libgomp was started with, as set in the environment."""
    chosen = [f"{name}={os.environ[name]}" for name in WAIT_SETTINGS if name in os.environ]
    return ", ".join(chosen) if chosen else (
        "libgomp's default (spins before sleeping: on a shared machine set OMP_WAIT_POLICY=PASSIVE)")
