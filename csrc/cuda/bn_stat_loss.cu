// CUDA kernels of the BN-statistics loss: the grouped shifted sums (forward) and the
// elementwise input gradient (backward). Semantics: infer_fast/ops/backends.py; launcher API
// and conventions: launchers.h. No torch headers here (nvcc compiles this file alone).
//
// bn_stat_sums, the forward read of x, is a two-kernel deterministic reduction:
//   1. partial kernel: the rows of each group are split across `splits` blocks, and so are
//      the channels (NCL: one channel per block; NLC: tiles of channels), so the grid fills
//      the 132 SMs of an H100 even when G * C is small (C = 64). Each block writes its
//      (sum d, sum d^2), d = x - running_mean[c], to workspace (2, G, splits, C).
//   2. finalize kernel: sums the splits of each (k, g, c) in a fixed order into out.
// The order of every addition depends only on the shape and dtype (never on pointer
// alignment, scheduling or the GPU model), so results are bitwise reproducible. No atomics.
//
// Fused eval-mode BatchNorm (optional, a template flag so the plain paths are unchanged):
//   forward: the partial kernel also writes y = x * scale[c] + shift[c] where it loads x
//     (each element is loaded exactly once), so the teacher's BN output costs no extra read;
//   backward: grad_input also gets grad_y * scale[c], in the same elementwise pass.
//
// Memory access:
//   NCL (N, C, L) with L contiguous: a block reads its channel's n rows of L elements as one
//     flat range of n*L elements; a warp reads consecutive 16-byte vectors (vectors never
//     straddle a row because they are used only when L % vec == 0).
//   NLC (N, L, C) with C contiguous: the rows of a group form a dense (n*L) x C matrix;
//     threadIdx.x walks consecutive channel vectors and threadIdx.y walks rows, so a warp
//     reads one contiguous span; the block then reduces over threadIdx.y in shared memory.
#include "launchers.h"

#include <algorithm>
#include <atomic>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace infer_fast {
namespace cuda {

int64_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kFloat64: return 8;
    case DType::kFloat16: return 2;
    case DType::kBFloat16: return 2;
  }
  return 0;
}

int64_t acc_dtype_size(DType dtype) { return dtype == DType::kFloat64 ? 8 : 4; }

namespace {

using detail::acc_t;
using detail::ceil_div;
using detail::Divider;
using detail::from_acc;
using detail::kInt32Max;
using detail::to_acc;
using detail::Vec;

constexpr int kThreads = 256;         // threads per block of the partial and backward kernels
constexpr int kUnroll = 8;            // independent loads in flight per thread (partial kernels)
// NLC with the fused y: its scale/shift registers leave room for 6 loads in flight under the
// 64-register cap of 4 blocks per SM (8 spill with fp32). The unroll never changes the
// summation order (each thread sums its rows sequentially), so the sums stay identical.
constexpr int kUnrollNlcAffine = 6;
// Split heuristics (shape-only, so the summation order never depends on the device):
// about 528 blocks (4 resident 256-thread blocks on each of an H100's 132 SMs) with 16-byte
// loads saturate HBM; each block reads at least ~16K elements, and at most 512 splits keep
// the workspace and the finalize pass tiny. Measured on an H100 (kernel time, fp32 (100, 64,
// 56, 56)): partial kernel ~29 us for 80 MB (~2.8 TB/s) in both layouts, finalize ~2-3 us.
constexpr int64_t kTargetBlocks = 528;
constexpr int64_t kMinElemsPerBlock = 16384;
constexpr int64_t kMaxSplits = 512;
constexpr int kFinalizeLanes = 32;    // finalize block: 32 channels x 32 split lanes

// Multiprocessors of the current device (cached; no synchronization).
int sm_count() {
  static std::atomic<int> cache[64];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 132;
  if (dev < 0 || dev >= 64) dev = 0;
  int v = cache[dev].load(std::memory_order_relaxed);
  if (v <= 0) {
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || v <= 0) {
      (void)cudaGetLastError();  // do not leave a sticky-looking error for the caller
      v = 132;
    }
    cache[dev].store(v, std::memory_order_relaxed);
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// Block reductions (fixed order: deterministic)
// ---------------------------------------------------------------------------------------------
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;  // lane 0 holds the sum
}

// Sums (a, b) over the block (blockDim.x == kThreads, 1-D); the result is valid in thread 0.
template <typename A>
__device__ __forceinline__ void block_sum2(A& a, A& b) {
  __shared__ A sh[2][kThreads / 32];
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
    a = lane < kThreads / 32 ? sh[0][lane] : A(0);
    b = lane < kThreads / 32 ? sh[1][lane] : A(0);
    a = warp_sum(a);
    b = warp_sum(b);
  }
}

template <typename T, int VW, bool kVecLoad>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, T (&out)[VW]) {
  if constexpr (kVecLoad && VW > 1) {
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
  if constexpr (kVecStore && VW > 1) {
    Vec<T, VW> v;
#pragma unroll
    for (int j = 0; j < VW; ++j) v.v[j] = in[j];
    *reinterpret_cast<Vec<T, VW>*>(p) = v;
  } else {
#pragma unroll
    for (int j = 0; j < VW; ++j) p[j] = in[j];
  }
}

// Fused eval-BN output of one loaded vector: y = x * scale + shift in acc.
template <typename T, int VW, bool kVecStore>
__device__ __forceinline__ void store_affine(T* __restrict__ p, const T (&e)[VW],
                                             const acc_t<T> (&sc)[VW], const acc_t<T> (&sh)[VW]) {
  T o[VW];
#pragma unroll
  for (int j = 0; j < VW; ++j) o[j] = from_acc<T>(to_acc(e[j]) * sc[j] + sh[j]);
  store_vec<T, VW, kVecStore>(p, o);
}

// ---------------------------------------------------------------------------------------------
// bn_stat_sums, NCL: block b = (g * C + c) * splits + s handles vectors [s*chunk, (s+1)*chunk)
// of the flat range of the n*L elements of (group g, channel c), VW elements per vector.
// Vector v lives in row v / Lv (Lv = L / VW) at element (v % Lv) * VW of that row.
// kAffine: also y[same offset] = x * scale[c] + shift[c] (y has x's layout; kVecLoad then
// means both x and y are 16-byte aligned).
// ---------------------------------------------------------------------------------------------
template <typename T, int VW, bool kVecLoad, bool kAffine, typename I>
__global__ void __launch_bounds__(kThreads)
    bn_sums_ncl_kernel(const T* __restrict__ x, const acc_t<T>* __restrict__ running_mean,
                       const acc_t<T>* __restrict__ scale, const acc_t<T>* __restrict__ shift,
                       T* __restrict__ y, acc_t<T>* __restrict__ part, int64_t G, int64_t n,
                       int64_t C, int64_t L, int64_t splits, I Mv, I chunk, Divider<I> lv_div) {
  using A = acc_t<T>;
  const int64_t b = blockIdx.x;
  const int64_t s = b % splits;
  const int64_t gc = b / splits;
  const int64_t c = gc % C;
  const int64_t g = gc / C;

  const A m = running_mean[c];
  const int64_t row_stride = C * L;
  const int64_t base_off = (g * n * C + c) * L;  // x[g*n, c, 0]
  const T* __restrict__ base = x + base_off;
  const I Lv = lv_div.divisor;
  A scl[VW], sft[VW];  // one channel: the same scale/shift for every element
  if constexpr (kAffine) {
    const A sc0 = scale[c], sh0 = shift[c];
#pragma unroll
    for (int j = 0; j < VW; ++j) {
      scl[j] = sc0;
      sft[j] = sh0;
    }
  }

  const I begin = static_cast<I>(s) * chunk;
  const I end = begin + chunk < Mv ? begin + chunk : Mv;

  A s1 = A(0), s2 = A(0);
  auto offset = [&](I v) -> int64_t {
    const I row = lv_div.div(v);
    const I lv = v - row * Lv;
    return static_cast<int64_t>(row) * row_stride + static_cast<int64_t>(lv) * VW;
  };
  auto accumulate = [&](const T (&e)[VW]) {
#pragma unroll
    for (int j = 0; j < VW; ++j) {
      const A d = to_acc(e[j]) - m;
      s1 += d;
      s2 += d * d;
    }
  };

  I v = begin + threadIdx.x;
  // Main loop: kUnroll independent loads first, then the additions in increasing v order
  // (the same order as the tail loop, so the per-thread sum is a plain sequential sum).
  for (; v + (kUnroll - 1) * kThreads < end; v += kUnroll * kThreads) {
    T e[kUnroll][VW];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) load_vec<T, VW, kVecLoad>(base + offset(v + u * kThreads), e[u]);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      accumulate(e[u]);
      // right after its use, so e[u] dies early (register pressure)
      if constexpr (kAffine)
        store_affine<T, VW, kVecLoad>(y + base_off + offset(v + u * kThreads), e[u], scl, sft);
    }
  }
  for (; v < end; v += kThreads) {
    T e[VW];
    load_vec<T, VW, kVecLoad>(base + offset(v), e);
    accumulate(e);
    if constexpr (kAffine) store_affine<T, VW, kVecLoad>(y + base_off + offset(v), e, scl, sft);
  }

  block_sum2(s1, s2);
  if (threadIdx.x == 0) {
    part[(g * splits + s) * C + c] = s1;
    part[((G + g) * splits + s) * C + c] = s2;
  }
}

// ---------------------------------------------------------------------------------------------
// bn_stat_sums, NLC: group g is a dense (R = n*L) x C matrix. Block b = (g * ctiles + t) *
// splits + s handles rows [s*chunk, (s+1)*chunk) and channel vectors
// [t*blockDim.x, (t+1)*blockDim.x); thread (tx, ty) sums rows ty, ty + blockDim.y, ... for the
// VW channels of its vector, then the block reduces over ty in shared memory.
// kAffine: also y[same offset] = x * scale[c] + shift[c], as in the NCL kernel.
// ---------------------------------------------------------------------------------------------
template <typename T, int VW, bool kVecLoad, bool kAffine>
__global__ void __launch_bounds__(kThreads, 4)
    bn_sums_nlc_kernel(const T* __restrict__ x, const acc_t<T>* __restrict__ running_mean,
                       const acc_t<T>* __restrict__ scale, const acc_t<T>* __restrict__ shift,
                       T* __restrict__ y, acc_t<T>* __restrict__ part, int64_t G, int64_t R,
                       int64_t C, int64_t ctiles, int64_t splits, int64_t chunk) {
  using A = acc_t<T>;
  __shared__ A sh[2 * VW][kThreads];

  const int tx = threadIdx.x, ty = threadIdx.y;
  const int bx = blockDim.x, by = blockDim.y;
  const int64_t b = blockIdx.x;
  const int64_t s = b % splits;
  const int64_t gt = b / splits;
  const int64_t t = gt % ctiles;
  const int64_t g = gt / ctiles;

  const int64_t cv = t * bx + tx;  // channel vector of this thread
  const int64_t c0 = cv * VW;
  const bool active = c0 < C;      // C % VW == 0, so a vector is all in or all out

  A m[VW], s1[VW], s2[VW];
#pragma unroll
  for (int j = 0; j < VW; ++j) {
    m[j] = active ? running_mean[c0 + j] : A(0);
    s1[j] = A(0);
    s2[j] = A(0);
  }
  A scl[VW], sft[VW];
  if constexpr (kAffine) {
#pragma unroll
    for (int j = 0; j < VW; ++j) {
      scl[j] = active ? scale[c0 + j] : A(0);
      sft[j] = active ? shift[c0 + j] : A(0);
    }
  }

  const int64_t r_begin = s * chunk;
  const int64_t r_end = r_begin + chunk < R ? r_begin + chunk : R;
  if (active) {
    const int64_t base_off = g * R * C + c0;
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
      part[(g * splits + s) * C + c0 + j] = sh[j][tx];
      part[((G + g) * splits + s) * C + c0 + j] = sh[VW + j][tx];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Finalize: out[k, g, c] = sum_s part[k, g, s, c] in a fixed order. Block (32 x 32): tx picks
// the channel (coalesced reads along c), ty strides over the splits, then a tree over ty.
// Block b = (k * G + g) * ctiles32 + t.
// ---------------------------------------------------------------------------------------------
template <typename A>
__global__ void __launch_bounds__(kFinalizeLanes * kFinalizeLanes)
    bn_sums_finalize_kernel(const A* __restrict__ part, A* __restrict__ out, int64_t G,
                            int64_t C, int64_t splits, int64_t ctiles32) {
  __shared__ A sh[kFinalizeLanes][kFinalizeLanes + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t b = blockIdx.x;
  const int64_t t = b % ctiles32;
  const int64_t kg = b / ctiles32;  // k * G + g
  const int64_t c = t * kFinalizeLanes + tx;

  A acc = A(0);
  if (c < C) {
    const A* __restrict__ p = part + kg * splits * C + c;
    for (int64_t s = ty; s < splits; s += kFinalizeLanes) acc += p[s * C];
  }
  sh[ty][tx] = acc;
  __syncthreads();
#pragma unroll
  for (int stride = kFinalizeLanes / 2; stride > 0; stride >>= 1) {
    if (ty < stride) sh[ty][tx] += sh[ty + stride][tx];
    __syncthreads();
  }
  if (ty == 0 && c < C) out[kg * C + c] = sh[0][tx];
}

// ---------------------------------------------------------------------------------------------
// bn_stat_backward: grid-stride over the vectors of VW consecutive elements of the dense
// memory of x. NCL (VW | L): all VW elements share (g, c): plane = v / Lv, c = plane % C,
// g = plane / (n*C). NLC (VW | C): row = v / Cv, channels (v % Cv) * VW + j, g = row / (n*L).
// kHasDy: also + dy * scale[c] (the fused eval-BN's input gradient; dy has x's layout).
// ---------------------------------------------------------------------------------------------
template <typename T, int VW, bool kNLC, bool kHasDy, typename I>
__global__ void __launch_bounds__(kThreads)
    bn_backward_kernel(const T* __restrict__ x, const acc_t<T>* __restrict__ coef_a,
                       const acc_t<T>* __restrict__ coef_b, const acc_t<T>* __restrict__ mean,
                       const T* __restrict__ dy, const acc_t<T>* __restrict__ scale,
                       T* __restrict__ grad, I nvec, int64_t C, Divider<I> inner_div,
                       Divider<I> c_div, Divider<I> group_div) {
  using A = acc_t<T>;
  const I stride = static_cast<I>(gridDim.x) * kThreads;
  for (I v = static_cast<I>(blockIdx.x) * kThreads + threadIdx.x; v < nvec; v += stride) {
    T e[VW];
    load_vec<T, VW, (VW > 1)>(x + static_cast<int64_t>(v) * VW, e);
    T d[VW];
    if constexpr (kHasDy) load_vec<T, VW, (VW > 1)>(dy + static_cast<int64_t>(v) * VW, d);
    T o[VW];
    if constexpr (!kNLC) {
      // inner_div: by Lv; c_div: by C; group_div: by n*C (applied to the plane index).
      const I plane = inner_div.div(v);
      const I q = c_div.div(plane);
      const int64_t c = static_cast<int64_t>(plane - q * static_cast<I>(C));
      const int64_t g = static_cast<int64_t>(group_div.div(plane));
      const int64_t gc = g * C + c;
      const A a = coef_a[gc], bb = coef_b[gc], mu = mean[gc];
      if constexpr (kHasDy) {
        const A sc = scale[c];
#pragma unroll
        for (int j = 0; j < VW; ++j)
          o[j] = from_acc<T>(a + bb * (to_acc(e[j]) - mu) + to_acc(d[j]) * sc);
      } else {
#pragma unroll
        for (int j = 0; j < VW; ++j) o[j] = from_acc<T>(a + bb * (to_acc(e[j]) - mu));
      }
    } else {
      // inner_div: by Cv = C / VW; group_div: by n*L (applied to the row index).
      const I row = inner_div.div(v);
      const int64_t cv = static_cast<int64_t>(v - row * inner_div.divisor);
      const int64_t g = static_cast<int64_t>(group_div.div(row));
      const int64_t gc0 = g * C + cv * VW;
      A a[VW], bb[VW], mu[VW];
      if constexpr (VW > 1) {
        const Vec<A, VW> va = *reinterpret_cast<const Vec<A, VW>*>(coef_a + gc0);
        const Vec<A, VW> vb = *reinterpret_cast<const Vec<A, VW>*>(coef_b + gc0);
        const Vec<A, VW> vm = *reinterpret_cast<const Vec<A, VW>*>(mean + gc0);
#pragma unroll
        for (int j = 0; j < VW; ++j) {
          a[j] = va.v[j];
          bb[j] = vb.v[j];
          mu[j] = vm.v[j];
        }
      } else {
        a[0] = coef_a[gc0];
        bb[0] = coef_b[gc0];
        mu[0] = mean[gc0];
      }
      if constexpr (kHasDy) {
        A sc[VW];
        if constexpr (VW > 1) {
          const Vec<A, VW> vs = *reinterpret_cast<const Vec<A, VW>*>(scale + cv * VW);
#pragma unroll
          for (int j = 0; j < VW; ++j) sc[j] = vs.v[j];
        } else {
          sc[0] = scale[cv];
        }
#pragma unroll
        for (int j = 0; j < VW; ++j)
          o[j] = from_acc<T>(a[j] + bb[j] * (to_acc(e[j]) - mu[j]) + to_acc(d[j]) * sc[j]);
      } else {
#pragma unroll
        for (int j = 0; j < VW; ++j) o[j] = from_acc<T>(a[j] + bb[j] * (to_acc(e[j]) - mu[j]));
      }
      (void)c_div;
    }
    if constexpr (VW > 1) {
      Vec<T, VW> ov;
#pragma unroll
      for (int j = 0; j < VW; ++j) ov.v[j] = o[j];
      *reinterpret_cast<Vec<T, VW>*>(grad + static_cast<int64_t>(v) * VW) = ov;
    } else {
      grad[v] = o[0];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------
template <typename T>
constexpr int vec_of() {
  return detail::kVec16<T>;
}

int vec_for(DType dtype) { return static_cast<int>(16 / dtype_size(dtype)); }

bool layout_is_nlc(int64_t L, int64_t sL) { return sL != 1 || L == 1; }

// Strides match the contract layout (ignoring size-1 dims).
bool strides_ok(bool nlc, int64_t N, int64_t C, int64_t L, int64_t sN, int64_t sC, int64_t sL) {
  if (N > 1 && sN != C * L) return false;
  if (nlc) return (C <= 1 || sC == 1) && (L <= 1 || sL == C);
  return (C <= 1 || sC == L) && (L <= 1 || sL == 1);
}

// kAffine: scale, shift and y are given (the fused eval-BN output); otherwise all null.
template <typename T, bool kAffine>
cudaError_t launch_sums_typed(const BnStatSumsPlan& plan, const T* x, int64_t N, int64_t C,
                              int64_t L, const acc_t<T>* rm, int64_t G, acc_t<T>* out,
                              acc_t<T>* workspace, const acc_t<T>* scale, const acc_t<T>* shift,
                              T* y, cudaStream_t stream) {
  using A = acc_t<T>;
  constexpr int VEC = vec_of<T>();
  const int64_t n = N / G;
  A* part = plan.splits > 1 ? workspace : out;
  // y is stored at x's offsets, so vector accesses need both aligned (the choice never changes
  // the summation order: that depends only on plan.vec).
  const bool io_aligned = detail::aligned_to(x, 16) && (!kAffine || detail::aligned_to(y, 16));

  if (!plan.nlc) {
    const int64_t blocks = G * C * plan.splits;
    const int64_t M = n * L;
    const dim3 grid(static_cast<unsigned>(blocks)), block(kThreads);
    if (plan.vec == VEC && VEC > 1) {
      const int64_t Mv = M / VEC;
      if (M <= kInt32Max) {
        auto d = detail::make_divider<uint32_t>(std::max<int64_t>(1, L / VEC));
        if (io_aligned)
          bn_sums_ncl_kernel<T, VEC, true, kAffine, uint32_t><<<grid, block, 0, stream>>>(
              x, rm, scale, shift, y, part, G, n, C, L, plan.splits, static_cast<uint32_t>(Mv),
              static_cast<uint32_t>(plan.chunk), d);
        else
          bn_sums_ncl_kernel<T, VEC, false, kAffine, uint32_t><<<grid, block, 0, stream>>>(
              x, rm, scale, shift, y, part, G, n, C, L, plan.splits, static_cast<uint32_t>(Mv),
              static_cast<uint32_t>(plan.chunk), d);
      } else {
        auto d = detail::make_divider<uint64_t>(std::max<int64_t>(1, L / VEC));
        if (io_aligned)
          bn_sums_ncl_kernel<T, VEC, true, kAffine, uint64_t><<<grid, block, 0, stream>>>(
              x, rm, scale, shift, y, part, G, n, C, L, plan.splits, static_cast<uint64_t>(Mv),
              static_cast<uint64_t>(plan.chunk), d);
        else
          bn_sums_ncl_kernel<T, VEC, false, kAffine, uint64_t><<<grid, block, 0, stream>>>(
              x, rm, scale, shift, y, part, G, n, C, L, plan.splits, static_cast<uint64_t>(Mv),
              static_cast<uint64_t>(plan.chunk), d);
      }
    } else {
      if (M <= kInt32Max) {
        bn_sums_ncl_kernel<T, 1, false, kAffine, uint32_t><<<grid, block, 0, stream>>>(
            x, rm, scale, shift, y, part, G, n, C, L, plan.splits, static_cast<uint32_t>(M),
            static_cast<uint32_t>(plan.chunk), detail::make_divider<uint32_t>(std::max<int64_t>(1, L)));
      } else {
        bn_sums_ncl_kernel<T, 1, false, kAffine, uint64_t><<<grid, block, 0, stream>>>(
            x, rm, scale, shift, y, part, G, n, C, L, plan.splits, static_cast<uint64_t>(M),
            static_cast<uint64_t>(plan.chunk), detail::make_divider<uint64_t>(std::max<int64_t>(1, L)));
      }
    }
  } else {
    const int64_t R = n * L;
    const int64_t blocks = G * plan.channel_tiles * plan.splits;
    const dim3 grid(static_cast<unsigned>(blocks)), block(plan.block_x, plan.block_y);
    if (plan.vec == VEC && VEC > 1) {
      if (io_aligned)
        bn_sums_nlc_kernel<T, VEC, true, kAffine><<<grid, block, 0, stream>>>(
            x, rm, scale, shift, y, part, G, R, C, plan.channel_tiles, plan.splits, plan.chunk);
      else
        bn_sums_nlc_kernel<T, VEC, false, kAffine><<<grid, block, 0, stream>>>(
            x, rm, scale, shift, y, part, G, R, C, plan.channel_tiles, plan.splits, plan.chunk);
    } else {
      bn_sums_nlc_kernel<T, 1, false, kAffine><<<grid, block, 0, stream>>>(
          x, rm, scale, shift, y, part, G, R, C, plan.channel_tiles, plan.splits, plan.chunk);
    }
  }

  if (plan.splits > 1) {
    const int64_t ctiles32 = ceil_div(C, kFinalizeLanes);
    const dim3 grid(static_cast<unsigned>(2 * G * ctiles32)), block(kFinalizeLanes, kFinalizeLanes);
    bn_sums_finalize_kernel<A><<<grid, block, 0, stream>>>(workspace, out, G, C, plan.splits,
                                                            ctiles32);
  }
  return cudaGetLastError();
}

template <typename T, int VW, bool kNLC, bool kHasDy, typename I>
void launch_backward_kernel(const T* x, const acc_t<T>* a, const acc_t<T>* b,
                            const acc_t<T>* mean, const T* dy, const acc_t<T>* scale, T* grad,
                            int64_t numel, int64_t n, int64_t C, int64_t L, cudaStream_t stream) {
  const int64_t nvec = numel / VW;
  Divider<I> inner, cdiv, gdiv;
  if constexpr (!kNLC) {
    inner = detail::make_divider<I>(L / VW);
    cdiv = detail::make_divider<I>(C);
    gdiv = detail::make_divider<I>(n * C);
  } else {
    inner = detail::make_divider<I>(C / VW);
    cdiv = detail::make_divider<I>(1);
    gdiv = detail::make_divider<I>(n * L);
  }
  // Grid-stride: enough resident blocks for every SM (two waves of 8 blocks per SM).
  const int64_t blocks = std::min<int64_t>(ceil_div(nvec, kThreads), int64_t{sm_count()} * 16);
  bn_backward_kernel<T, VW, kNLC, kHasDy, I>
      <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
          x, a, b, mean, dy, scale, grad, static_cast<I>(nvec), C, inner, cdiv, gdiv);
}

template <typename T, int VW, bool kNLC, bool kHasDy>
void launch_backward_index(const T* x, const acc_t<T>* a, const acc_t<T>* b,
                           const acc_t<T>* mean, const T* dy, const acc_t<T>* scale, T* grad,
                           int64_t numel, int64_t n, int64_t C, int64_t L, cudaStream_t stream) {
  if (numel <= kInt32Max)
    launch_backward_kernel<T, VW, kNLC, kHasDy, uint32_t>(x, a, b, mean, dy, scale, grad, numel,
                                                          n, C, L, stream);
  else
    launch_backward_kernel<T, VW, kNLC, kHasDy, uint64_t>(x, a, b, mean, dy, scale, grad, numel,
                                                          n, C, L, stream);
}

// kHasDy: dy and scale are given (the fused eval-BN's gradient term); otherwise both null.
template <typename T, bool kHasDy>
cudaError_t launch_backward_typed(const T* x, int64_t N, int64_t C, int64_t L, bool nlc,
                                  const acc_t<T>* a, const acc_t<T>* b, const acc_t<T>* mean,
                                  int64_t G, const T* dy, const acc_t<T>* scale, T* grad,
                                  cudaStream_t stream) {
  using A = acc_t<T>;
  constexpr int VEC = vec_of<T>();
  const int64_t numel = N * C * L;
  const int64_t n = N / G;
  const bool io_aligned = detail::aligned_to(x, 16) && detail::aligned_to(grad, 16) &&
                          (!kHasDy || detail::aligned_to(dy, 16));
  if (!nlc) {
    if (L % VEC == 0 && io_aligned)
      launch_backward_index<T, VEC, false, kHasDy>(x, a, b, mean, dy, scale, grad, numel, n, C, L,
                                                   stream);
    else
      launch_backward_index<T, 1, false, kHasDy>(x, a, b, mean, dy, scale, grad, numel, n, C, L,
                                                 stream);
  } else {
    const int64_t coef_align = static_cast<int64_t>(sizeof(Vec<A, VEC>));
    const bool coef_aligned = detail::aligned_to(a, coef_align) &&
                              detail::aligned_to(b, coef_align) &&
                              detail::aligned_to(mean, coef_align) &&
                              (!kHasDy || detail::aligned_to(scale, coef_align));
    if (C % VEC == 0 && io_aligned && coef_aligned)
      launch_backward_index<T, VEC, true, kHasDy>(x, a, b, mean, dy, scale, grad, numel, n, C, L,
                                                  stream);
    else
      launch_backward_index<T, 1, true, kHasDy>(x, a, b, mean, dy, scale, grad, numel, n, C, L,
                                                stream);
  }
  return cudaGetLastError();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public launchers
// ---------------------------------------------------------------------------------------------
BnStatSumsPlan plan_bn_stat_sums(DType dtype, int64_t N, int64_t C, int64_t L, int64_t sN,
                                 int64_t sC, int64_t sL, int64_t groups) {
  BnStatSumsPlan p;
  if (N < 0 || C < 0 || L < 0 || groups < 1 || N % groups != 0) return p;
  p.nlc = layout_is_nlc(L, sL);
  if (!strides_ok(p.nlc, N, C, L, sN, sC, sL)) return p;
  const int64_t G = groups;
  const int64_t n = N / G;
  const int64_t VEC = vec_for(dtype);
  const int64_t M = n * L;  // elements per (group, channel)

  if (!p.nlc) {
    p.vec = (L % VEC == 0) ? static_cast<int>(VEC) : 1;
    p.block_x = kThreads;
    p.block_y = 1;
    p.channel_tiles = C;
    const int64_t Mv = M / p.vec;
    const int64_t cap = std::max<int64_t>(1, ceil_div(kTargetBlocks, std::max<int64_t>(1, G * C)));
    int64_t splits = std::max<int64_t>(1, ceil_div(M, kMinElemsPerBlock));
    splits = std::min(splits, std::min(cap, kMaxSplits));
    p.chunk = Mv > 0 ? ceil_div(Mv, splits) : 0;
    p.splits = Mv > 0 ? ceil_div(Mv, p.chunk) : 1;
  } else {
    p.vec = (C % VEC == 0) ? static_cast<int>(VEC) : 1;
    const int64_t Cv = C / p.vec;
    p.block_x = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(Cv, kThreads)));
    p.block_y = std::max(1, kThreads / p.block_x);
    p.channel_tiles = ceil_div(Cv, p.block_x);
    const int64_t R = M;  // rows of the (n*L) x C matrix of one group
    const int64_t tile_channels = std::min<int64_t>(C, int64_t{p.block_x} * p.vec);
    const int64_t cap =
        std::max<int64_t>(1, ceil_div(kTargetBlocks, std::max<int64_t>(1, G * p.channel_tiles)));
    int64_t splits = std::max<int64_t>(1, ceil_div(R * tile_channels, kMinElemsPerBlock));
    splits = std::min(splits, std::min(cap, kMaxSplits));
    p.chunk = R > 0 ? ceil_div(R, splits) : 0;
    p.splits = R > 0 ? ceil_div(R, p.chunk) : 1;
  }
  p.workspace_elems = p.splits > 1 ? 2 * G * p.splits * C : 0;
  // One-dimensional grids: the block counts must fit gridDim.x.
  const int64_t blocks = G * p.channel_tiles * p.splits;
  if (blocks > kInt32Max || 2 * G * ceil_div(C, kFinalizeLanes) > kInt32Max) return p;
  p.valid = true;
  return p;
}

cudaError_t launch_bn_stat_sums(const BnStatSumsPlan& plan, DType dtype, const void* x,
                                int64_t N, int64_t C, int64_t L, int64_t sN, int64_t sC,
                                int64_t sL, const void* running_mean, int64_t groups,
                                void* out, void* workspace, const void* scale,
                                const void* shift, void* y, cudaStream_t stream) {
  const bool affine = y != nullptr;
  if (!plan.valid || groups < 1 || N % groups != 0 || plan.nlc != layout_is_nlc(L, sL) ||
      !strides_ok(plan.nlc, N, C, L, sN, sC, sL) || (plan.splits > 1 && workspace == nullptr) ||
      (scale != nullptr) != affine || (shift != nullptr) != affine)
    return cudaErrorInvalidValue;
  if (C == 0) return cudaSuccess;  // out (2, G, 0) and y have no element
  return detail::dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    const auto launch = affine ? launch_sums_typed<T, true> : launch_sums_typed<T, false>;
    return launch(plan, static_cast<const T*>(x), N, C, L, static_cast<const A*>(running_mean),
                  groups, static_cast<A*>(out), static_cast<A*>(workspace),
                  static_cast<const A*>(scale), static_cast<const A*>(shift), static_cast<T*>(y),
                  stream);
  });
}

cudaError_t launch_bn_stat_backward(DType dtype, const void* x, int64_t N, int64_t C, int64_t L,
                                    int64_t sN, int64_t sC, int64_t sL, const void* coef_a,
                                    const void* coef_b, const void* mean, int64_t groups,
                                    void* grad_input, const void* grad_y, const void* scale,
                                    cudaStream_t stream) {
  if (N < 0 || C < 0 || L < 0 || groups < 1 || N % groups != 0) return cudaErrorInvalidValue;
  const bool has_dy = grad_y != nullptr;
  if ((scale != nullptr) != has_dy) return cudaErrorInvalidValue;
  const bool nlc = layout_is_nlc(L, sL);
  if (!strides_ok(nlc, N, C, L, sN, sC, sL)) return cudaErrorInvalidValue;
  if (N * C * L == 0) return cudaSuccess;  // nothing to write
  return detail::dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    const auto launch = has_dy ? launch_backward_typed<T, true> : launch_backward_typed<T, false>;
    return launch(static_cast<const T*>(x), N, C, L, nlc, static_cast<const A*>(coef_a),
                  static_cast<const A*>(coef_b), static_cast<const A*>(mean), groups,
                  static_cast<const T*>(grad_y), static_cast<const A*>(scale),
                  static_cast<T*>(grad_input), stream);
  });
}

}  // namespace cuda
}  // namespace infer_fast
