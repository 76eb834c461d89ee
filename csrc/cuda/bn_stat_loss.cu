// CUDA kernels of the BN-statistics loss. Semantics: infer_fast/ops/backends.py; launcher API
// and conventions: launchers.h. No torch headers here (nvcc compiles this file alone).
//
// Kernel launches per op (one stream, no host synchronization; the only atomic is one
// counter increment per block, which never touches a result):
//   bn_stat_sums      one partial kernel (its last block per group finalizes when splits > 1)
//   bn_stat_forward   one partial kernel (its last block per group finalizes stats and loss)
//   bn_stat_backward  one elementwise kernel
//
// Decomposition (BnPlan, shape-only): per (group, channel) for NCL, or per (group, 128-byte
// channel tile) for NLC, the rows of the group are split into `splits` chunks of one
// 256-thread block each, so the grid fills the 132 SMs even when G * C is small (C = 64).
//   partial kernel: each block writes its (sum d, sum d^2), d = x - rm[c], to the workspace
//     (G, 2, splits, C), or straight to the output when splits == 1; with the fused eval-BN
//     it also writes y = x * scale[c] + shift[c] where it loads x (each element is loaded
//     once, so the teacher's BN output costs no extra read);
//   fused finalize: each block then counts itself in its group's arrival counter (unsigned,
//     zero between launches: allocated zeroed once per device by the bindings, reset by the
//     finishing block), and the group's last block (threadfence + atomicAdd, the "last block"
//     pattern) adds the splits of every channel in a fixed order and stores the sums, or
//     finishes delta, e, their norms and the loss, in the same order as the former
//     one-block-per-group finalize kernel of 1024 threads (finalize_group). Counters are per
//     device: launches on one device must not run concurrently on different streams;
//   backward kernel: the same blocks, so (group, channel) is fixed per thread and the
//     coefficients are computed once per thread from stats and the parameters; the element
//     loop only streams x (and grad_y) in and grad_input out.
// The order of every addition depends only on the shape and dtype (never on pointer
// alignment, scheduling or the GPU model), so results are bitwise reproducible.
//
// Memory access:
//   NCL (N, C, L) with L contiguous: a block reads its channel's n rows as one flat range of
//     n * W "windows" (BnPlan::row_vecs = W per row); a warp reads consecutive windows. Window
//     j of a row whose first element sits at element offset r0 of x covers the VEC-aligned
//     offsets [r0 - h + j*VEC, r0 - h + (j+1)*VEC), h = r0 % VEC, cut to the row: full windows
//     are one 16-byte load, the first/last ones of a row partial (masked scalar loads, the
//     missing elements add nothing), trailing ones possibly empty. W = ceil((L + VEC - g) / VEC),
//     g = gcd(L, VEC), covers every h a row can have (r0 is a multiple of L), so 7x7 and 14x14
//     layers keep 16-byte loads; when L % VEC == 0, h = 0 and the windows are the plain
//     vectors of L / VEC per row (those kernels, kWindows false, have no masks at all). h is a
//     function of the element offset, not of the pointer, so the grouping (and the summation
//     order) is shape-only; an unaligned pointer (kVecLoad false) loads the same windows
//     element by element.
//   NLC (N, L, C) with C contiguous: the rows of a group form a dense (n*L) x C matrix;
//     threadIdx.x walks the channel vectors of a 128-byte tile (one cache line per row) and
//     threadIdx.y walks rows; the partial kernel then reduces over threadIdx.y in shared
//     memory.
#include "launchers.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace infer_fast {
namespace cuda {
namespace {

using detail::acc_t;
using detail::ceil_div;
using detail::Divider;
using detail::from_acc;
using detail::kInt32Max;
using detail::to_acc;
using detail::Vec;

constexpr int kThreads = 256;  // threads per block of the partial and backward kernels
// Independent 16-byte loads in flight per thread before their results are used. The unroll
// never changes the summation order (each thread sums its vectors in increasing order).
constexpr int kUnroll = 8;
// NLC partial with the fused y: its scale/shift registers leave room for 6 loads in flight
// under the 64-register cap of 4 blocks per SM (8 spill with fp32).
constexpr int kUnrollNlcAffine = 6;
// Backward: two input streams (x and grad_y), 4 vectors each: 8 loads in flight.
constexpr int kUnrollBackward = 4;
// NCL kernels with partial windows (L % VEC != 0): half the unroll. A window's masked element
// loads keep one element per register (a partial and a full window merge into 16-bit values),
// which doubled the registers at the full unroll (bf16 sums 59 -> 101, fused bf16 backward
// spilling ~200 bytes). The unroll never changes the order of the additions.
constexpr int kUnrollWindows = kUnroll / 2;
constexpr int kUnrollBackwardWindows = kUnrollBackward / 2;
// Launch heuristics (shape-only, so the summation order never depends on the device). To
// stream at the H200's 4.2 TB/s the GPU needs about bandwidth x latency = 4.2 TB/s x ~1 us
// ~ 4 MB of loads in flight. A 256-thread block with 8 16-byte loads per thread (partial)
// or 4 x 2 (backward) has 32 KB in flight, so ~130 resident blocks already saturate HBM.
// kTargetBlocks = 528 (4 per SM on 132 SMs) gives 4x margin, so even the last partial wave
// of a grid that is not a multiple of the resident blocks stays near saturation. It also
// bounds the partial sums, which the last block of each group reads to finalize it: 2 * 528 *
// (channels per block) values in all, at most ~270 KB (fp16 NLC, G = 1), a few us for one
// 256-thread block, against >= 60 us for the partial pass of a 256 MB tensor (and no second
// launch to wait for). The fused finalize raises the partial kernels' registers to ~60-64
// (ptxas, sm_90; NLC was already capped at 64), i.e. 4 resident blocks per SM: still all 528
// of a default grid in one wave. Each block reads >= kMinElemsPerBlock
// elements, so its fixed costs (parameter and coefficient loads, the block reduction) stay
// at a few percent. Measured on an H100 with these numbers (NCL partial kernel, fp32
// (100, 64, 56, 56)): ~2.8 TB/s, ~93% of copy bandwidth.
constexpr int64_t kTargetBlocks = 528;
constexpr int64_t kMinElemsPerBlock = 16384;
// NLC channel tile: 128 bytes of each row (one cache line; adjacent tiles run in adjacent
// blocks, see nlc_block). A narrow tile keeps the partial sums at 2 * splits * (channels per
// tile) per tile instead of per C-wide row, which keeps the one-block-per-group finalize
// short for wide layers (C = 512: 16x fewer partials than a tile of all channels).
constexpr int64_t kNlcTileBytes = 128;
// Lanes of the finalize's fixed summation layout (the former finalize kernel's block size; the
// fused finalize runs them on the partial kernels' blocks, see finalize_group).
constexpr int kFinalizeThreads = 1024;

// Test-only plan override and report (launchers.h): process-wide; relaxed atomics, as the
// fields are independent and a test sets them before it launches.
std::atomic<int64_t> g_forced_splits{0}, g_forced_channel_tiles{0}, g_forced_compose_threads{0};
std::mutex g_report_mutex;
PlanReport g_report;

enum BnLauncher { kSumsLauncher = 0, kForwardLauncher = 1, kBackwardLauncher = 2 };

void report_bn(BnLauncher launcher, const BnPlan& plan) {
  const std::lock_guard<std::mutex> lock(g_report_mutex);
  g_report.bn[launcher] = plan;
}

int64_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kFloat64: return 8;
    case DType::kFloat16: return 2;
    case DType::kBFloat16: return 2;
  }
  return 0;
}

// Calls fn(std::true_type{}) or fn(std::false_type{}): a runtime flag as a template argument.
template <typename Fn>
void with_flag(bool flag, Fn&& fn) {
  if (flag)
    fn(std::true_type{});
  else
    fn(std::false_type{});
}

// Calls fn(TypeTag<I>{}) with I the index type of a per-(group, channel) range of `count`
// elements: uint32_t (cheap division) when it fits 31 bits, else uint64_t.
template <typename Fn>
void with_index_type(int64_t count, Fn&& fn) {
  if (count <= kInt32Max)
    fn(detail::TypeTag<uint32_t>{});
  else
    fn(detail::TypeTag<uint64_t>{});
}

// ---------------------------------------------------------------------------------------------
// Device helpers
// ---------------------------------------------------------------------------------------------
// Parameter i of dtype P, converted to A. Parameters are loaded once per channel per thread,
// so a switch per load costs nothing next to the streaming loads (and the kernels need no
// template argument for P).
template <typename A>
__device__ __forceinline__ A load_param(const void* p, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kFloat32: return static_cast<A>(static_cast<const float*>(p)[i]);
    case DType::kFloat64: return static_cast<A>(static_cast<const double*>(p)[i]);
    case DType::kFloat16: return static_cast<A>(__half2float(static_cast<const __half*>(p)[i]));
    case DType::kBFloat16:
      return static_cast<A>(__bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]));
  }
  return A(0);
}

__device__ __forceinline__ float rsqrt_acc(float v) { return rsqrtf(v); }
__device__ __forceinline__ double rsqrt_acc(double v) { return rsqrt(v); }

// Eval-mode BatchNorm of channel c: scale = rsqrt(rv + eps) * weight, shift = bias - rm * scale
// (weight null: 1, bias null: 0), in A.
template <typename A>
__device__ __forceinline__ A eval_bn_scale(const BnParams& p, int64_t c) {
  A s = rsqrt_acc(load_param<A>(p.running_var, p.dtype, c) + static_cast<A>(p.eps));
  if (p.weight != nullptr) s *= load_param<A>(p.weight, p.dtype, c);
  return s;
}

template <typename A>
__device__ __forceinline__ A eval_bn_shift(const BnParams& p, int64_t c, A rm, A scale) {
  const A bias = p.bias != nullptr ? load_param<A>(p.bias, p.dtype, c) : A(0);
  return bias - rm * scale;
}

// Per-group sums k (0: sum d, 1: sum d^2) of (group g, split s, channel c) at
// p[g * g_stride + k * k_stride + s * s_stride + c]. Views of the workspace (G, 2, splits, C),
// of the sums op's out (2, G, C) and of stats (G, 2, C + 1) (the last two with s == 0).
template <typename A>
struct SumsView {
  A* p;
  int64_t g_stride, k_stride, s_stride;
  __device__ __forceinline__ A* at(int64_t g, int k, int64_t s, int64_t c) const {
    return p + g * g_stride + k * k_stride + s * s_stride + c;
  }
};

template <typename A>
SumsView<A> workspace_view(A* workspace, int64_t splits, int64_t C) {
  return {workspace, 2 * splits * C, splits * C, C};
}
template <typename A>
SumsView<A> sums_out_view(A* out, int64_t G, int64_t C) {
  return {out, C, G * C, 0};
}
template <typename A>
SumsView<A> stats_view(A* stats, int64_t C) {
  return {stats, 2 * (C + 1), C + 1, 0};
}

// The fused finalize of the partial kernels (counters null: none, the partials are final).
// The last of the `arrivals` blocks of group g to arrive (counters[g], zero between launches)
// finishes the group into `out` (kLoss: stats, with loss non-null; else the raw sums).
template <typename A>
struct FinalizeArgs {
  unsigned int* counters = nullptr;
  SumsView<A> out{};
  A* loss = nullptr;       // non-null: stats and loss (bn_stat_forward); null: sums
  unsigned int arrivals = 0;
  int chan_log2 = 5;       // finalize_chan_log2(C): the channel lanes of the finalize's layout
  double M = 1.0;          // elements per (group, channel)
};

// Block coordinates: group, channel (NCL) or channel tile (NLC), split.
struct BlockCoord {
  int64_t g, c, s;
};

// NCL: block b = (g * C + c) * splits + s.
__device__ __forceinline__ BlockCoord ncl_block(int64_t splits, int64_t C) {
  const int64_t b = blockIdx.x;
  const int64_t gc = b / splits;
  return {gc / C, gc % C, b % splits};
}

// NLC: block b = (g * splits + s) * ctiles + t: blocks that run together read adjacent
// channel tiles of the same rows (whole rows, DRAM-page friendly).
__device__ __forceinline__ BlockCoord nlc_block(int64_t splits, int64_t ctiles) {
  const int64_t b = blockIdx.x;
  const int64_t gs = b / ctiles;
  return {gs / splits, b % ctiles, gs % splits};
}

// NCL window v of one (group, channel) (header comment): window j = v % W of row v / W
// (w_div divides by W = BnPlan::row_vecs); rows are row_stride = C * L apart and the channel's
// first row starts at element base_off of x. off: the window's first (VW-aligned) offset
// relative to x + base_off; mask: bit e set when element e lies in the row (kFullMask: all).
// kWindows false (L % VW == 0: h = 0, every window full): the plain vectors, mask a constant,
// so those kernels compile to the vector code without masks (same registers).
template <int VW>
constexpr unsigned kFullMask = (1u << VW) - 1u;

struct NclWindow {
  int64_t off;
  unsigned mask;
};

template <int VW, bool kWindows, typename I>
__device__ __forceinline__ NclWindow ncl_window(I v, const Divider<I>& w_div, int64_t row_stride,
                                                int64_t base_off, int64_t L) {
  const I row = w_div.div(v);
  const I j = v - row * w_div.divisor;
  const int64_t row_off = static_cast<int64_t>(row) * row_stride;
  if constexpr (!kWindows) {
    return {row_off + static_cast<int64_t>(j) * VW, kFullMask<VW>};
  } else {
    // h = (base_off + row_off) % VW in 32 bits (VW: a power of two)
    const int h = static_cast<int>((static_cast<unsigned>(base_off) +
                                    static_cast<unsigned>(row) * static_cast<unsigned>(row_stride)) &
                                   (VW - 1));
    const int64_t start = static_cast<int64_t>(j) * VW - h;  // in the row; only j == 0 is < 0
    const int lo = start < 0 ? static_cast<int>(-start) : 0;
    const int hi = L - start < VW ? static_cast<int>(L - start) : VW;  // <= lo: empty window
    const unsigned mask = hi <= lo ? 0u : (kFullMask<VW> >> (VW - hi)) & ~((1u << lo) - 1u);
    return {row_off + start, mask};
  }
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;  // lane 0 holds the sum
}

// Sums (a, b) over a 1-D block of kBlock threads in a fixed tree order; valid in thread 0.
template <int kBlock, typename A>
__device__ __forceinline__ void block_sum2(A& a, A& b) {
  constexpr int kWarps = kBlock / 32;
  __shared__ A sh[2][kWarps];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  a = warp_sum(a);
  b = warp_sum(b);
  if (lane == 0) {
    sh[0][warp] = a;
    sh[1][warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    a = lane < kWarps ? sh[0][lane] : A(0);
    b = lane < kWarps ? sh[1][lane] : A(0);
    a = warp_sum(a);
    b = warp_sum(b);
  }
}

template <typename T, int VW, bool kVecLoad>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, T (&out)[VW]) {
  if constexpr (kVecLoad) {
    const Vec<T, VW> v = *reinterpret_cast<const Vec<T, VW>*>(p);
#pragma unroll
    for (int j = 0; j < VW; ++j) out[j] = v.v[j];
  } else {
#pragma unroll
    for (int j = 0; j < VW; ++j) out[j] = p[j];
  }
}

template <typename T, int VW, bool kVecStore>
__device__ __forceinline__ void store_vec(T* __restrict__ p, const T (&in)[VW]) {
  if constexpr (kVecStore) {
    Vec<T, VW> v;
#pragma unroll
    for (int j = 0; j < VW; ++j) v.v[j] = in[j];
    *reinterpret_cast<Vec<T, VW>*>(p) = v;
  } else {
#pragma unroll
    for (int j = 0; j < VW; ++j) p[j] = in[j];
  }
}

// NCL windows: a full window as load_vec/store_vec, a partial one element by element under its
// mask (masked elements are neither read nor written; loaded as 0, which the sums mask out).
template <typename T, int VW, bool kVecLoad>
__device__ __forceinline__ void load_window(const T* __restrict__ p, unsigned mask, T (&out)[VW]) {
  if (mask == kFullMask<VW>) {
    load_vec<T, VW, kVecLoad>(p, out);
  } else {
#pragma unroll
    for (int j = 0; j < VW; ++j) out[j] = (mask >> j) & 1u ? p[j] : T{};
  }
}

template <typename T, int VW, bool kVecStore>
__device__ __forceinline__ void store_window(T* __restrict__ p, unsigned mask, const T (&in)[VW]) {
  if (mask == kFullMask<VW>) {
    store_vec<T, VW, kVecStore>(p, in);
  } else {
#pragma unroll
    for (int j = 0; j < VW; ++j)
      if ((mask >> j) & 1u) p[j] = in[j];
  }
}

// Fused eval-BN output of one loaded vector: y = x * scale + shift in acc (NCL: of the
// window's elements in `mask`).
template <typename T, int VW, bool kVecStore>
__device__ __forceinline__ void store_affine(T* __restrict__ p, const T (&e)[VW],
                                             const acc_t<T> (&sc)[VW], const acc_t<T> (&sh)[VW],
                                             unsigned mask = kFullMask<VW>) {
  T o[VW];
#pragma unroll
  for (int j = 0; j < VW; ++j) o[j] = from_acc<T>(to_acc(e[j]) * sc[j] + sh[j]);
  store_window<T, VW, kVecStore>(p, mask, o);
}

// ---------------------------------------------------------------------------------------------
// Finalize of group g, run by the last block of the group to finish its partials (any block
// shape, blockDim.x * blockDim.y = nt >= 32 threads): adds the splits of every channel in a
// fixed order, in double whatever acc is (a few KB, so double costs nothing and keeps the loss
// of large fp32 reductions accurate), then
//   kLoss false: out = the sums (the sums op's (2, G, C));
//   kLoss true:  out = stats: delta = S1 / M, e = S2 / M - delta^2 - rv, the norms (from the
//                double values) and loss[g]. With splits == 1, `part` is `out` itself: each
//                partial is read by the thread that later overwrites it (hence no __restrict__).
// The additions are those of the former one-block-per-group finalize kernel of
// kFinalizeThreads threads, whose lanes depend on C only: virtual lane v = (ts, tc),
// 2^chan_log2 channel lanes tc x split lanes ts; lane v sums splits ts, ts + split_lanes, ...
// of channel c_tile + tc in order, the split lanes are added in a tree (stride half *
// chan_lanes), and the norms' squares go through block_sum2<kFinalizeThreads>'s tree (warp
// shuffles: strides 16..1 within 32 lanes, then 16..1 over the 32 warps). Here the nt real
// threads run the 1024 virtual lanes (v = tid, tid + nt, ...) and every tree level in shared
// memory `sh`, so each sum has the same operands in the same pairs (bitwise the same result;
// IEEE addition is commutative). When C > 512 there is one split lane (no tree) and the lanes
// loop over channel tiles; each virtual lane is then independent, so its tiles run in a row.
// Partials are loaded with ld.global.cg (L2): they were written by other blocks of this launch.
// ---------------------------------------------------------------------------------------------
template <typename A, bool kLoss>
__device__ __noinline__ void finalize_group(const SumsView<A> part, const FinalizeArgs<A> fin,
                                            int64_t C, int64_t splits, const BnParams params,
                                            int64_t g, double (*sh)[kFinalizeThreads]) {
  const int nt = blockDim.x * blockDim.y;
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  const int chan_log2 = fin.chan_log2;
  const int chan_lanes = 1 << chan_log2;
  const int split_lanes = kFinalizeThreads >> chan_log2;
  const SumsView<A> out = fin.out;
  // channel c's sums (S1, S2) -> its outputs; adds its squares to this lane's norm shares
  const auto finish = [&](int64_t c, double S1, double S2, double& sq_delta, double& sq_e) {
    if constexpr (kLoss) {
      const double delta = S1 / fin.M;
      const double e = S2 / fin.M - delta * delta -
                       load_param<double>(params.running_var, params.dtype, c);
      *out.at(g, 0, 0, c) = static_cast<A>(delta);
      *out.at(g, 1, 0, c) = static_cast<A>(e);
      sq_delta += delta * delta;
      sq_e += e * e;
    } else {
      *out.at(g, 0, 0, c) = static_cast<A>(S1);
      *out.at(g, 1, 0, c) = static_cast<A>(S2);
    }
  };
  if (split_lanes == 1) {  // C > 512: lane v = channel lane, channels v, v + 1024, ...
    for (int v = tid; v < kFinalizeThreads; v += nt) {
      double sq_delta = 0.0, sq_e = 0.0;  // this lane's share of ||delta_g||^2, ||e_g||^2
      for (int64_t c = v; c < C; c += kFinalizeThreads) {
        double s1 = 0.0, s2 = 0.0;
#pragma unroll 8  // 16 independent loads in flight; the additions stay in order
        for (int64_t s = 0; s < splits; ++s) {
          s1 += static_cast<double>(__ldcg(part.at(g, 0, s, c)));
          s2 += static_cast<double>(__ldcg(part.at(g, 1, s, c)));
        }
        finish(c, s1, s2, sq_delta, sq_e);
      }
      sh[0][v] = sq_delta;
      sh[1][v] = sq_e;
    }
  } else {  // C <= 512: one channel tile
    for (int v = tid; v < kFinalizeThreads; v += nt) {
      const int tc = v & (chan_lanes - 1), ts = v >> chan_log2;
      double s1 = 0.0, s2 = 0.0;
      if (tc < C) {
#pragma unroll 8
        for (int64_t s = ts; s < splits; s += split_lanes) {
          s1 += static_cast<double>(__ldcg(part.at(g, 0, s, tc)));
          s2 += static_cast<double>(__ldcg(part.at(g, 1, s, tc)));
        }
      }
      sh[0][v] = s1;
      sh[1][v] = s2;
    }
    __syncthreads();
    for (int half = split_lanes >> 1; half > 0; half >>= 1) {
      const int stride = half * chan_lanes;
      for (int v = tid; v < stride; v += nt) {
        sh[0][v] += sh[0][v + stride];
        sh[1][v] += sh[1][v + stride];
      }
      __syncthreads();
    }
    // lane v < C (split lane 0) holds channel v's sums; every lane then holds its norm shares
    for (int v = tid; v < kFinalizeThreads; v += nt) {
      double sq_delta = 0.0, sq_e = 0.0;
      if (v < C) finish(v, sh[0][v], sh[1][v], sq_delta, sq_e);
      sh[0][v] = sq_delta;
      sh[1][v] = sq_e;
    }
  }
  if constexpr (kLoss) {
    // block_sum2<kFinalizeThreads> of the lanes' shares: warp_sum in each warp of 32 lanes
    // (lane 0's result: strides 16..1), then warp_sum over the 32 warps' results
    __syncthreads();
    for (int off = 16; off > 0; off >>= 1) {
      for (int v = tid; v < kFinalizeThreads; v += nt) {
        if ((v & 31) < off) {
          sh[0][v] += sh[0][v + off];
          sh[1][v] += sh[1][v + off];
        }
      }
      __syncthreads();
    }
    for (int off = 16; off > 0; off >>= 1) {
      for (int w = tid; w < off; w += nt) {
        sh[0][w * 32] += sh[0][(w + off) * 32];
        sh[1][w * 32] += sh[1][(w + off) * 32];
      }
      __syncthreads();
    }
    if (tid == 0) {
      const double norm_delta = sqrt(sh[0][0]), norm_e = sqrt(sh[1][0]);
      *out.at(g, 0, 0, C) = static_cast<A>(norm_delta);
      *out.at(g, 1, 0, C) = static_cast<A>(norm_e);
      fin.loss[g] = static_cast<A>(norm_delta + norm_e);
    }
  }
}

// Called by every thread of a partial-sums block after the block stored its partials of group
// g: counts the block in counters[g]; the last of the group's fin.arrivals blocks finalizes
// the group and resets counters[g] to 0 (no other block of this launch touches it after the
// last arrival; the next launch on the stream starts after this one ends). Memory ordering
// (the "last block" pattern): each thread's __threadfence orders its partial stores before
// the barrier and thread 0's atomicAdd (device scope), so a block that sees the count reach
// arrivals - 1 follows every other block's stores; its own __threadfence after the barrier
// orders its finalize loads after that observation, and they bypass L1 (ld.global.cg), which
// could hold a line of the partials loaded before they were written. `sh`: 2 x
// kFinalizeThreads doubles of shared memory that the block no longer uses for anything else.
template <typename A>
__device__ __forceinline__ void arrive_and_finalize(const SumsView<A>& part,
                                                    const FinalizeArgs<A>& fin, int64_t C,
                                                    int64_t splits, const BnParams& params,
                                                    int64_t g, double (*sh)[kFinalizeThreads]) {
  __shared__ bool last;
  __threadfence();
  __syncthreads();  // also: the block's reads of its reduction buffers (sh may alias them) end
  if (threadIdx.x == 0 && threadIdx.y == 0)
    last = atomicAdd(fin.counters + g, 1u) == fin.arrivals - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  if (fin.loss != nullptr)
    finalize_group<A, true>(part, fin, C, splits, params, g, sh);
  else
    finalize_group<A, false>(part, fin, C, splits, params, g, sh);
  if (threadIdx.x == 0 && threadIdx.y == 0) fin.counters[g] = 0;
}

// ---------------------------------------------------------------------------------------------
// Partial sums, NCL: block (g, c, s) sums windows [s*chunk, (s+1)*chunk) of the n * W windows
// of (group g, channel c) (ncl_window), VW elements each, in increasing window order.
// kAffine: also y[same offset] = x * scale[c] + shift[c] (kVecLoad then means both x and y are
// 16-byte aligned).
// ---------------------------------------------------------------------------------------------
template <typename T, int VW, bool kVecLoad, bool kWindows, bool kAffine, typename I>
__global__ void __launch_bounds__(kThreads)
    bn_sums_ncl_kernel(const T* __restrict__ x, T* __restrict__ y, const BnParams params,
                       const SumsView<acc_t<T>> part, int64_t n, int64_t C, int64_t L,
                       int64_t splits, I Mv, I chunk, Divider<I> w_div,
                       const FinalizeArgs<acc_t<T>> fin) {
  using A = acc_t<T>;
  const BlockCoord blk = ncl_block(splits, C);
  const A m = load_param<A>(params.running_mean, params.dtype, blk.c);
  A scl[VW], sft[VW];  // one channel: the same scale/shift for every element
  if constexpr (kAffine) {
    const A sc = eval_bn_scale<A>(params, blk.c);
    const A sh = eval_bn_shift(params, blk.c, m, sc);
#pragma unroll
    for (int j = 0; j < VW; ++j) {
      scl[j] = sc;
      sft[j] = sh;
    }
  }

  const int64_t row_stride = C * L;
  const int64_t base_off = (blk.g * n * C + blk.c) * L;  // x[g*n, c, 0]
  const T* __restrict__ base = x + base_off;
  const I begin = static_cast<I>(blk.s) * chunk;
  const I end = begin + chunk < Mv ? begin + chunk : Mv;
  const auto window = [&](I v) {
    return ncl_window<VW, kWindows>(v, w_div, row_stride, base_off, L);
  };

  A s1 = A(0), s2 = A(0);
  // a masked element adds exact zeros (its d would be -m otherwise)
  auto accumulate = [&](const T (&e)[VW], unsigned mask) {
#pragma unroll
    for (int j = 0; j < VW; ++j) {
      A d = to_acc(e[j]) - m;
      if (!((mask >> j) & 1u)) d = A(0);
      s1 += d;
      s2 += d * d;
    }
  };

  constexpr int kU = kWindows ? kUnrollWindows : kUnroll;
  I v = begin + threadIdx.x;
  // Main loop: kU independent loads first, then the additions in increasing v order
  // (the same order as the tail loop, so the per-thread sum is a plain sequential sum).
  for (; v + (kU - 1) * kThreads < end; v += kU * kThreads) {
    T e[kU][VW];
    unsigned mask[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const NclWindow w = window(v + u * kThreads);
      mask[u] = w.mask;
      load_window<T, VW, kVecLoad>(base + w.off, w.mask, e[u]);
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      accumulate(e[u], mask[u]);
      // right after its use, so e[u] dies early (register pressure); the offset is
      // recomputed rather than kept live across the loads
      if constexpr (kAffine)
        store_affine<T, VW, kVecLoad>(y + base_off + window(v + u * kThreads).off, e[u], scl,
                                      sft, mask[u]);
    }
  }
  for (; v < end; v += kThreads) {
    const NclWindow w = window(v);
    T e[VW];
    load_window<T, VW, kVecLoad>(base + w.off, w.mask, e);
    accumulate(e, w.mask);
    if constexpr (kAffine) store_affine<T, VW, kVecLoad>(y + base_off + w.off, e, scl, sft, w.mask);
  }

  block_sum2<kThreads>(s1, s2);
  if (threadIdx.x == 0) {
    *part.at(blk.g, 0, blk.s, blk.c) = s1;
    *part.at(blk.g, 1, blk.s, blk.c) = s2;
  }
  if (fin.counters != nullptr) {  // uniform: the kernel's argument
    __shared__ double fsh[2][kFinalizeThreads];
    arrive_and_finalize(part, fin, C, splits, params, blk.g, fsh);
  }
}

// ---------------------------------------------------------------------------------------------
// Partial sums, NLC: group g is a dense (R = n*L) x C matrix. Block (g, t, s) handles rows
// [s*chunk, (s+1)*chunk) and channel vectors [t*blockDim.x, (t+1)*blockDim.x); thread (tx, ty)
// sums rows ty, ty + blockDim.y, ... for the VW channels of its vector, then the block reduces
// over ty in shared memory. kAffine: also y, as in the NCL kernel.
// ---------------------------------------------------------------------------------------------
template <typename T, int VW, bool kVecLoad, bool kAffine>
__global__ void __launch_bounds__(kThreads, 4)
    bn_sums_nlc_kernel(const T* __restrict__ x, T* __restrict__ y, const BnParams params,
                       const SumsView<acc_t<T>> part, int64_t R, int64_t C, int64_t ctiles,
                       int64_t splits, int64_t chunk, const FinalizeArgs<acc_t<T>> fin) {
  using A = acc_t<T>;
  // The block's reduction buffer sh[2 * VW][kThreads], and later (once the block's partials
  // are stored) the fused finalize's 2 x kFinalizeThreads doubles, in one allocation.
  constexpr size_t kReduceBytes = sizeof(A) * 2 * VW * kThreads;
  constexpr size_t kFinalizeBytes = sizeof(double) * 2 * kFinalizeThreads;
  __shared__ alignas(16) unsigned char smem[std::max(kReduceBytes, kFinalizeBytes)];
  A(*sh)[kThreads] = reinterpret_cast<A(*)[kThreads]>(smem);

  const int tx = threadIdx.x, ty = threadIdx.y;
  const int bx = blockDim.x, by = blockDim.y;
  const BlockCoord blk = nlc_block(splits, ctiles);
  const int64_t c0 = (blk.c * bx + tx) * VW;  // first channel of this thread's vector
  const bool active = c0 < C;                 // C % VW == 0: a vector is all in or all out

  A m[VW], s1[VW], s2[VW];
  A scl[VW], sft[VW];
#pragma unroll
  for (int j = 0; j < VW; ++j) {
    m[j] = active ? load_param<A>(params.running_mean, params.dtype, c0 + j) : A(0);
    s1[j] = A(0);
    s2[j] = A(0);
    if constexpr (kAffine) {
      scl[j] = active ? eval_bn_scale<A>(params, c0 + j) : A(0);
      sft[j] = active ? eval_bn_shift(params, c0 + j, m[j], scl[j]) : A(0);
    }
  }

  const int64_t r_begin = blk.s * chunk;
  const int64_t r_end = r_begin + chunk < R ? r_begin + chunk : R;
  if (active) {
    const int64_t base_off = blk.g * R * C + c0;
    const T* __restrict__ base = x + base_off;
    auto accumulate = [&](const T (&e)[VW]) {
#pragma unroll
      for (int j = 0; j < VW; ++j) {
        const A d = to_acc(e[j]) - m[j];
        s1[j] += d;
        s2[j] += d * d;
      }
    };
    constexpr int kU = kAffine ? kUnrollNlcAffine : kUnroll;
    int64_t r = r_begin + ty;
    for (; r + (kU - 1) * by < r_end; r += kU * by) {
      T e[kU][VW];
#pragma unroll
      for (int u = 0; u < kU; ++u) load_vec<T, VW, kVecLoad>(base + (r + u * by) * C, e[u]);
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        accumulate(e[u]);
        if constexpr (kAffine)  // right after its use, so e[u] dies early (register pressure)
          store_affine<T, VW, kVecLoad>(y + base_off + (r + u * by) * C, e[u], scl, sft);
      }
    }
    for (; r < r_end; r += by) {
      T e[VW];
      load_vec<T, VW, kVecLoad>(base + r * C, e);
      accumulate(e);
      if constexpr (kAffine) store_affine<T, VW, kVecLoad>(y + base_off + r * C, e, scl, sft);
    }
  }

  const int slot = ty * bx + tx;
#pragma unroll
  for (int j = 0; j < VW; ++j) {
    sh[j][slot] = s1[j];
    sh[VW + j][slot] = s2[j];
  }
  __syncthreads();
  // Tree over ty that also handles a blockDim.y that is not a power of two (fixed order).
  for (int rows = by; rows > 1;) {
    const int half = (rows + 1) >> 1;
    if (ty < rows - half) {
      const int other = (ty + half) * bx + tx;
#pragma unroll
      for (int j = 0; j < 2 * VW; ++j) sh[j][slot] += sh[j][other];
    }
    rows = half;
    __syncthreads();
  }
  if (ty == 0 && active) {
#pragma unroll
    for (int j = 0; j < VW; ++j) {
      *part.at(blk.g, 0, blk.s, c0 + j) = sh[j][tx];
      *part.at(blk.g, 1, blk.s, c0 + j) = sh[VW + j][tx];
    }
  }
  if (fin.counters != nullptr)  // uniform: the kernel's argument
    arrive_and_finalize(part, fin, C, splits, params, blk.g,
                        reinterpret_cast<double(*)[kFinalizeThreads]>(smem));
}

// ---------------------------------------------------------------------------------------------
// Backward: grad = a + b * ((x - m) - delta) [kHasLoss] + dy * scale [kHasDy], in acc.
// ---------------------------------------------------------------------------------------------
// Per-group factors: a = fa * delta[g, c], b = fb * e[g, c].
template <typename A>
struct GroupFactors {
  A fa = A(0), fb = A(0);
};

template <typename A>
__device__ __forceinline__ GroupFactors<A> group_factors(const A* stats, const A* grad_loss,
                                                         int64_t gl_stride, A count, int64_t C,
                                                         int64_t g) {
  const A* st = stats + g * 2 * (C + 1);
  const A norm_delta = st[C], norm_e = st[2 * C + 1];
  const A gl = grad_loss[g * gl_stride];
  // a zero norm counts as 1: its vector is zero, and so is its gradient
  return {gl / (count * (norm_delta > A(0) ? norm_delta : A(1))),
          A(2) * gl / (count * (norm_e > A(0) ? norm_e : A(1)))};
}

template <typename A>
struct BwdCoef {
  A a = A(0), b = A(0), m = A(0), delta = A(0), scale = A(0);
};

template <typename A, bool kHasLoss, bool kHasDy>
__device__ __forceinline__ BwdCoef<A> bwd_coef(const BnParams& p, const A* stats,
                                               const GroupFactors<A>& f, int64_t C, int64_t g,
                                               int64_t c) {
  BwdCoef<A> k;
  if constexpr (kHasLoss) {
    const A* st = stats + g * 2 * (C + 1);
    k.delta = st[c];
    k.a = f.fa * k.delta;
    k.b = f.fb * st[C + 1 + c];
    k.m = load_param<A>(p.running_mean, p.dtype, c);
  }
  if constexpr (kHasDy) k.scale = eval_bn_scale<A>(p, c);
  return k;
}

// grad of one loaded vector (x and/or dy, as the flags say), rounded once; NCL: only the
// window's elements in `mask` are stored. Element j uses
// coef[j * kCoefStep]: step 0 for one channel per vector (NCL), 1 for one per element (NLC).
template <typename T, int VW, bool kVecStore, bool kHasLoss, bool kHasDy, int kCoefStep>
__device__ __forceinline__ void store_grad(T* __restrict__ p, const T (&xe)[VW],
                                           const T (&de)[VW], const BwdCoef<acc_t<T>>* coef,
                                           unsigned mask = kFullMask<VW>) {
  using A = acc_t<T>;
  T o[VW];
#pragma unroll
  for (int j = 0; j < VW; ++j) {
    const BwdCoef<A>& k = coef[j * kCoefStep];
    A v;
    if constexpr (kHasLoss) {
      v = k.a + k.b * ((to_acc(xe[j]) - k.m) - k.delta);
      if constexpr (kHasDy) v += to_acc(de[j]) * k.scale;
    } else {
      v = to_acc(de[j]) * k.scale;
    }
    o[j] = from_acc<T>(v);
  }
  store_window<T, VW, kVecStore>(p, mask, o);
}

// The vector at `off` of x (read for the loss term) and of dy (for the eval-BN term).
template <typename T, int VW, bool kVecLoad, bool kHasLoss, bool kHasDy>
__device__ __forceinline__ void load_x_dy(const T* x, const T* dy, int64_t off, T (&xe)[VW],
                                          T (&de)[VW]) {
  if constexpr (kHasLoss) load_vec<T, VW, kVecLoad>(x + off, xe);
  if constexpr (kHasDy) load_vec<T, VW, kVecLoad>(dy + off, de);
}

// NCL: block (g, c, s) as the partial kernel (the same windows); one channel, so the
// coefficients are uniform.
template <typename T, int VW, bool kVecLoad, bool kWindows, bool kHasLoss, bool kHasDy,
          typename I>
__global__ void __launch_bounds__(kThreads, 4)
    bn_backward_ncl_kernel(const T* __restrict__ x, const T* __restrict__ dy,
                           T* __restrict__ grad, const BnParams params,
                           const acc_t<T>* __restrict__ stats,
                           const acc_t<T>* __restrict__ grad_loss, int64_t gl_stride,
                           acc_t<T> count, int64_t n, int64_t C, int64_t L, int64_t splits, I Mv,
                           I chunk, Divider<I> w_div) {
  using A = acc_t<T>;
  const BlockCoord blk = ncl_block(splits, C);
  GroupFactors<A> f;
  if constexpr (kHasLoss) f = group_factors(stats, grad_loss, gl_stride, count, C, blk.g);
  const BwdCoef<A> k = bwd_coef<A, kHasLoss, kHasDy>(params, stats, f, C, blk.g, blk.c);

  const int64_t row_stride = C * L;
  const int64_t base_off = (blk.g * n * C + blk.c) * L;
  const I begin = static_cast<I>(blk.s) * chunk;
  const I end = begin + chunk < Mv ? begin + chunk : Mv;
  const auto window = [&](I v) {
    return ncl_window<VW, kWindows>(v, w_div, row_stride, base_off, L);
  };
  const auto load = [&](const NclWindow& w, T (&xe)[VW], T (&de)[VW]) {
    if constexpr (kHasLoss) load_window<T, VW, kVecLoad>(x + base_off + w.off, w.mask, xe);
    if constexpr (kHasDy) load_window<T, VW, kVecLoad>(dy + base_off + w.off, w.mask, de);
  };

  constexpr int kU = kWindows ? kUnrollBackwardWindows : kUnrollBackward;
  I v = begin + threadIdx.x;
  for (; v + (kU - 1) * kThreads < end; v += kU * kThreads) {
    NclWindow w[kU];
    T xe[kU][VW], de[kU][VW];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      w[u] = window(v + u * kThreads);
      load(w[u], xe[u], de[u]);
    }
#pragma unroll
    for (int u = 0; u < kU; ++u)
      store_grad<T, VW, kVecLoad, kHasLoss, kHasDy, 0>(grad + base_off + w[u].off, xe[u], de[u],
                                                      &k, w[u].mask);
  }
  for (; v < end; v += kThreads) {
    const NclWindow w = window(v);
    T xe[VW], de[VW];
    load(w, xe, de);
    store_grad<T, VW, kVecLoad, kHasLoss, kHasDy, 0>(grad + base_off + w.off, xe, de, &k, w.mask);
  }
}

// NLC: block (g, t, s) as the partial kernel; each thread keeps the coefficients of its VW
// channels in registers for all its rows.
template <typename T, int VW, bool kVecLoad, bool kHasLoss, bool kHasDy>
__global__ void __launch_bounds__(kThreads, 4)
    bn_backward_nlc_kernel(const T* __restrict__ x, const T* __restrict__ dy,
                           T* __restrict__ grad, const BnParams params,
                           const acc_t<T>* __restrict__ stats,
                           const acc_t<T>* __restrict__ grad_loss, int64_t gl_stride,
                           acc_t<T> count, int64_t R, int64_t C, int64_t ctiles, int64_t splits,
                           int64_t chunk) {
  using A = acc_t<T>;
  const int by = blockDim.y;
  const BlockCoord blk = nlc_block(splits, ctiles);
  const int64_t c0 = (blk.c * blockDim.x + threadIdx.x) * VW;
  if (c0 >= C) return;  // no barrier in this kernel

  GroupFactors<A> f;
  if constexpr (kHasLoss) f = group_factors(stats, grad_loss, gl_stride, count, C, blk.g);
  BwdCoef<A> k[VW];
#pragma unroll
  for (int j = 0; j < VW; ++j) k[j] = bwd_coef<A, kHasLoss, kHasDy>(params, stats, f, C, blk.g, c0 + j);

  const int64_t base_off = blk.g * R * C + c0;
  const int64_t r_begin = blk.s * chunk;
  const int64_t r_end = r_begin + chunk < R ? r_begin + chunk : R;
  const auto load = [&](int64_t off, T (&xe)[VW], T (&de)[VW]) {
    load_x_dy<T, VW, kVecLoad, kHasLoss, kHasDy>(x, dy, off, xe, de);
  };

  int64_t r = r_begin + threadIdx.y;
  for (; r + (kUnrollBackward - 1) * by < r_end; r += kUnrollBackward * by) {
    T xe[kUnrollBackward][VW], de[kUnrollBackward][VW];
#pragma unroll
    for (int u = 0; u < kUnrollBackward; ++u) load(base_off + (r + u * by) * C, xe[u], de[u]);
#pragma unroll
    for (int u = 0; u < kUnrollBackward; ++u)
      store_grad<T, VW, kVecLoad, kHasLoss, kHasDy, 1>(grad + base_off + (r + u * by) * C, xe[u],
                                                      de[u], k);
  }
  for (; r < r_end; r += by) {
    T xe[VW], de[VW];
    load(base_off + r * C, xe, de);
    store_grad<T, VW, kVecLoad, kHasLoss, kHasDy, 1>(grad + base_off + r * C, xe, de, k);
  }
}

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------
bool layout_is_nlc(int64_t L, int64_t sL) { return sL != 1 || L == 1; }

// Strides match the contract layout (ignoring size-1 dims).
bool strides_ok(bool nlc, const BnShape& s) {
  if (s.N > 1 && s.sN != s.C * s.L) return false;
  if (nlc) return (s.C <= 1 || s.sC == 1) && (s.L <= 1 || s.sL == s.C);
  return (s.C <= 1 || s.sC == s.L) && (s.L <= 1 || s.sL == 1);
}

bool same_plan(const BnPlan& a, const BnPlan& b) {
  return a.valid == b.valid && a.nlc == b.nlc && a.vec == b.vec && a.block_x == b.block_x &&
         a.block_y == b.block_y && a.channel_tiles == b.channel_tiles && a.splits == b.splits &&
         a.row_vecs == b.row_vecs && a.chunk == b.chunk && a.workspace_elems == b.workspace_elems;
}

// The launchers' own check: `plan` is plan_bn's for these arguments, and valid.
bool plan_fits(const BnPlan& plan, DType dtype, const BnShape& shape) {
  return plan.valid && same_plan(plan, plan_bn(dtype, shape));
}

int64_t grid_of(const BnPlan& plan, const BnShape& s) {
  return s.groups * plan.channel_tiles * plan.splits;
}

// NCL: what picks the kernels' index type: the elements n * L of one (group, channel) as
// before the windows, and the windows n * W (W <= L for every L >= 2, so the same type).
int64_t ncl_index_count(const BnPlan& plan, int64_t n, int64_t L) {
  return std::max(n * L, n * plan.row_vecs);
}

// Partial sums of x into `part` (kAffine: also the eval-BN output y), finalized by each
// group's last block as `fin` says.
template <typename T, bool kAffine>
void launch_partials(const BnPlan& plan, const BnShape& s, const T* x, const BnParams& params,
                     T* y, const SumsView<acc_t<T>>& part, const FinalizeArgs<acc_t<T>>& fin,
                     cudaStream_t stream) {
  constexpr int VEC = detail::kVec16<T>;
  const int64_t blocks = grid_of(plan, s);
  if (blocks == 0) return;  // C == 0: no channel to sum
  const int64_t n = s.N / s.groups;
  // y is stored at x's offsets, so vector accesses need both aligned (this never changes
  // the summation order: that depends only on plan.vec)
  const bool aligned = detail::aligned_to(x, 16) && (!kAffine || detail::aligned_to(y, 16));
  with_flag(plan.vec > 1, [&](auto vec) {
    constexpr int VW = decltype(vec)::value ? VEC : 1;
    with_flag(aligned, [&](auto al) {
      constexpr bool kVecLoad = decltype(al)::value && VW > 1;
      const dim3 grid(static_cast<unsigned>(blocks)), block(plan.block_x, plan.block_y);
      if (!plan.nlc) {
        if constexpr (VW > 1) {  // NCL plans always have vec = VEC (windows)
          with_index_type(ncl_index_count(plan, n, s.L), [&](auto itag) {
            using I = typename decltype(itag)::type;
            with_flag(s.L % VW != 0, [&](auto windows) {
              bn_sums_ncl_kernel<T, VW, kVecLoad, decltype(windows)::value, kAffine, I>
                  <<<grid, block, 0, stream>>>(
                      x, y, params, part, n, s.C, s.L, plan.splits,
                      static_cast<I>(n * plan.row_vecs), static_cast<I>(plan.chunk),
                      detail::make_divider<I>(std::max<int64_t>(1, plan.row_vecs)), fin);
            });
          });
        }
      } else {
        bn_sums_nlc_kernel<T, VW, kVecLoad, kAffine><<<grid, block, 0, stream>>>(
            x, y, params, part, n * s.L, s.C, plan.channel_tiles, plan.splits, plan.chunk, fin);
      }
    });
  });
}

// Channel lanes (log2) of the finalize's layout: all channels in one pass up to 1024, and at
// least a warp, so the reads along c coalesce.
int finalize_chan_log2(int64_t C) {
  int lg = 5;
  while (lg < 10 && (int64_t{1} << lg) < C) ++lg;
  return lg;
}

// The fused finalize into `out` (loss non-null: stats and loss) by each group's last block.
template <typename A>
FinalizeArgs<A> finalize_args(const BnPlan& plan, const BnShape& s, const SumsView<A>& out,
                              A* loss, void* counters) {
  FinalizeArgs<A> fin;
  fin.counters = static_cast<unsigned int*>(counters);
  fin.out = out;
  fin.loss = loss;
  fin.arrivals = static_cast<unsigned int>(plan.channel_tiles * plan.splits);  // blocks per group
  fin.chan_log2 = finalize_chan_log2(s.C);
  fin.M = static_cast<double>(s.N / s.groups) * static_cast<double>(s.L);
  return fin;
}

template <typename T>
cudaError_t sums_typed(const BnPlan& plan, const BnShape& s, const T* x, const BnParams& params,
                       acc_t<T>* out, acc_t<T>* workspace, void* counters, cudaStream_t stream) {
  using A = acc_t<T>;
  const SumsView<A> dst = sums_out_view(out, s.groups, s.C);
  // splits == 1: the partials are the sums, written straight into out; no finalize
  const SumsView<A> part = plan.splits > 1 ? workspace_view(workspace, plan.splits, s.C) : dst;
  const FinalizeArgs<A> fin =
      plan.splits > 1 ? finalize_args<A>(plan, s, dst, nullptr, counters) : FinalizeArgs<A>{};
  launch_partials<T, false>(plan, s, x, params, nullptr, part, fin, stream);
  return cudaGetLastError();
}

template <typename T>
cudaError_t forward_typed(const BnPlan& plan, const BnShape& s, const T* x,
                          const BnParams& params, acc_t<T>* loss, acc_t<T>* stats,
                          acc_t<T>* workspace, void* counters, T* y, cudaStream_t stream) {
  using A = acc_t<T>;
  const SumsView<A> dst = stats_view(stats, s.C);
  if (s.C == 0) {  // no block to finalize: stats (G, 2, 1) = the zero norms, loss = 0
    const size_t bytes = static_cast<size_t>(s.groups) * sizeof(A);
    cudaMemsetAsync(stats, 0, 2 * bytes, stream);
    cudaMemsetAsync(loss, 0, bytes, stream);
    return cudaGetLastError();
  }
  // splits == 1: the raw sums go into stats, and the last block finishes them in place
  const SumsView<A> part = plan.splits > 1 ? workspace_view(workspace, plan.splits, s.C) : dst;
  const FinalizeArgs<A> fin = finalize_args<A>(plan, s, dst, loss, counters);
  with_flag(y != nullptr, [&](auto affine) {
    launch_partials<T, decltype(affine)::value>(plan, s, x, params, y, part, fin, stream);
  });
  return cudaGetLastError();
}

template <typename T, bool kHasLoss, bool kHasDy>
void launch_backward(const BnPlan& plan, const BnShape& s, const T* x, const BnParams& params,
                     const acc_t<T>* stats, const acc_t<T>* grad_loss, int64_t gl_stride,
                     int64_t count, T* grad, const T* dy, cudaStream_t stream) {
  using A = acc_t<T>;
  constexpr int VEC = detail::kVec16<T>;
  const int64_t n = s.N / s.groups;
  const bool aligned = detail::aligned_to(grad, 16) && (!kHasLoss || detail::aligned_to(x, 16)) &&
                       (!kHasDy || detail::aligned_to(dy, 16));
  const dim3 grid(static_cast<unsigned>(grid_of(plan, s))), block(plan.block_x, plan.block_y);
  const A cnt = static_cast<A>(count);
  with_flag(plan.vec > 1, [&](auto vec) {
    constexpr int VW = decltype(vec)::value ? VEC : 1;
    with_flag(aligned, [&](auto al) {
      constexpr bool kVecLoad = decltype(al)::value && VW > 1;
      if (!plan.nlc) {
        if constexpr (VW > 1) {  // NCL plans always have vec = VEC (windows)
          with_index_type(ncl_index_count(plan, n, s.L), [&](auto itag) {
            using I = typename decltype(itag)::type;
            with_flag(s.L % VW != 0, [&](auto windows) {
              bn_backward_ncl_kernel<T, VW, kVecLoad, decltype(windows)::value, kHasLoss, kHasDy, I>
                  <<<grid, block, 0, stream>>>(
                      x, dy, grad, params, stats, grad_loss, gl_stride, cnt, n, s.C, s.L,
                      plan.splits, static_cast<I>(n * plan.row_vecs), static_cast<I>(plan.chunk),
                      detail::make_divider<I>(std::max<int64_t>(1, plan.row_vecs)));
            });
          });
        }
      } else {
        bn_backward_nlc_kernel<T, VW, kVecLoad, kHasLoss, kHasDy>
            <<<grid, block, 0, stream>>>(x, dy, grad, params, stats, grad_loss, gl_stride,
                                                  cnt, n * s.L, s.C, plan.channel_tiles,
                                                  plan.splits, plan.chunk);
      }
    });
  });
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Test-only plan override and report (launchers.h)
// ---------------------------------------------------------------------------------------------
bool set_plan_override(const PlanOverride& forced) {
  if (forced.splits < 0 || forced.channel_tiles < 0 || forced.compose_threads < 0 ||
      forced.compose_threads > 256)
    return false;
  g_forced_splits.store(forced.splits, std::memory_order_relaxed);
  g_forced_channel_tiles.store(forced.channel_tiles, std::memory_order_relaxed);
  g_forced_compose_threads.store(forced.compose_threads, std::memory_order_relaxed);
  const std::lock_guard<std::mutex> lock(g_report_mutex);
  g_report = PlanReport{};  // from now on it shows only launches planned under `forced`
  return true;
}

PlanOverride plan_override() {
  PlanOverride forced;
  forced.splits = g_forced_splits.load(std::memory_order_relaxed);
  forced.channel_tiles = g_forced_channel_tiles.load(std::memory_order_relaxed);
  forced.compose_threads = g_forced_compose_threads.load(std::memory_order_relaxed);
  return forced;
}

PlanReport plan_report() {
  const std::lock_guard<std::mutex> lock(g_report_mutex);
  return g_report;
}

void report_compose(int kernel, int64_t chunks, int64_t threads) {
  const std::lock_guard<std::mutex> lock(g_report_mutex);
  g_report.compose_chunks[kernel] = chunks;
  g_report.compose_threads[kernel] = threads;
}

}  // namespace cuda
}  // namespace infer_fast

// ---------------------------------------------------------------------------------------------
// Public launchers (qualified definitions: a signature that drifts from launchers.h does not
// compile)
// ---------------------------------------------------------------------------------------------
infer_fast::cuda::BnPlan infer_fast::cuda::plan_bn(DType dtype, const BnShape& s) {
  BnPlan p;
  if (s.N < 0 || s.C < 0 || s.L < 0 || s.groups < 1 || s.N % s.groups != 0) return p;
  if (dtype_size(dtype) == 0) return p;
  p.nlc = layout_is_nlc(s.L, s.sL);
  if (!strides_ok(p.nlc, s)) return p;
  const int64_t G = s.groups;
  const int64_t M = s.N / G * s.L;  // elements per (group, channel)
  const int64_t VEC = 16 / dtype_size(dtype);

  const PlanOverride forced = plan_override();  // test-only; all zero: the default plan
  int64_t units = 0;  // what the splits cut: NCL windows, NLC rows
  int64_t elems = 0;  // elements of x the blocks of one (group, channel [tile]) read
  if (!p.nlc) {
    // windows of VEC elements (header comment): a row's first element sits at a multiple of
    // L, so its offset mod VEC is a multiple of gcd(L, VEC), at most VEC - gcd; W windows
    // cover the row whatever that offset (L % VEC == 0: W = L / VEC, the plain vectors)
    int64_t gcd = VEC;
    while (s.L % gcd != 0) gcd /= 2;  // VEC is a power of two
    p.vec = static_cast<int>(VEC);
    p.row_vecs = ceil_div(s.L + VEC - gcd, VEC);
    p.block_x = kThreads;
    p.block_y = 1;
    p.channel_tiles = s.C;
    units = s.N / G * p.row_vecs;
    elems = M;
  } else {
    p.vec = (s.C % VEC == 0) ? static_cast<int>(VEC) : 1;
    const int64_t Cv = s.C / p.vec;
    const int64_t tile_vecs = kNlcTileBytes / (p.vec * dtype_size(dtype));
    int64_t tile = std::max<int64_t>(1, std::min(Cv, tile_vecs));
    if (forced.channel_tiles > 0)  // test-only: that many tiles, as far as Cv vectors allow
      tile = std::min<int64_t>(kThreads, std::max<int64_t>(1, ceil_div(Cv, forced.channel_tiles)));
    p.block_x = static_cast<int>(tile);
    p.block_y = kThreads / p.block_x;
    p.channel_tiles = ceil_div(Cv, p.block_x);
    units = M;
    elems = M * std::min<int64_t>(s.C, int64_t{p.block_x} * p.vec);
  }
  const int64_t cap =
      std::max<int64_t>(1, ceil_div(kTargetBlocks, std::max<int64_t>(1, G * p.channel_tiles)));
  const int64_t splits =
      forced.splits > 0  // test-only: that many splits, as far as the units allow
          ? forced.splits
          : std::min(cap, std::max<int64_t>(1, ceil_div(elems, kMinElemsPerBlock)));
  p.chunk = units > 0 ? ceil_div(units, splits) : 0;
  p.splits = units > 0 ? ceil_div(units, p.chunk) : 1;
  p.workspace_elems = p.splits > 1 ? 2 * G * p.splits * s.C : 0;
  // One-dimensional grids: the block counts must fit gridDim.x.
  if (G * p.channel_tiles * p.splits > kInt32Max || G > kInt32Max) return p;
  p.valid = true;
  return p;
}

cudaError_t infer_fast::cuda::launch_bn_stat_sums(const BnPlan& plan, DType dtype, const BnShape& shape,
                                const void* x, const BnParams& params, void* out,
                                void* workspace, void* counters, cudaStream_t stream) {
  if (!plan_fits(plan, dtype, shape) || params.running_mean == nullptr ||
      (plan.workspace_elems > 0 && workspace == nullptr) ||
      (plan.splits > 1 && counters == nullptr))
    return cudaErrorInvalidValue;
  report_bn(kSumsLauncher, plan);
  if (shape.C == 0) return cudaSuccess;  // out (2, G, 0) has no element
  return detail::dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    return sums_typed<T>(plan, shape, static_cast<const T*>(x), params, static_cast<A*>(out),
                         static_cast<A*>(workspace), counters, stream);
  });
}

cudaError_t infer_fast::cuda::launch_bn_stat_forward(const BnPlan& plan, DType dtype, const BnShape& shape,
                                   const void* x, const BnParams& params, void* loss,
                                   void* stats, void* workspace, void* counters, void* y,
                                   cudaStream_t stream) {
  if (!plan_fits(plan, dtype, shape) || params.running_mean == nullptr ||
      params.running_var == nullptr || (plan.workspace_elems > 0 && workspace == nullptr) ||
      counters == nullptr)
    return cudaErrorInvalidValue;
  report_bn(kForwardLauncher, plan);
  return detail::dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    return forward_typed<T>(plan, shape, static_cast<const T*>(x), params, static_cast<A*>(loss),
                            static_cast<A*>(stats), static_cast<A*>(workspace), counters,
                            static_cast<T*>(y), stream);
  });
}

cudaError_t infer_fast::cuda::launch_bn_stat_backward(const BnPlan& plan, DType dtype, const BnShape& shape,
                                    const void* x, const BnParams& params, const void* stats,
                                    const void* grad_loss, int64_t grad_loss_stride,
                                    int64_t count, void* grad_input, const void* grad_y,
                                    cudaStream_t stream) {
  const bool has_loss = grad_loss != nullptr, has_dy = grad_y != nullptr;
  if (!plan_fits(plan, dtype, shape) || !(has_loss || has_dy) ||
      (has_loss && (stats == nullptr || params.running_mean == nullptr || count < 1)) ||
      (has_dy && params.running_var == nullptr))
    return cudaErrorInvalidValue;
  report_bn(kBackwardLauncher, plan);
  if (shape.N * shape.C * shape.L == 0) return cudaSuccess;  // nothing to write
  return detail::dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    const auto launch = !has_dy    ? launch_backward<T, true, false>
                        : has_loss ? launch_backward<T, true, true>
                                   : launch_backward<T, false, true>;
    launch(plan, shape, static_cast<const T*>(x), params, static_cast<const A*>(stats),
           static_cast<const A*>(grad_loss), grad_loss_stride, count, static_cast<T*>(grad_input),
           static_cast<const T*>(grad_y), stream);
    return cudaGetLastError();
  });
}
