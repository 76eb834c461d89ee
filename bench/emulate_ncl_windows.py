"""Host emulation of the CUDA NCL kernels' window index math (csrc/cuda/bn_stat_loss.cu:
plan_bn's NCL branch, ncl_window, Divider<uint32_t>, the per-thread loop of bn_sums_ncl_kernel /
bn_backward_ncl_kernel, block_sum2 and the finalize's split order), mirrored line by line in
Python, over many shapes, forced splits and the four dtypes. Checks, per shape:
  * every element of every (group, channel) is summed exactly once, by a block of that group
    and channel, and the backward stores every element of x exactly once;
  * full windows start at a VEC-aligned element offset (a 16-byte load when x is aligned);
  * L % VEC == 0: the windows are the former vectors (offset row * C * L + j * VEC, full);
  * the sums in the kernel's order (acc dtype, per thread in increasing window order, then
    the warp/block trees and the splits in order) agree with float64 to rounding.
No GPU needed: python bench/emulate_ncl_windows.py (a few seconds to a minute)."""
from __future__ import annotations

import itertools
import sys

import numpy as np

K_THREADS = 256
K_TARGET_BLOCKS = 528
K_MIN_ELEMS = 16384


def ceil_div(a, b):
    return (a + b - 1) // b


def plan_ncl(N, C, L, groups, vec, forced_splits=0):
    """plan_bn's NCL branch: (row_vecs, chunk, splits)."""
    G = groups
    M = N // G * L
    gcd = vec
    while L % gcd != 0:
        gcd //= 2
    row_vecs = ceil_div(L + vec - gcd, vec)
    units = N // G * row_vecs
    cap = max(1, ceil_div(K_TARGET_BLOCKS, max(1, G * C)))
    splits = forced_splits if forced_splits > 0 else min(cap, max(1, ceil_div(M, K_MIN_ELEMS)))
    chunk = ceil_div(units, splits) if units > 0 else 0
    splits = ceil_div(units, chunk) if units > 0 else 1
    return row_vecs, chunk, splits


def make_divider32(d):
    shift = 0
    while shift < 32 and (1 << shift) < d:
        shift += 1
    magic = ((1 << 32) * ((1 << shift) - d)) // d + 1
    return d, magic & 0xFFFFFFFF, shift


def div32(div, n):
    """Divider<uint32_t>::div on a numpy uint64 array holding uint32 values (wrapping add)."""
    _, magic, shift = div
    hi = (n * np.uint64(magic)) >> np.uint64(32)
    return ((hi + n) & np.uint64(0xFFFFFFFF)) >> np.uint64(shift)


def ncl_window(v, div, row_stride, base_off, L, vec):
    """ncl_window<VW, kWindows>: (off relative to x + base_off, mask) for an array of window
    indices v (kWindows false, L % VEC == 0: the same values, checked by the caller)."""
    row = div32(div, v.astype(np.uint64)).astype(np.int64)
    j = v.astype(np.int64) - row * div[0]
    row_off = row * row_stride
    # the kernel's 32-bit h: (unsigned) base_off + (unsigned) row * (unsigned) row_stride
    h = (((base_off & 0xFFFFFFFF) + row * (row_stride & 0xFFFFFFFF)) & 0xFFFFFFFF) & (vec - 1)
    start = j * vec - h
    lo = np.where(start < 0, -start, 0)
    hi = np.where(L - start < vec, L - start, vec)
    full = (1 << vec) - 1
    shift = np.clip(vec - hi, 0, 31)
    mask = np.where(hi <= lo, 0, (full >> shift) & ~((1 << lo) - 1))
    return row_off + start, mask


def warp_tree(a):
    """block_sum2's warp_sum (shfl_down 16..1) on (..., 32) lanes: lane 0's result."""
    a = a.copy()
    for off in (16, 8, 4, 2, 1):
        shifted = np.concatenate([a[..., off:], a[..., -off:]], axis=-1)  # out of range: own value
        a = a + shifted
    return a[..., 0]


def block_sum(per_thread):
    warps = warp_tree(per_thread.reshape(8, 32))
    lanes = np.concatenate([warps, np.zeros(24, dtype=per_thread.dtype)])
    return warp_tree(lanes)


def check(N, C, L, groups, vec, acc, forced_splits, rng, old_vec_path):
    n = N // groups
    row_vecs, chunk, splits = plan_ncl(N, C, L, groups, vec, forced_splits)
    if old_vec_path:
        assert row_vecs == L // vec
    Mv = n * row_vecs
    assert max(n * L, Mv) < 2 ** 31
    div = make_divider32(max(1, row_vecs))
    row_stride = C * L
    x = (rng.standard_normal(N * C * L) * 1.5 + 0.3).astype(acc)
    rm = (rng.standard_normal(C) * 0.2).astype(acc)
    seen = np.zeros(N * C * L, dtype=np.int64)     # forward: times each element was summed
    written = np.zeros(N * C * L, dtype=np.int64)  # backward: times each element was stored
    full = (1 << vec) - 1
    bits = (np.arange(vec)[None, :])
    for g, c in itertools.product(range(groups), range(C)):
        base_off = (g * n * C + c) * L
        parts1, parts2 = [], []
        for s in range(splits):
            begin = s * chunk
            end = min(begin + chunk, Mv)
            steps = max(0, ceil_div(end - begin, K_THREADS))
            # thread t's windows begin + t, begin + t + 256, ... < end, in this order
            v = begin + np.arange(steps * K_THREADS).reshape(steps, K_THREADS)
            valid_v = v < end
            off, mask = ncl_window(np.where(valid_v, v, 0), div, row_stride, base_off, L, vec)
            mask = np.where(valid_v, mask, 0)
            if old_vec_path:
                row, j = v // row_vecs, v % row_vecs
                assert np.all(~valid_v | ((off == row * row_stride + j * vec) & (mask == full)))
            el = base_off + off[..., None] + bits  # (steps, threads, vec)
            m = ((mask[..., None] >> bits) & 1).astype(bool)
            assert np.all((base_off + off[mask == full]) % vec == 0), "a full window not VEC-aligned"
            offs = el[m]
            assert offs.min(initial=0) >= 0 and offs.max(initial=0) < N * C * L
            rows_idx, rem = np.divmod(offs, C * L)
            assert np.all(rem // L == c), "an element of another channel"
            assert np.all(rows_idx // n == g), "an element of another group"
            np.add.at(seen, offs, 1)
            np.add.at(written, offs, 1)  # the backward kernel stores the same windows
            # sums in the kernel's order: per thread sequential, windows then elements
            d = np.where(m, x[np.clip(el, 0, N * C * L - 1)] - rm[c], acc(0)).astype(acc)
            s1 = np.zeros(K_THREADS, dtype=acc)
            s2 = np.zeros(K_THREADS, dtype=acc)
            for k in range(steps):
                for e in range(vec):
                    s1 = (s1 + d[k, :, e]).astype(acc)
                    s2 = (s2 + d[k, :, e] * d[k, :, e]).astype(acc)
            parts1.append(block_sum(s1))
            parts2.append(block_sum(s2))
        # the finalize adds the splits in order, in double
        S1 = float(np.sum(np.array(parts1, dtype=np.float64)))
        S2 = float(np.sum(np.array(parts2, dtype=np.float64)))
        ref = x.reshape(N, C, L)[g * n:(g + 1) * n, c, :].astype(np.float64) - float(rm[c])
        eps = np.finfo(acc).eps
        terms = n * L + 8
        assert abs(S1 - ref.sum()) <= 2 * terms * eps * np.abs(ref).sum() + 1e-300, (S1, ref.sum())
        assert abs(S2 - (ref * ref).sum()) <= 2 * terms * eps * (ref * ref).sum() + 1e-300
    assert np.all(seen == 1), f"elements summed {np.unique(seen)} times"
    assert np.all(written == 1), "backward: an element not stored exactly once"
    return row_vecs, splits


def main():
    rng = np.random.default_rng(0)
    dtypes = {"fp32": (4, np.float32), "bf16": (8, np.float32), "fp16": (8, np.float32), "fp64": (2, np.float64)}
    cases = 0
    for L in (2, 3, 4, 7, 8, 9, 25, 42, 49, 50, 64, 100, 196):
        for (N, C, groups) in ((1, 1, 1), (2, 3, 1), (6, 5, 2), (8, 2, 4), (9, 3, 3)):
            for name, (vec, acc) in dtypes.items():
                for forced in (0, 1, 2, 3, 7, 36):
                    check(N, C, L, groups, vec, acc, forced, rng, L % vec == 0)
                    cases += 1
    # the unrolled main loop (> 8 * 256 windows per block) and ResNet's last-stage shapes
    for (N, C, L, groups, forced) in ((100, 2, 49, 1, 0), (64, 2, 196, 2, 0), (200, 1, 196, 1, 2),
                                      (150, 1, 49, 3, 1), (50, 2, 50, 1, 0)):
        for name, (vec, acc) in dtypes.items():
            rv, splits = check(N, C, L, groups, vec, acc, forced, rng, L % vec == 0)
            cases += 1
    # h in 32 bits equals the 64-bit offset mod VEC for offsets beyond 2^32 (huge tensors)
    for vec in (2, 4, 8):
        for L in (49, 196, 7, 3):
            C, base_off = 3, (5 * 3 + 1) * L
            rows = np.arange(0, 2 ** 33 // (C * L) + 10, 9973, dtype=np.int64)
            h32 = (((base_off & 0xFFFFFFFF) + rows * ((C * L) & 0xFFFFFFFF)) & 0xFFFFFFFF) & (vec - 1)
            assert np.array_equal(h32, (base_off + rows * C * L) % vec)
    print(f"ok: {cases} shape/dtype/split cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
