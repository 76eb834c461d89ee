"""User-causable errors raise ValueError naming the argument, before any kernel runs."""
import importlib

import pytest
import torch

from infer_fast.ops import BackendUnavailableError, bn_stat_loss, ufc_compose


def stats(c=4):
    return torch.zeros(c), torch.ones(c)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: (torch.randn(2, 4, 3), *stats()), r"x must be \(N, C, H, W\) or \(N, C\)"),
        (lambda: (torch.randn(2, 4, 3, 3, 1), *stats()), r"x must be"),
        (lambda: (torch.randint(0, 5, (2, 4, 3, 3)), *stats()), r"x must be float16"),
        (lambda: (torch.randn(0, 4, 3, 3), *stats()), r"x must not be empty"),
        (lambda: (torch.randn(2, 5, 3, 3), *stats()), r"running_mean must have shape \(5,\)"),
        (lambda: (torch.randn(2, 4, 3, 3), torch.zeros(4), torch.ones(3)), r"running_var must have shape \(4,\)"),
        (lambda: (torch.randn(2, 4, 3, 3), torch.zeros(4), torch.ones(4, dtype=torch.float64)), r"running_var dtype"),
        (lambda: (torch.randn(2, 4, 3, 3), torch.zeros(4, dtype=torch.long), torch.ones(4)), r"running_mean must be a float"),
        (lambda: (torch.randn(2, 4, 3, 3), torch.zeros(4, device="meta"), torch.ones(4)), r"running_mean is on meta"),
    ],
)
def test_bn_stat_loss_rejects(make, match):
    with pytest.raises(ValueError, match=match):
        bn_stat_loss(*make(), backend="torch")


@pytest.mark.parametrize("groups,match", [(3, r"groups=3 does not divide the batch size N=4"), (0, "groups must be a positive int"), (1.5, "groups must be")])
def test_bn_stat_loss_rejects_groups(groups, match):
    with pytest.raises(ValueError, match=match):
        bn_stat_loss(torch.randn(4, 4, 2, 2), *stats(), groups=groups, backend="torch")


def compose_args(**over):
    args = dict(
        natural=torch.randn(3, 5, 2, 4, 4),
        ufc=torch.randn(2, 2, 4, 4),
        index=torch.tensor([0, 2]),
        shifts=None,
        flips=None,
        lo=None,
        hi=None,
    )
    args.update(over)
    return args


@pytest.mark.parametrize(
    "over,match",
    [
        (dict(natural=torch.randn(5, 2, 4, 4)), r"natural must be \(K, C, ch, H, W\)"),
        (dict(ufc=torch.randn(2, 4, 4)), r"ufc must be \(G, ch, H, W\)"),
        (dict(ufc=torch.randn(2, 3, 4, 4)), r"ufc images \(3, 4, 4\) must match natural images \(2, 4, 4\)"),
        (dict(ufc=torch.randn(2, 2, 4, 4, dtype=torch.float64)), r"ufc dtype torch.float64 differs"),
        (dict(natural=torch.randint(0, 9, (3, 5, 2, 4, 4))), r"natural must be float16"),
        (dict(index=torch.tensor([0, 3])), r"index values must lie in \[0, 3\)"),
        (dict(index=torch.tensor([-1, 0])), r"index values must lie in \[0, 3\)"),
        (dict(index=torch.tensor([0])), r"index must have shape \(2,\)"),
        (dict(index=torch.tensor([0.0, 1.0])), r"index must be an integer tensor"),
        (dict(shifts=torch.zeros(2, 3, dtype=torch.long)), r"shifts must be a \(2, 2\) integer tensor"),
        (dict(shifts=torch.zeros(2, 2)), r"shifts must be an integer tensor"),
        (dict(flips=torch.zeros(3, dtype=torch.bool)), r"flips must be a \(2,\) bool tensor"),
        (dict(lo=[0.0, 1.0, 2.0]), r"lo must give one bound per channel \(2\)"),
        (dict(hi=torch.zeros(3)), r"hi must be a scalar or have shape \(2,\)"),
        (dict(index=torch.tensor([0, 1], device="meta")), r"index is on meta"),
    ],
)
def test_ufc_compose_rejects(over, match):
    with pytest.raises(ValueError, match=match):
        ufc_compose(**compose_args(**over), backend="torch")


def test_unknown_backend():
    with pytest.raises(BackendUnavailableError, match="unknown backend 'fast'"):
        bn_stat_loss(torch.randn(2, 4, 2, 2), *stats(), backend="fast")


def test_cuda_backend_on_cpu_tensor_names_what_is_missing():
    with pytest.raises(BackendUnavailableError, match="backend 'cuda' runs on CUDA tensors, got a cpu tensor"):
        bn_stat_loss(torch.randn(2, 4, 2, 2), *stats(), backend="cuda")


def test_errors_come_before_any_kernel(monkeypatch):
    """A bad argument never reaches the op's dispatch."""
    bn_module = importlib.import_module("infer_fast.ops.bn_stat_loss")
    compose_module = importlib.import_module("infer_fast.ops.ufc_compose")

    def boom(*args):
        raise AssertionError("the op was dispatched")

    monkeypatch.setattr(bn_module, "_bn_stat_loss_op", boom)
    monkeypatch.setattr(compose_module, "_compose_op", boom)
    with pytest.raises(ValueError):
        bn_stat_loss(torch.randn(3, 4, 2, 2), *stats(), groups=2)
    with pytest.raises(ValueError):
        ufc_compose(**compose_args(index=torch.tensor([0, 7])))



def test_an_index_at_the_address_of_a_checked_one_is_checked_again():
    """The once-per-tensor check of index values is tied to the tensor object, not to its
    address and version: a new out-of-range index in the memory of a checked one (as the
    allocator hands out a freed block; here the same storage, made so on purpose) is refused,
    not dispatched (CI once dispatched [0, 7] this way, test_errors_come_before_any_kernel)."""
    storage = torch.tensor([0, 1]).untyped_storage()
    checked = torch.empty(0, dtype=torch.int64).set_(storage, 0, (2,))
    ufc_compose(**compose_args(index=checked))  # valid: checked and remembered
    address, version = checked.data_ptr(), checked._version
    del checked
    storage_view = torch.empty(0, dtype=torch.int64).set_(storage, 0, (2,))
    storage_view.data.copy_(torch.tensor([0, 7]))  # (a raw write: like fresh memory, no version of this tensor)
    bad = torch.empty(0, dtype=torch.int64).set_(storage, 0, (2,))
    assert (bad.data_ptr(), bad._version) == (address, version)  # what the old address-keyed record matched
    with pytest.raises(ValueError, match=r"index values must lie in \[0, 3\).*got \[0, 7\]"):
        ufc_compose(**compose_args(index=bad))

def test_malformed_compose_bounds_name_the_problem():
    """NaN bounds and lo > hi are refused before any kernel, given as numbers, lists or tensors."""
    for lo, hi, match in ((float("nan"), 1.0, "lo must not be NaN"), (-1.0, [1.0, float("nan")], "hi must not be NaN"),
                          (2.0, 1.0, "lo must not exceed hi: channel 0 has lo = 2 > hi = 1"),
                          ([-1.0, 0.5], torch.tensor([1.0, 0.25]), "channel 1 has lo = 0.5 > hi = 0.25"),
                          (torch.tensor([0.0, float("nan")]), None, "lo must not be NaN")):
        with pytest.raises(ValueError, match=match):
            ufc_compose(**compose_args(lo=lo, hi=hi))
    ufc_compose(**compose_args(lo=-1.0, hi=[1.0, 1.0]))  # well-formed bounds pass
