"""The ops' API at its edges: what a tracker keeps when the model is run through another
entry point, copies and pickles of a tracked model, double backward, and malformed compose
bounds or indices."""
import copy
import io
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from conftest import backend_params
from infer_fast.ops import (BNStatTracker, bn_eval_with_stat_loss, bn_stat_loss, bn_stat_loss_naive, ufc_compose,
                            ufc_compose_naive)

CPU_BACKENDS = [p for p in backend_params() if p.values[1] == "cpu"]


class Net(nn.Module):
    """A built-in model's shape: forward(x) = head(forward_features(x)), BN in both."""

    def __init__(self, shared_twice=False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))
        self.shared_twice = shared_twice  # the block (its BN) runs twice in one forward

    def forward_features(self, x):
        x = self.block(self.stem(x))
        return (self.block(x) if self.shared_twice else x).mean((2, 3))

    def forward(self, x):
        return self.head(self.forward_features(x))


def teacher(shared_twice=False):
    torch.manual_seed(0)
    net = Net(shared_twice)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


# ---- 1. a forward through any entry point starts a fresh list --------------------------------

@pytest.mark.parametrize("fused", [False, True])
def test_forward_through_forward_features_or_a_submodule_starts_a_new_forward(fused):
    """Losses were cleared only by a call of the model itself: forward_features or a submodule
    appended, keeping every earlier graph alive and adding stale layers to weighted_sum."""
    net = teacher()
    x = torch.randn(4, 3, 6, 6)
    tracker = BNStatTracker(net, groups=2, fused=fused)
    net(x)
    assert tracker.names == ["stem.1", "block.1", "head.1"]
    for _ in range(3):
        net.forward_features(x * 2)
        assert tracker.names == ["stem.1", "block.1"]
    alone = BNStatTracker(net, groups=2)
    net.forward_features(x * 2)
    torch.testing.assert_close(tracker.weighted_sum(10.0), alone.weighted_sum(10.0))
    net.block(net.stem(x))
    assert tracker.names == ["stem.1", "block.1"]
    net.stem(x)  # a layer seen in the current forward: a new one
    assert tracker.names == ["stem.1"]
    net.head(torch.randn(4, 4))  # a layer not seen yet: the same forward, run in pieces
    assert tracker.names == ["stem.1", "head.1"]
    alone.remove()
    tracker.remove()


@pytest.mark.parametrize("fused", [False, True])
def test_a_layer_run_twice_in_one_call_of_the_model_counts_twice(fused):
    net = teacher(shared_twice=True)
    tracker = BNStatTracker(net, fused=fused)
    net(torch.randn(4, 3, 6, 6))
    assert tracker.names == ["stem.1", "block.1", "block.1", "head.1"]
    net(torch.randn(4, 3, 6, 6))
    assert len(tracker.names) == 4
    tracker.remove()


def test_a_failed_call_of_the_model_ends_it():
    """The model's call ends even when its forward raises: a later forward_features is a
    new forward, not appended to the failed one."""
    net = teacher()
    tracker = BNStatTracker(net)
    with pytest.raises(RuntimeError):
        net(torch.randn(4, 3, 6, 6)[:, :2])  # a channel mismatch in the stem
    net(torch.randn(4, 3, 6, 6))
    net.forward_features(torch.randn(4, 3, 6, 6))
    assert tracker.names == ["stem.1", "block.1"]
    tracker.remove()


def test_built_in_model_entry_points():
    """The hunt's case: a built-in model run through forward, forward_features and
    penultimate_features."""
    from infer_fast.models import create_model, penultimate_features

    net = create_model("convnet-w8-d2", 10, 1, 28).eval()
    tracker = BNStatTracker(net)
    x = torch.randn(4, 1, 28, 28)
    for run in (net, net.forward_features, lambda x: penultimate_features(net, x), net.forward_features):
        run(x)
        assert len(tracker.names) == 2
    tracker.remove()


# ---- 2. copies and pickles of a tracked model are plain models ---------------------------------

def plain_bn_classes(net):
    return {type(m) for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


@pytest.mark.parametrize("fused", [False, True])
def test_a_deep_copy_of_a_tracked_model_is_plain(fused):
    """Copies ran the original's fused forward (its statistics, its tracker), stayed patched
    after remove(), and a copy after a forward raised (the loss tensors are not leaves)."""
    net = teacher()
    x = torch.randn(4, 3, 6, 6, requires_grad=True)
    tracker = BNStatTracker(net, groups=2, fused=fused)
    net(x)  # the tracker now holds non-leaf losses
    twin = copy.deepcopy(net)
    assert plain_bn_classes(twin) == {nn.BatchNorm2d, nn.BatchNorm1d}
    with torch.no_grad():
        for m in twin.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.add_(1.0)
    before = tracker.losses()
    y_twin = twin(x)
    assert tracker.names == ["stem.1", "block.1", "head.1"] and torch.equal(tracker.losses(), before)
    tracker.clear()
    twin(x)
    with pytest.raises(RuntimeError, match="run a forward pass first"):
        tracker.losses()  # the copy's layers add nothing to the tracker
    tracker.remove()
    assert not torch.allclose(y_twin, net(x))  # the copy runs its own statistics
    torch.testing.assert_close(twin(x), y_twin)


@pytest.mark.parametrize("fused", [False, True])
def test_a_tracked_model_pickles_and_saves_as_a_plain_model(fused):
    net = teacher()
    x = torch.randn(4, 3, 6, 6)
    tracker = BNStatTracker(net, fused=fused)
    expected = net(x)
    loaded = pickle.loads(pickle.dumps(net))
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    for other in (loaded, saved):
        assert plain_bn_classes(other) == {nn.BatchNorm2d, nn.BatchNorm1d}
        tracker.clear()
        torch.testing.assert_close(other(x), expected)
        assert tracker.names == []
    tracker.remove()
    assert plain_bn_classes(net) == {nn.BatchNorm2d, nn.BatchNorm1d}


def test_a_tracked_teacher_copied_into_channels_last():
    """The library's own copy (copies_in_layout, as rded and the students' dynamic teachers
    make it) of a teacher that is being tracked."""
    from infer_fast.mixed_precision import copies_in_layout

    net = teacher()
    tracker = BNStatTracker(net, fused=True)
    x = torch.randn(4, 3, 6, 6, requires_grad=True)
    expected = net(x)
    (copied,) = copies_in_layout([net], channels_last=True)
    torch.testing.assert_close(copied(x), expected)
    assert tracker.names == ["stem.1", "block.1", "head.1"]
    tracker.remove()


# ---- 3. double backward: one clear error on every op and backend ---------------------------------

def op_cases(backend, device="cpu"):
    gen = torch.Generator().manual_seed(0)
    rm, rv = torch.randn(3, dtype=torch.float64, generator=gen), torch.rand(3, dtype=torch.float64, generator=gen) + 0.5
    rm, rv, index = rm.to(device), rv.to(device), torch.tensor([0, 1], device=device)
    return {
        "bn_stat_loss": lambda x: bn_stat_loss(x, rm, rv, 2, backend).sum(),
        "bn_eval_with_stat_loss": lambda x: sum(t.square().sum() for t in bn_eval_with_stat_loss(
            x, rm, rv, torch.ones(3, dtype=torch.float64, device=device), None, 1e-5, 2, backend)),
        "ufc_compose": lambda x: ufc_compose(x[:2, None], x[2:], index, lo=-1.0, hi=1.0,
                                             backend=backend).pow(3).sum(),
    }


@pytest.mark.parametrize("backend,device", backend_params())  # (the GPU's rows where one is lent)
@pytest.mark.parametrize("op", ["bn_stat_loss", "bn_eval_with_stat_loss", "ufc_compose"])
def test_double_backward_is_refused_with_one_clear_error(backend, device, op):
    """It was silently wrong: a second derivative w.r.t. x came back None (the reference
    gives a number), with only torch's warning that the result may be incorrect."""
    fn = op_cases(backend, device)[op]
    x = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
    x.requires_grad_()
    (plain,) = torch.autograd.grad(fn(x), x)
    (grad,) = torch.autograd.grad(fn(x), x, create_graph=True)
    torch.testing.assert_close(grad.detach(), plain)  # first order as without the graph
    message = f"double backward through {op} is not supported"
    with pytest.raises(RuntimeError, match=message):
        torch.autograd.grad(grad.square().sum(), x, allow_unused=True)
    with pytest.raises(RuntimeError, match=message):
        torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)


def test_double_backward_of_the_references_still_works():
    x = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    assert torch.autograd.gradgradcheck(lambda x: bn_stat_loss_naive(x, rm, rv, 2), (x,))


@pytest.mark.parametrize("backend,device", CPU_BACKENDS)
def test_a_graph_asked_for_but_unused_costs_nothing(backend, device):
    """create_graph=True for another term (a gradient penalty elsewhere) still works: only
    differentiating the op's gradient again is refused."""
    x = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    w = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    (gx, gw) = torch.autograd.grad(bn_stat_loss(x, rm, rv, 2, backend).sum() + (w * x).square().sum(), (x, w),
                                   create_graph=True)
    (ggw,) = torch.autograd.grad(gw, w)  # d/dw of sum(2 w x^2): not through the op
    torch.testing.assert_close(ggw, 2 * x.detach().square().sum())


# ---- 4. compose: malformed bounds, an index changed behind the version counter -------------------

def compose_inputs():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(3, 4, 2, 5, 5, generator=gen), torch.randn(5, 2, 5, 5, generator=gen)


@pytest.mark.parametrize("name", ["lo", "hi"])
@pytest.mark.parametrize("value,shown", [
    ("ab", "'ab'"), (b"ab", "b'ab'"), (object(), "<object object"), ([1.0, "a"], r"\[1.0, 'a'\]"),
    (True, "True"), ([True, 1.0], r"\[True, 1.0\]"), (np.array(0.5), "array"),
])
def test_bounds_that_are_no_numbers_are_refused_naming_them(name, value, shown):
    natural, ufc = compose_inputs()
    bounds = {"lo": -1.0, "hi": 1.0, name: value}
    with pytest.raises(ValueError, match=rf"{name} must be None, a number, a sequence of 2 numbers .*got {shown}"):
        ufc_compose(natural, ufc, torch.tensor([0, 1, 2, 1, 0]), **bounds)


@pytest.mark.parametrize("dtype", [torch.bool, torch.complex64])
def test_bound_tensors_of_no_real_dtype_are_refused(dtype):
    natural, ufc = compose_inputs()
    with pytest.raises(ValueError, match=f"hi must be a real-valued tensor, got {dtype}"):
        ufc_compose(natural, ufc, torch.tensor([0, 1, 2, 1, 0]), lo=-1.0, hi=torch.ones(2, dtype=dtype))


def test_numeric_bounds_of_every_kind_still_pass():
    natural, ufc = compose_inputs()
    index = torch.tensor([0, 1, 2, 1, 0])
    expected = ufc_compose_naive(natural, ufc, index, None, None, torch.full((2,), -1.0), torch.full((2,), 1.0))
    for lo, hi in ((-1, 1), (np.float32(-1), [np.float64(1), 1]), (np.array([-1.0, -1.0]), (1.0, 1.0)),
                   (torch.tensor(-1), torch.tensor([1, 1]))):
        torch.testing.assert_close(ufc_compose(natural, ufc, index, lo=lo, hi=hi), expected)


@pytest.mark.parametrize("backend,device", CPU_BACKENDS)
@pytest.mark.parametrize("write", ["data", "numpy", "storage"])
def test_an_index_changed_behind_the_version_counter_is_refused(backend, device, write):
    """A check cached by tensor and version missed a write through .data or numpy (no version
    bump): the C++ CPU kernel caught it late, the Triton one read out of bounds. On the host
    the index is checked at every call."""
    natural, ufc = compose_inputs()
    index = torch.tensor([0, 1, 2, 1, 0])
    ufc_compose(natural, ufc, index, backend=backend)
    version = index._version
    if write == "data":
        index.data[0] = 7
    elif write == "numpy":
        index.numpy()[0] = 7
    else:
        index.untyped_storage().copy_(torch.tensor([0, 1, 2, 1, -1]).untyped_storage())
    assert index._version == version
    with pytest.raises(ValueError, match=r"index values must lie in \[0, 3\)"):
        ufc_compose(natural, ufc, index, backend=backend)


def test_an_index_made_in_inference_mode_is_checked():
    """Inference tensors have no version counter to cache a check by."""
    natural, ufc = compose_inputs()
    with torch.inference_mode():
        out = ufc_compose(natural, ufc, torch.tensor([0, 1, 2, 1, 0]))
        with pytest.raises(ValueError, match=r"index values must lie in \[0, 3\)"):
            ufc_compose(natural, ufc, torch.tensor([0, 1, 2, 1, 3]))
    assert out.shape == (5, 4, 2, 5, 5)


def test_the_triton_launchers_refuse_an_index_out_of_range_themselves():
    """What the op hands the Triton kernels is checked where they read it (on a GPU by a
    device-side assert): a launcher called with an index the op never saw does not read out
    of bounds."""
    from infer_fast.ops import available_backends

    if "triton" not in available_backends("cpu"):
        pytest.skip("triton not usable here")
    from infer_fast.ops import _triton

    natural, ufc = compose_inputs()
    index = torch.tensor([0, 1, 2, 1, 3])
    lo, hi = -torch.ones(2), torch.ones(2)
    with pytest.raises(RuntimeError, match=r"ufc_compose: index values must lie in \[0, 3\)"):
        _triton.ufc_compose(natural, ufc, index, None, None, lo, hi, torch.empty(5, 4, 2, 5, 5))
    with pytest.raises(RuntimeError, match=r"ufc_compose: index values must lie in \[0, 3\)"):
        _triton.ufc_compose_grad_ufc(torch.ones(5, 4, 2, 5, 5), natural, ufc, index, None, None, lo, hi,
                                     torch.empty_like(ufc))


def test_the_readmes_api_example_runs_as_written():
    """The README's "## API" block, run as it is (it named running_mean, natural, ufc... without
    making them), gives the shapes its comments say."""
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"\n## API\n\n```python\n(.*?)```\n", readme, flags=re.S)
    names: dict = {}
    exec(compile(block, "README.md (API)", "exec"), names)  # noqa: S102 - the project's own README
    assert names["loss"].shape == (4,) and names["x"].grad is not None
    assert names["images"].shape == (names["G"], names["C"], 3, 32, 32)
    assert names["r_bn"].shape == (names["G"],)
