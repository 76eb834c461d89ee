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

// Element type of a tensor (x, natural, ufc, grad_out, ...; also the parameter dtype P).
enum class DType : int {
  kFloat32 = 0,
  kFloat64 = 1,
  kFloat16 = 2,   // __half
  kBFloat16 = 3,  // __nv_bfloat16
};

// ------------------------------------------------------------------------------------------
// BN-statistics ops. x: (N, C, L) with strides (sN, sC, sL) in one of the two contract layouts
//   NCL: (C*L, L, 1)    NLC: (C*L, 1, C)
// (strides of size-1 dims are ignored); group g owns rows [g*n, (g+1)*n), n = N / groups.
// The NLC kernels are used when sL != 1 or L == 1 (for L == 1 both layouts are the same
// memory, and the NLC kernels read it coalesced). Elementwise companions of x (y, grad_y,
// grad_input) have x's dtype and strides and do not overlap x.
struct BnShape {
  int64_t N = 0, C = 0, L = 0;
  int64_t sN = 0, sC = 0, sL = 0;
  int64_t groups = 1;
};

// The (C,) contiguous parameters, all of dtype `dtype` (P, any DType, independent of x's;
// converted to acc where loaded). Which ones a launcher reads is said at the launcher;
// weight null means 1, bias null means 0.
struct BnParams {
  DType dtype = DType::kFloat32;
  const void* running_mean = nullptr;
  const void* running_var = nullptr;
  const void* weight = nullptr;
  const void* bias = nullptr;
  double eps = 0.0;
};

// How the BN kernels cut x into blocks: per (group, channel [tile]) the rows are split into
// `splits` chunks, one block each. A function of the shape and dtype only, so the order of
// every addition of the reductions is fixed (bitwise reproducible on any GPU).
struct BnPlan {
  bool nlc = false;          // which kernels (see above)
  int vec = 1;               // elements per vector (NCL: along L, always 16 bytes; NLC: along C)
  int64_t row_vecs = 0;      // NCL: vectors ("windows", possibly partial) per row of L elements
  int block_x = 256;         // threads per block: block_x * block_y
  int block_y = 1;
  int64_t channel_tiles = 1; // NLC: blocks across the channels (NCL: one block per channel)
  int64_t splits = 1;        // blocks across the rows of one (group, channel [tile])
  int64_t chunk = 0;         // per split: NCL windows of `vec` elements, NLC rows
  int64_t workspace_elems = 0;  // acc elements of the reductions' workspace (0: none needed)
  bool valid = false;        // false: the arguments break the preconditions
};

BnPlan plan_bn(DType dtype, const BnShape& shape);

// Every BN launcher takes the plan made by plan_bn(dtype, shape) for its own arguments.
//
// bn_stat_sums: out (2, G, C) contiguous acc: out[0, g, c] = sum(x - rm[c]), out[1, g, c] =
// sum((x - rm[c])^2) over the rows of group g and all L. Reads params.running_mean.
// workspace: plan.workspace_elems acc elements (null when 0). counters: at least
// shape.groups unsigned ints, all zero, left all zero (null allowed when plan.splits == 1);
// per device, shared by its launches, which must therefore not run concurrently on different
// streams. Launches: one partial-sums kernel; with plan.splits > 1 the last block of each
// group to arrive (counters[g]) adds the splits in a fixed order.
cudaError_t launch_bn_stat_sums(const BnPlan& plan, DType dtype, const BnShape& shape,
                                const void* x, const BnParams& params, void* out,
                                void* workspace, void* counters, cudaStream_t stream);

// bn_stat_forward: the loss from one read of x. With M = n * L, per (g, c):
// delta = sum(x - rm) / M, e = sum((x - rm)^2) / M - delta^2 - rv;
// stats (G, 2, C + 1) contiguous acc = [delta_g..., ||delta_g||; e_g..., ||e_g||],
// loss (G,) contiguous acc, loss[g] = ||delta_g|| + ||e_g||. Reads running_mean and
// running_var. y (optional, null: none): the fused eval-mode BatchNorm
// y = x * scale[c] + shift[c] in acc, scale = rsqrt(rv + eps) * weight,
// shift = bias - rm * scale, written where x is read for the sums (stats are the same).
// workspace and counters (never null here) as above. Launches: one partial-sums kernel whose
// last block of each group adds the splits in a fixed order and finishes stats and loss; with
// plan.splits == 1 the partials go straight into stats and are finished in place.
cudaError_t launch_bn_stat_forward(const BnPlan& plan, DType dtype, const BnShape& shape,
                                   const void* x, const BnParams& params, void* loss,
                                   void* stats, void* workspace, void* counters, void* y,
                                   cudaStream_t stream);

// bn_stat_backward: one elementwise kernel, in acc, rounded once:
//   grad_input = a + b * ((x - rm[c]) - delta[g, c])   (grad_loss given)
//              + grad_y * scale[c]                      (grad_y given)
// a = grad_loss[g] * delta[g, c] / (count * ||delta_g||), b = 2 * grad_loss[g] * e[g, c] /
// (count * ||e_g||) (a zero norm counts as 1), scale as in bn_stat_forward. stats: as
// bn_stat_forward writes it (G = shape.groups); grad_loss (G,) acc, element g at
// grad_loss[g * grad_loss_stride] (a summed loss's gradient arrives expanded: stride 0); at least one of
// grad_loss and grad_y is non-null. Reads running_mean (with grad_loss), running_var and
// weight (with grad_y).
cudaError_t launch_bn_stat_backward(const BnPlan& plan, DType dtype, const BnShape& shape,
                                    const void* x, const BnParams& params, const void* stats,
                                    const void* grad_loss, int64_t grad_loss_stride,
                                    int64_t count, void* grad_input, const void* grad_y,
                                    cudaStream_t stream);

// ------------------------------------------------------------------------------------------
// ufc_compose: out[g, c, k, h, w] = clamp(natural[index[g], c, k, hs, ws] + ufc[g, k, hs, ws],
//                                          lo[k], hi[k])
// with hs = (h - shifts[g, 0]) mod H, wr = flips[g] ? W-1-w : w, ws = (wr - shifts[g, 1]) mod W.
// natural (K, C, ch, H, W), ufc (G, ch, H, W), out (G, C, ch, H, W): contiguous, dtype.
// index (G,) int64 in [0, K); shifts (G, 2) int64, any values (reduced mod H / mod W to
// [0, H) / [0, W), as torch.roll), or null: no roll; flips (G,) one byte each, 0 or 1 (uint8
// or bool), or null: no flip; lo, hi: both null (no clamp) or both (ch,) acc.
// H * W must be < 2^31. One kernel.
cudaError_t launch_ufc_compose(DType dtype, const void* natural, const void* ufc,
                               const int64_t* index, const int64_t* shifts, const uint8_t* flips,
                               const void* lo, const void* hi, void* out, int64_t K, int64_t G,
                               int64_t C, int64_t ch, int64_t H, int64_t W, cudaStream_t stream);

// ufc_compose_grad_ufc: grad_ufc[g, k, hs, ws] = sum_c grad_out[g, c, k, h, w] * mask, where
// (h, w) is the output pixel that source (hs, ws) lands on and mask = [lo[k] <= v <= hi[k]],
// v = natural[index[g], c, k, hs, ws] + ufc[g, k, hs, ws] (mask = 1 when lo/hi are null).
// grad_out (G, C, ch, H, W), grad_ufc (G, ch, H, W): contiguous, dtype; shifts, flips as
// above. One kernel: one thread per grad_ufc element, classes summed in order, in acc.
cudaError_t launch_ufc_compose_grad_ufc(DType dtype, const void* grad_out, const void* natural,
                                        const void* ufc, const int64_t* index,
                                        const int64_t* shifts, const uint8_t* flips,
                                        const void* lo, const void* hi, void* grad_ufc, int64_t K,
                                        int64_t G, int64_t C, int64_t ch, int64_t H, int64_t W,
                                        cudaStream_t stream);

// ------------------------------------------------------------------------------------------
// TEST-ONLY plan override and plan report (tests/test_reduction_paths.py). The plans above
// depend on the shape only, so small test shapes would never reach the split and multi-block
// paths; a test forces them here, process-wide, through infer_fast._C's C symbols
// infer_fast_cuda_force_plan / infer_fast_cuda_plan_report (csrc/cuda/bindings.cpp). A zero
// field keeps the default: with all fields zero (the initial state) every plan is unchanged.
// Nothing outside tests may set it.
struct PlanOverride {
  int64_t splits = 0;           // BnPlan::splits (as many as the rows allow): the workspace + finalize path
  int64_t channel_tiles = 0;    // NLC: BnPlan::channel_tiles (as many as the channel vectors allow)
  int64_t compose_threads = 0;  // ufc_compose kernels: threads per block, 1..256 (several pixel chunks)
};

// False (and nothing set) when a field is out of range (negative, compose_threads > 256);
// else also clears the report below, so that it shows only launches planned under `forced`.
bool set_plan_override(const PlanOverride& forced);
PlanOverride plan_override();

// What the last launch of each launcher ran with (all zero before its first launch since
// the last set_plan_override).
struct PlanReport {
  BnPlan bn[3];                   // [0] bn_stat_sums, [1] bn_stat_forward, [2] bn_stat_backward
  int64_t compose_chunks[2] = {0, 0};   // pixel chunks per image plane: [0] forward, [1] grad_ufc
  int64_t compose_threads[2] = {0, 0};  // threads per block, likewise
};
PlanReport plan_report();
// Called by the ufc_compose launchers: kernel 0 forward, 1 grad_ufc.
void report_compose(int kernel, int64_t chunks, int64_t threads);

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
