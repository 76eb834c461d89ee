"""Triton kernels of the grouped BN-statistics matching loss.

Launchers (contract: ``infer_fast.ops.backends``; "acc" is fp32, or fp64 for fp64 x):

``bn_stat_sums(x3, running_mean, groups, out)``
    out[0, g, c] = sum(x - rm[c]), out[1, g, c] = sum((x - rm[c])**2) over the rows of
    group g and all L, in acc (the chunked mode's pass 1).

``bn_stat_forward(x3, running_mean, running_var, groups, loss, stats, weight=None, bias=None, eps=0.0, y3=None)``
    With M = n * L, delta = sum(x - rm) / M and e = sum((x - rm)**2) / M - delta**2 - rv:
    stats[g] = [delta_g, ||delta_g||; e_g, ||e_g||] (G, 2, C + 1), loss[g] = ||delta_g|| +
    ||e_g||; with y3 (the fused eval-mode BatchNorm) also y3 = x * scale[c] + shift[c]
    from the same loads, scale = rsqrt(rv + eps) * weight, shift = bias - rm * scale.

``bn_stat_backward(x3, running_mean, stats, grad_loss, count, grad_input, grad_y3=None, running_var=None, weight=None, eps=0.0)``
    grad_input = a[g, c] + b[g, c] * ((x - rm[c]) - delta[g, c])  (grad_loss given)
                 + grad_y3 * scale[c]                               (grad_y3 given)
    with a = grad_loss[g] * delta / (count * ||delta_g||), b = 2 grad_loss[g] * e /
    (count * ||e_g||), a zero norm counting as 1.

Design
------
Every launcher is one kernel launch; the launchers run no torch ops around them (the
only ones are the allocation of a partials buffer, below, and the one-time zero fill of a
device's arrival counters). Parameters (rm, rv, weight, bias) are read in their own dtype
and converted to acc where loaded; eval-BN scale and shift are computed in the kernels.

Sums: a (G, C) grid of one program per channel cannot fill an H100 (132 SMs) when
C = 64, so the reduction axis (rows of the group x L) is split across S programs too.
Each program writes its two partial sums to part[g, j, s, c] (j = 0: sum d, 1: sum d^2),
then counts itself in its group's arrival counter (one int32 atomic per program, the
only atomic); the program that arrives last runs ``_finalize_group``: it adds the S
partials of every (g, c) in a fixed order, so the result is deterministic, and forward
turns the sums of its group into delta, e, their norms and the loss. So a forward is one
launch. (The finalize's tiles are those of the former separate finalize launch, so the
additions are the same; on a GPU the order inside a tl.sum also follows the kernel's
num_warps, which is now the statistics kernel's.) The counters are zero between launches:
the finishing program resets its own (``_arrival_counters``). When S == 1 the partial
kernel writes the raw sums straight into the output (``stats`` forward, finalized in
place; ``out`` for bn_stat_sums, which is then final and uses no counter); only S > 1
needs a scratch buffer of G * 2 * S * C partials.

* NCL (x3.stride(2) == 1, L > 1): ``_stats_rows_kernel``, one program per (g, c, row
  chunk, L chunk), looping over (BLOCK_R rows x BLOCK_L) tiles, contiguous along L.
* NLC (channels_last) and L == 1: per group the data is an (n*L, C) matrix with C
  contiguous, so ``_stats_cols_kernel`` runs one program per (g, channel block, M chunk)
  over (BLOCK_M x BLOCK_C) tiles, coalesced along C.

Backward: one elementwise pass, ``_bn_backward_kernel``, over 2-D tiles (outer x inner)
of one group, where "inner" is the contiguous axis (L for NCL, C for NLC). Per program
the group's scalars (grad_loss / (count * norm)) are computed once and the per-channel
coefficients once per tile row (NCL) or as one vector (NLC), never per element; the
div/mod that splits the outer index runs once per tile row (int32).

All kernels take the tensors' strides (any strides work; the layout only picks the
tiling), use int64 offsets, and never synchronize with the host. Absent optional
tensors are passed as unused placeholder pointers; constexpr flags select the paths.
"""

import torch
import triton
import triton.language as tl

from ._launch import knob, record_plan, target_programs

# Elements per tile: 4 warps x 32 threads x 16 elements (fp32: four 16-byte loads/thread).
_TILE = 2048
# A program of the split reduction handles at least this many tiles (amortizes its
# partial write and the launch), unless the whole reduction is smaller.
_MIN_TILES_PER_PROGRAM = 4
# Finalize tile: partials (BLOCK_S) x channels (BLOCK_C) elements per loop step.
_FINALIZE_TILE = 1024
_MAX_FINALIZE_BLOCK_S = 32


# ----------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------
@triton.jit
def _eval_bn_scale(rv_ptr, w_ptr, c, mask, eps, ACC: tl.constexpr, HAS_WEIGHT: tl.constexpr):
    """rsqrt(rv[c] + eps) * weight[c] (weight None: 1) in acc: the eval-mode BN's slope."""
    rv = tl.load(rv_ptr + c, mask=mask, other=1.0).to(ACC)
    # eps is an fp64 argument, rounded to acc once; 1/sqrt is IEEE in fp64 (rsqrt is not)
    scale = 1.0 / tl.sqrt(rv + tl.full([], eps, ACC))
    if HAS_WEIGHT:
        scale *= tl.load(w_ptr + c, mask=mask, other=0.0).to(ACC)
    return scale


@triton.jit
def _eval_bn_shift(rm, scale, b_ptr, c, mask, ACC: tl.constexpr, HAS_BIAS: tl.constexpr):
    """bias[c] - rm[c] * scale (bias None: 0)."""
    shift = -rm * scale
    if HAS_BIAS:
        shift += tl.load(b_ptr + c, mask=mask, other=0.0).to(ACC)
    return shift


@triton.jit
def _stats_rows_kernel(
    x_ptr, rm_ptr, part_ptr, rv_ptr, w_ptr, b_ptr, y_ptr, eps: tl.float64,
    C, L, n_per,
    stride_n, stride_c, stride_l,
    part_sg, part_sj, part_ss,
    rows_per_prog, l_per_prog, num_rsplit, num_lsplit,
    cnt_ptr, out_ptr, loss_ptr, count, out_sg, out_sj,
    BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_Y: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    FINALIZE: tl.constexpr, LOSS: tl.constexpr, BLOCK_FS: tl.constexpr, BLOCK_FC: tl.constexpr,
):
    """Program (g, c, row chunk s_r, L chunk s_l): partial sums over (rows x L) tiles into
    part[g, j, s, c]; HAS_Y: also the eval-mode BN output y of every tile it reads.
    FINALIZE: the last of the group's C * S programs to arrive finishes the group
    (:func:`_arrive_and_finalize`)."""
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

    acc_ty = part_ptr.dtype.element_ty
    rm = tl.load(rm_ptr + c).to(acc_ty)
    if HAS_Y:  # (c < C is always true: the helpers' loads take a mask)
        scale = _eval_bn_scale(rv_ptr, w_ptr, c, c < C, eps, acc_ty, HAS_WEIGHT)
        shift = _eval_bn_shift(rm, scale, b_ptr, c, c < C, acc_ty, HAS_BIAS)
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
    part_off = g.to(tl.int64) * part_sg + s.to(tl.int64) * part_ss + c
    tl.store(part_ptr + part_off, s1)
    tl.store(part_ptr + part_off + part_sj, s2)
    if FINALIZE:
        _arrive_and_finalize(g, C * num_split, cnt_ptr, part_ptr, rv_ptr, out_ptr, loss_ptr, C, num_split, count,
                             part_sg, part_sj, part_ss, out_sg, out_sj, LOSS, BLOCK_FS, BLOCK_FC)


@triton.jit
def _stats_cols_kernel(
    x_ptr, rm_ptr, part_ptr, rv_ptr, w_ptr, b_ptr, y_ptr, eps: tl.float64,
    C, M, n_per,
    stride_n, stride_m, stride_c,
    part_sg, part_sj, part_ss,
    m_per_prog, num_msplit, num_cblocks,
    cnt_ptr, out_ptr, loss_ptr, count, out_sg, out_sj,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    HAS_Y: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    FINALIZE: tl.constexpr, LOSS: tl.constexpr, BLOCK_FS: tl.constexpr, BLOCK_FC: tl.constexpr,
):
    """Program (g, channel block, M chunk s) over the group's (M = n*L, C) matrix; writes
    part[g, j, s, c] and y, and (FINALIZE) finishes the group, as in _stats_rows_kernel."""
    pid = tl.program_id(0)
    s = pid % num_msplit
    t = pid // num_msplit
    cb = t % num_cblocks
    g = t // num_cblocks
    m_begin = s * m_per_prog
    m_end = tl.minimum(m_begin + m_per_prog, M)

    acc_ty = part_ptr.dtype.element_ty
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    rm = tl.load(rm_ptr + cols, mask=col_mask, other=0.0).to(acc_ty)
    if HAS_Y:
        scale = _eval_bn_scale(rv_ptr, w_ptr, cols, col_mask, eps, acc_ty, HAS_WEIGHT)
        shift = _eval_bn_shift(rm, scale, b_ptr, cols, col_mask, acc_ty, HAS_BIAS)[None, :]
        scale = scale[None, :]
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
    part_off = g.to(tl.int64) * part_sg + s.to(tl.int64) * part_ss + cols
    tl.store(part_ptr + part_off, s1, mask=col_mask)
    tl.store(part_ptr + part_off + part_sj, s2, mask=col_mask)
    if FINALIZE:
        _arrive_and_finalize(g, num_cblocks * num_msplit, cnt_ptr, part_ptr, rv_ptr, out_ptr, loss_ptr, C,
                             num_msplit, count, part_sg, part_sj, part_ss, out_sg, out_sj, LOSS, BLOCK_FS, BLOCK_FC)


@triton.jit
def _arrive_and_finalize(
    g, arrivals, cnt_ptr, part_ptr, rv_ptr, out_ptr, loss_ptr,
    C, S, count,
    part_sg, part_sj, part_ss, out_sg, out_sj,
    LOSS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Called by each of the ``arrivals`` programs of group g after it stored its partials:
    counts it in cnt[g]; the program that arrives last finalizes the group and resets cnt[g]
    to 0 (so the counters are all zero between launches; see ``_arrival_counters``).

    Memory ordering: the barrier makes every thread of this program issue its partial stores
    before the counter update; the acq_rel atomic at gpu scope releases them (cumulatively)
    and, in the last program, acquires every earlier program's release (all updates of cnt[g]
    form one modification order, each an acq_rel RMW), so the finalize's loads see all the
    partials. Its loads bypass L1 (.cg), which may hold a line of this buffer that a program
    of a neighbouring group read earlier in the launch. No other program touches cnt[g] after
    the last arrival, so a plain store resets it; the next launch is ordered after this one
    by the stream."""
    tl.debug_barrier()
    arrived = tl.atomic_add(cnt_ptr + g, 1, sem="acq_rel", scope="gpu")
    if arrived == arrivals - 1:
        _finalize_group(g, part_ptr, rv_ptr, out_ptr, loss_ptr, C, S, count,
                        part_sg, part_sj, part_ss, out_sg, out_sj, LOSS, BLOCK_S, BLOCK_C)
        tl.store(cnt_ptr + g, 0)


@triton.jit
def _finalize_group(
    g, part_ptr, rv_ptr, out_ptr, loss_ptr,
    C, S, count,
    part_sg, part_sj, part_ss, out_sg, out_sj,
    LOSS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Group g: sum_s part[g, j, s, c] in a fixed order (deterministic). LOSS: writes
    out[g] = [delta, ||delta||; e, ||e||] (``stats``) and loss[g]; else the raw sums
    out[j, g, c]. ``out`` may be ``part`` itself (S == 1): every element is read before
    the value computed from it overwrites it, by the same program."""
    acc_ty = out_ptr.dtype.element_ty
    part_base = g.to(tl.int64) * part_sg
    out_base = g.to(tl.int64) * out_sg
    offs_s = tl.arange(0, BLOCK_S)
    offs_c = tl.arange(0, BLOCK_C)
    sq_delta = tl.zeros((BLOCK_C,), dtype=acc_ty)
    sq_e = tl.zeros((BLOCK_C,), dtype=acc_ty)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + offs_c
        col_mask = cols < C
        acc1 = tl.zeros((BLOCK_S, BLOCK_C), dtype=acc_ty)
        acc2 = tl.zeros((BLOCK_S, BLOCK_C), dtype=acc_ty)
        for s0 in range(0, S, BLOCK_S):
            ss = s0 + offs_s
            mask = (ss < S)[:, None] & col_mask[None, :]
            offs = part_base + ss.to(tl.int64)[:, None] * part_ss + cols[None, :]
            acc1 += tl.load(part_ptr + offs, mask=mask, other=0.0, cache_modifier=".cg")
            acc2 += tl.load(part_ptr + offs + part_sj, mask=mask, other=0.0, cache_modifier=".cg")
        s1 = tl.sum(acc1, axis=0)
        s2 = tl.sum(acc2, axis=0)
        if LOSS:
            delta = s1 / count
            rv = tl.load(rv_ptr + cols, mask=col_mask, other=0.0).to(acc_ty)
            e = s2 / count - delta * delta - rv  # masked lanes: 0 - 0 - 0
            sq_delta += delta * delta
            sq_e += e * e
            tl.store(out_ptr + out_base + cols, delta, mask=col_mask)
            tl.store(out_ptr + out_base + out_sj + cols, e, mask=col_mask)
        else:
            tl.store(out_ptr + out_base + cols, s1, mask=col_mask)
            tl.store(out_ptr + out_base + out_sj + cols, s2, mask=col_mask)
    if LOSS:
        norm_delta = tl.sqrt(tl.sum(sq_delta, axis=0))
        norm_e = tl.sqrt(tl.sum(sq_e, axis=0))
        tl.store(out_ptr + out_base + C, norm_delta)
        tl.store(out_ptr + out_base + out_sj + C, norm_e)
        tl.store(loss_ptr + g, norm_delta + norm_e)


@triton.jit
def _per_channel(v, CH_INNER: tl.constexpr):
    """A vector over the tile's channel axis, broadcast against the (q x p) tile."""
    if CH_INNER:
        return v[None, :]
    else:
        return v[:, None]


@triton.jit
def _bn_backward_kernel(
    x_ptr, rm_ptr, stats_ptr, gl_ptr, gl_stride, dx_ptr, dy_ptr, rv_ptr, w_ptr, count, eps: tl.float64,
    QG, P, D, C, n_per,
    sx_n, sx_d, sx_p, sg_n, sg_d, sg_p,
    num_qblocks, num_pblocks,
    CH_INNER: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr,
    HAS_LOSS: tl.constexpr, HAS_DY: tl.constexpr, HAS_WEIGHT: tl.constexpr,
):
    """dx = a[g, c] + b[g, c] * ((x - rm[c]) - delta[g, c]) (HAS_LOSS) + dy * scale[c]
    (HAS_DY, dy with x's strides) over (outer q x inner p) tiles of group g.

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
    if CH_INNER:
        c = p
        c_mask = p_mask
    else:
        c = d
        c_mask = q_mask

    x_off = (n * sx_n + d.to(tl.int64) * sx_d)[:, None] + p.to(tl.int64)[None, :] * sx_p
    dx = tl.zeros((BLOCK_Q, BLOCK_P), dtype=ACC)
    if HAS_LOSS:
        # stats[g] = [delta, ||delta||; e, ||e||]: per-group scalars first, then per channel
        row = stats_ptr + g.to(tl.int64) * (2 * (C + 1))
        norm_delta = tl.load(row + C).to(ACC)
        norm_e = tl.load(row + (2 * C + 1)).to(ACC)
        grad = tl.load(gl_ptr + g * gl_stride).to(ACC)  # stride 0: a summed loss's gradient
        # a zero norm means a zero vector: divide by 1 so its gradient is 0, not NaN
        ga = grad / (count * tl.where(norm_delta > 0, norm_delta, 1.0))
        gb = 2.0 * grad / (count * tl.where(norm_e > 0, norm_e, 1.0))
        delta = tl.load(row + c, mask=c_mask, other=0.0)
        e = tl.load(row + (C + 1) + c, mask=c_mask, other=0.0)
        a = _per_channel(ga * delta, CH_INNER)
        b = _per_channel(gb * e, CH_INNER)
        delta = _per_channel(delta, CH_INNER)
        rm = _per_channel(tl.load(rm_ptr + c, mask=c_mask, other=0.0).to(ACC), CH_INNER)
        x = tl.load(x_ptr + x_off, mask=mask, other=0.0).to(ACC)
        dx += a + b * ((x - rm) - delta)
    if HAS_DY:
        scale = _per_channel(_eval_bn_scale(rv_ptr, w_ptr, c, c_mask, eps, ACC, HAS_WEIGHT), CH_INNER)
        dx += tl.load(dy_ptr + x_off, mask=mask, other=0.0).to(ACC) * scale
    g_off = (n * sg_n + d.to(tl.int64) * sg_d)[:, None] + p.to(tl.int64)[None, :] * sg_p
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


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


# ----------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------
def _cols_plan(x3, G, block_rows, block_inner, split):
    """Channels inner: tiles of rows of a group's (n*L, C) matrix x a channel block, S per block."""
    (N, C, L), (sn, sc, sl) = x3.shape, x3.stride()
    n_per = N // G
    M = n_per * L
    BLOCK_C = block_inner or min(triton.next_power_of_2(C), 128)
    BLOCK_M = block_rows or max(1, min(_TILE // BLOCK_C, triton.next_power_of_2(M)))
    num_cblocks = triton.cdiv(C, BLOCK_C)
    tiles = triton.cdiv(M, BLOCK_M)
    if split is None:
        split = min(triton.cdiv(target_programs(x3.device, waves=8), G * num_cblocks),
                    max(1, tiles // _MIN_TILES_PER_PROGRAM))
    tiles_per = triton.cdiv(tiles, max(1, min(int(split), tiles)))
    S = triton.cdiv(tiles, tiles_per)
    return (_stats_cols_kernel, (G * num_cblocks * S,), (C, M, n_per, sn, sn if L == 1 else sl, sc),
            (tiles_per * BLOCK_M, S, num_cblocks),
            dict(BLOCK_M=BLOCK_M, BLOCK_C=BLOCK_C, num_warps=_num_warps(BLOCK_M * BLOCK_C)),
            dict(kernel="cols", S=S, num_cblocks=num_cblocks, BLOCK_M=BLOCK_M, BLOCK_C=BLOCK_C))


def _rows_plan(x3, G, block_rows, block_inner, split):
    """Rows (each (n, c) a run of L): tiles of rows x L, S = rsplit * lsplit per (group, channel)."""
    (N, C, L), (sn, sc, sl) = x3.shape, x3.stride()
    n_per = N // G
    BLOCK_L = block_inner or _inner_block(L, _TILE)
    BLOCK_R = block_rows or max(1, min(_TILE // BLOCK_L, triton.next_power_of_2(n_per)))
    row_tiles = triton.cdiv(n_per, BLOCK_R)
    l_tiles = triton.cdiv(L, BLOCK_L)
    if split is None:
        split = min(triton.cdiv(target_programs(x3.device, waves=8), G * C),
                    max(1, row_tiles * l_tiles // _MIN_TILES_PER_PROGRAM))
    split = max(1, int(split))
    # Prefer splitting rows: every program then reads whole rows (long contiguous runs).
    rsplit = min(split, row_tiles)
    lsplit = min(triton.cdiv(split, rsplit), l_tiles)
    r_tiles_per = triton.cdiv(row_tiles, rsplit)
    l_tiles_per = triton.cdiv(l_tiles, lsplit)
    rsplit = triton.cdiv(row_tiles, r_tiles_per)
    lsplit = triton.cdiv(l_tiles, l_tiles_per)
    S = rsplit * lsplit
    return (_stats_rows_kernel, (G * C * S,), (C, L, n_per, sn, sc, sl),
            (r_tiles_per * BLOCK_R, l_tiles_per * BLOCK_L, rsplit, lsplit),
            dict(BLOCK_R=BLOCK_R, BLOCK_L=BLOCK_L, num_warps=_num_warps(BLOCK_R * BLOCK_L)),
            dict(kernel="rows", S=S, rsplit=rsplit, lsplit=lsplit, BLOCK_R=BLOCK_R, BLOCK_L=BLOCK_L))


def _partial_sums(x3, running_mean, groups, out, out_strides, block_rows, block_inner, split,
                  running_var=None, weight=None, bias=None, eps=0.0, y3=None, loss=None):
    """Launch the statistics kernel of x3's layout (the one launch of a forward or sums op);
    return its plan (kernel, splits, blocks). Its programs write partial sums, with S == 1
    straight into ``out`` (element (g, j, c) at g * out_strides[0] + j * out_strides[1] + c),
    with S > 1 into a new (G, 2, S, C) scratch buffer that the last program of each group
    finalizes into ``out`` (with ``loss`` the statistics; raw sums with S == 1 are final: no
    counter). With ``y3`` the same kernel writes the eval-mode BN output (running_var is
    required with ``loss`` or ``y3``)."""
    N, C, L = x3.shape
    G = int(groups)
    block_rows = _pow2(knob("block_rows", block_rows), "block_rows")
    block_inner = _pow2(knob("block_inner", block_inner), "block_inner")
    split = knob("split", split)
    sn, _, sl = x3.stride()
    # The (n*L, C) matrix view of a group needs one stride for its rows.
    matrix_ok = L == 1 or N // G == 1 or sn == L * sl
    plan_of = _cols_plan if (sl != 1 or L == 1) and matrix_ok else _rows_plan
    kernel, grid, shape_args, split_args, blocks, plan = plan_of(x3, G, block_rows, block_inner, split)
    S = plan["S"]
    if S == 1:
        part, part_strides = out, (*out_strides, 0)
    else:
        # S partials per output do not fit in the output: (G, 2, S, C) contiguous scratch
        part = torch.empty((G, 2, S, C), dtype=out.dtype, device=out.device)
        part_strides = part.stride()[:3]
    finalize = loss is not None or S > 1
    # The finalize's tile: the same as the former separate finalize launch's, so its sums
    # run in the same order.
    BLOCK_FS = min(triton.next_power_of_2(S), _MAX_FINALIZE_BLOCK_S)
    BLOCK_FC = max(1, min(_FINALIZE_TILE // BLOCK_FS, triton.next_power_of_2(C)))
    has_y = y3 is not None
    kernel[grid](
        x3, running_mean, part,
        _or(running_var, x3), *((_or(weight, x3), _or(bias, x3), y3) if has_y else (x3, x3, x3)),
        float(eps),
        *shape_args, *part_strides, *split_args,
        _arrival_counters(x3.device, G) if finalize else x3, out, _or(loss, out), (N // G) * L, *out_strides,
        HAS_Y=has_y, HAS_WEIGHT=has_y and weight is not None, HAS_BIAS=has_y and bias is not None,
        FINALIZE=finalize, LOSS=loss is not None, BLOCK_FS=BLOCK_FS, BLOCK_FC=BLOCK_FC,
        **blocks,
    )
    return plan


def _or(tensor, placeholder):
    """``tensor``, or an (unread) placeholder pointer for an absent optional tensor."""
    return placeholder if tensor is None else tensor


# Arrival counters of the fused finalize, one int32 per group, per device: zero between
# launches (the last program of a group resets its counter), so no launch clears them. They
# are shared by all streams of the device, so forward launches on one device must not run
# concurrently on different streams (the ops are used on one stream; CUDA graph replays of
# captured launches are serialized on theirs).
_counters = {}
FIRST_COUNTERS = 64  # a device's first buffer (doubled, or made as large as a launch needs, after)


def _arrival_counters(device, groups):
    """The device's zero counters, at least ``groups`` of them (grown, zero-filled, once:
    a torch fill then, never per call)."""
    buf = _counters.get(device)
    if buf is None or buf.numel() < groups:
        n = max(groups, FIRST_COUNTERS if buf is None else 2 * buf.numel())
        buf = _counters[device] = torch.zeros(n, dtype=torch.int32, device=device)
    return buf


def arrival_counters(device):
    """The counters of ``device`` (tests: all zero after every launch), or None before the
    first launch that needed them."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # (tensors' devices carry the index)
        device = torch.device("cuda", torch.cuda.current_device())
    return _counters.get(device)


def bn_stat_sums(x3, running_mean, groups, out, *, block_rows=None, block_inner=None, split=None):
    """out[0, g, c] = sum(x - rm[c]), out[1, g, c] = sum((x - rm[c])**2): one launch (when
    the reduction is split, the last program of each group adds its partials).

    Keyword-only knobs (tests and benchmarks; the defaults are the heuristics):
    ``block_rows`` / ``block_inner``: powers of two, the tile's outer and contiguous
    extents; ``split``: about how many programs share the reduction of one output. A knob
    left at None takes the value a test forces with ``_launch.forced_plan``, if any.
    """
    G, C = int(groups), x3.shape[1]
    out_strides = (C, G * C)  # out[j, g, c]
    plan = _partial_sums(x3, running_mean, G, out, out_strides, block_rows, block_inner, split)
    record_plan("bn_stat_sums", **plan)


def bn_stat_forward(x3, running_mean, running_var, groups, loss, stats, weight=None, bias=None, eps=0.0, y3=None, *,
                    block_rows=None, block_inner=None, split=None):
    """stats[g] = [delta_g, ||delta_g||; e_g, ||e_g||], loss[g] = ||delta_g|| + ||e_g||, and
    with y3 (x3's strides) the eval-mode BN output y3 = x * scale[c] + shift[c] from the
    same read of x: one launch (the last program of each group finishes its statistics).

    Knobs as in :func:`bn_stat_sums`.
    """
    G = int(groups)
    stats_strides = (2 * (x3.shape[1] + 1), x3.shape[1] + 1)  # stats[g, j, c]
    plan = _partial_sums(
        x3, running_mean, G, stats, stats_strides, block_rows, block_inner, split,
        running_var=running_var, weight=weight, bias=bias, eps=eps, y3=y3, loss=loss,
    )
    record_plan("bn_stat_forward", **plan)


def bn_stat_backward(x3, running_mean, stats, grad_loss, count, grad_input, grad_y3=None, running_var=None,
                     weight=None, eps=0.0, *, block_rows=None, block_inner=None):
    """grad_input = a[g, c] + b[g, c] * ((x - rm[c]) - delta[g, c]) (grad_loss given)
    + grad_y3 * scale[c] (grad_y3 given, x3's strides), a and b from stats, grad_loss and
    count: one launch.

    ``block_rows`` / ``block_inner``: optional power-of-two tile extents (tests; None: a
    test's ``_launch.forced_plan``, else the heuristic).
    """
    N, C, L = x3.shape
    if x3.numel() == 0:
        return
    G = stats.shape[0]
    n_per = N // G
    block_rows = _pow2(knob("block_rows", block_rows), "block_rows")
    block_inner = _pow2(knob("block_inner", block_inner), "block_inner")
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
    has_dy = grad_y3 is not None
    grid = (G * num_qblocks * num_pblocks,)
    record_plan("bn_stat_backward", num_qblocks=num_qblocks, num_pblocks=num_pblocks, BLOCK_Q=BLOCK_Q, BLOCK_P=BLOCK_P)
    _bn_backward_kernel[grid](
        x3, running_mean, stats, _or(grad_loss, stats), 0 if grad_loss is None else grad_loss.stride(0), grad_input,
        _or(grad_y3, x3), _or(running_var, stats), _or(weight, stats),
        count, float(eps),
        QG, P, D, C, n_per,
        sx[0], sx_d, sx_p, sg[0], sg_d, sg_p,
        num_qblocks, num_pblocks,
        CH_INNER=channels_inner, BLOCK_Q=BLOCK_Q, BLOCK_P=BLOCK_P, ACC=_acc(x3.dtype),
        HAS_LOSS=grad_loss is not None, HAS_DY=has_dy, HAS_WEIGHT=has_dy and weight is not None,
        num_warps=_num_warps(BLOCK_Q * BLOCK_P),
    )
