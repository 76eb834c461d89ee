"""Triton kernels of the grouped BN-statistics matching loss.

Launchers (contract: ``infer_fast.ops.backends``):

``bn_stat_sums(x3, running_mean, groups, out, scale=None, shift=None, y3=None)``
    out[0, g, c] = sum(x - rm[c]), out[1, g, c] = sum((x - rm[c])**2) over the rows of
    group g and all L, accumulated in out.dtype (fp32, or fp64 for fp64 inputs); with y3
    (the fused eval-mode BatchNorm) also y3 = x * scale[c] + shift[c] from the same loads.

``bn_stat_backward(x3, coef_a, coef_b, mean, groups, grad_input, grad_y3=None, scale=None)``
    grad_input[n, c, l] = a[g, c] + b[g, c] * (x[n, c, l] - mean[g, c])
    (+ grad_y3[n, c, l] * scale[c] when grad_y3 is given).

Design
------
Sums: a (G, C) grid of one program per channel cannot fill an H100 (132 SMs) when
C = 64, so the reduction axis (rows of the group x L) is split across programs too.
Each program writes its two partial sums into a scratch buffer of shape (2, G, C, S)
and a second tiny kernel adds the S partials of every output in a fixed order, so the
result is deterministic (no atomics). When S == 1 the first kernel writes ``out``
directly and the second launch is skipped.

* NCL (x3.stride(2) == 1): ``_stats_rows_kernel``, one program per (g, c, row chunk,
  L chunk), looping over (BLOCK_R rows x BLOCK_L) tiles, contiguous along L.
* NLC (channels_last) and L == 1: per group the data is an (n*L, C) matrix with C
  contiguous, so ``_stats_cols_kernel`` runs one program per (g, channel block, M chunk)
  over (BLOCK_M x BLOCK_C) tiles, coalesced along C.

Backward: one elementwise pass, ``_bn_backward_kernel``, over 2-D tiles (outer x inner)
of one group, where "inner" is the contiguous axis (L for NCL, C for NLC); the div/mod
that splits the outer index runs once per tile row (int32), not per element, and the
NLC path loads the (g, c) coefficients once per program as a vector.

All kernels take the tensors' strides (any strides work; the layout only picks the
tiling), use int64 offsets, and never synchronize with the host.
"""

import torch
import triton
import triton.language as tl

from ._launch import target_programs

# Elements per tile: 4 warps x 32 threads x 16 elements (fp32: four 16-byte loads/thread).
_TILE = 2048
# A program of the split reduction handles at least this many tiles (amortizes its
# partial write and the launch), unless the whole reduction is smaller.
_MIN_TILES_PER_PROGRAM = 4


# ----------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------
@triton.jit
def _stats_rows_kernel(
    x_ptr, rm_ptr, part_ptr, scale_ptr, shift_ptr, y_ptr,
    C, L, n_per, num_gc,
    stride_n, stride_c, stride_l,
    rows_per_prog, l_per_prog, num_rsplit, num_lsplit,
    BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr, HAS_Y: tl.constexpr,
):
    """Program (g, c, row chunk, L chunk): partial sums over (rows x L) tiles; HAS_Y: also
    the eval-mode BN output y = x * scale[c] + shift[c] of every tile it reads."""
    pid = tl.program_id(0)
    num_split = num_rsplit * num_lsplit
    s = pid % num_split
    gc = pid // num_split
    c = gc % C
    g = gc // C
    r_begin = (s // num_lsplit) * rows_per_prog
    r_end = tl.minimum(r_begin + rows_per_prog, n_per)
    l_begin = (s % num_lsplit) * l_per_prog
    l_end = tl.minimum(l_begin + l_per_prog, L)

    acc_ty = rm_ptr.dtype.element_ty
    rm = tl.load(rm_ptr + c)
    if HAS_Y:
        scale = tl.load(scale_ptr + c)
        shift = tl.load(shift_ptr + c)
    base_off = g.to(tl.int64) * n_per * stride_n + c.to(tl.int64) * stride_c
    offs_r = tl.arange(0, BLOCK_R)
    offs_l = tl.arange(0, BLOCK_L)
    acc1 = tl.zeros((BLOCK_R, BLOCK_L), dtype=acc_ty)
    acc2 = tl.zeros((BLOCK_R, BLOCK_L), dtype=acc_ty)
    for r0 in range(r_begin, r_end, BLOCK_R):
        rows = r0 + offs_r
        row_mask = rows < r_end
        row_off = rows.to(tl.int64) * stride_n
        for l0 in range(l_begin, l_end, BLOCK_L):
            cols = l0 + offs_l
            mask = row_mask[:, None] & (cols < l_end)[None, :]
            offs = base_off + row_off[:, None] + cols.to(tl.int64)[None, :] * stride_l
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
            d = tl.where(mask, x - rm, 0.0)
            acc1 += d
            acc2 += d * d
            if HAS_Y:  # y has x's strides
                tl.store(y_ptr + offs, (x * scale + shift).to(y_ptr.dtype.element_ty), mask=mask)
    s1 = tl.sum(tl.sum(acc1, axis=1), axis=0)
    s2 = tl.sum(tl.sum(acc2, axis=1), axis=0)
    # partials: (2, G, C, S) contiguous
    tl.store(part_ptr + gc.to(tl.int64) * num_split + s, s1)
    tl.store(part_ptr + (num_gc + gc).to(tl.int64) * num_split + s, s2)


@triton.jit
def _stats_cols_kernel(
    x_ptr, rm_ptr, part_ptr, scale_ptr, shift_ptr, y_ptr,
    C, M, n_per, num_gc,
    stride_n, stride_m, stride_c,
    m_per_prog, num_msplit, num_cblocks,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, HAS_Y: tl.constexpr,
):
    """Program (g, channel block, M chunk) over the group's (M = n*L, C) matrix; HAS_Y as
    in _stats_rows_kernel."""
    pid = tl.program_id(0)
    s = pid % num_msplit
    t = pid // num_msplit
    cb = t % num_cblocks
    g = t // num_cblocks
    m_begin = s * m_per_prog
    m_end = tl.minimum(m_begin + m_per_prog, M)

    acc_ty = rm_ptr.dtype.element_ty
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    rm = tl.load(rm_ptr + cols, mask=col_mask, other=0.0)
    if HAS_Y:
        scale = tl.load(scale_ptr + cols, mask=col_mask, other=0.0)[None, :]
        shift = tl.load(shift_ptr + cols, mask=col_mask, other=0.0)[None, :]
    base_off = g.to(tl.int64) * n_per * stride_n
    col_off = cols.to(tl.int64) * stride_c
    offs_m = tl.arange(0, BLOCK_M)
    acc1 = tl.zeros((BLOCK_M, BLOCK_C), dtype=acc_ty)
    acc2 = tl.zeros((BLOCK_M, BLOCK_C), dtype=acc_ty)
    for m0 in range(m_begin, m_end, BLOCK_M):
        rows = m0 + offs_m
        mask = (rows < m_end)[:, None] & col_mask[None, :]
        offs = base_off + rows.to(tl.int64)[:, None] * stride_m + col_off[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        d = tl.where(mask, x - rm[None, :], 0.0)
        acc1 += d
        acc2 += d * d
        if HAS_Y:  # y has x's strides
            tl.store(y_ptr + offs, (x * scale + shift).to(y_ptr.dtype.element_ty), mask=mask)
    s1 = tl.sum(acc1, axis=0)
    s2 = tl.sum(acc2, axis=0)
    gc = (g * C + cols).to(tl.int64)
    tl.store(part_ptr + gc * num_msplit + s, s1, mask=col_mask)
    tl.store(part_ptr + (num_gc + gc) * num_msplit + s, s2, mask=col_mask)


@triton.jit
def _sum_partials_kernel(part_ptr, out_ptr, R, S, BLOCK_O: tl.constexpr, BLOCK_S: tl.constexpr):
    """out[r] = sum_s part[r, s] (fixed order: deterministic)."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_O + tl.arange(0, BLOCK_O)
    row_mask = rows < R
    row_off = rows.to(tl.int64) * S
    offs_s = tl.arange(0, BLOCK_S)
    acc = tl.zeros((BLOCK_O, BLOCK_S), dtype=out_ptr.dtype.element_ty)
    for s0 in range(0, S, BLOCK_S):
        cols = s0 + offs_s
        mask = row_mask[:, None] & (cols < S)[None, :]
        acc += tl.load(part_ptr + row_off[:, None] + cols[None, :], mask=mask, other=0.0)
    tl.store(out_ptr + rows, tl.sum(acc, axis=1), mask=row_mask)


@triton.jit
def _bn_backward_kernel(
    x_ptr, a_ptr, b_ptr, mean_ptr, dx_ptr, dy_ptr, scale_ptr,
    QG, P, D, C, n_per,
    sx_n, sx_d, sx_p, sg_n, sg_d, sg_p,
    num_qblocks, num_pblocks,
    CH_INNER: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, HAS_DY: tl.constexpr,
):
    """dx = a[g, c] + b[g, c] * (x - mean[g, c]) (+ dy * scale[c] when HAS_DY, dy with x's
    strides) over (outer q x inner p) tiles of group g.

    Within a group, q in [0, QG = n_per * D) splits as (n, d) = (q // D, q % D) (int32,
    once per tile row); p is the contiguous axis. CH_INNER: p is the channel (NLC, d = l),
    so the coefficients are one (BLOCK_P,) vector per program; else d is the channel
    (NCL, p = l) and they are one value per tile row.
    """
    pid = tl.program_id(0)
    pb = pid % num_pblocks
    t = pid // num_pblocks
    qb = t % num_qblocks
    g = t // num_qblocks
    q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    q_mask = q < QG
    p_mask = p < P
    mask = q_mask[:, None] & p_mask[None, :]
    n_loc = q // D
    d = q - n_loc * D
    n = g.to(tl.int64) * n_per + n_loc
    d64 = d.to(tl.int64)
    p64 = p.to(tl.int64)

    acc_ty = a_ptr.dtype.element_ty
    if CH_INNER:
        cidx = g * C + p
        a = tl.load(a_ptr + cidx, mask=p_mask, other=0.0)[None, :]
        b = tl.load(b_ptr + cidx, mask=p_mask, other=0.0)[None, :]
        mu = tl.load(mean_ptr + cidx, mask=p_mask, other=0.0)[None, :]
        if HAS_DY:
            scale = tl.load(scale_ptr + p, mask=p_mask, other=0.0)[None, :]
    else:
        cidx = g * C + d
        a = tl.load(a_ptr + cidx, mask=q_mask, other=0.0)[:, None]
        b = tl.load(b_ptr + cidx, mask=q_mask, other=0.0)[:, None]
        mu = tl.load(mean_ptr + cidx, mask=q_mask, other=0.0)[:, None]
        if HAS_DY:
            scale = tl.load(scale_ptr + d, mask=q_mask, other=0.0)[:, None]

    x_off = (n * sx_n + d64 * sx_d)[:, None] + p64[None, :] * sx_p
    x = tl.load(x_ptr + x_off, mask=mask, other=0.0).to(acc_ty)
    dx = a + b * (x - mu)
    if HAS_DY:
        dx += tl.load(dy_ptr + x_off, mask=mask, other=0.0).to(acc_ty) * scale
    g_off = (n * sg_n + d64 * sg_d)[:, None] + p64[None, :] * sg_p
    tl.store(dx_ptr + g_off, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------
# Heuristics
# ----------------------------------------------------------------------------------------
def _inner_block(extent, cap):
    """Power-of-two block along the contiguous axis: the largest <= cap (and >= 32) whose
    padding wastes at most ~15% of the lanes, else the smallest power of two >= extent."""
    full = min(triton.next_power_of_2(extent), cap)
    block = full
    while block >= 32:
        if triton.cdiv(extent, block) * block <= 1.15 * extent:
            return block
        block //= 2
    return full


def _num_warps(tile):
    return max(1, min(8, tile // 512))


def _pow2(value, name):
    if value is None:
        return None
    if value < 1 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two, got {value}")
    return value


# ----------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------
def bn_stat_sums(x3, running_mean, groups, out, scale=None, shift=None, y3=None, *,
                 block_rows=None, block_inner=None, split=None):
    """out[0, g, c] = sum(x - rm[c]), out[1, g, c] = sum((x - rm[c])**2); with y3 (x3's
    strides) also y3 = x * scale[c] + shift[c], written by the programs that read x.

    Keyword-only knobs (tests and benchmarks; the defaults are the heuristics):
    ``block_rows`` / ``block_inner``: powers of two, the tile's outer and contiguous
    extents; ``split``: about how many programs share the reduction of one output.
    """
    N, C, L = x3.shape
    G = int(groups)
    n_per = N // G
    sn, sc, sl = x3.stride()
    block_rows = _pow2(block_rows, "block_rows")
    block_inner = _pow2(block_inner, "block_inner")
    if N == 0 or L == 0:
        out.zero_()
        return
    has_y = y3 is not None
    affine = (scale, shift, y3) if has_y else (running_mean, running_mean, x3)  # unused placeholders
    target = target_programs(x3.device, waves=8)
    num_gc = G * C
    channels_inner = sl != 1 or L == 1
    # The (n*L, C) matrix view of a group needs one stride for its rows.
    matrix_ok = L == 1 or n_per == 1 or sn == L * sl
    if channels_inner and matrix_ok:
        M = n_per * L
        stride_m = sn if L == 1 else sl
        BLOCK_C = block_inner or min(triton.next_power_of_2(C), 128)
        BLOCK_M = block_rows or max(1, min(_TILE // BLOCK_C, triton.next_power_of_2(M)))
        num_cblocks = triton.cdiv(C, BLOCK_C)
        tiles = triton.cdiv(M, BLOCK_M)
        if split is None:
            split = min(triton.cdiv(target, G * num_cblocks), max(1, tiles // _MIN_TILES_PER_PROGRAM))
        tiles_per = triton.cdiv(tiles, max(1, min(int(split), tiles)))
        S = triton.cdiv(tiles, tiles_per)
        part = out if S == 1 else torch.empty(2 * num_gc * S, dtype=out.dtype, device=out.device)
        grid = (G * num_cblocks * S,)
        _stats_cols_kernel[grid](
            x3, running_mean, part, *affine,
            C, M, n_per, num_gc,
            sn, stride_m, sc,
            tiles_per * BLOCK_M, S, num_cblocks,
            BLOCK_M=BLOCK_M, BLOCK_C=BLOCK_C, HAS_Y=has_y, num_warps=_num_warps(BLOCK_M * BLOCK_C),
        )
    else:
        BLOCK_L = block_inner or _inner_block(L, _TILE)
        BLOCK_R = block_rows or max(1, min(_TILE // BLOCK_L, triton.next_power_of_2(n_per)))
        row_tiles = triton.cdiv(n_per, BLOCK_R)
        l_tiles = triton.cdiv(L, BLOCK_L)
        if split is None:
            split = min(triton.cdiv(target, num_gc), max(1, row_tiles * l_tiles // _MIN_TILES_PER_PROGRAM))
        split = max(1, int(split))
        # Prefer splitting rows: every program then reads whole rows (long contiguous runs).
        rsplit = min(split, row_tiles)
        lsplit = min(triton.cdiv(split, rsplit), l_tiles)
        r_tiles_per = triton.cdiv(row_tiles, rsplit)
        l_tiles_per = triton.cdiv(l_tiles, lsplit)
        rsplit = triton.cdiv(row_tiles, r_tiles_per)
        lsplit = triton.cdiv(l_tiles, l_tiles_per)
        S = rsplit * lsplit
        part = out if S == 1 else torch.empty(2 * num_gc * S, dtype=out.dtype, device=out.device)
        grid = (num_gc * S,)
        _stats_rows_kernel[grid](
            x3, running_mean, part, *affine,
            C, L, n_per, num_gc,
            sn, sc, sl,
            r_tiles_per * BLOCK_R, l_tiles_per * BLOCK_L, rsplit, lsplit,
            BLOCK_R=BLOCK_R, BLOCK_L=BLOCK_L, HAS_Y=has_y, num_warps=_num_warps(BLOCK_R * BLOCK_L),
        )
    if S > 1:
        R = 2 * num_gc
        BLOCK_S = min(triton.next_power_of_2(S), 64)
        BLOCK_O = max(1, min(1024 // BLOCK_S, triton.next_power_of_2(R)))
        _sum_partials_kernel[(triton.cdiv(R, BLOCK_O),)](
            part, out, R, S, BLOCK_O=BLOCK_O, BLOCK_S=BLOCK_S, num_warps=_num_warps(BLOCK_O * BLOCK_S)
        )


def bn_stat_backward(x3, coef_a, coef_b, mean, groups, grad_input, grad_y3=None, scale=None, *,
                     block_rows=None, block_inner=None):
    """grad_input[n, c, l] = a[g, c] + b[g, c] * (x[n, c, l] - mean[g, c])
    (+ grad_y3[n, c, l] * scale[c], grad_y3 with x3's strides).

    ``block_rows`` / ``block_inner``: optional power-of-two tile extents (tests).
    """
    N, C, L = x3.shape
    if x3.numel() == 0:
        return
    G = int(groups)
    n_per = N // G
    block_rows = _pow2(block_rows, "block_rows")
    block_inner = _pow2(block_inner, "block_inner")
    sx = x3.stride()
    sg = grad_input.stride()
    channels_inner = sx[2] != 1 or L == 1
    if channels_inner:  # p = c, q = (n, l)
        P, D = C, L
        sx_d, sx_p, sg_d, sg_p = sx[2], sx[1], sg[2], sg[1]
        BLOCK_P = block_inner or min(triton.next_power_of_2(C), 256)
    else:  # p = l, q = (n, c)
        P, D = L, C
        sx_d, sx_p, sg_d, sg_p = sx[1], sx[2], sg[1], sg[2]
        BLOCK_P = block_inner or _inner_block(L, _TILE)
    QG = n_per * D  # tile rows per group
    if QG >= 2**31:
        raise ValueError(f"bn_stat_backward: {QG} rows per group exceed the int32 row index")
    BLOCK_Q = block_rows or max(1, min(_TILE // BLOCK_P, triton.next_power_of_2(QG)))
    num_qblocks = triton.cdiv(QG, BLOCK_Q)
    num_pblocks = triton.cdiv(P, BLOCK_P)
    grid = (G * num_qblocks * num_pblocks,)
    _bn_backward_kernel[grid](
        x3, coef_a, coef_b, mean, grad_input,
        *((grad_y3, scale) if grad_y3 is not None else (x3, coef_a)),  # unused placeholders
        QG, P, D, C, n_per,
        sx[0], sx_d, sx_p, sg[0], sg_d, sg_p,
        num_qblocks, num_pblocks,
        CH_INNER=channels_inner, BLOCK_Q=BLOCK_Q, BLOCK_P=BLOCK_P, HAS_DY=grad_y3 is not None,
        num_warps=_num_warps(BLOCK_Q * BLOCK_P),
    )
