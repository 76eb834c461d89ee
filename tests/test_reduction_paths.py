"""Every reduction path of every backend against the float64 reference (issue 19, point 1).

The Triton and CUDA launch plans depend on the shape only, and the shapes of the other test
files plan one split per reduction and one block per image, so a wrong split (workspace +
finalize), channel-block, L-split or pixel-block path would pass them. Here the planners are
forced (infer_fast.ops.plan_override, test-only) so that small shapes reach those paths through
the public ops, forward and backward, and every test asserts the forced plan is the one that
ran. The C++ CPU kernels have no knobs (they partition by shape only): shapes just large enough
to cut their reductions into several work items cover them (test_cpu_work_items_*).

Every public-op test runs with torch's fill of uninitialized memory on (NaN), so every output,
workspace and partials buffer the launchers take starts poisoned: an element a kernel leaves
unwritten shows up as NaN.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import pytest
import torch

from conftest import backend_params, tolerance, torch_threads
from infer_fast.ops import (backends, bn_eval_with_stat_loss, bn_eval_with_stat_loss_naive, bn_stat_loss,
                            bn_stat_loss_naive, reference, ufc_compose, ufc_compose_naive)
from infer_fast.ops.layout import as_ncl


@pytest.fixture(autouse=True)
def poisoned_empty():
    """torch.empty (in Python and in the extension's C++) fills float memory with NaN."""
    mode = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)  # warn_only: no op refuses to run
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        assert torch.empty(3).isnan().all(), "the NaN fill of torch.empty is not active"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "... does not have a deterministic implementation"
            yield
    finally:
        torch.use_deterministic_algorithms(mode[0], warn_only=mode[1])
        torch.utils.deterministic.fill_uninitialized_memory = fill


# ----------------------------------------------------------------------------------------
# Forcing plans and checking they ran
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AtLeast:
    """An expected plan value that the heuristic may exceed (default knobs on a GPU)."""
    value: int


def assert_plan(launcher: str, plan: Optional[dict], expected: Dict[str, object]) -> None:
    assert plan is not None, f"{launcher} did not launch under the forced plan"
    for key, want in expected.items():
        got = plan[key]
        if isinstance(want, AtLeast):
            assert got >= want.value, f"{launcher}: {key} = {got}, expected >= {want.value} (plan {plan})"
        else:
            assert got == want, f"{launcher}: {key} = {got}, expected {want} (plan {plan})"


@contextlib.contextmanager
def forced_plan(backend: str, triton: dict, cuda: dict):
    """Force ``triton`` knobs or the ``cuda`` override for ``backend``; yields a function
    launcher -> the plan of its last launch in the block (None for torch and cpu, which have
    no plan to force)."""
    from infer_fast.ops import plan_override

    if backend == "triton":
        with plan_override.triton_forced_plan(**triton) as launched:
            yield lambda launcher: next((p for name, p in reversed(launched) if name == launcher), None)
    elif backend == "cuda":
        with plan_override.cuda_forced_plan(**cuda):  # (which clears the report)
            yield lambda launcher: plan_override.cuda_plan_report()[launcher]
    else:
        yield None


def check_plans(backend: str, last_plan, expected: Dict[str, Dict[str, Dict[str, object]]], reaches: str) -> None:
    """``expected[backend][launcher]``: values the launcher's last plan must have for the
    test to reach ``reaches``."""
    if last_plan is None:
        return
    assert expected.get(backend), f"a {backend} path without an expected plan tests nothing forced"
    for launcher, values in expected[backend].items():
        assert_plan(f"{launcher} (to reach: {reaches})", last_plan(launcher), values)


def close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """The tolerance of the other test files: ``dtype``'s (rtol, atol), atol scaled by the
    reference's largest value."""
    rtol, atol = tolerance(dtype)
    assert not got.isnan().any(), f"{what}: NaN (an element left unwritten?)"
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol * max(1.0, want.abs().max().item()),
                               msg=lambda m: f"{what}: {m}")


# ----------------------------------------------------------------------------------------
# BN ops: inputs
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BnPath:
    """A shape, layout and input view, the knobs that make it reach ``reaches``, and the plan
    each backend must then run."""
    name: str
    reaches: str
    shape: tuple
    groups: int
    layout: str  # "nchw", "channels_last" (4-d) or "2d"
    view: str = "dense"
    triton: dict = field(default_factory=dict)
    cuda: dict = field(default_factory=dict)
    expected: Callable[[torch.dtype], dict] = lambda dtype: {}
    summed_upstream: bool = False  # the loss's gradient arrives expanded (stride 0)

    def __str__(self):
        return self.name


def cuda_vec(dtype):
    """Elements per 16-byte vector of the CUDA kernels."""
    return 16 // dtype.itemsize


def bn_expected(forward_triton, backward_triton, cuda_fn):
    """expected(dtype) -> {backend: {launcher: values}}; the CUDA values may depend on dtype
    (vector width)."""
    def expected(dtype):
        return {"triton": {"bn_stat_forward": forward_triton, "bn_stat_backward": backward_triton},
                "cuda": cuda_fn(dtype)}
    return expected


def cuda_default_tiles(channels, dtype):
    """The CUDA NLC plan's default channel tiles when C is not a multiple of the vector width:
    128-byte tiles of single channels."""
    return -(-channels // (128 // dtype.itemsize))


def cuda_row_vecs(length, dtype):
    """The CUDA NCL plan's 16-byte windows per row of ``length`` elements (bn_stat_loss.cu's
    header comment): enough for a row that starts at any offset mod the vector width a
    multiple of ``length`` can have; ``length`` // width when the width divides it."""
    vec = cuda_vec(dtype)
    return -(-(length + vec - math.gcd(length, vec)) // vec)


def cuda_split_plan(splits, groups, channels, nlc, vec, channel_tiles=None, row_vecs=None):
    """The CUDA plan of both BN launchers: ``splits`` > 1 blocks per (group, channel [tile])
    and the workspace of their partial sums (forward: workspace + finalize path). NCL: ``vec``
    is always the 16-byte width, with ``row_vecs`` windows per row."""
    values = dict(splits=splits, nlc=int(nlc), vec=vec)
    if channel_tiles is not None:
        values["channel_tiles"] = channel_tiles
    if row_vecs is not None:
        values["row_vecs"] = row_vecs
    forward = dict(values, workspace_elems=2 * groups * splits * channels)
    return {"bn_stat_forward": forward, "bn_stat_backward": values}


BN_PATHS = [
    BnPath("ncl-row-split", "NCL rows of a group split across programs/blocks", (8, 5, 6, 7), 2, "nchw",
           triton=dict(split=4, block_rows=1), cuda=dict(splits=3),
           # CUDA: 4 rows of L = 42 (11 fp32 / 6 bf16 windows, the first and last partial) in 3
           # chunks of 15 / 8 windows: every chunk starts mid-row
           expected=bn_expected(dict(kernel="rows", S=4, rsplit=4, lsplit=1), dict(num_qblocks=20, num_pblocks=1),
                                lambda dt: cuda_split_plan(3, 2, 5, False, cuda_vec(dt), row_vecs=cuda_row_vecs(42, dt)))),
    BnPath("ncl-l-split", "the rows kernel's L split (one row tile, L cut in 4)", (2, 3, 10, 10), 1, "nchw",
           triton=dict(split=4, block_rows=2, block_inner=32), cuda=dict(splits=5),
           expected=bn_expected(dict(kernel="rows", S=4, rsplit=1, lsplit=4), dict(num_qblocks=3, num_pblocks=4),
                                lambda dt: cuda_split_plan(5, 1, 3, False, cuda_vec(dt), row_vecs=cuda_row_vecs(100, dt)))),
    BnPath("ncl-many-splits", "more splits than the finalize adds at once (Triton's 32-wide BLOCK_S, CUDA's 32 "
           "split lanes for C <= 32)", (9, 2, 8, 8), 1, "nchw",
           triton=dict(split=64, block_rows=1, block_inner=16), cuda=dict(splits=36),
           expected=bn_expected(dict(kernel="rows", S=36, rsplit=9, lsplit=4), dict(num_qblocks=18, num_pblocks=4),
                                lambda dt: cuda_split_plan(36, 1, 2, False, cuda_vec(dt), row_vecs=64 // cuda_vec(dt)))),
    BnPath("nlc-channel-blocks", "C = 130: several channel blocks/tiles, rows split", (4, 130, 3, 3), 2,
           "channels_last", triton=dict(split=3, block_rows=4, block_inner=64), cuda=dict(splits=3, channel_tiles=3),
           # CUDA: 3 tiles of 44 channels, 256 // 44 = 5 row lanes (not a power of two)
           expected=bn_expected(dict(kernel="cols", S=3, num_cblocks=3), dict(num_qblocks=5, num_pblocks=3),
                                lambda dt: cuda_split_plan(3, 2, 130, True, 1, channel_tiles=3))),
    BnPath("nlc-vector-tiles", "channel tiles of 16-byte vectors, rows split", (4, 64, 5, 5), 1, "channels_last",
           triton=dict(split=2, block_rows=8, block_inner=32), cuda=dict(splits=2, channel_tiles=2),
           expected=bn_expected(dict(kernel="cols", S=2, num_cblocks=2), dict(num_qblocks=13, num_pblocks=2),
                                lambda dt: cuda_split_plan(2, 1, 64, True, cuda_vec(dt), channel_tiles=2))),
    BnPath("2d-wide", "(N, C) input, C = 257: 3 channel blocks, rows split", (6, 257), 3, "2d",
           triton=dict(split=2, block_rows=1), cuda=dict(splits=2),
           expected=bn_expected(dict(kernel="cols", S=2, num_cblocks=3), dict(num_qblocks=2, num_pblocks=2),
                                lambda dt: cuda_split_plan(2, 3, 257, True, 1, cuda_default_tiles(257, dt)))),
    BnPath("2d-finalize-channel-loop", "C = 1030: the finalize loops over channel tiles (> 1024)", (4, 1030), 1,
           "2d", triton=dict(split=2, block_rows=2), cuda=dict(splits=2),
           expected=bn_expected(dict(kernel="cols", S=2, num_cblocks=9), dict(num_pblocks=5),
                                lambda dt: cuda_split_plan(2, 1, 1030, True, 1))),
    BnPath("ncl-misaligned", "x at storage offset 1 (vector plan, unaligned pointer), rows split", (4, 6, 4, 4), 2,
           "nchw", view="offset1", triton=dict(split=2, block_rows=1), cuda=dict(splits=2),
           expected=bn_expected(dict(kernel="rows", S=2, rsplit=2), dict(num_qblocks=12),
                                lambda dt: cuda_split_plan(2, 2, 6, False, cuda_vec(dt), row_vecs=16 // cuda_vec(dt)))),
    BnPath("nlc-misaligned", "channels_last x at storage offset 1, channel tiles, rows split", (4, 16, 3, 3), 1,
           "channels_last", view="offset1", triton=dict(split=2, block_rows=4, block_inner=8),
           cuda=dict(splits=2, channel_tiles=2),
           expected=bn_expected(dict(kernel="cols", S=2, num_cblocks=2), dict(num_pblocks=2),
                                lambda dt: cuda_split_plan(2, 1, 16, True, cuda_vec(dt), channel_tiles=2))),
    BnPath("ncl-strided", "every other channel of a wider tensor (a non-contiguous view), rows split",
           (4, 6, 5, 5), 2, "nchw", view="strided", triton=dict(split=2, block_rows=1), cuda=dict(splits=2),
           expected=bn_expected(dict(kernel="rows", S=2, rsplit=2), dict(num_qblocks=12),
                                lambda dt: cuda_split_plan(2, 2, 6, False, cuda_vec(dt), row_vecs=cuda_row_vecs(25, dt)))),
    BnPath("expanded", "a channels_last batch expanded from one image (stride 0: the op copies it to NCHW), "
           "rows split, the summed loss's gradient expanded too", (4, 12, 3, 3), 2, "channels_last",
           view="expanded", summed_upstream=True, triton=dict(split=2, block_rows=1), cuda=dict(splits=3),
           # CUDA: 2 rows of 3 fp32 windows (3 splits) or 2 bf16 windows (as far as 4 allow: 2)
           expected=bn_expected(dict(kernel="rows", S=2, rsplit=2), dict(num_qblocks=24),
                                lambda dt: cuda_split_plan(3 if dt == torch.float32 else 2, 2, 12, False,
                                                           cuda_vec(dt), row_vecs=cuda_row_vecs(9, dt)))),
    # H*W not a multiple of the vector width (every ResNet's last stages): 16-byte windows
    # whose first/last ones per row are partial (CUDA: vec is the full width, never 1)
    BnPath("ncl-7x7-windows", "L = 49: partial windows at both ends of rows, rows split", (6, 3, 7, 7), 2, "nchw",
           triton=dict(split=3, block_rows=1), cuda=dict(splits=3),
           # CUDA: 3 rows of 13 fp32 / 7 bf16 windows in 3 chunks
           expected=bn_expected(dict(kernel="rows", S=3, rsplit=3), dict(num_qblocks=9, num_pblocks=1),
                                lambda dt: cuda_split_plan(3, 2, 3, False, cuda_vec(dt), row_vecs=cuda_row_vecs(49, dt)))),
    BnPath("ncl-7x7-misaligned", "L = 49 at storage offset 1: the same windows loaded element by element",
           (4, 5, 7, 7), 2, "nchw", view="offset1", triton=dict(split=2, block_rows=1), cuda=dict(splits=2),
           expected=bn_expected(dict(kernel="rows", S=2, rsplit=2), dict(num_qblocks=10, num_pblocks=1),
                                lambda dt: cuda_split_plan(2, 2, 5, False, cuda_vec(dt), row_vecs=cuda_row_vecs(49, dt)))),
    BnPath("ncl-14x14-windows", "L = 196 (bf16: 25 windows of 8, fp32: 49 plain vectors), rows split", (4, 3, 14, 14),
           1, "nchw", triton=dict(split=2, block_rows=1), cuda=dict(splits=2),
           expected=bn_expected(dict(kernel="rows", S=2, rsplit=2), dict(num_qblocks=12, num_pblocks=7),
                                lambda dt: cuda_split_plan(2, 1, 3, False, cuda_vec(dt), row_vecs=cuda_row_vecs(196, dt)))),
    BnPath("ncl-14x14-misaligned", "L = 196 at storage offset 1, rows split", (4, 3, 14, 14), 2, "nchw",
           view="offset1", triton=dict(split=2, block_rows=1), cuda=dict(splits=2),
           expected=bn_expected(dict(kernel="rows", S=2, rsplit=2), dict(num_qblocks=6, num_pblocks=7),
                                lambda dt: cuda_split_plan(2, 2, 3, False, cuda_vec(dt), row_vecs=cuda_row_vecs(196, dt)))),
]


def make_view(shape, layout, view, dtype, device, seed=0):
    """(leaf, make): ``make(leaf)`` is the input x of ``shape`` in ``layout``, seen through
    ``view`` ("dense", "offset1": storage offset 1, "strided": every other channel of a wider
    tensor, "expanded": one image expanded over the batch), so its gradient lands in the leaf
    (and ``make`` builds the float64 reference's x the same way). Values 1.5 * N(0, 1) + 0.3,
    made in fp32 and rounded to ``dtype`` once."""
    gen = torch.Generator().manual_seed(seed)
    n, c = shape[:2]
    hw = tuple(shape[2:])
    if layout == "channels_last":  # (N, H, W, C) memory, seen as (N, C, H, W)
        inner = (n, *hw, c)
        to_nchw = lambda t: t.permute(0, 3, 1, 2)  # noqa: E731
    else:
        inner = tuple(shape)
        to_nchw = lambda t: t  # noqa: E731
    numel = torch.Size(inner).numel()
    if view == "offset1":
        base_shape = (numel + 1,)
        make = lambda b: to_nchw(b[1:].view(inner))  # noqa: E731
    elif view == "strided":
        base_shape = (n, 2 * c) + hw if layout != "channels_last" else (n, *hw, 2 * c)
        make = (lambda b: b[:, ::2]) if layout != "channels_last" else (lambda b: to_nchw(b[..., ::2]))
    elif view == "expanded":
        base_shape = (1,) + inner[1:]
        make = lambda b: to_nchw(b.expand(inner))  # noqa: E731
    else:
        base_shape = inner
        make = to_nchw
    base = (torch.randn(base_shape, generator=gen) * 1.5 + 0.3).to(device=device, dtype=dtype)
    return base, make


def make_params(channels, device, seed=1):
    gen = torch.Generator().manual_seed(seed)
    rm = torch.randn(channels, generator=gen) * 0.2
    rv = torch.rand(channels, generator=gen) + 0.5
    weight = torch.rand(channels, generator=gen) + 0.5
    bias = torch.randn(channels, generator=gen) * 0.3
    return [t.to(device) for t in (rm, rv, weight, bias)]


# The parameters each op's gradient is compared for besides x: those its naive reference is
# differentiable in (F.batch_norm is not in the running statistics; test_bn_eval_stat's
# gradcheck covers those of the fused op).
COMPARED_PARAMS = {"bn_stat_loss": ("running_mean", "running_var"), "bn_eval_with_stat_loss": ("weight", "bias")}


def bn_op(op, x, params, groups, backend=None):
    """The outputs of the public op, or of its float64 naive reference when backend is None."""
    rm, rv, weight, bias = params
    if op == "bn_stat_loss":
        return [bn_stat_loss_naive(x, rm, rv, groups) if backend is None else bn_stat_loss(x, rm, rv, groups, backend)]
    if backend is None:
        return list(bn_eval_with_stat_loss_naive(x, rm, rv, weight, bias, 1e-3, groups))
    return list(bn_eval_with_stat_loss(x, rm, rv, weight, bias, eps=1e-3, groups=groups, backend=backend))


def compared(op, params):
    names = ("running_mean", "running_var", "weight", "bias")
    return [t for name, t in zip(names, params) if name in COMPARED_PARAMS[op]]


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op", ["bn_stat_loss", "bn_eval_with_stat_loss"])
@pytest.mark.parametrize("path", BN_PATHS, ids=str)
def test_bn_path_matches_float64(backend, device, path, op, dtype):
    """Forward (loss; y) and backward (x and COMPARED_PARAMS) of the public op on the forced
    path, against the float64 naive definition of the same input values."""
    base, make = make_view(path.shape, path.layout, path.view, dtype, device)
    params = make_params(path.shape[1], device)
    base.requires_grad_()
    for t in params:
        t.requires_grad_()
    x = make(base)
    if path.view == "offset1":
        assert x.storage_offset() == 1
    if path.layout == "channels_last" and path.view in ("dense", "offset1"):
        assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    groups = path.groups
    gen = torch.Generator().manual_seed(5)
    upstream_loss = (torch.ones((), device=device).expand(groups) if path.summed_upstream
                     else torch.linspace(0.5, 1.5, groups, device=device))
    grad_y = torch.randn(x.shape, generator=gen).to(device=device, dtype=dtype)

    with forced_plan(backend, path.triton, path.cuda) as last_plan:
        outputs = bn_op(op, x, params, groups, backend)
        upstream = [upstream_loss] if op == "bn_stat_loss" else [grad_y, upstream_loss]
        grads = torch.autograd.grad(outputs, [base, *compared(op, params)], upstream)
        check_plans(backend, last_plan, path.expected(dtype), path.reaches)

    base64 = base.detach().double().requires_grad_()
    params64 = [t.detach().double().requires_grad_(name in COMPARED_PARAMS[op])
                for name, t in zip(("running_mean", "running_var", "weight", "bias"), params)]
    ref_outputs = bn_op(op, make(base64), params64, groups)
    ref_upstream = [u.double() for u in upstream]
    ref_grads = torch.autograd.grad(ref_outputs, [base64, *compared(op, params64)], ref_upstream)

    loss, ref_loss = outputs[-1], ref_outputs[-1]
    assert loss.shape == (groups,) and loss.dtype == torch.float32
    assert not loss.isnan().any()
    torch.testing.assert_close(loss.double(), ref_loss.detach(), rtol=2e-5, atol=1e-6)
    if op == "bn_eval_with_stat_loss":
        assert outputs[0].dtype == dtype and outputs[0].shape == x.shape
        close(outputs[0], ref_outputs[0].detach(), dtype, "y")
    for name, got, want in zip(("x",) + COMPARED_PARAMS[op], grads, ref_grads):
        assert got.dtype == (dtype if name == "x" else torch.float32)
        close(got, want, dtype if name == "x" else torch.float32, f"grad {name}")


SUMS_PATHS = [p for p in BN_PATHS if p.name in ("ncl-l-split", "nlc-channel-blocks", "2d-finalize-channel-loop")]


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("path", SUMS_PATHS, ids=str)
def test_bn_stat_sums_split_matches_float64(backend, device, path):
    """The chunked mode's pass 1 (launcher bn_stat_sums: its finalize adds the split partials
    without finishing a loss), NaN-poisoned output, against float64 sums."""
    base, make = make_view(path.shape, path.layout, path.view, torch.float32, device)
    x = make(base)
    rm = make_params(path.shape[1], device)[0]
    groups, channels = path.groups, path.shape[1]
    out = torch.full((2, groups, channels), float("nan"), device=device)
    with forced_plan(backend, path.triton, path.cuda) as last_plan:
        backends.launcher(backend, "bn_stat_sums")(as_ncl(x), rm, groups, out)
        if last_plan is not None:
            forward = path.expected(torch.float32)[backend]["bn_stat_forward"]
            # the same partial-sums plan as the forward's (the workspace then holds the partials)
            assert_plan("bn_stat_sums", last_plan("bn_stat_sums"), forward)
    expected = torch.empty((2, groups, channels), dtype=torch.float64, device=device)
    reference.bn_stat_sums(as_ncl(x).double(), rm.double(), groups, expected)  # the torch backend's, in float64
    close(out, expected, torch.float32, "sums")


# ----------------------------------------------------------------------------------------
# The C++ CPU kernels: shapes that cut their sums into several work items
# ----------------------------------------------------------------------------------------
def split_even(total, target):
    """csrc/cpu/common.h's split_even: (count, size) of [0, total) in parts of about target."""
    target = max(1, min(target, total))
    count = -(-total // target)
    return count, -(-total // count)


def cpu_sums_work_items(shape, groups, layout):
    """The work items of csrc/cpu/bn_stat_loss.cpp's sums_ncl / sums_nlc for this shape (they
    depend on the shape only): kSegElems = 65536, kChannelTile = 1024, item_elems(total) =
    min(262144, max(16384, total / 64))."""
    n, c = shape[:2]
    length = torch.Size(shape[2:]).numel()
    npg, total = n // groups, n * c * length
    item = min(262144, max(16384, total // 64))
    if layout == "channels_last":
        tiles, tile = split_even(c, 1024)
        row_blocks, _ = split_even(npg * length, item // tile)
        return dict(channel_tiles=tiles, row_blocks=row_blocks)
    segments, seg = split_even(length, 65536)
    channel_blocks, cb = split_even(c, 65536 // seg)
    row_blocks, _ = split_even(npg, item // (cb * seg))
    return dict(l_segments=segments, channel_blocks=channel_blocks, row_blocks=row_blocks)


CPU_WORK_ITEMS = [
    # (shape, groups, layout, the work items the CPU sums cut it into)
    ((4, 40, 64, 64), 1, "nchw", dict(l_segments=1, channel_blocks=3, row_blocks=4)),
    ((1, 2, 260, 260), 1, "nchw", dict(l_segments=2, channel_blocks=2, row_blocks=1)),
    ((8, 1100, 3, 3), 2, "channels_last", dict(channel_tiles=2, row_blocks=2)),
]


@pytest.fixture
def three_threads():
    """The CPU backward is one parallel loop over the elements, cut by thread count: three
    threads put its chunk boundaries mid-row."""
    with torch_threads(3):
        yield


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,groups,layout,items", CPU_WORK_ITEMS, ids=str)
def test_cpu_work_items_match_float64(backend, device, shape, groups, layout, items, dtype, three_threads):
    """The fused op at shapes the C++ CPU kernels cut into several work items (every backend
    runs them: the others on their default plans)."""
    assert cpu_sums_work_items(shape, groups, layout) == items
    assert max(items.values()) > 1
    if backend == "triton" and device == "cpu" and torch.Size(shape).numel() > 300_000:
        pytest.skip("too slow under the Triton interpreter (its split paths are forced on small shapes above)")
    base, make = make_view(shape, layout, "dense", dtype, device)
    params = make_params(shape[1], device)
    base.requires_grad_()
    y, loss = bn_eval_with_stat_loss(make(base), *params, eps=1e-3, groups=groups, backend=backend)
    gen = torch.Generator().manual_seed(5)
    grad_y = torch.randn(y.shape, generator=gen).to(device=device, dtype=dtype)
    upstream = torch.linspace(0.5, 1.5, groups, device=device)
    (grad,) = torch.autograd.grad([y, loss], base, [grad_y, upstream])

    base64 = base.detach().double().requires_grad_()
    y_ref, loss_ref = bn_eval_with_stat_loss_naive(make(base64), *(t.double() for t in params), 1e-3, groups)
    (grad_ref,) = torch.autograd.grad([y_ref, loss_ref], base64, [grad_y.double(), upstream.double()])
    torch.testing.assert_close(loss.double(), loss_ref.detach(), rtol=2e-5, atol=1e-6)
    close(y, y_ref.detach(), dtype, "y")
    close(grad, grad_ref, dtype, "grad x")


# ----------------------------------------------------------------------------------------
# ufc_compose
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ComposePath:
    name: str
    reaches: str
    case: tuple  # (K, C, ch, H, W, G)
    transform: bool = True  # rolls and flips
    clamp: bool = True
    natural_view: str = "dense"
    ufc_view: str = "dense"
    triton: dict = field(default_factory=dict)
    cuda: dict = field(default_factory=dict)
    expected: dict = field(default_factory=dict)
    cpu_row_blocks: int = 1  # work items per group of the C++ CPU kernels (cpu_compose_row_blocks)

    def __str__(self):
        return self.name


def cpu_compose_row_blocks(case):
    """Work items per group of csrc/cpu/ufc_compose.cpp (by shape only): its ch * H rows in
    blocks of about kSpanElems = 8192 values."""
    _, _, ch, h, w, _ = case
    return split_even(ch * h, 8192 // w)[0]


COMPOSE_PATHS = [
    ComposePath("pixel-blocks", "images of 143 pixels in blocks of 32 (Triton) / chunks of 32 threads (CUDA), "
                "classes split across programs", (2, 5, 2, 11, 13, 3),
                triton=dict(block_p=32, classes_per_program=2), cuda=dict(compose_threads=32),
                expected={"triton": {"ufc_compose": dict(num_pblocks=5, num_csplit=3),
                                     "ufc_compose_grad_ufc": dict(num_pblocks=5)},
                          "cuda": {"ufc_compose": dict(chunks=2, threads=32),
                                   "ufc_compose_grad_ufc": dict(chunks=5, threads=32)}}),
    ComposePath("pixel-blocks-plain", "pixel blocks without roll, flip or clamp; 24 threads (a partial warp)",
                (2, 5, 2, 11, 13, 3), transform=False, clamp=False,
                triton=dict(block_p=16), cuda=dict(compose_threads=24),
                expected={"triton": {"ufc_compose": dict(num_pblocks=9), "ufc_compose_grad_ufc": dict(num_pblocks=9)},
                          "cuda": {"ufc_compose": dict(chunks=2, threads=24),
                                   "ufc_compose_grad_ufc": dict(chunks=6, threads=24)}}),
    ComposePath("large-image", "53 x 53 images on the default plans: several pixel blocks everywhere "
                "(CPU: 2 row blocks per group)", (2, 3, 3, 53, 53, 2), cpu_row_blocks=2,
                expected={"triton": {"ufc_compose": dict(num_pblocks=AtLeast(3)),
                                     "ufc_compose_grad_ufc": dict(num_pblocks=AtLeast(3))},
                          "cuda": {"ufc_compose": dict(chunks=3, threads=256),
                                   "ufc_compose_grad_ufc": dict(chunks=11, threads=256)}}),
    ComposePath("misaligned-natural", "natural at storage offset 1, ufc a transposed (non-contiguous) view",
                (3, 4, 2, 6, 7, 4), natural_view="offset1", ufc_view="strided",
                triton=dict(block_p=16, classes_per_program=3), cuda=dict(compose_threads=8),
                expected={"triton": {"ufc_compose": dict(num_pblocks=3, num_csplit=2),
                                     "ufc_compose_grad_ufc": dict(num_pblocks=3)},
                          "cuda": {"ufc_compose": dict(chunks=2, threads=8),
                                   "ufc_compose_grad_ufc": dict(chunks=6, threads=8)}}),
    ComposePath("expanded-natural", "natural expanded from one set (stride 0), ufc at storage offset 1",
                (3, 4, 2, 6, 7, 4), natural_view="expanded", ufc_view="offset1",
                triton=dict(block_p=32), cuda=dict(compose_threads=16),
                expected={"triton": {"ufc_compose": dict(num_pblocks=2), "ufc_compose_grad_ufc": dict(num_pblocks=2)},
                          "cuda": {"ufc_compose": dict(chunks=1, threads=16),
                                   "ufc_compose_grad_ufc": dict(chunks=3, threads=16)}}),
]


def compose_view(shape, view, dtype, device, gen, scale=1.0):
    """(leaf, view of it of ``shape``): dense, storage offset 1, transposed over (H, W), or
    expanded over the first axis."""
    if view == "offset1":
        numel = torch.Size(shape).numel()
        base = torch.randn(numel + 1, generator=gen) * scale
        make = lambda b: b[1:].view(shape)  # noqa: E731
    elif view == "strided":
        base = torch.randn(shape[:-2] + (shape[-1], shape[-2]), generator=gen) * scale
        make = lambda b: b.transpose(-1, -2)  # noqa: E731
    elif view == "expanded":
        base = torch.randn((1,) + shape[1:], generator=gen) * scale
        make = lambda b: b.expand(shape)  # noqa: E731
    else:
        base = torch.randn(shape, generator=gen) * scale
        make = lambda b: b  # noqa: E731
    return base.to(device=device, dtype=dtype), make


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("path", COMPOSE_PATHS, ids=str)
def test_compose_path_matches_float64(backend, device, path, dtype):
    """Forward and backward (natural and ufc) of the public op on the forced path, against the
    float64 naive definition."""
    k, c, ch, h, w, g = path.case
    assert cpu_compose_row_blocks(path.case) == path.cpu_row_blocks
    gen = torch.Generator().manual_seed(0)
    natural_base, natural_of = compose_view((k, c, ch, h, w), path.natural_view, dtype, device, gen)
    ufc_base, ufc_of = compose_view((g, ch, h, w), path.ufc_view, dtype, device, gen, scale=0.5)
    index = torch.randint(0, k, (g,), generator=gen).to(device)
    shifts = torch.randint(-9, 10, (g, 2), generator=gen).to(device) if path.transform else None
    flips = (torch.arange(g) % 2 == 0).to(device) if path.transform else None
    lo, hi = ((torch.linspace(-1.2, -0.8, ch, device=device), torch.linspace(0.9, 1.3, ch, device=device))
              if path.clamp else (None, None))
    natural_base.requires_grad_()
    ufc_base.requires_grad_()
    natural, ufc = natural_of(natural_base), ufc_of(ufc_base)
    if path.natural_view == "offset1":
        assert natural.storage_offset() == 1
    grad_out = torch.randn((g, c, ch, h, w), generator=torch.Generator().manual_seed(5)).to(device=device, dtype=dtype)

    with forced_plan(backend, path.triton, path.cuda) as last_plan:
        out = ufc_compose(natural, ufc, index, shifts, flips, lo, hi, backend=backend)
        grads = torch.autograd.grad(out, [natural_base, ufc_base], grad_out)
        check_plans(backend, last_plan, path.expected, path.reaches)

    bases64 = [t.detach().double().requires_grad_() for t in (natural_base, ufc_base)]
    lo64, hi64 = (None, None) if lo is None else (lo.double(), hi.double())
    ref = ufc_compose_naive(natural_of(bases64[0]), ufc_of(bases64[1]), index, shifts, flips, lo64, hi64)
    ref_grads = torch.autograd.grad(ref, bases64, grad_out.double())

    assert out.shape == (g, c, ch, h, w) and out.dtype == dtype
    close(out, ref.detach().to(dtype).double(), dtype, "out")  # the reference rounded like the op's output
    for name, got, want in zip(("natural", "ufc"), grads, ref_grads):
        assert got.dtype == dtype
        close(got, want, dtype, f"grad {name}")


# ----------------------------------------------------------------------------------------
# The forward's arrival counters (Triton and CUDA: the last program/block of a group
# finalizes it and resets the group's counter, so the forward is one launch)
# ----------------------------------------------------------------------------------------
def triton_counters_are_zero(backend, device):
    """Triton: every arrival counter of the device is back at zero (none is left counting)."""
    if backend != "triton":
        return
    from infer_fast.kernels import bn_stat_loss as kernels

    counters = kernels.arrival_counters(device)
    assert counters is not None, "no counter was used: the forward did not take the fused finalize"
    assert counters.dtype == torch.int32 and (counters == 0).all(), f"counters left at {counters.nonzero().tolist()}"


COUNTER_CASES = [  # (shape, groups, layout, Triton knobs, CUDA override): S > 1 and S == 1 plans
    ((8, 5, 6, 7), 2, "nchw", dict(split=4, block_rows=1), dict(splits=3)),
    ((4, 10, 3, 3), 2, "channels_last", dict(split=3, block_rows=4, block_inner=8), dict(splits=3, channel_tiles=2)),
    ((4, 5, 2, 2), 2, "nchw", dict(split=1), dict(splits=1)),
    ((4, 10, 2, 2), 2, "channels_last", dict(split=1), dict(splits=1)),
]


@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[0] in ("triton", "cuda")])
@pytest.mark.parametrize("op", ["bn_stat_loss", "bn_eval_with_stat_loss"])
@pytest.mark.parametrize("case", COUNTER_CASES, ids=lambda c: f"{c[2]}-{c[3]}")
def test_forward_counters_reset_and_grow(backend, device, op, case, monkeypatch):
    """Two forwards in a row give the same bits (a counter the first left non-zero would
    make the second finalize nothing: NaN-poisoned stats), then a call with more groups than
    the counter buffer held before (it grows), then the first call again; each against the
    float64 loss, and under Triton the counters are all zero after every call."""
    from infer_fast.kernels import bn_stat_loss as kernels

    shape, groups, layout, knobs, cuda = case
    base, make = make_view(shape, layout, "dense", torch.float32, device)
    params = make_params(shape[1], device)
    x = make(base)
    ref = bn_op(op, x.double(), [t.double() for t in params], groups)[-1]
    if backend == "triton":  # (the test's own buffers, from their first size: the wide call must grow them)
        monkeypatch.setattr(kernels, "_counters", {})
    # one group more than a buffer's first size (CUDA's is the same 64; an earlier test of this
    # process may have grown its buffer already). Not more: the interpreter runs each program.
    wide_groups = kernels.FIRST_COUNTERS + 1
    wide_shape = (wide_groups, shape[1], 1, 2)
    wide_base, wide_make = make_view(wide_shape, layout, "dense", torch.float32, device, seed=3)
    wide_x = wide_make(wide_base)
    wide_ref = bn_op(op, wide_x.double(), [t.double() for t in params], wide_groups)[-1]
    with forced_plan(backend, knobs, cuda) as last_plan:
        first = bn_op(op, x, params, groups, backend)
        triton_counters_are_zero(backend, device)
        if backend == "triton" and knobs["split"] > 1:  # (S == 1 finalizes without counters)
            assert kernels.arrival_counters(device).numel() == kernels.FIRST_COUNTERS
        second = bn_op(op, x, params, groups, backend)
        triton_counters_are_zero(backend, device)
        assert_plan("bn_stat_forward", last_plan("bn_stat_forward"),
                    {"S": knobs["split"]} if backend == "triton" else {"splits": cuda["splits"]})
        wide = bn_op(op, wide_x, params, wide_groups, backend)
        triton_counters_are_zero(backend, device)
        if backend == "triton":
            assert kernels.arrival_counters(device).numel() >= wide_groups > kernels.FIRST_COUNTERS
        third = bn_op(op, x, params, groups, backend)
        triton_counters_are_zero(backend, device)
    for got, want, what in ((first[-1], ref, "first"), (wide[-1], wide_ref, "wide"), (third[-1], ref, "third")):
        assert not got.isnan().any(), f"{what} call: a group was not finalized"
        torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=1e-6, msg=lambda m: f"{what} call: {m}")
    for a, b in zip(first + second + third, second + third + first):
        assert torch.equal(a, b), "repeated forward calls differ"


@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[0] in ("triton", "cuda")])
def test_bn_stat_sums_counters_reset(backend, device):
    """bn_stat_sums with a split reduction finalizes through the counters too: twice in a row,
    the same bits as the float64 sums allow, counters zero after (Triton)."""
    base, make = make_view((8, 5, 6, 7), "nchw", "dense", torch.float32, device)
    x3 = as_ncl(make(base))
    rm = make_params(5, device)[0]
    outs = []
    with forced_plan(backend, dict(split=4, block_rows=1), dict(splits=3)):
        for _ in range(2):
            out = torch.full((2, 2, 5), float("nan"), device=device)
            backends.launcher(backend, "bn_stat_sums")(x3, rm, 2, out)
            triton_counters_are_zero(backend, device)
            outs.append(out)
    expected = torch.empty((2, 2, 5), dtype=torch.float64, device=device)
    reference.bn_stat_sums(x3.double(), rm.double(), 2, expected)
    close(outs[0], expected, torch.float32, "sums")
    assert torch.equal(outs[0], outs[1])
