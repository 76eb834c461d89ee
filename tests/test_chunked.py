"""Chunked exact mode: the chunked two-pass gradient equals the full-batch gradient."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from infer_fast.ops import BNStatTracker, RowsFrom, backends, chunked_loss_backward, group_segments

GROUPS, N_PER_GROUP, CLASSES = 2, 6, 7


class SmallConvNet(nn.Module):
    def __init__(self, unused_bn=False, aux_bn=False, shared_bn=False, sequence_bn=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(5)
        self.head = nn.Linear(5, CLASSES)
        self.unused = nn.BatchNorm2d(5) if unused_bn else None  # never runs
        self.aux = nn.BatchNorm2d(4) if aux_bn else None  # runs, output not used by the logits
        self.shared_bn = shared_bn  # bn2 runs twice per forward
        self.sequence = nn.BatchNorm1d(5) if sequence_bn else None  # on (N, C, L): the rows of the map

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        if self.aux is not None:
            self.aux(h * 2)
        h = torch.relu(self.bn2(self.conv2(h)))
        if self.shared_bn:
            h = torch.relu(self.bn2(h))
        if self.sequence is not None:
            h = self.sequence(h.flatten(2)).view_as(h)
        h = F.max_pool2d(h, 2)
        return self.head(h.mean(dim=(2, 3)))


def frozen(net, dtype=torch.float64):
    torch.manual_seed(0)
    for p in net.parameters():
        nn.init.normal_(p, std=0.5)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    return net.to(dtype).eval().requires_grad_(False)


def batch(dtype=torch.float64):
    gen = torch.Generator().manual_seed(1)
    natural = torch.rand(GROUPS * N_PER_GROUP, 3, 8, 8, generator=gen, dtype=dtype)
    labels = torch.randint(0, CLASSES, (GROUPS * N_PER_GROUP,), generator=gen)
    u = (0.3 * torch.randn(3, 8, 8, generator=gen, dtype=dtype)).requires_grad_()
    return natural, labels, u


def compose(natural, u):
    """A differentiable composition of the variable, as recovery's compose + augment."""
    return natural + torch.tanh(u)[None]


def reference(net, natural, labels, u, r_bn, first_bn_mult, ce_weight=1.0, backend="torch"):
    with BNStatTracker(net, groups=GROUPS, backend=backend) as tracker:
        logits = net(compose(natural, u))
        ce = F.cross_entropy(logits, labels, reduction="none").view(GROUPS, N_PER_GROUP).mean(1)
        rbn = tracker.weighted_sum(first_bn_mult)
        (ce_weight * ce + r_bn * rbn).sum().backward()
    grad, u.grad = u.grad.clone(), None
    return ce.detach(), rbn.detach(), logits.detach(), grad


def chunked(net, natural, labels, u, r_bn, first_bn_mult, chunk_size, ce_weight=1.0, backend="torch"):
    ce, rbn, logits = chunked_loss_backward(
        net, compose(natural, u), labels, GROUPS, r_bn, first_bn_mult, chunk_size, ce_weight=ce_weight, backend=backend
    )
    grad, u.grad = u.grad.clone(), None
    return ce, rbn, logits, grad


def assert_matches(got, expected, rtol, atol):
    """atol is relative to each result's largest magnitude (gradients are sums of many terms)."""
    for name, a, b in zip(("ce", "rbn", "logits", "grad"), got, expected):
        scale = float(b.abs().max())
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol * scale, msg=lambda m: f"{name}: {m}")


def hooks_left(net):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in net.modules())


@pytest.mark.parametrize("chunk_size", [1, 5, 12, 64])
def test_matches_full_batch_float64(chunk_size):
    net = frozen(SmallConvNet())
    natural, labels, u = batch()
    expected = reference(net, natural, labels, u, r_bn=0.7, first_bn_mult=10.0)
    got = chunked(net, natural, labels, u, r_bn=0.7, first_bn_mult=10.0, chunk_size=chunk_size)
    assert got[0].shape == (GROUPS,) and got[1].shape == (GROUPS,) and got[2].shape == (GROUPS * N_PER_GROUP, CLASSES)
    assert got[3].abs().max() > 0
    assert_matches(got, expected, rtol=1e-9, atol=1e-12)
    assert hooks_left(net) == 0


@pytest.mark.parametrize("backend", ["torch", "auto", "triton"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_full_batch_float32(backend, channels_last):
    why = backends.unavailable_reason(backend, torch.device("cpu")) if backend != "auto" else None
    if why:
        pytest.skip(why)
    net = frozen(SmallConvNet(), torch.float32)
    natural, labels, u = batch(torch.float32)
    if channels_last:
        natural = natural.contiguous(memory_format=torch.channels_last)
    expected = reference(net, natural, labels, u, r_bn=0.7, first_bn_mult=10.0)
    got = chunked(net, natural, labels, u, r_bn=0.7, first_bn_mult=10.0, chunk_size=5, backend=backend)
    assert_matches(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["unused_bn", "aux_bn", "shared_bn", "sequence_bn"])
def test_layer_sets_match_the_tracker(kind):
    """A BN that never runs is skipped; a BN whose output is unused still gets its gradient;
    a BN called twice counts as two layers (as in BNStatTracker); a BatchNorm1d on (N, C, L)
    inputs is matched per channel over N*L values, as the tracker does."""
    net = frozen(SmallConvNet(**{kind: True}))
    natural, labels, u = batch()
    expected = reference(net, natural, labels, u, r_bn=0.7, first_bn_mult=3.0)
    got = chunked(net, natural, labels, u, r_bn=0.7, first_bn_mult=3.0, chunk_size=5)
    assert_matches(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("r_bn, ce_weight", [(0.0, 1.0), (0.5, 0.0)])
def test_one_term_only(r_bn, ce_weight):
    net = frozen(SmallConvNet())
    natural, labels, u = batch()
    expected = reference(net, natural, labels, u, r_bn, 10.0, ce_weight=ce_weight)
    got = chunked(net, natural, labels, u, r_bn, 10.0, chunk_size=7, ce_weight=ce_weight)
    assert_matches(got, expected, rtol=1e-9, atol=1e-12)


def test_gradient_accumulates_like_backward():
    net = frozen(SmallConvNet())
    natural, labels, u = batch()
    grad = chunked(net, natural, labels, u, 0.7, 10.0, chunk_size=5)[3]
    u.grad = torch.ones_like(u)
    chunked_loss_backward(net, compose(natural, u), labels, GROUPS, 0.7, 10.0, 5, backend="torch")
    torch.testing.assert_close(u.grad, grad + 1, rtol=1e-12, atol=1e-12)


class CountingRows(RowsFrom):
    """compose(natural, u) made chunk by chunk, recording the ranges asked for."""

    def __init__(self, natural, u):
        self.ranges = []

        def make(lo, hi):
            self.ranges.append((lo, hi))
            return compose(natural[lo:hi], u)

        super().__init__(natural.shape[0], make)


@pytest.mark.parametrize("chunk_size", [1, 5, 12, 64])
def test_rows_made_chunk_by_chunk_match_full_batch(chunk_size):
    """A RowsFrom input: each chunk made from its rows alone and backpropagated straight into
    the leaves gives the whole-batch gradient; no range beyond the batch is asked for."""
    net = frozen(SmallConvNet())
    natural, labels, u = batch()
    expected = reference(net, natural, labels, u, r_bn=0.7, first_bn_mult=10.0)
    rows = CountingRows(natural, u)
    ce, rbn, logits = chunked_loss_backward(net, rows, labels, GROUPS, 0.7, 10.0, chunk_size, backend="torch")
    assert_matches((ce, rbn, logits, u.grad), expected, rtol=1e-9, atol=1e-12)
    starts = list(range(0, GROUPS * N_PER_GROUP, chunk_size))
    chunks = [(lo, min(lo + chunk_size, GROUPS * N_PER_GROUP)) for lo in starts]
    assert rows.ranges == chunks + chunks  # each chunk once per pass, within the batch
    assert hooks_left(net) == 0


def test_rows_that_do_not_require_grad_are_refused():
    net = frozen(SmallConvNet())
    natural, labels, _ = batch()
    with pytest.raises(ValueError, match="must require grad"):
        chunked_loss_backward(net, RowsFrom(natural.shape[0], lambda lo, hi: natural[lo:hi]), labels, GROUPS, 1.0,
                              1.0, chunk_size=5)
    assert hooks_left(net) == 0


@pytest.mark.parametrize("as_rows", [False, True])
def test_losses_without_backward(as_rows):
    """backward=False: the same losses and logits from the statistics pass alone, no gradient
    anywhere, one teacher call per chunk."""
    net = frozen(FailingNet(fail_at=0))
    natural, labels, u = batch()
    expected = reference(net, natural, labels, u, r_bn=0.7, first_bn_mult=10.0)
    net.calls = 0
    x = CountingRows(natural, u) if as_rows else compose(natural, u).detach()
    with torch.no_grad():
        got = chunked_loss_backward(net, x, labels, GROUPS, 0.7, 10.0, chunk_size=5, backend="torch", backward=False)
    assert net.calls == 3 and u.grad is None
    for name, a, b in zip(("ce", "rbn", "logits"), got, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("start, stop, size", [(0, 12, 6), (5, 10, 6), (3, 20, 4), (4, 5, 4), (0, 3, 1), (2, 9, 100)])
def test_group_segments_cover_the_rows(start, stop, size):
    segments = list(group_segments(start, stop, size))
    assert len(segments) <= 3
    assert segments[0][0] == start and segments[-1][1] == stop
    for (lo, hi, group, k), nxt in zip(segments, segments[1:] + [None]):
        assert lo < hi and (nxt is None or nxt[0] == hi)
        if k > 1 or hi - lo == size:
            assert lo == group * size and hi == (group + k) * size
        else:
            assert k == 1 and group * size <= lo < hi <= (group + 1) * size


def call_args(**overrides):
    net = frozen(SmallConvNet())
    natural, labels, u = batch()
    args = dict(teacher=net, x=compose(natural, u), labels=labels, groups=GROUPS, r_bn=1.0, first_bn_mult=1.0, chunk_size=4)
    args.update(overrides)
    return args


@pytest.mark.parametrize("name, value", [
    ("groups", 5), ("groups", 0), ("chunk_size", 0), ("chunk_size", 2.5),
    ("x", torch.rand(12, 3, 8, 8, dtype=torch.float64)), ("labels", torch.zeros(11, dtype=torch.long)),
    ("labels", torch.zeros(12)), ("labels", torch.zeros(12, dtype=torch.int32)),
    ("labels", torch.full((12,), -1)), ("labels", torch.full((12,), CLASSES)),
])
def test_bad_arguments_name_the_argument(name, value):
    args = call_args(**{name: value})
    with pytest.raises(ValueError, match=name):
        chunked_loss_backward(**args)
    assert hooks_left(args["teacher"]) == 0


@pytest.mark.parametrize("start, stop, group_size", [(0, 4, 0), (0, 4, -2), (0, 4, 1.5), (-1, 4, 2), (0, 4.0, 2)])
def test_group_segments_refuses_bad_arguments(start, stop, group_size):
    name = "group_size" if not isinstance(group_size, int) or group_size < 1 else "start" if start != 0 else "stop"
    with pytest.raises(ValueError, match=name):
        group_segments(start, stop, group_size)


def test_training_mode_bn_refused():
    args = call_args()
    args["teacher"].bn2.train()
    with pytest.raises(ValueError, match="'bn2' is in training mode"):
        chunked_loss_backward(**args)
    assert hooks_left(args["teacher"]) == 0
    assert args["x"].grad_fn is not None and args["teacher"].bn2.num_batches_tracked == 0


class FailingNet(SmallConvNet):
    def __init__(self, fail_at):
        super().__init__()
        self.calls, self.fail_at = 0, fail_at

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("teacher failed")
        return super().forward(x)


@pytest.mark.parametrize("fail_at", [2, 5])  # 3 chunks: call 2 is in pass 1, call 5 in pass 2
def test_hooks_removed_when_the_teacher_raises(fail_at):
    net = frozen(FailingNet(fail_at))
    natural, labels, u = batch()
    with pytest.raises(RuntimeError, match="teacher failed"):
        chunked_loss_backward(net, compose(natural, u), labels, GROUPS, 1.0, 1.0, chunk_size=4)
    assert hooks_left(net) == 0 and u.grad is None
