"""ufc_compose: every backend against the float64 naive definition and torch.roll/flip."""
import pytest
import torch

from conftest import backend_params, gradcheck, tolerance
from infer_fast.ops import backends, ufc_compose, ufc_compose_naive
from infer_fast.ops.ufc_compose import _check_and_normalize

# (K, C, ch, H, W, G): single set, prime class counts, 1x1 images, repeated indices
CASES = [
    (1, 3, 1, 4, 5, 1),
    (3, 7, 3, 6, 5, 5),
    (2, 10, 3, 1, 1, 4),
    (4, 5, 2, 9, 7, 6),
    (2, 13, 3, 8, 8, 3),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def make_case(case, dtype, device, seed=0, with_shifts=True, with_flips=True):
    k, c, ch, h, w, g = case
    gen = torch.Generator().manual_seed(seed)
    natural = torch.randn(k, c, ch, h, w, generator=gen).to(device=device, dtype=dtype)
    ufc = (0.5 * torch.randn(g, ch, h, w, generator=gen)).to(device=device, dtype=dtype)
    index = torch.randint(0, k, (g,), generator=gen).to(device)
    shifts = torch.randint(-9, 10, (g, 2), generator=gen).to(device) if with_shifts else None
    flips = (torch.rand(g, generator=gen) < 0.5).to(device) if with_flips else None
    return natural, ufc, index, shifts, flips


def bounds(ch, device):
    lo = torch.linspace(-1.2, -0.8, ch, device=device)
    hi = torch.linspace(0.9, 1.3, ch, device=device)
    return lo, hi


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("clamp", [False, True], ids=["noclamp", "clamp"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_float64_reference(backend, device, case, clamp, dtype):
    natural, ufc, index, shifts, flips = make_case(case, dtype, device)
    lo, hi = bounds(case[2], device) if clamp else (None, None)
    natural.requires_grad_()
    ufc.requires_grad_()
    out = ufc_compose(natural, ufc, index, shifts, flips, lo, hi, backend=backend)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(device=device, dtype=dtype)
    out.backward(grad_out)

    nat64 = natural.detach().double().requires_grad_()
    ufc64 = ufc.detach().double().requires_grad_()
    lo64, hi64 = (None, None) if lo is None else (lo.double(), hi.double())
    ref = ufc_compose_naive(nat64, ufc64, index, shifts, flips, lo64, hi64)
    ref.backward(grad_out.double())

    assert out.shape == (case[5], case[1], case[2], case[3], case[4]) and out.dtype == dtype
    rtol, atol = tolerance(dtype)
    torch.testing.assert_close(out.double(), ref.detach().to(dtype).double(), rtol=rtol, atol=atol)
    for got, want in ((ufc.grad, ufc64.grad), (natural.grad, nat64.grad)):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol * (1 + want.abs().max().item()))


# (G=5, 2) roll amounts at the ends of int64: h - shift overflows unless a backend reduces
# the shift mod H / W first
INT64_EXTREME_SHIFTS = [[-2**63, -2**63], [2**63 - 1, -2**63 + 1], [-2**63 + 1, 2**63 - 1], [-2**63, 5],
                        [7, 2**63 - 2]]


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("extreme", [False, True], ids=["small-shifts", "int64-extreme-shifts"])
def test_matches_torch_roll_then_flip(backend, device, extreme):
    natural, ufc, index, shifts, flips = make_case((3, 4, 2, 5, 6, 5), torch.float32, device)
    if extreme:
        shifts = torch.tensor(INT64_EXTREME_SHIFTS, device=device)
    out = ufc_compose(natural, ufc, index, shifts, flips, backend=backend)
    for g in range(ufc.shape[0]):
        # torch.roll rolls by the amount mod the extent (Python's %), but refuses -2**63 itself
        rolls = (shifts[g, 0].item() % 5, shifts[g, 1].item() % 6)
        expected = torch.roll(natural[index[g]] + ufc[g], shifts=rolls, dims=(-2, -1))
        if flips[g]:
            expected = expected.flip(-1)
        torch.testing.assert_close(out[g], expected)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("clamp", [False, True], ids=["noclamp", "clamp"])
@pytest.mark.parametrize("transform", ["roll+flip", "none", "bool-flips-only", "int64-extreme-rolls"])
def test_launchers_write_every_element(backend, device, clamp, transform):
    """Outputs poisoned with NaN; shifts of any value (negative, beyond H and W) or None, flips
    as bool or None, as the contract allows."""
    natural, ufc, index, shifts, flips = make_case((3, 7, 3, 6, 5, 5), torch.float32, device)
    if transform == "none":
        shifts, flips = None, None
    elif transform == "bool-flips-only":
        shifts = None
    elif transform == "int64-extreme-rolls":
        shifts = torch.tensor(INT64_EXTREME_SHIFTS, device=device)
    else:
        shifts = shifts * 7  # far outside [0, H) x [0, W): the kernels reduce them
    lo, hi = bounds(3, device) if clamp else (None, None)
    args = _check_and_normalize(natural, ufc, index, shifts, flips, lo, hi)
    out = torch.full((5, 7, 3, 6, 5), float("nan"), device=device)
    backends.launcher(backend, "ufc_compose")(*args, out)
    expected = torch.empty_like(out)
    backends.launcher("torch", "ufc_compose")(*args, expected)
    torch.testing.assert_close(out, expected)

    grad_out = torch.randn_like(out)
    grad_ufc = torch.full_like(ufc, float("nan"))
    backends.launcher(backend, "ufc_compose_grad_ufc")(grad_out, *args, grad_ufc)
    expected_grad = torch.empty_like(ufc)
    backends.launcher("torch", "ufc_compose_grad_ufc")(grad_out, *args, expected_grad)
    torch.testing.assert_close(grad_ufc, expected_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,device", backend_params())
def test_gradcheck_float64(backend, device):
    natural, ufc, index, shifts, flips = make_case((2, 3, 2, 4, 3, 3), torch.float64, device)
    lo, hi = bounds(2, device)
    natural.requires_grad_()
    ufc.requires_grad_()

    def fn(natural, ufc):
        return ufc_compose(natural, ufc, index, shifts, flips, lo.double(), hi.double(), backend=backend)

    assert gradcheck(backend, device, fn, (natural, ufc))


@pytest.mark.parametrize("backend,device", backend_params())
def test_clamped_pixels_get_no_gradient(backend, device):
    natural = torch.full((1, 2, 1, 2, 2), 0.5, device=device)
    ufc = torch.tensor([[[[0.0, 2.0], [-2.0, 0.1]]]], device=device, requires_grad=True)
    out = ufc_compose(natural, ufc, torch.tensor([0], device=device), lo=-1.0, hi=1.0, backend=backend)
    assert out.detach().cpu().flatten().tolist() == [0.5, 1.0, -1.0, pytest.approx(0.6)] * 2
    out.sum().backward()
    assert ufc.grad.cpu().flatten().tolist() == [2.0, 0.0, 0.0, 2.0]


@pytest.mark.parametrize("backend,device", backend_params())
def test_one_sided_bounds(backend, device):
    natural, ufc, index, shifts, flips = make_case((2, 3, 2, 4, 4, 2), torch.float32, device)
    out = ufc_compose(natural, ufc, index, shifts, flips, lo=[-0.5, 0.0], backend=backend)
    ref = ufc_compose_naive(natural, ufc, index, shifts, flips, lo=torch.tensor([-0.5, 0.0], device=device))
    torch.testing.assert_close(out, ref)
    assert out[:, :, 1].min() >= 0.0
