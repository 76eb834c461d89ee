"""``infer-fast demo``: the main job in miniature, on the embedded Fashion-MNIST subset.

It trains two small ConvNet teachers, distills the training split at ipc 10 with INFER
(K = floor(10*10 / (10+2)) = 8 natural sets, 16 compensators) and with the SRe2L and random
baselines under the same budget, labels every set with the teachers' mean logits, trains a
student on each, and prints the table (final-epoch top-1 on the real test split, compression
ratio, feature duplication). It is :func:`infer_fast.pipeline.run_pipeline` with a small
config, so ``infer-fast run`` does the same on full datasets. Before that, one line checks
every kernel backend built here against the float64 reference.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import torch

from . import interrupts
from .checks import check_int
from .ops import available_backends, backends, bn_stat_loss, bn_stat_loss_naive, ufc_compose, ufc_compose_naive

DATASET = "fashion-mnist-mini"
IPC = 10
# Chosen so the whole demo takes a few minutes on a 2-core CPU (README records the time).
TEACHERS = [
    {"model": "convnet-w32-d3", "epochs": 8, "batch_size": 128, "lr": 0.05, "seed": 0},
    {"model": "convnet-w16-d3", "epochs": 8, "batch_size": 128, "lr": 0.05, "seed": 1},
]
RECOVERY_ITERATIONS = 500  # the paper's CIFAR recipe uses 1000
STUDENT = {"model": "convnet-w32-d3", "epochs": 100, "batch_size": 64}  # the paper trains 400 epochs
SEEDS = 1  # students per method


def check_backends() -> str:
    """One line: the largest error of every usable backend against the float64 reference
    (BN-statistics loss and its gradient, UFC compose)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 13, 9, 7, generator=gen).contiguous(memory_format=torch.channels_last).requires_grad_()
    rm, rv = 0.1 * torch.randn(13, generator=gen), torch.rand(13, generator=gen) + 0.5
    x64 = x.detach().double().requires_grad_()
    ref = bn_stat_loss_naive(x64, rm.double(), rv.double(), 4)
    (ref_grad,) = torch.autograd.grad(ref.sum(), x64)
    ref = ref.detach()
    natural = torch.randn(3, 10, 3, 8, 8, generator=gen)
    ufc = torch.randn(4, 3, 8, 8, generator=gen)
    index, shifts = torch.tensor([0, 2, 2, 1]), torch.randint(0, 8, (4, 2), generator=gen)
    flips = torch.tensor([1, 0, 1, 0]).bool()
    ref_x = ufc_compose_naive(natural.double(), ufc.double(), index, shifts, flips, torch.full((3,), -1.5, dtype=torch.float64),
                              torch.full((3,), 1.5, dtype=torch.float64))
    parts = []
    for name in available_backends("cpu"):
        loss = bn_stat_loss(x, rm, rv, groups=4, backend=name)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        composed = ufc_compose(natural, ufc, index, shifts, flips, -1.5, 1.5, backend=name)
        err = max(float((loss.detach().double() - ref).abs().max()), float((grad.double() - ref_grad).abs().max()),
                  float((composed.double() - ref_x).abs().max()))
        parts.append(f"{name} {err:.1e}")
    line = "kernels vs float64 reference (max abs error): " + ", ".join(parts)
    # (a backend that cannot run here is said, with why: a missing C++ extension is not silent)
    skipped = [f"{name} ({backends.unavailable_reason(name, torch.device('cpu'))})"
               for name in backends.BACKENDS if name != "cuda" and name not in available_backends("cpu")]
    return line + ("; not checked: " + ", ".join(skipped) if skipped else "")


def demo_config(out_dir: str, seeds: int = SEEDS, iterations: Optional[int] = None, epochs: Optional[int] = None):
    from .pipeline import PipelineConfig

    return PipelineConfig(
        dataset=DATASET,
        teachers=[dict(t) for t in TEACHERS],
        out=out_dir,
        ipc=[IPC],
        methods=["infer", "random", "sre2l"],
        recovery={"iterations": iterations or RECOVERY_ITERATIONS},
        sre2l={"iterations": iterations or RECOVERY_ITERATIONS},
        student={**STUDENT, **({"epochs": epochs} if epochs else {})},
        seeds=seeds,
    )


# what every demo run records alike (its flags change the others: seeds, iterations, epochs)
_DEMO_IDENTITY = ("dataset", "teachers", "ipc", "methods")


def _check_not_another_run(cfg) -> None:
    """ValueError when ``cfg.out`` holds the results of a run that is no demo's: the run's own
    refusal would list every setting of a config the demo's user never wrote. A demo's run of
    other flags (or a file that cannot be read) is left to run_pipeline's own words."""
    import json

    from .results import RESULTS_FILE, recorded_config

    path = Path(cfg.out) / RESULTS_FILE
    try:
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f)["config"]
        mine = recorded_config(cfg)
        other = any(recorded.get(key) != mine[key] for key in _DEMO_IDENTITY)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return
    if other:
        raise ValueError(f"out (--out): {cfg.out} holds another run, not the demo's: choose another --out")


def run_demo(out_dir: str = "demo-output", seeds: int = SEEDS, iterations: Optional[int] = None,
             epochs: Optional[int] = None, progress: bool = True) -> dict:
    from .pipeline import check_run_directory, format_table, run_pipeline, set_directory
    from .set_keys import SetKey
    from .storage import write_preview

    for name, value in (("--seeds", seeds), ("--iterations", iterations), ("--epochs", epochs)):
        if value is not None:  # (None: the demo's own)
            check_int(name, value)
    check_run_directory(Path(out_dir))  # (run_pipeline checks it too: here before the kernel check's line)
    cfg = demo_config(out_dir, seeds, iterations, epochs)
    _check_not_another_run(cfg)
    start = time.perf_counter()
    print(f"infer-fast demo: INFER vs random vs SRe2L at ipc {IPC} on {DATASET} (embedded; {torch.get_num_threads()} CPU threads)")
    print(check_backends())
    with interrupts.continued_by(f"call run_demo({out_dir!r}) again, with the same settings, to continue where "
                                 "it stopped"):
        results = run_pipeline(cfg, progress=progress)
    if not progress:  # run_pipeline prints the table only with progress output
        print(format_table(results))
    infer_dir = set_directory(out_dir, results["sets"][str(SetKey("infer", IPC))])
    png = write_preview(infer_dir, os.path.join(out_dir, "infer-preview.png"))
    print(f"INFER set preview (natural sets, compensators, composed images): {png}")
    print(f"demo done in {time.perf_counter() - start:.0f} s")
    return results
