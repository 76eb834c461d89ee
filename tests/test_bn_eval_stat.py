"""bn_eval_with_stat_loss: eval-mode BatchNorm fused with the statistics loss of its input.

Every backend against the float64 naive pair (F.batch_norm, bn_stat_loss_naive) on the shape
matrix of test_bn_stat_loss; the launchers' fused outputs poisoned with NaN; the statistics
bit-identical with and without the fused output; gradcheck; opcheck; validation.
"""
import pytest
import torch

from conftest import backend_params, gradcheck, tolerance
from infer_fast.ops import backends, bn_eval_with_stat_loss, bn_eval_with_stat_loss_naive
from infer_fast.ops.layout import as_ncl, kept_format
from test_bn_stat_loss import make_input, make_stats, over_shape_matrix


def make_affine(channels, device, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(channels, generator=gen) + 0.5).to(device), (torch.randn(channels, generator=gen) * 0.3).to(device)


@over_shape_matrix
def test_matches_float64_reference(backend, device, shape, groups, layout, dtype):
    x = make_input(shape, layout, dtype, device).requires_grad_()
    rm, rv = make_stats(shape[1], device)
    weight, bias = make_affine(shape[1], device)
    y, loss = bn_eval_with_stat_loss(x, rm, rv, weight, bias, eps=1e-3, groups=groups, backend=backend)
    gen = torch.Generator().manual_seed(5)
    grad_y = torch.randn(y.shape, generator=gen).to(device=device, dtype=dtype)
    grad_loss = torch.linspace(0.5, 1.5, groups, device=device)
    (grad_x,) = torch.autograd.grad([y, loss], x, [grad_y, grad_loss.to(loss.dtype)])

    x64 = x.detach().double().requires_grad_()
    y_ref, loss_ref = bn_eval_with_stat_loss_naive(x64, rm.double(), rv.double(), weight.double(), bias.double(), 1e-3, groups)
    (grad_ref,) = torch.autograd.grad([y_ref, loss_ref], x64, [grad_y.double(), grad_loss.double()])

    rtol, atol = tolerance(dtype)
    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y.double(), y_ref, rtol=rtol, atol=atol * y_ref.abs().max().item())
    torch.testing.assert_close(loss.double(), loss_ref, rtol=2e-5 if dtype != torch.float64 else 1e-10, atol=1e-6)
    assert grad_x.dtype == dtype
    torch.testing.assert_close(grad_x.double(), grad_ref, rtol=rtol, atol=atol * grad_ref.abs().max().item())
    if layout == "channels_last" and x.dim() == 4 and shape[1] > 1 and shape[2] * shape[3] > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert grad_x.is_contiguous(memory_format=torch.channels_last)


# Sizes that cross the C++ kernels' internal blocks: L > 1024 (per-row pieces), L > 65536
# (rows split into segments), many channels (NLC channel tiles), and several work items.
LARGE = [((2, 3, 40, 41), 2), ((1, 2, 260, 260), 1), ((4, 1100, 3, 3), 2), ((8, 64, 17, 17), 4)]


@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[0] != "torch"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,groups", LARGE, ids=str)
def test_launchers_write_every_element(backend, device, shape, groups, layout, dtype):
    """Fused outputs poisoned with NaN first; the statistics equal the unfused launch bit for bit."""
    if backend == "triton" and device == "cpu" and shape[0] * shape[1] * shape[2] * shape[3] > 20000:
        pytest.skip("too slow under the Triton interpreter")
    x = make_input(shape, layout, dtype, device)
    x3, acc, channels = as_ncl(x), torch.float32, shape[1]
    rm, rv = make_stats(channels, device)
    weight, bias = make_affine(channels, device)
    forward = backends.launcher(backend, "bn_stat_forward")
    loss, stats = (torch.full(s, float("nan"), dtype=acc, device=device) for s in ((groups,), (groups, 2, channels + 1)))
    y = torch.full_like(x, float("nan"), memory_format=kept_format(x))
    forward(x3, rm, rv, groups, loss, stats, weight, bias, 1e-3, as_ncl(y))
    plain_loss, plain_stats = torch.empty_like(loss), torch.empty_like(stats)
    forward(x3, rm, rv, groups, plain_loss, plain_stats)
    assert torch.equal(stats, plain_stats) and torch.equal(loss, plain_loss)
    assert not y.isnan().any()
    expected = torch.nn.functional.batch_norm(x.float(), rm, rv, weight, bias, training=False, eps=1e-3).to(dtype)
    rtol, atol = tolerance(dtype)
    torch.testing.assert_close(y, expected, rtol=rtol, atol=atol * expected.abs().max().item())

    grad_y = make_input(shape, layout, dtype, device, seed=7)
    grad_loss = torch.linspace(0.5, 1.5, groups, device=device)
    count = (shape[0] // groups) * shape[2] * shape[3]
    for upstream in (grad_loss, None):  # with and without the loss term
        grad = torch.full_like(x, float("nan"), memory_format=kept_format(x))
        args = (x3, rm, stats, upstream, count)
        fused = (as_ncl(grad_y), rv, weight, 1e-3)
        backends.launcher(backend, "bn_stat_backward")(*args, as_ncl(grad), *fused)
        ref = torch.empty_like(grad)
        backends.launcher("torch", "bn_stat_backward")(*args, as_ncl(ref), *fused)
        assert not grad.isnan().any()
        torch.testing.assert_close(grad, ref, rtol=rtol, atol=atol * ref.abs().max().item())


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_gradcheck_float64(backend, device, layout):
    """x, weight, bias and the running statistics."""
    x = make_input((4, 5, 3, 2), layout, torch.float64, device).requires_grad_()
    rm, rv = (t.double().requires_grad_() for t in make_stats(5, device))
    weight, bias = (t.double().requires_grad_() for t in make_affine(5, device))
    fn = lambda *args: bn_eval_with_stat_loss(*args, eps=1e-3, groups=2, backend=backend)  # noqa: E731
    assert gradcheck(backend, device, fn, (x, rm, rv, weight, bias))


@pytest.mark.parametrize("backend,device", backend_params())
def test_unused_outputs(backend, device):
    """Only y used: the eval-BN gradient; only the loss used: bn_stat_loss's gradient."""
    from infer_fast.ops import bn_stat_loss

    x = make_input((4, 6, 3, 3), "nchw", torch.float64, device).requires_grad_()
    rm, rv = (t.double() for t in make_stats(6, device))
    weight, bias = (t.double() for t in make_affine(6, device))
    y, loss = bn_eval_with_stat_loss(x, rm, rv, weight, bias, groups=2, backend=backend)
    (from_y,) = torch.autograd.grad(y.square().sum(), x, retain_graph=True)
    expected_y = torch.nn.functional.batch_norm(x, rm, rv, weight, bias, training=False)
    (ref_y,) = torch.autograd.grad(expected_y.square().sum(), x)
    torch.testing.assert_close(from_y, ref_y, rtol=1e-12, atol=1e-12)
    (from_loss,) = torch.autograd.grad(loss.sum(), x)
    (ref_loss,) = torch.autograd.grad(bn_stat_loss(x, rm, rv, groups=2, backend=backend).sum(), x)
    torch.testing.assert_close(from_loss, ref_loss, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_opcheck(backend, device, channels_last, affine):
    x = make_input((4, 5, 3, 3), "channels_last" if channels_last else "nchw", torch.float32, device).requires_grad_()
    rm, rv = make_stats(5, device)
    weight, bias = make_affine(5, device) if affine else (None, None)
    ops = torch.ops.infer_fast_C
    torch.library.opcheck(ops.bn_eval_with_stat_loss, (x, rm, rv, weight, bias, 1e-3, 2, backend))
    x = x.detach()
    torch.library.opcheck(ops.bn_eval_stat_forward, (x, rm, rv, weight, bias, 1e-3, 2, backend))
    _, _, stats = ops.bn_eval_stat_forward(x, rm, rv, weight, bias, 1e-3, 2, backend)
    grad_loss, grad_y = torch.ones(2, device=device), torch.randn_like(x)
    for losses, dy in ((grad_loss, grad_y), (None, grad_y), (grad_loss, None)):
        torch.library.opcheck(ops.bn_stat_backward, (x, rm, stats, losses, dy, rv, weight, 1e-3, backend))


def test_compile_fullgraph():
    """A conv -> fused BN -> relu block traces without graph breaks and matches eager."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 3, 3, 3, generator=gen)
    rm, rv = make_stats(4, "cpu")
    bn_w, bn_b = make_affine(4, "cpu")

    def block(x):
        y, loss = bn_eval_with_stat_loss(torch.nn.functional.conv2d(x, weight), rm, rv, bn_w, bn_b, groups=2)
        return torch.relu(y).sum() + loss.sum()

    x = torch.randn(4, 3, 8, 8, generator=gen, requires_grad=True)
    (expected,) = torch.autograd.grad(block(x), x)
    (grad,) = torch.autograd.grad(torch.compile(block, fullgraph=True, backend="aot_eager")(x), x)
    torch.testing.assert_close(grad, expected)


def test_bad_arguments_name_the_argument():
    x = torch.randn(4, 5, 3, 3)
    rm, rv = make_stats(5, "cpu")
    with pytest.raises(ValueError, match="weight"):
        bn_eval_with_stat_loss(x, rm, rv, weight=torch.ones(4))
    with pytest.raises(ValueError, match="bias"):
        bn_eval_with_stat_loss(x, rm, rv, bias=torch.ones(5, 1))
    for eps in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps must be a finite non-negative float"):
            bn_eval_with_stat_loss(x, rm, rv, eps=eps)
    with pytest.raises(ValueError, match="groups"):
        bn_eval_with_stat_loss(x, rm, rv, groups=3)
    with pytest.raises(ValueError, match="running_var"):
        bn_eval_with_stat_loss(x, rm, rv[:4])
