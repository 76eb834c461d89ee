"""BNStatTracker: per-layer, per-group losses of a frozen teacher, in execution order."""
import pytest
import torch
from torch import nn

from infer_fast.ops import BNStatTracker, bn_stat_loss_naive


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn_late = nn.BatchNorm2d(8)  # registered first, runs second
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.unused = nn.BatchNorm2d(8)  # never runs in forward
        self.head = nn.Linear(8, 5)
        self.bn_head = nn.BatchNorm1d(5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn_late(self.conv2(x)))
        return self.bn_head(self.head(x.mean((2, 3))))


def frozen_teacher():
    torch.manual_seed(0)
    net = TinyNet()
    with torch.no_grad():  # non-trivial running statistics
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval().requires_grad_(False)


def inputs_of_bn_layers(net, x):
    """The SRe2L-style reference: plain hooks that store each BN input."""
    seen = []
    handles = [m.register_forward_hook(lambda m, i, o: seen.append((m, i[0]))) for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    net(x)
    for h in handles:
        h.remove()
    return seen


def test_losses_in_execution_order_and_unused_layers_skipped():
    net = frozen_teacher()
    x = torch.randn(6, 3, 8, 8, requires_grad=True)
    with BNStatTracker(net, groups=3, backend="torch") as tracker:
        net(x)
        assert tracker.names == ["bn1", "bn_late", "bn_head"]
        losses = tracker.losses()
    assert losses.shape == (3, 3)
    for row, (module, bn_input) in zip(losses, inputs_of_bn_layers(net, x)):
        expected = bn_stat_loss_naive(bn_input.double(), module.running_mean.double(), module.running_var.double(), 3)
        torch.testing.assert_close(row.double(), expected, rtol=1e-5, atol=1e-6)


def test_weighted_sum_gradient_matches_reference_hooks():
    net = frozen_teacher()
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    tracker = BNStatTracker(net, groups=2)
    net(x)
    (grad,) = torch.autograd.grad(tracker.weighted_sum(first_bn_mult=10.0).sum(), x)
    tracker.remove()

    x64 = x.detach().double().requires_grad_()
    net64 = frozen_teacher().double()
    terms = [bn_stat_loss_naive(i, m.running_mean, m.running_var, 2) for m, i in inputs_of_bn_layers(net64, x64)]
    reference = 10.0 * terms[0] + sum(terms[1:])
    (ref_grad,) = torch.autograd.grad(reference.sum(), x64)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)


def test_only_last_forward_is_kept():
    net = frozen_teacher()
    tracker = BNStatTracker(net)
    net(torch.randn(2, 3, 8, 8))
    first = tracker.losses().clone()
    net(torch.randn(2, 3, 8, 8) * 3)
    assert tracker.losses().shape == first.shape
    assert not torch.equal(tracker.losses(), first)


def test_no_activation_kept_without_grad():
    """Under no_grad the tracker holds plain loss values, no graph and no activations."""
    net = frozen_teacher()
    tracker = BNStatTracker(net)
    with torch.no_grad():
        net(torch.randn(2, 3, 8, 8))
    assert all(loss.grad_fn is None for loss in tracker._losses)


def test_train_mode_teacher_is_refused():
    net = frozen_teacher().train()
    tracker = BNStatTracker(net)
    with pytest.raises(ValueError, match=r"in training mode.*call \.eval\(\)"):
        net(torch.randn(2, 3, 8, 8))
    tracker.remove()


def test_remove_detaches_hooks():
    net = frozen_teacher()
    tracker = BNStatTracker(net)
    tracker.remove()
    net(torch.randn(2, 3, 8, 8))
    with pytest.raises(RuntimeError, match="run a forward pass first"):
        tracker.losses()


def test_model_without_batchnorm_is_refused():
    with pytest.raises(ValueError, match="has no BatchNorm"):
        BNStatTracker(nn.Linear(3, 3))


# ---- fused eval-mode BN + statistics loss -------------------------------------------------

def _double_teacher():
    net = frozen_teacher().double()
    with torch.no_grad():  # non-trivial affine parameters
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_tracker_equals_hooks(backend, channels_last):
    """Same logits, per-layer losses and input gradient as the plain hooks (fp64: to rounding)."""
    from infer_fast.ops import available_backends

    if backend not in available_backends("cpu"):
        pytest.skip(f"{backend} not usable here")
    net = _double_teacher()
    x = torch.randn(6, 3, 7, 5, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    results = []
    for fused in (False, True):
        tracker = BNStatTracker(net, groups=3, backend=backend, fused=fused)
        logits = net(x)
        loss = logits.square().sum() + tracker.weighted_sum(10.0).sum()
        (grad,) = torch.autograd.grad(loss, x)
        results.append((logits.detach(), tracker.losses().detach(), grad, tracker.names))
        tracker.remove()
    (l0, r0, g0, n0), (l1, r1, g1, n1) = results
    assert n1 == n0 == ["bn1", "bn_late", "bn_head"]
    torch.testing.assert_close(l1, l0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r1, r0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g1, g0, rtol=1e-10, atol=1e-12)


def test_fused_tracker_with_unused_losses_is_plain_eval_bn():
    net = _double_teacher()
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    (plain,) = torch.autograd.grad(net(x).square().sum(), x)
    tracker = BNStatTracker(net, groups=2, fused=True)
    (fused,) = torch.autograd.grad(net(x).square().sum(), x)  # the statistics losses are not used
    tracker.remove()
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)


def test_fused_forward_restored_and_affine_grads():
    net = _double_teacher()
    tracker = BNStatTracker(net, groups=1, fused=True)
    assert type(net.bn1) is not nn.BatchNorm2d and isinstance(net.bn1, nn.BatchNorm2d)  # (a fused subclass)
    assert repr(net.bn1).startswith("BatchNorm2d(")
    tracker.remove()
    assert type(net.bn1) is nn.BatchNorm2d and "forward" not in vars(net.bn1)  # the class's forward again
    # weight/bias gradients (a teacher being fine-tuned would ask for them): gradcheck
    from infer_fast.ops import bn_eval_with_stat_loss

    bn = net.bn1
    x = torch.randn(4, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    w = bn.weight.detach().clone().requires_grad_()
    b = bn.bias.detach().clone().requires_grad_()

    def fn(x, w, b):
        return bn_eval_with_stat_loss(x, bn.running_mean, bn.running_var, w, b, bn.eps, 2, "torch")

    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_batchnorm3d_is_refused_not_skipped():
    net = nn.Sequential(nn.Conv3d(1, 2, 1), nn.BatchNorm3d(2)).eval()
    with pytest.raises(ValueError, match="'1' is a BatchNorm3d"):
        BNStatTracker(net)


def test_fused_train_mode_refused():
    net = frozen_teacher()
    tracker = BNStatTracker(net, fused=True)
    net.train()
    with pytest.raises(ValueError, match="teacher: BatchNorm layer .* is in training mode"):  # as from every path
        net(torch.randn(2, 3, 8, 8))
    tracker.remove()


def test_second_fused_tracker_on_one_model_is_refused():
    """Two fused trackers would each replace the other's forward: the second one collected
    nothing once the first was removed, and its remove() raised AttributeError."""
    net = frozen_teacher()
    first = BNStatTracker(net, fused=True)
    with pytest.raises(ValueError, match="fused=True: BatchNorm layer 'bn_late' already has its forward replaced"):
        BNStatTracker(net, fused=True)
    unfused = BNStatTracker(net, groups=2)  # hooks compose with the fused forward
    net(torch.randn(4, 3, 8, 8))
    assert first.names == unfused.names == ["bn1", "bn_late", "bn_head"]
    first.remove()
    first.remove()  # (a second remove() leaves the class's forward alone)
    unfused.remove()
    assert type(net.bn1) is nn.BatchNorm2d
    second = BNStatTracker(net, fused=True)  # once the first is gone
    net(torch.randn(2, 3, 8, 8))
    assert second.names == ["bn1", "bn_late", "bn_head"]
    second.remove()
    assert type(net.bn1) is nn.BatchNorm2d


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("groups,backend,error", [
    (0, "auto", "groups must be a positive integer, got 0"),
    (1.5, "torch", "groups must be a positive integer, got 1.5"),
    (1, "bogus", "unknown backend 'bogus'"),
    (1, None, "backend must be a string, got NoneType"),
])
def test_bad_groups_and_backend_refused_at_construction(fused, groups, backend, error):
    net = frozen_teacher()
    with pytest.raises(ValueError, match=error):
        BNStatTracker(net, groups=groups, backend=backend, fused=fused)
    assert not any("forward" in vars(m) for m in net.modules())  # nothing attached
    assert {type(m) for m in net.modules()} == {TinyNet, nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.BatchNorm1d}
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in net.modules())
