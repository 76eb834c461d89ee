"""``infer-fast demo``: the fused kernels at work on INFER's hot loop.

Until the full pipeline lands this demo (1) checks every usable backend against the
float64 reference, (2) times the BN-statistics loss against the eager hook used by
SRe2L-style code, and (3) runs a miniature UFC recovery: G compensators optimized in one
batch through ``ufc_compose`` and the grouped ``bn_stat_loss`` of a small BN teacher.
"""
from __future__ import annotations

import os
import time

import torch

from .ops import available_backends, bn_stat_loss, bn_stat_loss_naive, ufc_compose, ufc_compose_naive


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


def _mini_recovery(iterations: int, seed: int, out_dir: str) -> None:
    """INFER's hot loop in miniature on real data: a small teacher trained on the embedded
    Fashion-MNIST subset, K natural sets (one real image per class), and their
    compensators recovered together in one batch by :func:`infer_fast.distill.recover_ufcs`."""
    from .data import load_dataset
    from .distill import RecoveryConfig, recover_ufcs, select_natural_sets
    from .storage import DistilledSet, inspect_report, save_distilled, write_preview
    from .teacher import TeacherConfig, load_teacher, train_teacher

    num_sets = 4
    os.makedirs(out_dir, exist_ok=True)
    teacher_path = os.path.join(out_dir, "teacher.pt")
    print("\n3. mini UFC recovery on the embedded fashion-mnist-mini (real images)")
    teacher_config = TeacherConfig(dataset="fashion-mnist-mini", model="convnet-w16-d2", epochs=3, batch_size=128, lr=0.05, seed=seed, device="cpu")
    summary = train_teacher(teacher_config, teacher_path, progress=False)
    print(f"   teacher {teacher_config.model}: test accuracy {summary['test_accuracy']:.3f} ({summary['elapsed_s']:.1f} s) -> {teacher_path}")
    teacher, _ = load_teacher(teacher_path, dataset="fashion-mnist-mini")

    train = load_dataset("fashion-mnist-mini", "train")
    spec = train.spec
    natural = select_natural_sets(train, num_sets, seed)
    config = RecoveryConfig(iterations=iterations, seed=seed, group_size=num_sets)
    result = recover_ufcs(natural, [teacher], spec.mean, spec.std, config, progress=True)
    (stats,) = result["stats"]
    print(f"   {num_sets} compensators x {spec.num_classes} classes in one batch, {iterations} Adam steps (lr {config.lr}, cosine)")
    print(f"   {'':<30} {'CE':>7} {'R_bn':>8} {'acc':>6}")
    print(f"   {'last step (shifted, unclamped)':<30} {stats['ce_last_iteration']:7.3f} {stats['r_bn_last_iteration']:8.3f}")
    print(f"   {'final images (clamped)':<30} {stats['ce']:7.3f} {stats['r_bn']:8.3f} {stats['accuracy']:6.2f}")
    print("   (acc: share of the composed images x_c + u the teacher assigns to class c)")

    distilled = DistilledSet(
        method="infer", dataset=spec.name, num_classes=spec.num_classes, channels=spec.channels, image_size=spec.image_size,
        mean=spec.mean, std=spec.std, natural=natural, ufc=result["ufc"], ufc_index=result["ufc_index"],
        ufc_teacher=result["ufc_teacher"], hyperparameters=config.to_dict(),
        teachers=[{"path": teacher_path, "model": teacher_config.model, "accuracy": summary["test_accuracy"]}],
        budget={"ipc": 5, "K": num_sets, "M": 1, "accounting": "fair"}, seed=seed, full_train_size=len(train),
    )
    set_dir = save_distilled(distilled, os.path.join(out_dir, "distilled"), overwrite=True)
    png = write_preview(set_dir, os.path.join(out_dir, "preview.png"))
    print("\n" + "\n".join("   " + line for line in inspect_report(set_dir).splitlines()))
    print(f"   preview (natural sets, compensators, composed images): {png}")


def run_demo(iterations: int = 60, seed: int = 0, out_dir: str = "demo-output") -> None:
    if iterations < 1:
        raise ValueError(f"--iterations must be at least 1, got {iterations}")
    start = time.perf_counter()
    backends = available_backends("cpu")
    print(f"infer-fast kernel demo on CPU; backends usable here: {', '.join(backends)}\n")
    _check_backends(backends)
    _time_backends(backends)
    _mini_recovery(iterations, seed, out_dir)
    print(f"\ndone in {time.perf_counter() - start:.1f} s")
