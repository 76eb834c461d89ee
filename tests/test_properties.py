"""Property-based tests (hypothesis) over random shapes, layouts and groupings."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import backend_params
from infer_fast.ops import bn_stat_loss, bn_stat_loss_naive, ufc_compose, ufc_compose_naive

# Every backend of the CPU, and the GPU kernels (cuda, triton) where a GPU is present: there they
# run and must pass; without one the cuda row is listed, skipped, as in the other GPU tests.
BACKENDS = [p for p in backend_params() if p.values[1] == "cpu" or p.values[0] in ("cuda", "triton")]
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def examples(backend, device):
    """Fewer examples where each costs more: the Triton interpreter (~0.5 ms per program), and a
    GPU, where a new shape may compile another kernel variant."""
    return 25 if backend != "triton" and device == "cpu" else 8


@st.composite
def bn_problem(draw):
    groups = draw(st.integers(1, 4))
    n = groups * draw(st.integers(1, 3))
    c = draw(st.integers(1, 20))
    two_d = draw(st.booleans())
    shape = (n, c) if two_d else (n, c, draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    channels_last = draw(st.booleans()) and not two_d
    seed = draw(st.integers(0, 2**31 - 1))
    return shape, groups, channels_last, seed


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_bn_stat_loss_property(backend, device):
    @settings(max_examples=examples(backend, device), **SETTINGS)
    @given(bn_problem())
    def check(problem):
        shape, groups, channels_last, seed = problem
        gen = torch.Generator().manual_seed(seed)
        x = (torch.randn(shape, generator=gen) * 2 + 1).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        rm, rv = torch.randn(shape[1], generator=gen), torch.rand(shape[1], generator=gen) + 0.1
        loss = bn_stat_loss(x, rm.to(device), rv.to(device), groups, backend)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        loss, grad = loss.cpu(), grad.cpu()  # (the float64 reference: on the CPU)
        x64 = x.detach().cpu().double().requires_grad_()
        ref = bn_stat_loss_naive(x64, rm.double(), rv.double(), groups)
        (ref_grad,) = torch.autograd.grad(ref.sum(), x64)
        torch.testing.assert_close(loss.double(), ref.detach(), rtol=3e-5, atol=1e-5)
        torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-5 * (1 + ref_grad.abs().max().item()))
        assert (loss >= 0).all()

    check()


@st.composite
def compose_problem(draw):
    k, c, ch = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 3))
    h, w, g = draw(st.integers(1, 7)), draw(st.integers(1, 7)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    return (k, c, ch, h, w, g), seed


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_ufc_compose_property(backend, device):
    @settings(max_examples=examples(backend, device), **SETTINGS)
    @given(compose_problem())
    def check(problem):
        (k, c, ch, h, w, g), seed = problem
        gen = torch.Generator().manual_seed(seed)
        natural = torch.randn(k, c, ch, h, w, generator=gen)
        ufc = torch.randn(g, ch, h, w, generator=gen)
        index = torch.randint(0, k, (g,), generator=gen)
        shifts = torch.randint(-20, 20, (g, 2), generator=gen)
        flips = torch.rand(g, generator=gen) < 0.5
        lo, hi = -torch.rand(ch, generator=gen) - 0.5, torch.rand(ch, generator=gen) + 0.5
        on = lambda t: t.to(device)  # noqa: E731
        leaf = on(ufc).requires_grad_()  # (on the CPU: ufc itself)
        out = ufc_compose(on(natural), leaf, on(index), on(shifts), on(flips), on(lo), on(hi), backend=backend)
        (grad,) = torch.autograd.grad(out.sum(), leaf)
        out = out.detach().cpu()  # (the float64 reference: on the CPU)
        ref = ufc_compose_naive(natural.double(), ufc.detach().double(), index, shifts, flips, lo.double(), hi.double())
        torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)
        assert (out >= lo.view(1, 1, ch, 1, 1)).all() and (out <= hi.view(1, 1, ch, 1, 1)).all()
        # the class-axis sum of the gradient never exceeds C times the upstream magnitude
        assert grad.abs().max().item() <= c + 1e-5

    check()
