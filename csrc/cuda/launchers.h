// Plain C++ launchers of the CUDA kernels (no torch types), shared by the kernel files
// (csrc/cuda/*.cu, compiled by nvcc without any torch header) and the op bindings
// (csrc/cuda/bindings.cpp, which owns the torch side: checks, allocation, streams).
//
// Semantics: infer_fast/ops/backends.py ("Backend contract"). Conventions of every launcher:
//   * Tensors are raw device pointers; sizes and strides are int64_t, in elements.
//   * "acc" is the accumulate dtype: double for DType::kFloat64 inputs, float otherwise.
//     Pointers documented as acc point at that type.
//   * Kernels are enqueued on `stream`; nothing synchronizes with the host.
//   * Return value: cudaErrorInvalidValue when the arguments break the launcher's own
//     preconditions (nothing is launched then), otherwise the result of cudaGetLastError()
//     after the launches (so an asynchronous error of earlier work may surface here too).
//   * Every element of every output is written.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace infer_fast {
namespace cuda {

// Element type of the tensor inputs/outputs (x, natural, ufc, grad_out, ...).
enum class DType : int {
  kFloat32 = 0,
  kFloat64 = 1,
  kFloat16 = 2,   // __half
  kBFloat16 = 3,  // __nv_bfloat16
};

// Size in bytes of one element of `dtype`, and of its accumulate dtype.
int64_t dtype_size(DType dtype);
int64_t acc_dtype_size(DType dtype);

// ------------------------------------------------------------------------------------------
// bn_stat_sums: out[0, g, c] = sum(x - rm[c]), out[1, g, c] = sum((x - rm[c])^2) over the
// rows [g*n, (g+1)*n) of x (N = groups * n) and all L.
//
// x: (N, C, L) with strides (sN, sC, sL) in one of the two contract layouts
//   NCL: (C*L, L, 1)    NLC: (C*L, 1, C)
// (strides of size-1 dims are ignored). The NLC kernel is used when sL != 1 or L == 1 (for
// L == 1 both layouts are the same memory, and the NLC kernel reads it coalesced).
// running_mean: (C,) acc. out: (2, G, C) contiguous acc.
//
// Two kernels, both deterministic (fixed summation order that depends only on the shape and
// dtype, never on pointer alignment or on the GPU): per-block partial sums over a split of
// the rows of each (group, channel [tile]) go to `workspace` laid out (2, G, splits, C) acc,
// then a second kernel reduces the splits in a fixed order into `out`. When the plan has
// splits == 1 the first kernel writes `out` directly and `workspace` may be null.
//
// Fused eval-mode BatchNorm (optional): scale, shift: (C,) contiguous acc; y: (N, C, L) with
// x's dtype and strides, not overlapping x. The first kernel then also writes
// y[n, c, l] = x[n, c, l] * scale[c] + shift[c] (in acc, rounded to the dtype) where it
// reads x, so every element of y is written. All three null: no y (the plain op). The sums
// are bit-identical either way.
struct BnStatSumsPlan {
  bool nlc = false;          // which kernel (see above)
  int vec = 1;               // elements each thread loads per step (shape-determined)
  int block_x = 256;         // threads per block: block_x * block_y
  int block_y = 1;
  int64_t channel_tiles = 1; // NLC: blocks across the channels (NCL: one block per channel)
  int64_t splits = 1;        // blocks across the rows of one group
  int64_t chunk = 0;         // per split: NCL vectors of `vec` elements, NLC rows
  int64_t workspace_elems = 0;  // acc elements of `workspace` (0 when splits == 1)
  bool valid = false;        // false: the arguments break the preconditions
};

BnStatSumsPlan plan_bn_stat_sums(DType dtype, int64_t N, int64_t C, int64_t L, int64_t sN,
                                 int64_t sC, int64_t sL, int64_t groups);

// `plan` must come from plan_bn_stat_sums with the same arguments; `workspace` must hold
// plan.workspace_elems acc elements (no initialization needed). scale, shift, y: all null or
// all given (see above).
cudaError_t launch_bn_stat_sums(const BnStatSumsPlan& plan, DType dtype, const void* x,
                                int64_t N, int64_t C, int64_t L, int64_t sN, int64_t sC,
                                int64_t sL, const void* running_mean, int64_t groups,
                                void* out, void* workspace, const void* scale,
                                const void* shift, void* y, cudaStream_t stream);

// ------------------------------------------------------------------------------------------
// bn_stat_backward: grad_input[n, c, l] = a[g, c] + b[g, c] * (x[n, c, l] - mean[g, c]) in
// acc, g = n / (N / groups). x and grad_input: (N, C, L), same strides, one of the two
// contract layouts (as above; NLC when sL != 1). coef_a, coef_b, mean: (G, C) contiguous acc.
// Fused eval-mode BatchNorm (optional): grad_y (N, C, L) with x's dtype and strides, and
// scale (C,) contiguous acc, both given or both null; when given, grad_input also gets
// + grad_y[n, c, l] * scale[c] (same acc expression, rounded once).
// One elementwise grid-stride pass over the dense memory of x (and grad_y).
cudaError_t launch_bn_stat_backward(DType dtype, const void* x, int64_t N, int64_t C, int64_t L,
                                    int64_t sN, int64_t sC, int64_t sL, const void* coef_a,
                                    const void* coef_b, const void* mean, int64_t groups,
                                    void* grad_input, const void* grad_y, const void* scale,
                                    cudaStream_t stream);

// ------------------------------------------------------------------------------------------
// ufc_compose: out[g, c, k, h, w] = clamp(natural[index[g], c, k, hs, ws] + ufc[g, k, hs, ws],
//                                          lo[k], hi[k])
// with hs = (h - shifts[g, 0]) mod H, wr = flips[g] ? W-1-w : w, ws = (wr - shifts[g, 1]) mod W.
// natural (K, C, ch, H, W), ufc (G, ch, H, W), out (G, C, ch, H, W): contiguous, dtype.
// index (G,) int64 in [0, K); shifts (G, 2) int64; flips (G,) uint8; lo, hi: both null (no
// clamp) or both (ch,) acc. H * W must be < 2^31.
cudaError_t launch_ufc_compose(DType dtype, const void* natural, const void* ufc,
                               const int64_t* index, const int64_t* shifts, const uint8_t* flips,
                               const void* lo, const void* hi, void* out, int64_t K, int64_t G,
                               int64_t C, int64_t ch, int64_t H, int64_t W, cudaStream_t stream);

// ufc_compose_grad_ufc: grad_ufc[g, k, hs, ws] = sum_c grad_out[g, c, k, h, w] * mask, where
// (h, w) is the output pixel that source (hs, ws) lands on and mask = [lo[k] <= v <= hi[k]],
// v = natural[index[g], c, k, hs, ws] + ufc[g, k, hs, ws] (mask = 1 when lo/hi are null).
// grad_out (G, C, ch, H, W), grad_ufc (G, ch, H, W): contiguous, dtype. One thread per
// grad_ufc element, classes summed in order inside the thread, in acc.
cudaError_t launch_ufc_compose_grad_ufc(DType dtype, const void* grad_out, const void* natural,
                                        const void* ufc, const int64_t* index,
                                        const int64_t* shifts, const uint8_t* flips,
                                        const void* lo, const void* hi, void* grad_ufc, int64_t K,
                                        int64_t G, int64_t C, int64_t ch, int64_t H, int64_t W,
                                        cudaStream_t stream);

// ------------------------------------------------------------------------------------------
// Device helpers shared by the kernel files (seen by nvcc only; bindings.cpp never sees them).
// They build with the flags torch's cpp_extension gives nvcc (__CUDA_NO_HALF_OPERATORS__,
// __CUDA_NO_HALF_CONVERSIONS__, __CUDA_NO_BFLOAT16_CONVERSIONS__): conversions are explicit.
#if defined(__CUDACC__)
namespace detail {

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccOf<T>::type;

// Carries an element type into a generic lambda: `using T = typename decltype(tag)::type;`.
template <typename T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<T>{}) with T the element type of `dtype` (float, double, __half,
// __nv_bfloat16) and returns its result; cudaErrorInvalidValue for an unknown dtype.
template <typename Fn>
cudaError_t dispatch_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32: return fn(TypeTag<float>{});
    case DType::kFloat64: return fn(TypeTag<double>{});
    case DType::kFloat16: return fn(TypeTag<__half>{});
    case DType::kBFloat16: return fn(TypeTag<__nv_bfloat16>{});
  }
  return cudaErrorInvalidValue;
}

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(acc_t<T> v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// N elements of T loaded/stored as one aligned access (16 bytes for the element vectors).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// Elements per 16-byte access.
template <typename T>
constexpr int kVec16 = static_cast<int>(16 / sizeof(T));

inline bool aligned_to(const void* p, int64_t bytes) {
  return (reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes)) == 0;
}

// Integer division by a runtime constant. Divider<uint32_t>: multiply-high by a magic number
// (valid for dividends and divisor < 2^31, the launchers choose it only then);
// Divider<uint64_t>: plain 64-bit division for huge tensors.
template <typename I>
struct Divider;

template <>
struct Divider<uint32_t> {
  uint32_t divisor;
  uint32_t magic;
  uint32_t shift;
  __device__ __forceinline__ uint32_t div(uint32_t n) const {
    return (__umulhi(n, magic) + n) >> shift;
  }
};

template <>
struct Divider<uint64_t> {
  uint64_t divisor;
  __device__ __forceinline__ uint64_t div(uint64_t n) const { return n / divisor; }
};

inline Divider<uint32_t> make_divider32(uint32_t d) {  // 1 <= d < 2^31
  uint32_t shift = 0;
  while (shift < 32 && (uint64_t{1} << shift) < d) ++shift;
  const uint64_t magic = ((uint64_t{1} << 32) * ((uint64_t{1} << shift) - d)) / d + 1;
  return Divider<uint32_t>{d, static_cast<uint32_t>(magic), shift};
}

template <typename I>
inline Divider<I> make_divider(int64_t d);
template <>
inline Divider<uint32_t> make_divider<uint32_t>(int64_t d) {
  return make_divider32(static_cast<uint32_t>(d));
}
template <>
inline Divider<uint64_t> make_divider<uint64_t>(int64_t d) {
  return Divider<uint64_t>{static_cast<uint64_t>(d)};
}

constexpr int64_t kInt32Max = 2147483647;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace detail
#endif  // __CUDACC__

}  // namespace cuda
}  // namespace infer_fast
