"""Triton kernels of the UFC composition (natural sets + inter-class feature compensators).

Launchers (contract: ``infer_fast.ops.backends``):

``ufc_compose(natural, ufc, index, shifts, flips, lo, hi, out)``
    out[g, c, k, h, w] = clamp(natural[index[g], c, k, hs, ws] + ufc[g, k, hs, ws], lo[k], hi[k])
    with hs = (h - shifts[g, 0]) mod H, wr = W-1-w if flips[g] else w,
    ws = (wr - shifts[g, 1]) mod W; sum and clamp in fp32 (fp64 for fp64 inputs).
    shifts (G, 2) int64 (any values) or None: no roll; flips (G,) uint8/bool or None: no
    flip; lo, hi both None: no clamp.

``ufc_compose_grad_ufc(grad_out, natural, ufc, index, shifts, flips, lo, hi, grad_ufc)``
    grad_ufc[g, k, hs, ws] = sum_c grad_out[g, c, k, h, w] * [lo[k] <= v <= hi[k]],
    (h, w) the output pixel that source pixel (hs, ws) lands on,
    v = natural[index[g], c, k, hs, ws] + ufc[g, k, hs, ws].

Design
------
Forward: one program per (g, k, class chunk, block of BLOCK_P output pixels). The
program computes the source coordinates and loads the compensator tile once, then loops
over its classes: load natural at the source pixels (contiguous runs, reversed when
flipped, one wrap point per row), add, clamp, store the output tile (contiguous).
Classes are split into chunks only when (g, k, pixel blocks) alone give too few programs.

Backward: one program per (g, k, block of BLOCK_P *source* pixels); it maps every
source pixel to its destination, loops over all classes accumulating grad_out (masked by
the recomputed clamp test) in fp32/fp64, and writes grad_ufc once (no atomics, no
partials: deterministic). Small images get smaller pixel blocks for more programs.

Roll amounts are reduced mod H / W in int64 (like torch.roll, so any int64 shift works)
before the int32 pixel arithmetic; absent shifts, flips or bounds are constexpr flags
(HAS_SHIFT, HAS_FLIP, HAS_CLAMP) with unread placeholder pointers. Offsets are int64;
index/shifts/flips/lo/hi are read through their strides.
"""

import torch
import triton
import triton.language as tl

from ._launch import knob, record_plan, target_programs

_MAX_BLOCK_P = 1024
_MIN_BLOCK_P = 128


@triton.jit
def _roll_amount(shift, extent):
    """shift mod extent in [0, extent) as int32, like torch.roll: reduced in int64 first
    (any int64 shift); Triton's % truncates like C, so a negative shift's remainder is <= 0."""
    r = shift % extent
    return tl.where(r < 0, r + extent, r).to(tl.int32)


@triton.jit
def _compose_kernel(
    nat_ptr, ufc_ptr, idx_ptr, shifts_ptr, flips_ptr, lo_ptr, hi_ptr, out_ptr,
    C, CH, H, W, HW,
    s_idx, s_sh0, s_sh1, s_flip, s_lo, s_hi,
    classes_per_prog, num_pblocks, num_csplit,
    HAS_SHIFT: tl.constexpr, HAS_FLIP: tl.constexpr, HAS_CLAMP: tl.constexpr,
    ACC: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid = tl.program_id(0)
    pb = pid % num_pblocks
    t = pid // num_pblocks
    cs = t % num_csplit
    gk = t // num_csplit
    k = gk % CH
    g = gk // CH

    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = p < HW
    # output pixel p -> its source pixel (hs, ws): mirror the width, then un-roll
    hs = p // W
    ws = p - hs * W
    if HAS_FLIP:
        flip = tl.load(flips_ptr + g * s_flip)
        ws = tl.where(flip != 0, W - 1 - ws, ws)
    if HAS_SHIFT:
        hs -= _roll_amount(tl.load(shifts_ptr + g * s_sh0), H)
        hs = tl.where(hs < 0, hs + H, hs)
        ws -= _roll_amount(tl.load(shifts_ptr + g * s_sh0 + s_sh1), W)
        ws = tl.where(ws < 0, ws + W, ws)
    src = hs * W + ws

    g64 = g.to(tl.int64)
    u = tl.load(ufc_ptr + (g64 * CH + k) * HW + src, mask=p_mask, other=0.0).to(ACC)
    nat_set = tl.load(idx_ptr + g * s_idx).to(tl.int64)
    if HAS_CLAMP:
        lo = tl.load(lo_ptr + k * s_lo).to(ACC)
        hi = tl.load(hi_ptr + k * s_hi).to(ACC)

    c_begin = cs * classes_per_prog
    c_end = tl.minimum(c_begin + classes_per_prog, C)
    for c in range(c_begin, c_end):
        nat_base = ((nat_set * C + c) * CH + k) * HW
        v = tl.load(nat_ptr + nat_base + src, mask=p_mask, other=0.0).to(ACC) + u
        if HAS_CLAMP:
            # max then min like the reference (NaN stays NaN; lo > hi gives hi)
            v = tl.where(v < lo, lo, v)
            v = tl.where(v > hi, hi, v)
        out_base = ((g64 * C + c) * CH + k) * HW
        tl.store(out_ptr + out_base + p, v.to(out_ptr.dtype.element_ty), mask=p_mask)


@triton.jit
def _compose_grad_ufc_kernel(
    gout_ptr, nat_ptr, ufc_ptr, idx_ptr, shifts_ptr, flips_ptr, lo_ptr, hi_ptr, gufc_ptr,
    C, CH, H, W, HW,
    s_idx, s_sh0, s_sh1, s_flip, s_lo, s_hi,
    num_pblocks,
    HAS_SHIFT: tl.constexpr, HAS_FLIP: tl.constexpr, HAS_CLAMP: tl.constexpr,
    ACC: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid = tl.program_id(0)
    pb = pid % num_pblocks
    gk = pid // num_pblocks
    k = gk % CH
    g = gk // CH

    # source pixel p of this block -> the output pixel (h, w) it lands on: roll, then mirror
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = p < HW
    h = p // W
    w = p - h * W
    if HAS_SHIFT:
        h += _roll_amount(tl.load(shifts_ptr + g * s_sh0), H)
        h = tl.where(h >= H, h - H, h)
        w += _roll_amount(tl.load(shifts_ptr + g * s_sh0 + s_sh1), W)
        w = tl.where(w >= W, w - W, w)
    if HAS_FLIP:
        flip = tl.load(flips_ptr + g * s_flip)
        w = tl.where(flip != 0, W - 1 - w, w)
    dst = h * W + w

    g64 = g.to(tl.int64)
    ufc_off = (g64 * CH + k) * HW + p
    if HAS_CLAMP:
        u = tl.load(ufc_ptr + ufc_off, mask=p_mask, other=0.0).to(ACC)
        lo = tl.load(lo_ptr + k * s_lo).to(ACC)
        hi = tl.load(hi_ptr + k * s_hi).to(ACC)
        nat_set = tl.load(idx_ptr + g * s_idx).to(tl.int64)

    acc = tl.zeros((BLOCK_P,), dtype=ACC)
    for c in range(0, C):
        go_base = ((g64 * C + c) * CH + k) * HW
        go = tl.load(gout_ptr + go_base + dst, mask=p_mask, other=0.0).to(ACC)
        if HAS_CLAMP:
            nat_base = ((nat_set * C + c) * CH + k) * HW
            v = tl.load(nat_ptr + nat_base + p, mask=p_mask, other=0.0).to(ACC) + u
            keep = (v >= lo) & (v <= hi)
            go = go * keep.to(ACC)  # a product, like the reference (inf * 0 = nan)
        acc += go
    tl.store(gufc_ptr + ufc_off, acc.to(gufc_ptr.dtype.element_ty), mask=p_mask)


# ----------------------------------------------------------------------------------------
# Heuristics and launchers
# ----------------------------------------------------------------------------------------
def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _pixel_block(hw, outer, target, block_p):
    """BLOCK_P: given, or the largest power of two <= 1024 covering the image, halved
    (down to 128) while the grid has fewer than ``target`` programs."""
    if block_p is not None:
        if block_p < 1 or block_p & (block_p - 1):
            raise ValueError(f"block_p must be a power of two, got {block_p}")
        return block_p
    block = min(triton.next_power_of_2(hw), _MAX_BLOCK_P)
    while block > _MIN_BLOCK_P and outer * triton.cdiv(hw, block) < target:
        block //= 2
    return block


def _num_warps(block):
    return max(1, min(8, block // 256))


def _optional_args(shifts, flips, lo, hi, placeholder):
    """(pointers, strides, flags) of the optional shifts, flips, lo and hi: an absent one
    is an unread placeholder pointer with stride 0 and a False HAS_* flag."""
    if (lo is None) != (hi is None):
        raise ValueError("lo and hi must be both None or both given")
    pointers = tuple(placeholder if t is None else t for t in (shifts, flips, lo, hi))
    strides = (0, 0) if shifts is None else shifts.stride()
    strides += tuple(0 if t is None else t.stride(0) for t in (flips, lo, hi))
    flags = dict(HAS_SHIFT=shifts is not None, HAS_FLIP=flips is not None, HAS_CLAMP=lo is not None)
    return pointers, strides, flags


def _check_index(index, num_sets):
    """The kernels read natural[index[g]] as given: an index out of [0, K) is refused here at
    every call (the op checks it on the host once per tensor version only), never read out of
    bounds. No host sync: on a GPU a device-side assert."""
    torch._assert_async(((index >= 0) & (index < num_sets)).all(),
                        f"ufc_compose: index values must lie in [0, {num_sets}) (natural has {num_sets} sets)")


def ufc_compose(natural, ufc, index, shifts, flips, lo, hi, out, *, block_p=None, classes_per_program=None):
    """out[g, c] = clamp(roll/flip(natural[index[g], c] + ufc[g]), lo, hi).

    ``block_p`` (power of two) and ``classes_per_program``: optional knobs (tests; None: a
    test's ``_launch.forced_plan``, else the heuristic).
    """
    G, CH, H, W = ufc.shape
    C = natural.shape[1]
    HW = H * W
    if out.numel() == 0:
        return
    _check_index(index, natural.shape[0])
    target = target_programs(out.device, waves=4)
    BLOCK_P = _pixel_block(HW, G * CH, target, knob("block_p", block_p))
    num_pblocks = triton.cdiv(HW, BLOCK_P)
    classes_per_program = knob("classes_per_program", classes_per_program)
    if classes_per_program is None:
        csplit = min(C, max(1, triton.cdiv(target, G * CH * num_pblocks)))
        classes_per_program = triton.cdiv(C, csplit)
    classes_per_program = max(1, min(int(classes_per_program), C))
    num_csplit = triton.cdiv(C, classes_per_program)
    pointers, strides, flags = _optional_args(shifts, flips, lo, hi, ufc)
    grid = (G * CH * num_csplit * num_pblocks,)
    record_plan("ufc_compose", num_pblocks=num_pblocks, num_csplit=num_csplit, BLOCK_P=BLOCK_P)
    _compose_kernel[grid](
        natural, ufc, index, *pointers, out,
        C, CH, H, W, HW,
        index.stride(0), *strides,
        classes_per_program, num_pblocks, num_csplit,
        **flags, ACC=_acc(natural.dtype), BLOCK_P=BLOCK_P, num_warps=_num_warps(BLOCK_P),
    )


def ufc_compose_grad_ufc(grad_out, natural, ufc, index, shifts, flips, lo, hi, grad_ufc, *, block_p=None):
    """grad_ufc[g] = un-roll/flip(sum_c grad_out[g, c] * [not clamped]).

    ``block_p`` (power of two): optional knob (tests; None: a test's
    ``_launch.forced_plan``, else the heuristic).
    """
    G, CH, H, W = ufc.shape
    C = natural.shape[1]
    HW = H * W
    if grad_ufc.numel() == 0:
        return
    if lo is not None:  # (only the clamp test reads natural)
        _check_index(index, natural.shape[0])
    target = target_programs(grad_ufc.device, waves=4)
    BLOCK_P = _pixel_block(HW, G * CH, target, knob("block_p", block_p))
    num_pblocks = triton.cdiv(HW, BLOCK_P)
    pointers, strides, flags = _optional_args(shifts, flips, lo, hi, ufc)
    grid = (G * CH * num_pblocks,)
    record_plan("ufc_compose_grad_ufc", num_pblocks=num_pblocks, BLOCK_P=BLOCK_P)
    _compose_grad_ufc_kernel[grid](
        grad_out, natural, ufc, index, *pointers, grad_ufc,
        C, CH, H, W, HW,
        index.stride(0), *strides,
        num_pblocks,
        **flags, ACC=_acc(natural.dtype), BLOCK_P=BLOCK_P, num_warps=_num_warps(BLOCK_P),
    )
