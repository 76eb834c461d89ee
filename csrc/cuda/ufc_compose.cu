// CUDA kernels of the UFC compose op: the fused gather + add + roll/flip + clamp (forward)
// and the gradient w.r.t. the compensators (class sum of the un-rolled, masked grad_out).
// Semantics: infer_fast/ops/backends.py; launcher API and conventions: launchers.h.
// No torch headers here (nvcc compiles this file alone).
//
// Layout: one block per (image plane, pixel chunk). A plane is one (g, c, k) output image
// (forward) or one (g, k) compensator image (backward); block b = plane * chunks + chunk, so
// the per-group parameters (index, shifts, flips, clamp bounds) are decoded once per block
// and the 64-bit plane offsets are formed once. Inside a plane, consecutive threads handle
// consecutive pixels: the writes are contiguous, and the reads of a rolled/flipped row stay
// within the same row (a contiguous span, reversed and/or rotated), so they coalesce too.
#include "launchers.h"

#include <algorithm>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

// A device-side assert that NDEBUG leaves in (as torch's CUDA_KERNEL_ASSERT): __assert_fail,
// declared as glibc does, for the device pass too (there the CUDA headers declare it; on the
// host glibc's <assert.h> does only without NDEBUG).
extern "C" {
#if defined(__CUDA_ARCH__)
__host__ __device__
#endif
    void
    __assert_fail(const char* assertion, const char* file, unsigned int line,
                  const char* function) noexcept __attribute__((__noreturn__));
}

namespace infer_fast {
namespace cuda {
namespace {

using detail::acc_t;
using detail::ceil_div;
using detail::Divider;
using detail::from_acc;
using detail::kInt32Max;
using detail::to_acc;

constexpr int kMaxThreads = 256;   // threads per block (fewer for tiny planes)
constexpr int kComposePix = 4;     // output pixels per thread in the forward kernel
constexpr int kClassUnroll = 4;    // class loads in flight per thread in the backward kernel

// v mod m in [0, m), as torch.roll reduces its shifts (C++ % keeps the dividend's sign).
__device__ __forceinline__ uint32_t pos_mod(int64_t v, uint32_t m) {
  const int64_t r = v % static_cast<int64_t>(m);
  return static_cast<uint32_t>(r < 0 ? r + m : r);
}

// The roll of group g reduced into [0, H) x [0, W) (shifts may hold any int64 values;
// null: no roll).
__device__ __forceinline__ void group_shifts(const int64_t* __restrict__ shifts, int64_t g,
                                             uint32_t H, uint32_t W, uint32_t& sh, uint32_t& sw) {
  sh = shifts != nullptr ? pos_mod(shifts[2 * g], H) : 0;
  sw = shifts != nullptr ? pos_mod(shifts[2 * g + 1], W) : 0;
}

// flips: one byte per group (uint8 or bool), or null: no flip.
__device__ __forceinline__ bool group_flip(const uint8_t* __restrict__ flips, int64_t g) {
  return flips != nullptr && flips[g] != 0;
}

// index[g], the natural set of group g. An index out of [0, K) stops the kernel with a
// device-side assert (as torch's own indexing kernels do; the error surfaces at the next
// synchronisation) instead of reading out of bounds: the op checks index on the host once
// per tensor version only, and a write through .data or DLPack bumps no version.
__device__ __forceinline__ int64_t natural_set(const int64_t* __restrict__ index, int64_t g,
                                               int64_t K) {
  const int64_t k = index[g];
  if (k < 0 || k >= K)
    __assert_fail("ufc_compose: index value out of range [0, K)", __FILE__, __LINE__, __func__);
  return k;
}

// clamp in the order of the reference (maximum with lo, then minimum with hi); a NaN value
// stays NaN, like torch.maximum/minimum.
template <typename A>
__device__ __forceinline__ A clamp_value(A v, A lo, A hi) {
  v = v < lo ? lo : v;
  v = v > hi ? hi : v;
  return v;
}

// ---------------------------------------------------------------------------------------------
// Forward: out[g, c, k, h, w] = clamp(natural[index[g], c, k, hs, ws] + ufc[g, k, hs, ws]).
// plane = (g * C + c) * ch + k.
// ---------------------------------------------------------------------------------------------
template <typename T, bool kClamp>
__global__ void __launch_bounds__(kMaxThreads)
    ufc_compose_kernel(const T* __restrict__ natural, const T* __restrict__ ufc,
                       const int64_t* __restrict__ index, const int64_t* __restrict__ shifts,
                       const uint8_t* __restrict__ flips, const acc_t<T>* __restrict__ lo,
                       const acc_t<T>* __restrict__ hi, T* __restrict__ out, int64_t K,
                       int64_t C, int64_t ch, uint32_t H, uint32_t W, Divider<uint32_t> wdiv,
                       int64_t chunks) {
  using A = acc_t<T>;
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int64_t b = blockIdx.x;
  const int64_t chunk = b % chunks;
  const int64_t plane = b / chunks;
  const int64_t k = plane % ch;
  const int64_t gc = plane / ch;
  const int64_t c = gc % C;
  const int64_t g = gc / C;

  const int64_t src_image = natural_set(index, g, K);
  uint32_t sh, sw;
  group_shifts(shifts, g, H, W, sh, sw);
  const bool flip = group_flip(flips, g);
  A lo_k = A(0), hi_k = A(0);
  if constexpr (kClamp) {
    lo_k = lo[k];
    hi_k = hi[k];
  }

  const T* __restrict__ nat = natural + ((src_image * C + c) * ch + k) * HW;
  const T* __restrict__ u = ufc + (g * ch + k) * HW;
  T* __restrict__ o = out + plane * HW;

  const uint32_t hw = static_cast<uint32_t>(HW);
  const uint32_t p0 = static_cast<uint32_t>(chunk) * (blockDim.x * kComposePix) + threadIdx.x;
  uint32_t src[kComposePix];
  T nv[kComposePix], uv[kComposePix];
  // All loads first (kComposePix independent pairs in flight), then add/clamp/store.
#pragma unroll
  for (int i = 0; i < kComposePix; ++i) {
    const uint32_t p = p0 + i * blockDim.x;
    if (p < hw) {
      const uint32_t h = wdiv.div(p);
      const uint32_t w = p - h * W;
      const uint32_t hs = h >= sh ? h - sh : h + H - sh;
      const uint32_t wr = flip ? W - 1 - w : w;
      const uint32_t ws = wr >= sw ? wr - sw : wr + W - sw;
      src[i] = hs * W + ws;
      nv[i] = nat[src[i]];
      uv[i] = u[src[i]];
    }
  }
#pragma unroll
  for (int i = 0; i < kComposePix; ++i) {
    const uint32_t p = p0 + i * blockDim.x;
    if (p < hw) {
      A v = to_acc(nv[i]) + to_acc(uv[i]);
      if constexpr (kClamp) v = clamp_value(v, lo_k, hi_k);
      o[p] = from_acc<T>(v);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward w.r.t. ufc: one thread per source pixel q = (hs, ws) of grad_ufc[g, k]; the classes
// are summed in order inside the thread, in acc. plane = g * ch + k.
// ---------------------------------------------------------------------------------------------
template <typename T, bool kClamp>
__global__ void __launch_bounds__(kMaxThreads)
    ufc_grad_ufc_kernel(const T* __restrict__ grad_out, const T* __restrict__ natural,
                        const T* __restrict__ ufc, const int64_t* __restrict__ index,
                        const int64_t* __restrict__ shifts, const uint8_t* __restrict__ flips,
                        const acc_t<T>* __restrict__ lo, const acc_t<T>* __restrict__ hi,
                        T* __restrict__ grad_ufc, int64_t K, int64_t C, int64_t ch,
                        uint32_t H, uint32_t W, Divider<uint32_t> wdiv, int64_t chunks) {
  using A = acc_t<T>;
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int64_t b = blockIdx.x;
  const int64_t chunk = b % chunks;
  const int64_t plane = b / chunks;
  const int64_t k = plane % ch;
  const int64_t g = plane / ch;

  const uint32_t q = static_cast<uint32_t>(chunk) * blockDim.x + threadIdx.x;
  if (q >= static_cast<uint32_t>(HW)) return;  // no barrier below: early exit is safe

  uint32_t sh, sw;
  group_shifts(shifts, g, H, W, sh, sw);
  const bool flip = group_flip(flips, g);

  // Output pixel (h, w) that source pixel (hs, ws) lands on: the inverse of the forward map.
  const uint32_t hs = wdiv.div(q);
  const uint32_t ws = q - hs * W;
  uint32_t h = hs + sh;
  if (h >= H) h -= H;
  uint32_t wr = ws + sw;
  if (wr >= W) wr -= W;
  const uint32_t w = flip ? W - 1 - wr : wr;
  const uint32_t p = h * W + w;

  const int64_t class_stride = ch * HW;  // same for grad_out[g] and natural[index[g]]
  const T* __restrict__ go = grad_out + (g * C * ch + k) * HW + p;

  A acc = A(0);
  if constexpr (!kClamp) {
    int64_t c = 0;
    for (; c + kClassUnroll <= C; c += kClassUnroll) {
      T gv[kClassUnroll];
#pragma unroll
      for (int j = 0; j < kClassUnroll; ++j) gv[j] = go[(c + j) * class_stride];
#pragma unroll
      for (int j = 0; j < kClassUnroll; ++j) acc += to_acc(gv[j]);
    }
    for (; c < C; ++c) acc += to_acc(go[c * class_stride]);
  } else {
    const A lo_k = lo[k], hi_k = hi[k];
    const A uq = to_acc(ufc[plane * HW + q]);
    const int64_t src_image = natural_set(index, g, K);
    const T* __restrict__ nat = natural + (src_image * C * ch + k) * HW + q;
    // grad * mask (a multiply, like the reference: a non-finite grad of a clamped element
    // still gives NaN).
    auto term = [&](T gval, T nval) -> A {
      const A v = to_acc(nval) + uq;
      const A mask = (v >= lo_k && v <= hi_k) ? A(1) : A(0);
      return to_acc(gval) * mask;
    };
    int64_t c = 0;
    for (; c + kClassUnroll <= C; c += kClassUnroll) {
      T gv[kClassUnroll], nv[kClassUnroll];
#pragma unroll
      for (int j = 0; j < kClassUnroll; ++j) {
        gv[j] = go[(c + j) * class_stride];
        nv[j] = nat[(c + j) * class_stride];
      }
#pragma unroll
      for (int j = 0; j < kClassUnroll; ++j) acc += term(gv[j], nv[j]);
    }
    for (; c < C; ++c) acc += term(go[c * class_stride], nat[c * class_stride]);
  }
  grad_ufc[plane * HW + q] = from_acc<T>(acc);
}

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------
int threads_for_plane(int64_t HW) {
  const int64_t forced = plan_override().compose_threads;  // test-only (launchers.h); 0: default
  if (forced > 0) return static_cast<int>(std::min<int64_t>(kMaxThreads, forced));
  return static_cast<int>(std::min<int64_t>(kMaxThreads, ceil_div(HW, 32) * 32));
}

bool shapes_ok(int64_t K, int64_t G, int64_t C, int64_t ch, int64_t H, int64_t W) {
  if (K < 0 || G < 0 || C < 0 || ch < 0 || H < 0 || W < 0) return false;
  if (H > 0 && W > kInt32Max / H) return false;  // H * W < 2^31 (pixel math is 32-bit)
  return true;
}

template <typename T>
cudaError_t compose_typed(const T* natural, const T* ufc, const int64_t* index,
                          const int64_t* shifts, const uint8_t* flips, const acc_t<T>* lo,
                          const acc_t<T>* hi, T* out, int64_t K, int64_t G, int64_t C,
                          int64_t ch, int64_t H, int64_t W, cudaStream_t stream) {
  const int64_t HW = H * W;
  const int threads = threads_for_plane(HW);
  const int64_t chunks = ceil_div(HW, int64_t{threads} * kComposePix);
  const int64_t blocks = G * C * ch * chunks;
  if (blocks > kInt32Max) return cudaErrorInvalidValue;
  report_compose(0, chunks, threads);
  const auto wdiv = detail::make_divider32(static_cast<uint32_t>(W));
  const dim3 grid(static_cast<unsigned>(blocks)), block(threads);
  if (lo != nullptr)
    ufc_compose_kernel<T, true><<<grid, block, 0, stream>>>(
        natural, ufc, index, shifts, flips, lo, hi, out, K, C, ch, static_cast<uint32_t>(H),
        static_cast<uint32_t>(W), wdiv, chunks);
  else
    ufc_compose_kernel<T, false><<<grid, block, 0, stream>>>(
        natural, ufc, index, shifts, flips, lo, hi, out, K, C, ch, static_cast<uint32_t>(H),
        static_cast<uint32_t>(W), wdiv, chunks);
  return cudaGetLastError();
}

template <typename T>
cudaError_t grad_ufc_typed(const T* grad_out, const T* natural, const T* ufc,
                           const int64_t* index, const int64_t* shifts, const uint8_t* flips,
                           const acc_t<T>* lo, const acc_t<T>* hi, T* grad_ufc, int64_t K,
                           int64_t G, int64_t C, int64_t ch, int64_t H, int64_t W,
                           cudaStream_t stream) {
  const int64_t HW = H * W;
  const int threads = threads_for_plane(HW);
  const int64_t chunks = ceil_div(HW, threads);
  const int64_t blocks = G * ch * chunks;
  if (blocks > kInt32Max) return cudaErrorInvalidValue;
  report_compose(1, chunks, threads);
  const auto wdiv = detail::make_divider32(static_cast<uint32_t>(W));
  const dim3 grid(static_cast<unsigned>(blocks)), block(threads);
  if (lo != nullptr)
    ufc_grad_ufc_kernel<T, true><<<grid, block, 0, stream>>>(
        grad_out, natural, ufc, index, shifts, flips, lo, hi, grad_ufc, K, C, ch,
        static_cast<uint32_t>(H), static_cast<uint32_t>(W), wdiv, chunks);
  else
    ufc_grad_ufc_kernel<T, false><<<grid, block, 0, stream>>>(
        grad_out, natural, ufc, index, shifts, flips, lo, hi, grad_ufc, K, C, ch,
        static_cast<uint32_t>(H), static_cast<uint32_t>(W), wdiv, chunks);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_ufc_compose(DType dtype, const void* natural, const void* ufc,
                               const int64_t* index, const int64_t* shifts, const uint8_t* flips,
                               const void* lo, const void* hi, void* out, int64_t K, int64_t G,
                               int64_t C, int64_t ch, int64_t H, int64_t W, cudaStream_t stream) {
  if (!shapes_ok(K, G, C, ch, H, W) || ((lo == nullptr) != (hi == nullptr)))
    return cudaErrorInvalidValue;
  if (G * C * ch * H * W == 0) return cudaSuccess;  // out has no element
  if (K < 1) return cudaErrorInvalidValue;           // index[g] in [0, K) cannot hold
  return detail::dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    return compose_typed<T>(static_cast<const T*>(natural), static_cast<const T*>(ufc), index,
                            shifts, flips, static_cast<const A*>(lo), static_cast<const A*>(hi),
                            static_cast<T*>(out), K, G, C, ch, H, W, stream);
  });
}

cudaError_t launch_ufc_compose_grad_ufc(DType dtype, const void* grad_out, const void* natural,
                                        const void* ufc, const int64_t* index,
                                        const int64_t* shifts, const uint8_t* flips,
                                        const void* lo, const void* hi, void* grad_ufc, int64_t K,
                                        int64_t G, int64_t C, int64_t ch, int64_t H, int64_t W,
                                        cudaStream_t stream) {
  if (!shapes_ok(K, G, C, ch, H, W) || ((lo == nullptr) != (hi == nullptr)))
    return cudaErrorInvalidValue;
  if (G * ch * H * W == 0) return cudaSuccess;  // grad_ufc has no element
  // With C == 0 the class sum is empty and the kernel writes zeros (natural is never read).
  if (C > 0 && lo != nullptr && K < 1) return cudaErrorInvalidValue;
  return detail::dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    return grad_ufc_typed<T>(static_cast<const T*>(grad_out), static_cast<const T*>(natural),
                             static_cast<const T*>(ufc), index, shifts, flips,
                             static_cast<const A*>(lo), static_cast<const A*>(hi),
                             static_cast<T*>(grad_ufc), K, G, C, ch, H, W, stream);
  });
}

}  // namespace cuda
}  // namespace infer_fast
