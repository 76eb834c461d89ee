"""pytest-benchmark suite of the CPU side, checked against a committed baseline.

* host cost: fwd+bwd of one call of each fused op at tiny shapes, where the host path is
  everything, beside its eager baseline (the cases of ``bench_ops.py --overhead``);
* kernels: fwd+bwd of the C++ kernels at the CPU acceptance shape (64, 64, 56, 56) and a
  CIFAR-10 compose, beside the eager hook;
* batches: RandomCrop of a CIFAR batch beside the pixel-by-pixel gather it replaced, and the
  host's part of a student step at the CIFAR recipe.

    make bench-cpu                 # compare with the committed baseline, fail on a regression
    make bench-cpu-baseline        # record a new baseline (commit bench/results/pytest-benchmark/)

The baseline was measured on the 2-core CI machine kind; timings from another machine compare
only roughly (the threshold in the Makefile is loose for that reason). Not collected by
``make test`` (benchmarks never live in the unit suite).
"""
import pytest
import torch

from bench_ops import eager_hook_loss, overhead_cases
from infer_fast.ops import bn_eval_with_stat_loss, bn_stat_loss, ufc_compose

torch.set_num_threads(2)  # the CI machines' cores
CPU = torch.device("cpu")

HOST_CASES = [(op, impl, fn) for op, (_, fns) in overhead_cases(CPU, ["cpu"]).items() for impl, fn in fns.items()]


@pytest.mark.parametrize("op,impl,fn", HOST_CASES, ids=[f"{op}-{impl}".replace(" ", "_") for op, impl, _ in HOST_CASES])
def test_host_cost(benchmark, op, impl, fn):
    benchmark.group = f"host cost: {op} (4, 8, 2, 2)"
    result = benchmark(fn)
    assert all(g is not None and torch.isfinite(g).all() for g in result)


def acceptance_input(channels_last=False):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 64, 56, 56, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    stats = [torch.randn(64, generator=gen) * 0.1, torch.rand(64, generator=gen) + 0.5]
    return x.requires_grad_(), *stats


def fused_eval_case(x, rm, rv):
    upstream = [torch.ones_like(x), torch.ones(1)]  # (made once: the timed call is the op's, not a 51 MB allocation)
    return lambda: torch.autograd.grad(list(bn_eval_with_stat_loss(x, rm, rv, backend="cpu")), x, upstream)


# impl -> (x, running mean, running var) -> the timed fwd+bwd call
KERNEL_CASES = {
    "eager hook": lambda x, rm, rv: lambda: torch.autograd.grad(eager_hook_loss(x, rm, rv, 1).sum(), x),
    "bn_stat_loss cpu": lambda x, rm, rv: lambda: torch.autograd.grad(bn_stat_loss(x, rm, rv, backend="cpu").sum(), x),
    "bn_eval_with_stat_loss cpu": fused_eval_case,
}


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("impl", list(KERNEL_CASES))
def test_bn_kernels_acceptance_shape(benchmark, impl, channels_last):
    benchmark.group = f"fwd+bwd (64, 64, 56, 56) {'channels_last' if channels_last else 'nchw'}"
    x, rm, rv = acceptance_input(channels_last)
    (grad,) = benchmark.pedantic(KERNEL_CASES[impl](x, rm, rv), rounds=5, warmup_rounds=1)
    assert grad.shape == x.shape and torch.isfinite(grad).all()


@pytest.mark.parametrize("impl", ["eager", "cpu"])
def test_compose_cifar10(benchmark, impl):
    """CIFAR-10 shapes: 8 natural sets, 16 compensators, roll + flip, fwd+bwd."""
    benchmark.group = "ufc_compose fwd+bwd CIFAR-10 G16"
    gen = torch.Generator().manual_seed(0)
    natural = torch.randn(8, 10, 3, 32, 32, generator=gen)
    ufc = torch.zeros(16, 3, 32, 32, requires_grad=True)
    index = torch.randint(0, 8, (16,), generator=gen)
    shifts = torch.randint(-4, 5, (16, 2), generator=gen)
    flips = torch.rand(16, generator=gen) < 0.5
    grad_out = torch.ones(16, 10, 3, 32, 32)
    if impl == "eager":
        from infer_fast.ops import ufc_compose_naive as compose
    else:
        compose = lambda *args: ufc_compose(*args, backend="cpu")  # noqa: E731
    (grad,) = benchmark(lambda: torch.autograd.grad(compose(natural, ufc, index, shifts, flips), ufc, grad_out))
    assert grad.shape == ufc.shape


def crop_by_pixel_gather(x, top, left, th, tw):
    """RandomCrop's windows gathered pixel by pixel (four index tensors): how
    random_crop_with_padding cut them before it indexed a view of the windows; the baseline."""
    n = x.shape[0]
    rows = (top[:, None] + torch.arange(th))[:, None, :, None]
    cols = (left[:, None] + torch.arange(tw))[:, None, None, :]
    return x[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]


@pytest.mark.parametrize("impl", ["pixel gather", "window view"])
def test_random_crop_cifar_batch(benchmark, impl):
    """The students' and teachers' RandomCrop(32, padding=4) of a CIFAR batch (64, 3, 32, 32),
    padded to 40 x 40: the same values either way."""
    from infer_fast.data.transforms import random_crop_with_padding

    benchmark.group = "RandomCrop(32, padding 4) of (64, 3, 32, 32)"
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (4,) * 4)
    gen = torch.Generator().manual_seed(1)
    top, left = torch.randint(0, 9, (64,), generator=gen), torch.randint(0, 9, (64,), generator=gen)
    if impl == "pixel gather":
        out = benchmark(crop_by_pixel_gather, padded, top, left, 32, 32)
    else:
        out = benchmark(lambda: random_crop_with_padding(x, 32, 4, torch.Generator().manual_seed(1)))
    assert torch.equal(out, crop_by_pixel_gather(padded, top, left, 32, 32))


def test_student_batch_cifar_recipe(benchmark):
    """The host's part of a student step at the CIFAR recipe: a batch of 64 of 6400 images at
    32 px drawn, cropped, flipped and mixed (StudentRun.mixed_batch)."""
    from bench_student import random_set
    from infer_fast.student import StudentConfig, StudentRun

    benchmark.group = "student batch, CIFAR recipe (64 images, 32 px)"
    config = StudentConfig.from_recipe("cifar", model="convnet-w8-d2", batch_size=64, device="cpu")
    run = StudentRun(random_set("cifar100", 32, 6400, seed=0), None, config, teachers=None, ddp=False)
    index = torch.arange(64)
    x, z = benchmark(run.mixed_batch, index)
    assert x.shape == (64, 3, 32, 32) and z.shape == (64, 100) and torch.isfinite(x).all()
