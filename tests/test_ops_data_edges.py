"""Edge cases of the ops and the data/set containers: a fused tracker on BatchNorm subclasses
with their own forward, float images in pixel range, non-integer ImageSet labels, and the
BN-statistics loss of huge fp32 inputs."""
import pytest
import torch
from torch import nn

from conftest import backend_params
from infer_fast.data import get_spec
from infer_fast.data.pixels import normalize_uint8, quantize_images, valid_range
from infer_fast.data.sets import ImageSet
from infer_fast.ops import BNStatTracker, bn_stat_loss, bn_stat_loss_naive
from infer_fast.storage import DistilledSet, DistilledSetError, load_distilled, save_distilled


# ---- a fused tracker keeps the forward of a BatchNorm subclass that has its own -----------------

class BatchNormAct(nn.BatchNorm2d):
    """As timm's BatchNormAct2d: BN, then an activation, in the layer's own forward."""

    def forward(self, x):
        return torch.relu(super().forward(x))


def _teacher_with_bn_act():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), BatchNormAct(6), nn.Conv2d(6, 6, 3, padding=1),
                        nn.BatchNorm2d(6), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    with torch.no_grad():  # non-trivial running statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval().requires_grad_(False)


def _tracked_run(net, x, fused):
    x = x.clone().requires_grad_()
    with BNStatTracker(net, groups=2, backend="torch", fused=fused) as tracker:
        logits = net(x)
        losses = tracker.losses()
        (grad,) = torch.autograd.grad(logits.square().sum() + tracker.weighted_sum(10.0).sum(), x)
        return logits, losses, grad, tracker.names


def test_fused_tracker_keeps_the_forward_of_a_bn_subclass():
    """--fused-bn replaced BatchNormAct's forward by plain BN: its ReLU was skipped, so the
    logits, losses and gradients differed from the unfused run; now the subclass keeps its
    forward (tracked by a hook) while the plain BatchNorm2d is fused."""
    net = _teacher_with_bn_act()
    x = torch.randn(4, 1, 8, 8)
    plain = net(x)
    unfused = _tracked_run(net, x, fused=False)
    with BNStatTracker(net, fused=True):
        assert type(net[1]) is BatchNormAct  # (its own forward kept)
        assert type(net[3]) is not nn.BatchNorm2d and isinstance(net[3], nn.BatchNorm2d)  # (fused)
    fused = _tracked_run(net, x, fused=True)
    torch.testing.assert_close(fused[0], plain)
    assert fused[3] == unfused[3] == ["1", "3"]
    for got, expected in zip(fused[:3], unfused[:3]):
        torch.testing.assert_close(got, expected)
    assert type(net[1]) is BatchNormAct and type(net[3]) is nn.BatchNorm2d  # (restored)


# ---- float images in 0..255 pixel range are refused -----------------------------------------------

def _images_set(images, mean=(0.2860,), std=(0.3530,)):
    n = images.shape[0]
    return DistilledSet(method="sre2l", dataset="fashion-mnist", num_classes=2, channels=1, image_size=4,
                        mean=mean, std=std, images=images, labels=torch.arange(n) % 2, budget={"ipc": n // 2})


def test_float_images_of_unnormalized_pixels_are_refused(tmp_path):
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (6, 1, 4, 4), generator=gen, dtype=torch.uint8)
    pixels[0, 0, 0, :2] = torch.tensor([0, 255], dtype=torch.uint8)
    for images in (pixels.float(), pixels.half()):
        with pytest.raises(DistilledSetError, match=r"images look like un-normalized pixels \(values 0 to 255.*"
                                                    r"store uint8 pixels or normalize them \(normalize_uint8\)"):
            save_distilled(_images_set(images), tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_normalized_float_images_pass_even_unclamped(tmp_path):
    """Normalized images, recovered ones beyond the range of pixels 0..1 included, still pass."""
    mean, std = (0.2860,), (0.3530,)
    lo, hi = valid_range(mean, std)
    pixels = torch.randint(0, 256, (6, 1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    normalized = normalize_uint8(pixels, mean, std)
    normalized[0, 0, 0, 0], normalized[1, 0, 0, 0] = lo - 2.0, hi + 2.0  # (unclamped, by 0.7 pixel ranges)
    save_distilled(_images_set(normalized, mean, std), tmp_path / "set")
    assert torch.equal(load_distilled(tmp_path / "set").images, normalized)
    assert torch.equal(quantize_images(normalized, mean, std)[2:], pixels[2:])


def test_float_images_with_nan_are_still_refused_as_such():
    images = torch.zeros(2, 1, 4, 4)
    images[1, 0, 2, 2] = float("nan")
    with pytest.raises(DistilledSetError, match="images contain inf/nan"):
        _images_set(images).validate()


# ---- ImageSet labels must be integers ----------------------------------------------------------------

@pytest.mark.parametrize("labels", [
    pytest.param(torch.tensor([0.0, 2.7]), id="float-truncated"),
    pytest.param(torch.tensor([-0.5, 1.0], dtype=torch.float64), id="negative-float"),
    pytest.param(torch.tensor([float("nan"), 0.0]), id="nan"),
    pytest.param(torch.tensor([True, False]), id="bool"),
    pytest.param([0.0, 1.0], id="list-of-floats"),
])
def test_image_set_refuses_labels_that_are_no_integers(labels):
    spec = get_spec("fashion-mnist")
    images = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"^ImageSet fashion-mnist: labels must be an integer tensor, got torch\."):
        ImageSet(spec, images, labels)


def test_image_set_takes_any_integer_labels():
    spec = get_spec("fashion-mnist")
    images = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    for labels in (torch.tensor([0, 3, 9], dtype=torch.uint8), [0, 3, 9]):
        taken = ImageSet(spec, images, labels).labels
        assert taken.dtype == torch.int64 and taken.tolist() == [0, 3, 9]


# ---- the BN-statistics loss of huge fp32 inputs is finite wherever the true loss is ------------------

def fp64_finish_params():
    """backend_params, the triton rows expected to fail: triton finishes in fp32 (ops.backends)."""
    fp32_finish = pytest.mark.xfail(strict=True, reason="triton finishes in fp32: its squares overflow (documented)")
    return [pytest.param(*p.values, id=p.id, marks=[*p.marks, fp32_finish] if p.values[0] == "triton" else p.marks)
            for p in backend_params()]


@pytest.mark.parametrize("backend,device", fp64_finish_params())
def test_bn_stat_loss_of_huge_fp32_inputs_is_finite_on_every_backend(backend, device):
    """x ~ 1e17: the loss (~1.6e34) fits fp32, but e^2 does not; the torch backend finished
    in fp32 and returned inf where cpu/cuda (finished in fp64) did not."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 6, generator=gen) * 1e17
    rm, rv = torch.zeros(3), torch.ones(3)
    expected = bn_stat_loss_naive(x.double(), rm.double(), rv.double(), 2)
    xg = x.to(device).requires_grad_()
    loss = bn_stat_loss(xg, rm.to(device), rv.to(device), 2, backend=backend)
    loss.sum().backward()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double().cpu(), expected, rtol=1e-5, atol=0)
    assert torch.isfinite(xg.grad).all()
