"""bn_stat_loss: every backend against the float64 naive definition, on a shape matrix."""
import pytest
import torch

from conftest import backend_params, gradcheck, tolerance
from infer_fast.ops import backends, bn_stat_loss, bn_stat_loss_naive
from infer_fast.ops.layout import as_ncl, kept_format

# (shape, groups): N = 1, prime C, H*W = 1, non-powers of two, groups > 1, 2-d input
SHAPES = [
    ((1, 7, 3, 5), 1),
    ((4, 13, 5, 7), 2),
    ((6, 3, 1, 1), 3),
    ((2, 16, 8, 8), 2),
    ((3, 1, 4, 4), 1),
    ((10, 11), 5),
    ((5, 17, 9, 3), 5),
]
LAYOUTS = ["nchw", "channels_last", "strided"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def make_input(shape, layout, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if layout == "strided":  # a non-contiguous view: every other channel of a wider tensor
        wide = (shape[0], shape[1] * 2) + tuple(shape[2:])
        x = (torch.randn(wide, generator=gen) * 1.5 + 0.3)[:, ::2]
    else:
        x = torch.randn(shape, generator=gen) * 1.5 + 0.3
    x = x.to(device=device, dtype=dtype)
    if layout == "channels_last" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def make_stats(channels, device, seed=1):
    gen = torch.Generator().manual_seed(seed)
    rm = (torch.randn(channels, generator=gen) * 0.2).to(device)
    rv = (torch.rand(channels, generator=gen) + 0.5).to(device)
    return rm, rv


def over_shape_matrix(test):
    """Parametrize ``test`` over backend x dtype x layout x (shape, groups)."""
    test = pytest.mark.parametrize("shape,groups", SHAPES, ids=str)(test)
    test = pytest.mark.parametrize("layout", LAYOUTS)(test)
    test = pytest.mark.parametrize("dtype", DTYPES, ids=str)(test)
    return pytest.mark.parametrize("backend,device", backend_params())(test)


@over_shape_matrix
def test_matches_float64_reference(backend, device, shape, groups, layout, dtype):
    x = make_input(shape, layout, dtype, device).requires_grad_()
    rm, rv = make_stats(shape[1], device)
    loss = bn_stat_loss(x, rm, rv, groups=groups, backend=backend)
    upstream = torch.linspace(0.5, 1.5, groups, device=device)
    (loss * upstream).sum().backward()

    x64 = x.detach().double().requires_grad_()
    ref = bn_stat_loss_naive(x64, rm.double(), rv.double(), groups)
    (ref * upstream.double()).sum().backward()

    assert loss.shape == (groups,)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=2e-5 if dtype != torch.float64 else 1e-10, atol=1e-6)
    assert x.grad.dtype == dtype and x.grad.shape == x.shape
    rtol, atol = tolerance(dtype)
    scale = x64.grad.abs().max().item()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=rtol, atol=atol * scale)
    if layout == "channels_last" and x.dim() == 4 and shape[1] > 1 and shape[2] * shape[3] > 1:
        assert x.grad.is_contiguous(memory_format=torch.channels_last)


def nan_like(t):
    return torch.full_like(t, float("nan"))


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_launchers_write_every_element(backend, device, layout, dtype, param_dtype):
    """Every launcher against the torch backend's, outputs poisoned with NaN first (an
    element a kernel skips stays NaN); parameters in x's dtype or in fp32."""
    x = make_input((6, 13, 5, 7), layout, dtype, device)
    x3, groups, acc = as_ncl(x), 3, torch.float32
    rm, rv = (t.to(param_dtype) for t in make_stats(13, device))
    rtol, atol = tolerance(dtype)

    def both(op, args, outputs):
        """Run ``op`` of ``backend`` and of the reference on NaN-poisoned copies of ``outputs``."""
        got, want = [nan_like(t) for t in outputs], [torch.empty_like(t) for t in outputs]
        backends.launcher(backend, op)(*args(got))
        backends.launcher("torch", op)(*args(want))
        for g in got:
            assert not g.isnan().any(), f"{op}: unwritten elements"
        return got, want

    (sums,), (ref,) = both("bn_stat_sums", lambda out: (x3, rm, groups, *out),
                           outputs=[torch.empty(2, groups, 13, dtype=acc, device=device)])
    torch.testing.assert_close(sums, ref, rtol=1e-5, atol=1e-4)

    outputs = [torch.empty(groups, dtype=acc, device=device), torch.empty(groups, 2, 14, dtype=acc, device=device)]
    (loss, stats), (loss_ref, stats_ref) = both("bn_stat_forward", lambda out: (x3, rm, rv, groups, *out), outputs=outputs)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats, stats_ref, rtol=1e-5, atol=1e-5)

    grad_loss = torch.linspace(0.5, 1.5, groups, device=device)
    for upstream in (grad_loss, torch.ones((), device=device).expand(groups)):  # any stride
        (grad,), (expected,) = both("bn_stat_backward", lambda out: (x3, rm, stats_ref, upstream, 35 * 2, as_ncl(out[0])),
                                    outputs=[torch.empty_like(x, memory_format=kept_format(x))])
        torch.testing.assert_close(grad, expected, rtol=rtol, atol=atol * expected.abs().max().item())


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_gradcheck_float64(backend, device, layout):
    x = make_input((4, 5, 3, 2), layout, torch.float64, device).requires_grad_()
    rm, rv = make_stats(5, device)
    rm, rv = rm.double().requires_grad_(), rv.double().requires_grad_()
    assert gradcheck(backend, device, lambda x, rm, rv: bn_stat_loss(x, rm, rv, 2, backend), (x, rm, rv))


@pytest.mark.parametrize("backend,device", backend_params())
def test_large_mean_over_std_is_exact(backend, device):
    """KERNELS.md's numerics case: mean/std = 1000. Shifted fp32 sums keep the variance
    to ~1e-8; the naive E[x^2] - E[x]^2 in fp32 would lose ~19% of it."""
    gen = torch.Generator().manual_seed(3)
    channels = 8
    true_mean = 1000.0 + torch.randn(channels, generator=gen)
    x = (torch.randn(16, channels, 12, 12, generator=gen) + true_mean.view(1, -1, 1, 1)).to(device)
    rm = (true_mean + 0.05 * torch.randn(channels, generator=gen)).to(device)
    rv = torch.full((channels,), 0.9, device=device)
    loss = bn_stat_loss(x, rm, rv, backend=backend)
    ref = bn_stat_loss_naive(x.double(), rm.double(), rv.double())
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend,device", backend_params())
def test_group_mean_away_from_running_mean_within_the_stated_error(backend, device):
    """The README's bound: a group mean k = 10 of its stds away from the running mean
    (the shift cannot help there) keeps the gradient within ~2e-5 of its largest entry."""
    gen = torch.Generator().manual_seed(4)
    x = (torch.randn(8, 4, 16, 16, generator=gen, dtype=torch.float64) + 10.0).float().to(device)
    rm, rv = torch.zeros(4, device=device), torch.full((4,), 0.5, device=device)
    x32 = x.clone().requires_grad_()
    bn_stat_loss(x32, rm, rv, groups=2, backend=backend).sum().backward()
    x64 = x.double().requires_grad_()
    bn_stat_loss_naive(x64, rm.double(), rv.double(), 2).sum().backward()
    error = (x32.grad.double() - x64.grad).abs().max() / x64.grad.abs().max()
    assert error < 1e-4, f"relative gradient error {float(error):.1e} at k = 10"


@pytest.mark.parametrize("backend,device", backend_params())
def test_zero_norm_gives_zero_gradient_not_nan(backend, device):
    """When the batch statistics equal the running ones exactly, both norms are 0."""
    x = torch.tensor([[1.0, 3.0], [3.0, 1.0]], device=device).view(2, 1, 1, 2).repeat(1, 3, 1, 1).requires_grad_()
    rm = torch.full((3,), 2.0, device=device)
    rv = torch.full((3,), 1.0, device=device)
    loss = bn_stat_loss(x, rm, rv, backend=backend)
    loss.sum().backward()
    assert loss.item() == 0.0
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("backend,device", backend_params())
def test_grouped_equals_separate_calls(backend, device):
    """Groups are independent: G groups in one call == G calls on the slices."""
    x = make_input((6, 7, 4, 4), "nchw", torch.float32, device)
    rm, rv = make_stats(7, device)
    together = bn_stat_loss(x, rm, rv, groups=3, backend=backend)
    apart = torch.stack([bn_stat_loss(chunk, rm, rv, backend=backend)[0] for chunk in x.chunk(3)])
    torch.testing.assert_close(together, apart, rtol=1e-6, atol=1e-6)


def test_half_running_stats_accepted():
    """A model converted with .half() has fp16 buffers; statistics still run in fp32."""
    x = make_input((4, 6, 3, 3), "nchw", torch.float16, "cpu")
    rm, rv = make_stats(6, "cpu")
    loss = bn_stat_loss(x, rm.half(), rv.half(), backend="torch")
    ref = bn_stat_loss_naive(x.double(), rm.half().double(), rv.half().double())
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("view", ["expanded", "strided"])
def test_strided_running_stats_accepted_by_every_backend(backend, device, view):
    """A broadcast statistic (expand) or every other element of a buffer: every backend
    gives the torch backend's loss and gradient (none refuses the layout)."""
    x = make_input((4, 6, 3, 3), "nchw", torch.float32, device)
    rm, rv = make_stats(12, device)
    if view == "expanded":
        rm, rv = rm[:1].expand(6), rv[:1].expand(6)
    else:
        rm, rv = rm[::2], rv[::2]
    assert not rm.is_contiguous()
    xs = [x.clone().requires_grad_() for _ in range(2)]
    got = bn_stat_loss(xs[0], rm, rv, groups=2, backend=backend)
    expected = bn_stat_loss(xs[1], rm.contiguous(), rv.contiguous(), groups=2, backend="torch")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    got.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-5, atol=1e-6)
