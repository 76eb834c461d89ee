// CPU kernels of the grouped BN-statistics loss: infer_fast_C::bn_stat_sums and
// infer_fast_C::bn_stat_backward. Semantics: infer_fast/ops/backends.py ("Backend contract"),
// math: docs/KERNELS.md section 1.
//
// x3 is (N, C, L) in one of two layouts, told apart by strides:
//   NCL (x3.stride(2) == 1): each (n, c) is a contiguous row of L values;
//   NLC (x3.stride(1) == 1): each (n, l) is a contiguous row of C values (channels_last).
// (For L == 1 the two coincide; a (N, C, 1) view with stride(1) == 1 takes the NLC loops,
// which read memory in order.)
//
// Sums: the reduction is cut into a fixed set of work items that depends only on the
// shapes (never on the number of threads or on scheduling); each item writes its own
// partial sums, and the partials are combined in a fixed order. Results are therefore
// bit-identical for any thread count. Inside an item, inner chunks accumulate in the
// accumulate dtype (fp32, or fp64 for fp64 inputs) and are added into double sums, which
// keeps large fp32 reductions accurate.
#include "common.h"
#include "ops.h"

#include <ATen/MemoryOverlap.h>

#include <cmath>
#include <utility>
#include <vector>

namespace infer_fast {
namespace cpu {
namespace {

constexpr const char* kSums = "bn_stat_sums";
constexpr const char* kBwd = "bn_stat_backward";

// Work items: a contiguous run of about kSegElems values; about item_elems(total) values
// per item: at least 64 items when that keeps them above kMinItemElems values, so the
// threads stay balanced (a function of the shape only, never of the thread count).
constexpr int64_t kSegElems = 65536;
constexpr int64_t kMinItemElems = 16384;
constexpr int64_t kMaxItemElems = 262144;

inline int64_t item_elems(int64_t total) {
  return std::min(kMaxItemElems, std::max(kMinItemElems, total / 64));
}
// Elementwise backward: grain of the parallel loop.
constexpr int64_t kGrainElems = 32768;
// Inner chunk summed in the accumulate dtype before it is added into double sums; also
// the block size of the fp16/bf16 <-> fp32 conversions.
constexpr int64_t kBlock = 1024;
// NLC: channel tile (local buffers on the stack) and rows per inner chunk.
constexpr int64_t kChannelTile = 1024;
constexpr int64_t kRowsPerFlush = 64;

enum class Layout { NCL, NLC };

// Which loops serve x3: NCL when the L axis is unit-stride (and L > 1, or the C axis is not
// unit-stride), NLC when the C axis is unit-stride. Other layouts break the contract.
Layout pick_layout(const at::Tensor& x3, const char* op) {
  const int64_t C = x3.size(1), L = x3.size(2);
  const bool l_unit = x3.stride(2) == 1 || L == 1;
  const bool c_unit = x3.stride(1) == 1 || C == 1;
  if (L == 1 && c_unit) return Layout::NLC;
  if (l_unit) return Layout::NCL;
  if (c_unit) return Layout::NLC;
  TORCH_CHECK(false, op, ": x must be (N, C, L) with stride(2) == 1 (NCL) or stride(1) == 1 (NLC, channels_last), "
              "got sizes ", x3.sizes(), " and strides ", x3.strides());
  return Layout::NCL;
}

// s1 += sum(p - rm), s2 += sum((p - rm)^2) over len contiguous values of the accumulate
// dtype. Lanes independent accumulators (several vector registers) keep the loop off the
// latency of one chain of vector adds; each kBlock chunk is added into the double sums.
template <typename A, int64_t Lanes>
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
inline void sums_contig_impl(const A* p, int64_t len, A rm, double& s1, double& s2) {
  for (int64_t i0 = 0; i0 < len; i0 += kBlock) {
    const int64_t i1 = std::min(len, i0 + kBlock);
    A a1 = 0, a2 = 0;
    int64_t i = i0;
    if (i1 - i0 >= Lanes) {
      A v1[Lanes], v2[Lanes];
      for (int64_t j = 0; j < Lanes; ++j) v1[j] = v2[j] = A(0);
      for (; i + Lanes <= i1; i += Lanes) {
#pragma omp simd
        for (int64_t j = 0; j < Lanes; ++j) {
          const A d = p[i + j] - rm;
          v1[j] += d;
          v2[j] += d * d;
        }
      }
      for (int64_t j = 0; j < Lanes; ++j) {
        a1 += v1[j];
        a2 += v2[j];
      }
    }
    for (; i < i1; ++i) {
      const A d = p[i] - rm;
      a1 += d;
      a2 += d * d;
    }
    s1 += static_cast<double>(a1);
    s2 += static_cast<double>(a2);
  }
}

#ifdef INFER_FAST_X86_DISPATCH
// The same loop compiled for AVX2 (no FMA, so no contraction), used when the CPU has it.
__attribute__((target("avx2"))) void sums_contig_avx2(const float* p, int64_t len, float rm, double& s1,
                                                      double& s2) {
  sums_contig_impl<float, 32>(p, len, rm, s1, s2);
}
__attribute__((target("avx2"))) void sums_contig_avx2(const double* p, int64_t len, double rm, double& s1,
                                                      double& s2) {
  sums_contig_impl<double, 16>(p, len, rm, s1, s2);
}
#endif

template <typename A>
inline void sums_contig(const A* p, int64_t len, A rm, double& s1, double& s2) {
#ifdef INFER_FAST_X86_DISPATCH
  if (cpu_has_avx2_f16c()) return sums_contig_avx2(p, len, rm, s1, s2);
#endif
  sums_contig_impl<A, 64 / sizeof(A)>(p, len, rm, s1, s2);  // 16 floats or 8 doubles
}

// The same over len values of dtype T with stride `step` (loads converted to acc dtype).
template <typename T>
inline void row_sums(const T* p, int64_t len, int64_t step, acc_t<T> rm, double& s1, double& s2) {
  using A = acc_t<T>;
  if (step == 1) {
    if constexpr (IsReduced<T>::value) {
      float buf[kBlock];
      for (int64_t i0 = 0; i0 < len; i0 += kBlock) {
        const int64_t n = std::min(kBlock, len - i0);
        to_float(p + i0, buf, n);
        sums_contig<float>(buf, n, rm, s1, s2);
      }
    } else {
      sums_contig<A>(p, len, rm, s1, s2);
    }
    return;
  }
  for (int64_t i0 = 0; i0 < len; i0 += kBlock) {
    const int64_t i1 = std::min(len, i0 + kBlock);
    A a1 = 0, a2 = 0;
    for (int64_t i = i0; i < i1; ++i) {
      const A d = static_cast<A>(p[i * step]) - rm;
      a1 += d;
      a2 += d * d;
    }
    s1 += static_cast<double>(a1);
    s2 += static_cast<double>(a2);
  }
}

// ---- elementwise passes: out = a + b * (x - m) [+ dy * s] ----
// The backward writes dx = a + b (x - mu) (+ dy * scale when the eval-mode BN is fused in);
// the fused forward writes y = shift + scale * (x - 0) through the same helpers. dy, when
// given, has x's strides. Unit strides take the vectorized loops, fp16/bf16 through fp32
// blocks.

// Coefficients of the elementwise passes: one value for the whole run (a channel of an NCL
// row) or one per value (the channels of an NLC row).
template <typename A>
struct Same {
  A v;
  A operator[](int64_t) const { return v; }
};
template <typename A>
struct PerValue {
  const A* p;
  A operator[](int64_t i) const { return p[i]; }
};

// out[i] = a[i] + b[i] * (x[i] - m[i]) (+ dy[i] * s[i] when dy is given) over len values.
template <typename T, typename Coef>
inline void affine(const T* x, int64_t sx, T* y, int64_t sy, int64_t len, Coef a, Coef b, Coef m, const T* dy,
                   Coef s) {
  using A = acc_t<T>;
  if (sx == 1 && sy == 1) {
    if constexpr (IsReduced<T>::value) {
      float buf[kBlock], dbuf[kBlock];
      for (int64_t i0 = 0; i0 < len; i0 += kBlock) {
        const int64_t n = std::min(kBlock, len - i0);
        to_float(x + i0, buf, n);
        if (dy != nullptr) {
          to_float(dy + i0, dbuf, n);
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) buf[i] = a[i0 + i] + b[i0 + i] * (buf[i] - m[i0 + i]) + dbuf[i] * s[i0 + i];
        } else {
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) buf[i] = a[i0 + i] + b[i0 + i] * (buf[i] - m[i0 + i]);
        }
        from_float(buf, y + i0, n);
      }
    } else if (dy != nullptr) {
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) y[i] = a[i] + b[i] * (x[i] - m[i]) + dy[i] * s[i];
    } else {
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) y[i] = a[i] + b[i] * (x[i] - m[i]);
    }
  } else {
    for (int64_t i = 0; i < len; ++i) {
      A v = a[i] + b[i] * (static_cast<A>(x[i * sx]) - m[i]);
      if (dy != nullptr) v += static_cast<A>(dy[i * sx]) * s[i];
      y[i * sy] = static_cast<T>(v);
    }
  }
}

// One channel's coefficients over len values.
template <typename T>
inline void affine_row(const T* x, int64_t sx, T* y, int64_t sy, int64_t len, acc_t<T> a, acc_t<T> b,
                       acc_t<T> m, const T* dy, acc_t<T> s) {
  using C = Same<acc_t<T>>;
  affine<T, C>(x, sx, y, sy, len, C{a}, C{b}, C{m}, dy, C{s});
}

// Per-channel coefficients: value i is channel i (a, b, m, s point at the first channel;
// s may be null when dy is).
template <typename T>
inline void affine_channels(const T* x, int64_t sx, T* y, int64_t sy, int64_t len, const acc_t<T>* a,
                            const acc_t<T>* b, const acc_t<T>* m, const T* dy, const acc_t<T>* s) {
  using C = PerValue<acc_t<T>>;
  affine<T, C>(x, sx, y, sy, len, C{a}, C{b}, C{m}, dy, C{s});
}

// The same over len contiguous values of an NLC tensor, value j being channel
// (c_start + j) % C; fp16/bf16 through fp32 blocks that span several rows.
template <typename T>
inline void affine_span_nlc(const T* x, T* y, int64_t len, int64_t c_start, int64_t C, const acc_t<T>* a,
                            const acc_t<T>* b, const acc_t<T>* m, const T* dy, const acc_t<T>* s) {
  if constexpr (IsReduced<T>::value) {
    float buf[kBlock], dbuf[kBlock];
    int64_t c = c_start;
    for (int64_t j0 = 0; j0 < len; j0 += kBlock) {
      const int64_t nb = std::min(kBlock, len - j0);
      to_float(x + j0, buf, nb);
      if (dy != nullptr) to_float(dy + j0, dbuf, nb);
      for (int64_t j = 0; j < nb;) {
        const int64_t w = std::min(C - c, nb - j);
        float* v = buf + j;
        const float *ap = a + c, *bp = b + c, *mp = m + c;
        if (dy != nullptr) {
          const float *dv = dbuf + j, *sp = s + c;
#pragma omp simd
          for (int64_t i = 0; i < w; ++i) v[i] = ap[i] + bp[i] * (v[i] - mp[i]) + dv[i] * sp[i];
        } else {
#pragma omp simd
          for (int64_t i = 0; i < w; ++i) v[i] = ap[i] + bp[i] * (v[i] - mp[i]);
        }
        j += w;
        c += w;
        if (c == C) c = 0;
      }
      from_float(buf, y + j0, nb);
    }
  } else {
    int64_t c = c_start;
    for (int64_t j = 0; j < len;) {
      const int64_t w = std::min(C - c, len - j);
      affine_channels(x + j, 1, y + j, 1, w, a + c, b + c, m + c, dy == nullptr ? nullptr : dy + j,
                      s == nullptr ? nullptr : s + c);
      j += w;
      c = 0;
    }
  }
}

// The fused eval-mode BN output of bn_stat_sums: y = x * scale[c] + shift[c], y with x's
// strides; zero: C zeros (the m of the helpers above). y == nullptr: sums only.
template <typename T>
struct EvalBNOut {
  T* y = nullptr;
  const acc_t<T>* scale = nullptr;
  const acc_t<T>* shift = nullptr;
  const acc_t<T>* zero = nullptr;
};

// NCL: work item (g, n-block, c-block, l-segment). Inside an item, n is the outer loop and c
// the inner one, so an item reads spans of about kSegElems contiguous values. Items are
// numbered in memory order; partials go to part[g][n-block][l-segment][2][C].
template <typename T>
void sums_ncl(const T* x, int64_t N, int64_t C, int64_t L, int64_t sN, int64_t sC, int64_t sL,
              const acc_t<T>* rm, int64_t G, double* out, const EvalBNOut<T>& bn) {
  const int64_t npg = N / G;
  const std::pair<int64_t, int64_t> nseg_seg = split_even(L, kSegElems);
  const int64_t nseg = nseg_seg.first, seg = nseg_seg.second;
  const std::pair<int64_t, int64_t> ncb_cb = split_even(C, kSegElems / seg);
  const int64_t ncb = ncb_cb.first, cb = ncb_cb.second;
  const std::pair<int64_t, int64_t> nnb_nb = split_even(npg, item_elems(N * C * L) / (cb * seg));
  const int64_t nnb = nnb_nb.first, nb = nnb_nb.second;
  const int64_t items = G * nnb * ncb * nseg;
  std::vector<double> part(G * nnb * nseg * 2 * C);
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> acc(2 * cb);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t sg = t % nseg, cblk = (t / nseg) % ncb, nblk = (t / (nseg * ncb)) % nnb,
                    g = t / (nseg * ncb * nnb);
      const int64_t c0 = cblk * cb, c1 = std::min(C, c0 + cb);
      const int64_t n0 = g * npg + nblk * nb, n1 = std::min(n0 + nb, (g + 1) * npg);
      const int64_t l0 = sg * seg, l1 = std::min(L, l0 + seg);
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t n = n0; n < n1; ++n) {
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t off = n * sN + c * sC + l0 * sL;
          double &s1 = acc[2 * (c - c0)], &s2 = acc[2 * (c - c0) + 1];
          if (bn.y == nullptr) {
            row_sums(x + off, l1 - l0, sL, rm[c], s1, s2);
            continue;
          }
          // kBlock pieces (row_sums' own blocks, so the sums are bit-identical): y is
          // written while the piece is in L1.
          for (int64_t i0 = 0; i0 < l1 - l0; i0 += kBlock) {
            const int64_t len = std::min(kBlock, l1 - l0 - i0);
            row_sums(x + off + i0 * sL, len, sL, rm[c], s1, s2);
            affine_row<T>(x + off + i0 * sL, sL, bn.y + off + i0 * sL, sL, len, bn.shift[c], bn.scale[c], 0, nullptr, 0);
          }
        }
      }
      double* dst = part.data() + ((g * nnb + nblk) * nseg + sg) * 2 * C;
      for (int64_t c = c0; c < c1; ++c) {
        dst[c] = acc[2 * (c - c0)];
        dst[C + c] = acc[2 * (c - c0) + 1];
      }
    }
  });
  const int64_t GC = G * C;
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t c = 0; c < C; ++c) {
      double s1 = 0, s2 = 0;
      for (int64_t r = 0; r < nnb * nseg; ++r) {
        const double* src = part.data() + (g * nnb * nseg + r) * 2 * C;
        s1 += src[c];
        s2 += src[C + c];
      }
      out[g * C + c] = s1;
      out[GC + g * C + c] = s2;
    }
  }
}

// NLC inner loops over one channel tile: f1 += sum of (row - rm), f2 += sum of squares.
// acc_rows4 takes four rows at a time (fewer loads and stores of the accumulators per
// value); it is used only for rows of at most kRows4MaxBytes apart, since interleaving
// streams further apart measured slower than one row at a time on x86.
constexpr int64_t kRows4MaxBytes = 256;

template <typename A>
inline void acc_rows4(const A* r0, const A* r1, const A* r2, const A* r3, const A* rm, A* f1, A* f2, int64_t cw) {
#pragma omp simd
  for (int64_t c = 0; c < cw; ++c) {
    const A d0 = r0[c] - rm[c], d1 = r1[c] - rm[c], d2 = r2[c] - rm[c], d3 = r3[c] - rm[c];
    f1[c] += (d0 + d1) + (d2 + d3);
    f2[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
  }
}

// Kept out of line: inlined into the row loop of acc_rows, GCC's unroll-and-jam interleaves
// rows again (the slow pattern above).
template <typename A>
#if defined(__GNUC__)
__attribute__((noinline))
#endif
void acc_row1(const A* r0, const A* rm, A* f1, A* f2, int64_t cw) {
#pragma omp simd
  for (int64_t c = 0; c < cw; ++c) {
    const A d0 = r0[c] - rm[c];
    f1[c] += d0;
    f2[c] += d0 * d0;
  }
}

// k rows of cw values of the accumulate dtype, `stride` values apart.
template <typename A>
inline void acc_rows(const A* p, int64_t stride, int64_t k, const A* rm, A* f1, A* f2, int64_t cw) {
  int64_t q = 0;
  if (stride * static_cast<int64_t>(sizeof(A)) <= kRows4MaxBytes) {
    for (; q + 4 <= k; q += 4) {
      acc_rows4<A>(p + q * stride, p + (q + 1) * stride, p + (q + 2) * stride, p + (q + 3) * stride, rm, f1, f2, cw);
    }
  }
  for (; q < k; ++q) acc_row1<A>(p + q * stride, rm, f1, f2, cw);
}

// NLC: work item (g, row block, channel tile) over the rows (n, l) of group g, numbered in
// memory order; partials go to part[g][row block][2][C]. Rows are taken in runs of up to
// kRowsPerFlush consecutive rows that are equally spaced in memory; fp16/bf16 runs are
// converted to fp32 first (in one block when the rows are contiguous).
template <typename T>
void sums_nlc(const T* x, int64_t N, int64_t C, int64_t L, int64_t sN, int64_t sL, const acc_t<T>* rm, int64_t G,
              double* out, const EvalBNOut<T>& bn) {
  using A = acc_t<T>;
  const int64_t npg = N / G;
  const int64_t rows_pg = npg * L;  // rows (n, l) of one group, each C contiguous values
  const std::pair<int64_t, int64_t> ntile_tile = split_even(C, kChannelTile);
  const int64_t ntile = ntile_tile.first, tile = ntile_tile.second;
  const std::pair<int64_t, int64_t> nrb_rpb = split_even(rows_pg, item_elems(N * C * L) / tile);
  const int64_t nrb = nrb_rpb.first, rpb = nrb_rpb.second;
  const int64_t items = G * nrb * ntile;
  const bool n_contiguous = sN == L * sL;  // row (n, L-1) is followed by row (n+1, 0)
  std::vector<double> part(G * nrb * 2 * C);
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    A f1[kChannelTile], f2[kChannelTile];
    double d1[kChannelTile], d2[kChannelTile];
    // fp16/bf16 rows converted to fp32 (unused for fp32/fp64)
    std::vector<float> conv(IsReduced<T>::value ? std::max(kBlock, 4 * kChannelTile) : 0);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t ct = t % ntile, rb = (t / ntile) % nrb, g = t / (ntile * nrb);
      const int64_t c0 = ct * tile, cw = std::min(tile, C - c0);
      const A* rmc = rm + c0;
      const int64_t i0 = rb * rpb, i1 = std::min(rows_pg, i0 + rpb);
      int64_t n = g * npg + i0 / L, l = i0 % L;
      for (int64_t c = 0; c < cw; ++c) {
        f1[c] = f2[c] = 0;
        d1[c] = d2[c] = 0;
      }
      int64_t cnt = 0;
      for (int64_t i = i0; i < i1;) {
        int64_t k = std::min(i1 - i, kRowsPerFlush);
        if (!n_contiguous) k = std::min(k, L - l);
        const T* p = x + n * sN + l * sL + c0;
        if constexpr (IsReduced<T>::value) {
          if (sL == cw) {  // k rows of cw values back to back: one conversion
            k = std::min(k, std::max<int64_t>(1, kBlock / cw));
            to_float(p, conv.data(), k * cw);
          } else {
            k = std::min<int64_t>(k, 4);
            for (int64_t q = 0; q < k; ++q) to_float(p + q * sL, conv.data() + q * cw, cw);
          }
          acc_rows<float>(conv.data(), cw, k, rmc, f1, f2, cw);
        } else {
          acc_rows<A>(p, sL, k, rmc, f1, f2, cw);
        }
        if (bn.y != nullptr) {  // the k rows just read, still in L1
          T* yp = bn.y + (p - x);
          for (int64_t q = 0; q < k; ++q) {
            affine_channels<T>(p + q * sL, 1, yp + q * sL, 1, cw, bn.shift + c0, bn.scale + c0, bn.zero + c0, nullptr,
                               nullptr);
          }
        }
        i += k;
        l += k;
        if (l >= L) {
          n += l / L;
          l %= L;
        }
        cnt += k;
        if (cnt >= kRowsPerFlush || i == i1) {
          cnt = 0;
          for (int64_t c = 0; c < cw; ++c) {
            d1[c] += static_cast<double>(f1[c]);
            d2[c] += static_cast<double>(f2[c]);
            f1[c] = f2[c] = 0;
          }
        }
      }
      double* dst = part.data() + (g * nrb + rb) * 2 * C + c0;
      for (int64_t c = 0; c < cw; ++c) {
        dst[c] = d1[c];
        dst[C + c] = d2[c];
      }
    }
  });
  const int64_t GC = G * C;
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t c = 0; c < C; ++c) {
      double s1 = 0, s2 = 0;
      for (int64_t rb = 0; rb < nrb; ++rb) {
        const double* src = part.data() + (g * nrb + rb) * 2 * C;
        s1 += src[c];
        s2 += src[C + c];
      }
      out[g * C + c] = s1;
      out[GC + g * C + c] = s2;
    }
  }
}

// The launchers' checks: the contract's (contract::check_*, defined once in functional.cpp,
// which the functional ops ran already) for their own memory safety, as Python can call the
// launchers directly (infer_fast._C.launchers), plus what only a launcher takes: x as (N, C, L)
// on the CPU, outputs it writes, strides it reads with.

// x (N, C, L) on the CPU and groups; returns the accumulate dtype.
at::ScalarType check_x_and_groups(const at::Tensor& x, int64_t groups, const char* op) {
  check_defined(x, op, "x");
  check_cpu(x, op, "x");
  TORCH_CHECK(x.dim() == 3, op, ": x must be 3-D (N, C, L), got shape ", x.sizes());
  contract::check_bn_x(x, groups, op);
  return accumulate_dtype(x.scalar_type());
}

// A tensor with x's dtype, sizes and strides (strides of size-1 dims aside), written by an
// op without overlapping elements (y, grad_input) or read like x (grad_y).
void check_strided_like_x(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name) {
  contract::check_like_x(t, x, op, name);
  for (int64_t d = 0; d < x.dim(); ++d) {
    TORCH_CHECK(x.size(d) <= 1 || t.stride(d) == x.stride(d), op, ": ", name, " must have x's strides ", x.strides(),
                ", got ", t.strides());
  }
  TORCH_CHECK(at::has_internal_overlap(t) != at::MemOverlap::Yes, op, ": ", name,
              " must not have overlapping elements, got strides ", t.strides());
}

// A BatchNorm parameter (running statistics, weight, bias): (C,), on x's device (the CPU),
// contiguous, with the dtype of the first one checked (`dtype` undefined: any of the four floats).
void check_param(const at::Tensor& t, const at::Tensor& x, at::ScalarType dtype, const char* op, const char* name) {
  contract::check_bn_param(t, x, dtype, op, name);
  check_contiguous(t, op, name);
}

// A (C,) parameter of any float dtype as C values of the accumulate dtype A (a missing
// optional one: C copies of `absent`).
template <typename A>
std::vector<A> param_values(const std::optional<at::Tensor>& t, int64_t C, A absent) {
  std::vector<A> v(C, absent);
  if (!t.has_value()) return v;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t->scalar_type(), "param_values", [&] {
    const scalar_t* p = t->const_data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) v[c] = static_cast<A>(p[c]);
  });
  return v;
}

// The eval-mode BatchNorm's per-channel factor rsqrt(rv + eps) * weight.
template <typename A>
std::vector<A> eval_bn_scale(const std::vector<A>& rv, const std::optional<at::Tensor>& weight, double eps) {
  std::vector<A> scale = param_values<A>(weight, static_cast<int64_t>(rv.size()), A(1));
  for (size_t c = 0; c < rv.size(); ++c) scale[c] /= std::sqrt(rv[c] + static_cast<A>(eps));
  return scale;
}

// Shifted sums of x per group and channel, (2, G, C) doubles; with `bn` also the fused
// eval-mode BN output.
template <typename T>
std::vector<double> shifted_sums(const at::Tensor& x, const acc_t<T>* rm, int64_t G, const EvalBNOut<T>& bn) {
  const int64_t N = x.size(0), C = x.size(1), L = x.size(2);
  std::vector<double> sums(2 * G * C, 0.0);
  if (x.numel() == 0) return sums;
  const T* xp = x.const_data_ptr<T>();
  if (pick_layout(x, kSums) == Layout::NCL) {
    sums_ncl<T>(xp, N, C, L, x.stride(0), x.stride(1), x.stride(2), rm, G, sums.data(), bn);
  } else {
    sums_nlc<T>(xp, N, C, L, x.stride(0), x.stride(2), rm, G, sums.data(), bn);
  }
  return sums;
}

}  // namespace
}  // namespace cpu
}  // namespace infer_fast

void infer_fast::cpu::bn_stat_sums(const at::Tensor& x, const at::Tensor& running_mean, int64_t groups,
                                   const at::Tensor& out) {
  const at::ScalarType acc = check_x_and_groups(x, groups, kSums);
  const int64_t C = x.size(1);
  check_param(running_mean, x, at::ScalarType::Undefined, kSums, "running_mean");
  check_tensor(out, acc, {2, groups, C}, kSums, "out");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), kSums, [&] {
    using A = acc_t<scalar_t>;
    const std::vector<A> rm = param_values<A>(running_mean, C, A(0));
    const std::vector<double> sums = shifted_sums<scalar_t>(x, rm.data(), groups, {});
    A* op = out.mutable_data_ptr<A>();
    for (size_t i = 0; i < sums.size(); ++i) op[i] = static_cast<A>(sums[i]);
  });
}

void infer_fast::cpu::bn_stat_forward(const at::Tensor& x, const at::Tensor& running_mean,
                                      const at::Tensor& running_var, int64_t groups, const at::Tensor& loss,
                                      const at::Tensor& stats, const std::optional<at::Tensor>& weight,
                                      const std::optional<at::Tensor>& bias, double eps,
                                      const std::optional<at::Tensor>& y) {
  constexpr const char* op = "bn_stat_forward";
  const at::ScalarType acc = check_x_and_groups(x, groups, op);
  const int64_t N = x.size(0), C = x.size(1), L = x.size(2);
  check_param(running_mean, x, at::ScalarType::Undefined, op, "running_mean");
  const at::ScalarType param_dtype = running_mean.scalar_type();
  check_param(running_var, x, param_dtype, op, "running_var");
  check_tensor(loss, acc, {groups}, op, "loss");
  check_tensor(stats, acc, {groups, 2, C + 1}, op, "stats");
  if (y.has_value()) {
    check_strided_like_x(*y, x, op, "y");
    if (weight.has_value()) check_param(*weight, x, param_dtype, op, "weight");
    if (bias.has_value()) check_param(*bias, x, param_dtype, op, "bias");
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
    using A = acc_t<scalar_t>;
    const std::vector<A> rm = param_values<A>(running_mean, C, A(0));
    const std::vector<A> rv = param_values<A>(running_var, C, A(0));
    EvalBNOut<scalar_t> bn;
    std::vector<A> scale, shift, zero;
    if (y.has_value()) {
      scale = eval_bn_scale<A>(rv, weight, eps);
      shift = param_values<A>(bias, C, A(0));
      for (int64_t c = 0; c < C; ++c) shift[c] -= rm[c] * scale[c];
      zero.assign(C, A(0));
      bn = {y->mutable_data_ptr<scalar_t>(), scale.data(), shift.data(), zero.data()};
    }
    const std::vector<double> sums = shifted_sums<scalar_t>(x, rm.data(), groups, bn);
    // Finalize in double: delta = mean - rm, e = var - rv, their norms, the loss.
    const double count = static_cast<double>((N / groups) * L);
    A* sp = stats.mutable_data_ptr<A>();
    A* lp = loss.mutable_data_ptr<A>();
    for (int64_t g = 0; g < groups; ++g) {
      A* delta = sp + g * 2 * (C + 1);
      A* err = delta + C + 1;
      double norm2_delta = 0, norm2_err = 0;
      for (int64_t c = 0; c < C; ++c) {
        const double d = sums[g * C + c] / count;
        const double e = sums[(groups + g) * C + c] / count - d * d - static_cast<double>(rv[c]);
        delta[c] = static_cast<A>(d);
        err[c] = static_cast<A>(e);
        norm2_delta += d * d;
        norm2_err += e * e;
      }
      delta[C] = static_cast<A>(std::sqrt(norm2_delta));
      err[C] = static_cast<A>(std::sqrt(norm2_err));
      lp[g] = static_cast<A>(std::sqrt(norm2_delta) + std::sqrt(norm2_err));
    }
  });
}

namespace infer_fast {
namespace cpu {
namespace {

template <typename T>
void backward_ncl(const T* x, T* y, int64_t N, int64_t C, int64_t L, const int64_t* xs, const int64_t* ys,
                  const acc_t<T>* a, const acc_t<T>* b, const acc_t<T>* m, int64_t G, const T* dy,
                  const acc_t<T>* scale) {
  const int64_t npg = N / G;
  const int64_t total = N * C * L;
  at::parallel_for(0, total, kGrainElems, [&](int64_t begin, int64_t end) {
    int64_t row = begin / L, l = begin % L;  // row = n * C + c
    int64_t pos = begin;
    while (pos < end) {
      const int64_t n = row / C, c = row % C;
      const int64_t gc = (n / npg) * C + c;
      const int64_t len = std::min(L - l, end - pos);
      const int64_t xo = n * xs[0] + c * xs[1] + l * xs[2];
      affine_row(x + xo, xs[2], y + n * ys[0] + c * ys[1] + l * ys[2], ys[2], len, a[gc], b[gc], m[gc],
                 dy == nullptr ? nullptr : dy + xo, dy == nullptr ? acc_t<T>(0) : scale[c]);
      pos += len;
      l = 0;
      ++row;
    }
  });
}

template <typename T>
void backward_nlc(const T* x, T* y, int64_t N, int64_t C, int64_t L, const int64_t* xs, const int64_t* ys,
                  const acc_t<T>* a, const acc_t<T>* b, const acc_t<T>* m, int64_t G, const T* dy,
                  const acc_t<T>* scale) {
  const int64_t npg = N / G;
  const int64_t total = N * L * C;
  // rows (n, l) of x and of grad_input back to back within each n (plain channels_last)
  const bool spans = xs[1] == 1 && ys[1] == 1 && xs[2] == C && ys[2] == C;
  at::parallel_for(0, total, kGrainElems, [&](int64_t begin, int64_t end) {
    int64_t pos = begin;
    while (pos < end) {
      const int64_t row = pos / C, c0 = pos % C;  // row = n * L + l
      const int64_t n = row / L, l = row % L;
      const int64_t go = (n / npg) * C;
      int64_t len;
      if (spans) {
        len = std::min(end, (n + 1) * L * C) - pos;
        const int64_t xo = n * xs[0] + l * C + c0;
        affine_span_nlc(x + xo, y + n * ys[0] + l * C + c0, len, c0, C, a + go, b + go, m + go,
                        dy == nullptr ? nullptr : dy + xo, scale);
      } else {
        len = std::min(C - c0, end - pos);
        const int64_t xo = n * xs[0] + l * xs[2] + c0 * xs[1];
        affine_channels(x + xo, xs[1], y + n * ys[0] + l * ys[2] + c0 * ys[1], ys[1], len, a + go + c0, b + go + c0,
                        m + go + c0, dy == nullptr ? nullptr : dy + xo, dy == nullptr ? nullptr : scale + c0);
      }
      pos += len;
    }
  });
}


}  // namespace
}  // namespace cpu
}  // namespace infer_fast

void infer_fast::cpu::bn_stat_backward(const at::Tensor& x, const at::Tensor& running_mean, const at::Tensor& stats,
                                       const std::optional<at::Tensor>& grad_loss, int64_t count,
                                       const at::Tensor& grad_input, const std::optional<at::Tensor>& grad_y,
                                       const std::optional<at::Tensor>& running_var,
                                       const std::optional<at::Tensor>& weight, double eps) {
  check_x_and_groups(x, 1, kBwd);
  const int64_t groups = contract::check_bn_stats(stats, x, kBwd);
  const int64_t N = x.size(0), C = x.size(1), L = x.size(2);
  check_param(running_mean, x, at::ScalarType::Undefined, kBwd, "running_mean");
  TORCH_CHECK(count >= 1, kBwd, ": count must be >= 1, got ", count);
  TORCH_CHECK(grad_loss.has_value() || grad_y.has_value(), kBwd, ": grad_loss and grad_y are both None");
  if (grad_loss.has_value()) contract::check_grad_loss(*grad_loss, x, groups, kBwd);  // (read at its stride)
  check_strided_like_x(grad_input, x, kBwd, "grad_input");
  if (grad_y.has_value()) {
    check_strided_like_x(*grad_y, x, kBwd, "grad_y");
    TORCH_CHECK(running_var.has_value(), kBwd, ": grad_y needs running_var (the eval-mode BatchNorm's scale)");
    check_param(*running_var, x, running_mean.scalar_type(), kBwd, "running_var");
    if (weight.has_value()) check_param(*weight, x, running_mean.scalar_type(), kBwd, "weight");
  }
  if (x.numel() == 0) return;
  const Layout layout = pick_layout(x, kBwd);
  const int64_t xs[3] = {x.stride(0), x.stride(1), x.stride(2)};
  const int64_t ys[3] = {grad_input.stride(0), grad_input.stride(1), grad_input.stride(2)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), kBwd, [&] {
    using A = acc_t<scalar_t>;
    const std::vector<A> rm = param_values<A>(running_mean, C, A(0));
    // dx = a + b ((x - rm) - delta) = (a - b delta) + b (x - rm): the loops' a + b (x - m)
    // with m = rm, so x - rm is taken before any rounding of the mean.
    std::vector<A> coef_a(groups * C, A(0)), coef_b(groups * C, A(0)), mean(groups * C);
    const A* sp = stats.const_data_ptr<A>();
    for (int64_t g = 0; g < groups; ++g) {
      std::copy(rm.begin(), rm.end(), mean.begin() + g * C);
      if (!grad_loss.has_value()) continue;
      const A* delta = sp + g * 2 * (C + 1);
      const A* err = delta + C + 1;
      const A gl = grad_loss->const_data_ptr<A>()[g * grad_loss->stride(0)];
      const A safe_delta = delta[C] > 0 ? delta[C] : A(1), safe_err = err[C] > 0 ? err[C] : A(1);
      const A ga = gl / (static_cast<A>(count) * safe_delta), gb = 2 * gl / (static_cast<A>(count) * safe_err);
      for (int64_t c = 0; c < C; ++c) {
        coef_b[g * C + c] = gb * err[c];
        coef_a[g * C + c] = ga * delta[c] - coef_b[g * C + c] * delta[c];
      }
    }
    std::vector<A> scale;
    if (grad_y.has_value()) scale = eval_bn_scale<A>(param_values<A>(running_var, C, A(0)), weight, eps);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* gp = grad_input.mutable_data_ptr<scalar_t>();
    const scalar_t* dyp = grad_y.has_value() ? grad_y->const_data_ptr<scalar_t>() : nullptr;
    const A* scp = grad_y.has_value() ? scale.data() : nullptr;
    if (layout == Layout::NCL) {
      backward_ncl<scalar_t>(xp, gp, N, C, L, xs, ys, coef_a.data(), coef_b.data(), mean.data(), groups, dyp, scp);
    } else {
      backward_nlc<scalar_t>(xp, gp, N, C, L, xs, ys, coef_a.data(), coef_b.data(), mean.data(), groups, dyp, scp);
    }
  });
}
