"""A call of a fused op is validation plus one dispatch: the profiler sees one functional op
forward and one backward, and inside them nothing but the outputs' allocation and views (no
cast, copy, finalize or coefficient op), whatever the backend. On a GPU the CUDA and Triton
backends launch one kernel forward (the statistics kernel's last block of each group finishes
it) and one backward. Training batches go to a GPU through
pinned memory (infer_fast.transfer)."""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from conftest import backend_params
from infer_fast.ops import bn_eval_with_stat_loss, bn_stat_loss, ufc_compose
from infer_fast.transfer import to_device

# What may run inside our ops on the host besides our own ops: output allocation and views.
ALLOWED_INSIDE = {"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::as_strided", "aten::view"}


def descendants(event):
    for child in event.cpu_children:
        yield child
        yield from descendants(child)


def ops_and_contents(prof, prefix="infer_fast_C::"):
    """{our op name: set of op names that ran inside it} and how often each of ours ran."""
    contents, calls = {}, {}
    for event in prof.events():
        if event.name.startswith(prefix):
            calls[event.name] = calls.get(event.name, 0) + 1
            inner = {d.name for d in descendants(event) if not d.name.startswith(prefix)}
            contents.setdefault(event.name, set()).update(inner)
    return contents, calls


def bn_case(device, channels_last):
    x = torch.randn(4, 8, 3, 3, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(), torch.randn(8, device=device), torch.rand(8, device=device) + 0.5


def run_cases(backend, device, channels_last):
    """fwd+bwd of the three ops; gradients arrive as autograd makes them (a summed loss's
    gradient is expanded, stride 0) and in x's layout."""
    x, rm, rv = bn_case(device, channels_last)
    (grad,) = torch.autograd.grad(bn_stat_loss(x, rm, rv, 2, backend=backend).sum(), x)
    y, loss = bn_eval_with_stat_loss(x, rm, rv, torch.rand(8, device=device), None, groups=2, backend=backend)
    torch.autograd.grad([y, loss.sum()], x, [torch.ones_like(y), None])
    natural = torch.randn(2, 3, 2, 4, 4, device=device)
    ufc = torch.zeros(3, 2, 4, 4, device=device, requires_grad=True)
    index = torch.tensor([0, 1, 1], device=device)
    shifts = torch.tensor([[1, 2], [3, -4], [0, 9]], device=device)
    out = ufc_compose(natural, ufc, index, shifts, torch.tensor([True, False, True], device=device), backend=backend)
    torch.autograd.grad(out, ufc, torch.ones_like(out))


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("channels_last", [False, True])
def test_one_dispatch_each_way_and_nothing_else(backend, device, channels_last):
    run_cases(backend, device, channels_last)  # first call: imports, lookups, checks of the index
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_cases(backend, device, channels_last)
    contents, calls = ops_and_contents(prof)
    assert calls == {
        "infer_fast_C::bn_stat_loss": 1, "infer_fast_C::bn_stat_forward": 1,
        "infer_fast_C::bn_eval_with_stat_loss": 1, "infer_fast_C::bn_eval_stat_forward": 1,
        "infer_fast_C::bn_stat_backward": 2,
        "infer_fast_C::ufc_compose": 1, "infer_fast_C::ufc_compose_forward": 1, "infer_fast_C::ufc_compose_backward": 1,
    }
    if backend in ("cpu", "cuda"):  # the Python backends' launchers are torch ops of their own
        for name, inner in contents.items():
            assert inner <= ALLOWED_INSIDE, f"{name} ran {sorted(inner - ALLOWED_INSIDE)}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_kernel_launches_per_call_on_the_gpu(backend, channels_last):
    """Exactly 1 kernel forward (statistics, finalized by each group's last block) and 1
    backward per call, for both ops and layouts. The first call of each lambda warms up (the
    counters' one-time zero fill, Triton's compilation), so only steady-state calls count."""
    from infer_fast.ops import available_backends

    # (on a GPU both must be usable: a missing backend is a failed installation, not a skip)
    assert backend in available_backends("cuda"), f"backend {backend} is unavailable on this GPU (infer-fast info)"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(64, 64, 28, 28, device="cuda").contiguous(memory_format=fmt).requires_grad_()
    rm, rv = torch.randn(64, device="cuda"), torch.rand(64, device="cuda") + 0.5
    grad_loss = torch.ones(2, device="cuda")

    def kernels(fn):
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            result = fn()
            torch.cuda.synchronize()
        launched = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        return result, len(launched)

    loss, forward = kernels(lambda: bn_stat_loss(x, rm, rv, 2, backend=backend))
    _, backward = kernels(lambda: torch.autograd.grad(loss, x, grad_loss, retain_graph=True))
    assert (forward, backward) == (1, 1), (forward, backward)
    outputs, forward = kernels(lambda: bn_eval_with_stat_loss(x, rm, rv, groups=2, backend=backend))
    grad_y = torch.ones_like(outputs[0])
    _, backward = kernels(lambda: torch.autograd.grad(outputs, x, [grad_y, grad_loss], retain_graph=True))
    assert (forward, backward) == (1, 1), (forward, backward)


def test_host_batches_stay_as_they_are_for_the_cpu():
    x = torch.randn(3, 4)
    assert to_device(x, torch.device("cpu")) is x  # (no copy, no pinning without a GPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_host_batches_reach_the_gpu_through_pinned_memory():
    """A training step's batch (a rank's strided share of it here) reaches the GPU through
    pinned memory, queued without waiting; its values arrive and the host batch is untouched."""
    x = torch.randn(64, 3, 8, 8)[1::2]
    y = to_device(x, torch.device("cuda"))
    torch.cuda.synchronize()
    assert y.device.type == "cuda" and torch.equal(y.cpu(), x) and not x.is_pinned()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("recipe", ["cifar", "imagenet"])
def test_a_student_batch_augmented_on_the_gpu_is_the_hosts_and_makes_no_host_sync(recipe):
    """StudentConfig(augment_on="device"): the batch goes to the GPU as stored and is augmented
    and mixed there with the host's draws, queued without a host sync (the run's generator stays
    on the host; every index the draws make reaches the GPU through pinned memory), and equals
    the host-augmented batch to float32 rounding of the GPU's resize."""
    from infer_fast.storage import DistilledSet
    from infer_fast.student import StudentConfig, StudentRun

    gen = torch.Generator().manual_seed(0)
    n, size = 16, 48
    ds = DistilledSet(method="random", dataset="cifar10", num_classes=10, channels=3, image_size=size,
                      mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                      images=torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen),
                      labels=torch.arange(n) % 10, soft_labels=torch.randn(n, 10, generator=gen))
    cfg = StudentConfig.from_recipe(recipe, model="convnet-w8-d2", batch_size=8, device="cuda")
    idx = torch.arange(8)
    host_run = StudentRun(ds, None, cfg, teachers=None, ddp=False)
    device_run = StudentRun(ds, None, StudentConfig(**{**cfg.__dict__, "augment_on": "device"}), teachers=None,
                             ddp=False)
    x_host, z_host = host_run.mixed_batch(idx)
    torch.cuda.synchronize()
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        x_device, z_device = device_run.mixed_batch(idx)
    finally:
        torch.cuda.set_sync_debug_mode(mode)
    assert x_device.device.type == "cuda" and x_host.device.type == "cpu"
    torch.testing.assert_close(x_device.cpu(), x_host, rtol=1e-5, atol=1e-5)
    assert torch.equal(z_device, z_host)  # (the targets are mixed on the host either way)
