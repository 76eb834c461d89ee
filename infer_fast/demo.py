"""``infer-fast demo``: the fused kernels at work on INFER's hot loop.

Until the full pipeline lands this demo (1) checks every usable backend against the
float64 reference, (2) times the BN-statistics loss against the eager hook used by
SRe2L-style code, and (3) runs a miniature UFC recovery: G compensators optimized in one
batch through ``ufc_compose`` and the grouped ``bn_stat_loss`` of a small BN teacher.
"""
from __future__ import annotations

import time

import torch
from torch import nn
from tqdm import tqdm

from .ops import BNStatTracker, available_backends, bn_stat_loss, bn_stat_loss_naive, ufc_compose, ufc_compose_naive


def eager_hook_loss(x, running_mean, running_var):
    """The SRe2L-style hook: mean, permute+contiguous+var, two norms (autograd does the rest)."""
    channels = x.shape[1]
    mean = x.mean([0, 2, 3])
    var = x.permute(1, 0, 2, 3).contiguous().view(channels, -1).var(1, unbiased=False)
    return torch.norm(running_var - var, 2) + torch.norm(running_mean - mean, 2)


def _check_backends(backends) -> None:
    print("1. every backend against the float64 reference (max abs error)")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 13, 9, 7, generator=gen).contiguous(memory_format=torch.channels_last).requires_grad_()
    rm, rv = 0.1 * torch.randn(13, generator=gen), torch.rand(13, generator=gen) + 0.5
    x64 = x.detach().double().requires_grad_()
    ref = bn_stat_loss_naive(x64, rm.double(), rv.double(), 4)
    (ref_grad,) = torch.autograd.grad(ref.sum(), x64)
    natural = torch.randn(3, 10, 3, 8, 8, generator=gen)
    ufc = torch.randn(4, 3, 8, 8, generator=gen)
    index, shifts, flips = torch.tensor([0, 2, 2, 1]), torch.randint(0, 8, (4, 2), generator=gen), torch.tensor([1, 0, 1, 0]).bool()
    ref_x = ufc_compose_naive(natural.double(), ufc.double(), index, shifts, flips, torch.full((3,), -1.5, dtype=torch.float64), torch.full((3,), 1.5, dtype=torch.float64))
    print(f"   {'backend':<8} {'bn loss':>10} {'bn grad':>10} {'compose':>10}")
    for name in backends:
        loss = bn_stat_loss(x, rm, rv, groups=4, backend=name)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        composed = ufc_compose(natural, ufc, index, shifts, flips, -1.5, 1.5, backend=name)
        errors = [(loss.double() - ref).abs().max(), (grad.double() - ref_grad).abs().max(), (composed.double() - ref_x).abs().max()]
        print(f"   {name:<8} " + " ".join(f"{e.item():>10.2e}" for e in errors))


def _time(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def _time_backends(backends) -> None:
    shape = (32, 64, 32, 32)
    print(f"\n2. BN-statistics loss, forward+backward, x {shape} fp32 on CPU ({torch.get_num_threads()} threads)")
    x = torch.randn(shape).requires_grad_()
    rm, rv = 0.1 * torch.randn(shape[1]), torch.rand(shape[1]) + 0.5

    def step(loss_fn):
        return lambda: torch.autograd.grad(loss_fn().sum(), x)

    eager_ms = _time(step(lambda: eager_hook_loss(x, rm, rv)), 5)
    print(f"   {'eager hook':<12} {eager_ms:8.2f} ms   1.00x")
    for name in backends:
        if name == "triton":
            continue  # under the CPU interpreter Triton is a correctness tool, not a contender
        ms = _time(step(lambda: bn_stat_loss(x, rm, rv, backend=name)), 5)
        print(f"   {name:<12} {ms:8.2f} ms   {eager_ms / ms:.2f}x")


class _TinyTeacher(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def _mini_recovery(iterations: int, seed: int) -> None:
    classes, groups, size = 10, 4, 16
    print(f"\n3. mini UFC recovery: {groups} compensators x {classes} classes in one batch, {iterations} Adam steps")
    torch.manual_seed(seed)
    teacher = _TinyTeacher(classes)
    with torch.no_grad():  # give the BN layers running statistics from "data"
        teacher.train()
        for _ in range(10):
            teacher(torch.randn(64, 3, size, size) * 0.8 + 0.1)
    teacher.eval().requires_grad_(False)
    natural = torch.randn(2, classes, 3, size, size)
    index = torch.tensor([0, 1, 0, 1])
    ufc = torch.zeros(groups, 3, size, size, requires_grad=True)
    labels = torch.arange(classes).repeat(groups)
    optimizer = torch.optim.Adam([ufc], lr=0.25, betas=(0.5, 0.9))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations)
    tracker = BNStatTracker(teacher, groups=groups)
    bar = tqdm(range(iterations), desc="   recovery", leave=False)
    first = last = None
    for _ in bar:
        shifts = torch.randint(0, 4, (groups, 2))  # per-group augmentation draw
        images = ufc_compose(natural, ufc, index, shifts).flatten(0, 1)
        logits = teacher(images)
        ce = nn.functional.cross_entropy(logits, labels)
        r_bn = tracker.weighted_sum(first_bn_mult=10.0).mean()
        loss = ce + r_bn
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        accuracy = (logits.argmax(1) == labels).float().mean().item()
        first = first or (ce.item(), r_bn.item(), accuracy)
        last = (ce.item(), r_bn.item(), accuracy)
        bar.set_postfix(ce=f"{ce.item():.3f}", bn=f"{r_bn.item():.3f}", acc=f"{accuracy:.2f}")
    tracker.remove()
    print(f"   {'':<6} {'CE':>8} {'R_bn':>8} {'acc':>6}")
    print(f"   {'start':<6} {first[0]:8.3f} {first[1]:8.3f} {first[2]:6.2f}")
    print(f"   {'end':<6} {last[0]:8.3f} {last[1]:8.3f} {last[2]:6.2f}")
    print("   (acc: share of the C x G composed images the teacher assigns to their class)")


def run_demo(iterations: int = 60, seed: int = 0) -> None:
    if iterations < 1:
        raise ValueError(f"--iterations must be at least 1, got {iterations}")
    start = time.perf_counter()
    backends = available_backends("cpu")
    print(f"infer-fast kernel demo on CPU; backends usable here: {', '.join(backends)}\n")
    _check_backends(backends)
    _time_backends(backends)
    _mini_recovery(iterations, seed)
    print(f"\ndone in {time.perf_counter() - start:.1f} s")
