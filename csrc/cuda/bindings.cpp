// The CUDA backend's launchers (declared once for every backend in csrc/launchers.inc; the
// dispatcher registration in csrc/ops.cpp calls them for CUDA tensors): the torch side of the
// CUDA kernels. Each checks the backend contract (infer_fast/ops/backends.py) with
// TORCH_CHECK, allocates workspace through torch (caching allocator, current stream), and
// calls the plain launchers of launchers.h on the current stream. Launch errors are reported
// from cudaGetLastError() without synchronizing. No torch op runs around the kernels.
//
// Compiled by the host compiler, only in CUDA builds (setup.py defines INFER_FAST_WITH_CUDA).
// The stream and device guard come from c10/cuda (c10::cuda::getCurrentCUDAStream is what
// at::cuda::getCurrentCUDAStream forwards to); ATen/cuda/CUDAContext.h is not needed here and
// would also pull in cuBLAS/cuSPARSE headers.
#ifdef INFER_FAST_WITH_CUDA

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <mutex>
#include <optional>
#include <vector>

#include "launchers.h"
#include "ops.h"

namespace {

namespace ifc = infer_fast::cuda;

ifc::DType to_dtype(at::ScalarType t, const char* name, const char* op) {
  switch (t) {
    case at::kFloat: return ifc::DType::kFloat32;
    case at::kDouble: return ifc::DType::kFloat64;
    case at::kHalf: return ifc::DType::kFloat16;
    case at::kBFloat16: return ifc::DType::kBFloat16;
    default:
      TORCH_CHECK(false, "infer_fast_C::", op, ": ", name, " has unsupported dtype ", t,
                  " (expected float32, float64, float16 or bfloat16)");
  }
  return ifc::DType::kFloat32;  // unreachable
}

using infer_fast::accumulate_dtype;

void check_on_device(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* op) {
  TORCH_CHECK(t.is_cuda(), "infer_fast_C::", op, ": ", name, " must be a CUDA tensor, got ",
              t.device());
  TORCH_CHECK(t.device() == ref.device(), "infer_fast_C::", op, ": ", name, " is on ", t.device(),
              " but the input is on ", ref.device());
}

// On ref's device, with the given dtype and shape (any strides).
void check_strided(const at::Tensor& t, const char* name, const at::Tensor& ref,
                   at::ScalarType dtype, at::IntArrayRef sizes, const char* op) {
  check_on_device(t, name, ref, op);
  TORCH_CHECK(t.scalar_type() == dtype, "infer_fast_C::", op, ": ", name, " must be ", dtype,
              ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == sizes, "infer_fast_C::", op, ": ", name, " must have shape ", sizes,
              ", got ", t.sizes());
}

// On ref's device, with the given dtype and shape, contiguous.
void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& ref,
                  at::ScalarType dtype, at::IntArrayRef sizes, const char* op) {
  check_strided(t, name, ref, dtype, sizes, op);
  TORCH_CHECK(t.is_contiguous(), "infer_fast_C::", op, ": ", name, " must be contiguous");
}

// Launchers take the NLC kernels when stride(2) != 1 (or L == 1); both layouts must match
// the contract's strides (strides of size-1 dims are irrelevant).
bool bn_layout_ok(const at::Tensor& x3) {
  const int64_t N = x3.size(0), C = x3.size(1), L = x3.size(2);
  const int64_t sN = x3.stride(0), sC = x3.stride(1), sL = x3.stride(2);
  if (N > 1 && sN != C * L) return false;
  const bool nlc = sL != 1 || L == 1;
  if (nlc) return (C <= 1 || sC == 1) && (L <= 1 || sL == C);
  return (C <= 1 || sC == L) && (L <= 1 || sL == 1);
}

// x of the BN ops: a CUDA (N, C, L) tensor in a contract layout, N a multiple of groups.
ifc::BnShape check_bn_input(const at::Tensor& x3, int64_t groups, const char* op) {
  TORCH_CHECK(x3.is_cuda(), "infer_fast_C::", op, ": x must be a CUDA tensor, got ", x3.device());
  TORCH_CHECK(x3.dim() == 3, "infer_fast_C::", op, ": x must be (N, C, L), got ", x3.sizes());
  TORCH_CHECK(groups >= 1, "infer_fast_C::", op, ": groups must be >= 1, got ", groups);
  TORCH_CHECK(x3.size(0) % groups == 0, "infer_fast_C::", op, ": N = ", x3.size(0),
              " is not a multiple of groups = ", groups);
  TORCH_CHECK(bn_layout_ok(x3), "infer_fast_C::", op,
              ": x must have strides (C*L, L, 1) (NCHW) or (C*L, 1, C) (channels_last), got ",
              x3.strides(), " for shape ", x3.sizes());
  return {x3.size(0), x3.size(1), x3.size(2), x3.stride(0), x3.stride(1), x3.stride(2), groups};
}

// An elementwise companion of x (grad_input, y, grad_y): x's device, dtype, shape and
// strides (strides of size-1 dims are irrelevant), so the kernels index it like x.
void check_like_x(const at::Tensor& t, const char* name, const at::Tensor& x, const char* op) {
  check_on_device(t, name, x, op);
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "infer_fast_C::", op, ": ", name,
              " must have x's dtype ", x.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == x.sizes(), "infer_fast_C::", op, ": ", name, " must have x's shape ",
              x.sizes(), ", got ", t.sizes());
  for (int64_t d = 0; d < x.dim(); ++d) {
    TORCH_CHECK(x.size(d) <= 1 || t.stride(d) == x.stride(d), "infer_fast_C::", op, ": ", name,
                " must have x's strides ", x.strides(), ", got ", t.strides());
  }
}

// The BN parameters as the kernels take them. running_mean fixes their dtype P; every given
// one is (C,), contiguous, on x's device and of dtype P. None stays null (weight: 1, bias: 0).
ifc::BnParams bn_params(const at::Tensor& x, const at::Tensor& running_mean,
                        const std::optional<at::Tensor>& running_var,
                        const std::optional<at::Tensor>& weight,
                        const std::optional<at::Tensor>& bias, double eps, const char* op) {
  check_on_device(running_mean, "running_mean", x, op);
  auto data = [&](const std::optional<at::Tensor>& t, const char* name) -> const void* {
    if (!t.has_value()) return nullptr;
    check_tensor(*t, name, x, running_mean.scalar_type(), {x.size(1)}, op);
    return t->const_data_ptr();
  };
  ifc::BnParams p;
  p.dtype = to_dtype(running_mean.scalar_type(), "running_mean", op);
  p.running_mean = data(running_mean, "running_mean");
  p.running_var = data(running_var, "running_var");
  p.weight = data(weight, "weight");
  p.bias = data(bias, "bias");
  p.eps = eps;
  return p;
}

// The kernels' plan for x (a shape too large for their grids is an error here, with the
// shape in the message, rather than an "invalid argument" from the launch).
ifc::BnPlan checked_plan(const at::Tensor& x, ifc::DType dtype, const ifc::BnShape& shape,
                         const char* op) {
  const auto plan = ifc::plan_bn(dtype, shape);
  TORCH_CHECK(plan.valid, "infer_fast_C::", op, ": shape ", x.sizes(), " with groups = ",
              shape.groups, " is too large for the CUDA kernels' grid");
  return plan;
}

// The plan's reduction workspace (acc), from the caching allocator on the current stream;
// undefined when the plan needs none.
at::Tensor workspace_for(const ifc::BnPlan& plan, const at::Tensor& x) {
  if (plan.workspace_elems == 0) return at::Tensor();
  return at::empty({plan.workspace_elems}, x.options().dtype(accumulate_dtype(x.scalar_type())));
}

// The arrival counters of the BN kernels' fused finalize (launchers.h): per device, int32
// zeros, grown (zero-filled: the only fill, once) when a launch has more groups than it
// holds. The kernels leave them zero, so no launch clears them. Launches on one device
// share them: the ops must not run concurrently on different streams of one device. The
// tensors are never freed (a static destructor could run after the CUDA runtime is gone).
at::Tensor counters_for(const at::Tensor& x, int64_t groups) {
  static std::mutex mutex;
  static auto* by_device = new std::vector<at::Tensor>();
  const std::lock_guard<std::mutex> lock(mutex);
  const auto index = static_cast<size_t>(x.device().index());
  if (by_device->size() <= index) by_device->resize(index + 1);
  at::Tensor& counters = (*by_device)[index];
  if (!counters.defined() || counters.numel() < groups) {
    const int64_t size = std::max<int64_t>(groups, counters.defined() ? 2 * counters.numel() : 64);
    counters = at::zeros({size}, x.options().dtype(at::kInt));
  }
  return counters;
}

void* mutable_data_or_null(const at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr() : nullptr;
}
const void* data_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr() : nullptr;
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "infer_fast_C::", op, ": CUDA kernel launch failed: ",
              cudaGetErrorString(err));
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// ------------------------------------------------------------------------------------------
struct ComposeShape {
  int64_t K, G, C, ch, H, W;
};

// Checks shared by both compose ops; returns the shape.
ComposeShape check_compose(const at::Tensor& natural, const at::Tensor& ufc, const at::Tensor& index,
                           const std::optional<at::Tensor>& shifts,
                           const std::optional<at::Tensor>& flips,
                           const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                           const char* op) {
  TORCH_CHECK(natural.is_cuda(), "infer_fast_C::", op, ": natural must be a CUDA tensor, got ",
              natural.device());
  TORCH_CHECK(natural.dim() == 5, "infer_fast_C::", op, ": natural must be (K, C, ch, H, W), got ",
              natural.sizes());
  TORCH_CHECK(natural.is_contiguous(), "infer_fast_C::", op, ": natural must be contiguous");
  to_dtype(natural.scalar_type(), "natural", op);
  ComposeShape s{natural.size(0), 0, natural.size(1), natural.size(2), natural.size(3),
                 natural.size(4)};
  TORCH_CHECK(ufc.dim() == 4, "infer_fast_C::", op, ": ufc must be (G, ch, H, W), got ", ufc.sizes());
  s.G = ufc.size(0);
  check_tensor(ufc, "ufc", natural, natural.scalar_type(), {s.G, s.ch, s.H, s.W}, op);
  check_tensor(index, "index", natural, at::kLong, {s.G}, op);
  if (shifts.has_value()) check_tensor(*shifts, "shifts", natural, at::kLong, {s.G, 2}, op);
  if (flips.has_value()) {
    // uint8 or bool: the same one-byte 0/1 representation
    const at::ScalarType ft = flips->scalar_type();
    check_tensor(*flips, "flips", natural, ft == at::kBool ? at::kBool : at::kByte, {s.G}, op);
  }
  TORCH_CHECK(lo.has_value() == hi.has_value(), "infer_fast_C::", op,
              ": lo and hi must be both given or both None");
  if (lo.has_value()) {
    const auto acc = accumulate_dtype(natural.scalar_type());
    check_tensor(*lo, "lo", natural, acc, {s.ch}, op);
    check_tensor(*hi, "hi", natural, acc, {s.ch}, op);
  }
  TORCH_CHECK(s.H == 0 || s.W <= int64_t{2147483647} / s.H, "infer_fast_C::", op,
              ": H * W must be < 2^31, got ", s.H, " x ", s.W);
  return s;
}

const int64_t* shifts_or_null(const std::optional<at::Tensor>& shifts) {
  return shifts.has_value() ? shifts->const_data_ptr<int64_t>() : nullptr;
}

const uint8_t* flips_or_null(const std::optional<at::Tensor>& flips) {
  return static_cast<const uint8_t*>(data_or_null(flips));
}

}  // namespace

// ------------------------------------------------------------------------------------------
// The launchers of csrc/launchers.inc (qualified definitions: a signature that drifts from
// the declaration does not compile).
// ------------------------------------------------------------------------------------------
void infer_fast::cuda::bn_stat_sums(const at::Tensor& x, const at::Tensor& running_mean,
                                    int64_t groups, const at::Tensor& out) {
  constexpr const char* op = "bn_stat_sums";
  const auto shape = check_bn_input(x, groups, op);
  const auto dtype = to_dtype(x.scalar_type(), "x", op);
  const auto params = bn_params(x, running_mean, std::nullopt, std::nullopt, std::nullopt, 0.0, op);
  check_tensor(out, "out", x, accumulate_dtype(x.scalar_type()), {2, groups, x.size(1)}, op);
  if (out.numel() == 0) return;

  const c10::cuda::CUDAGuard guard(x.device());
  const auto plan = checked_plan(x, dtype, shape, op);
  const at::Tensor workspace = workspace_for(plan, x);
  const at::Tensor counters = plan.splits > 1 ? counters_for(x, groups) : at::Tensor();
  check_launch(launch_bn_stat_sums(plan, dtype, shape, x.const_data_ptr(), params,
                                   out.mutable_data_ptr(), mutable_data_or_null(workspace),
                                   mutable_data_or_null(counters), current_stream()),
               op);
}

void infer_fast::cuda::bn_stat_forward(const at::Tensor& x, const at::Tensor& running_mean,
                                       const at::Tensor& running_var, int64_t groups,
                                       const at::Tensor& loss, const at::Tensor& stats,
                                       const std::optional<at::Tensor>& weight,
                                       const std::optional<at::Tensor>& bias, double eps,
                                       const std::optional<at::Tensor>& y) {
  constexpr const char* op = "bn_stat_forward";
  const auto shape = check_bn_input(x, groups, op);
  const auto dtype = to_dtype(x.scalar_type(), "x", op);
  const bool fused = y.has_value();  // without y, weight, bias and eps are not used
  const auto params = bn_params(x, running_mean, running_var, fused ? weight : std::nullopt,
                                fused ? bias : std::nullopt, eps, op);
  const auto acc = accumulate_dtype(x.scalar_type());
  check_tensor(loss, "loss", x, acc, {groups}, op);
  check_tensor(stats, "stats", x, acc, {groups, 2, x.size(1) + 1}, op);
  if (fused) check_like_x(*y, "y", x, op);

  const c10::cuda::CUDAGuard guard(x.device());
  const auto plan = checked_plan(x, dtype, shape, op);
  const at::Tensor workspace = workspace_for(plan, x);
  check_launch(launch_bn_stat_forward(plan, dtype, shape, x.const_data_ptr(), params,
                                      loss.mutable_data_ptr(), stats.mutable_data_ptr(),
                                      mutable_data_or_null(workspace),
                                      counters_for(x, groups).mutable_data_ptr(),
                                      fused ? y->mutable_data_ptr() : nullptr, current_stream()),
               op);
}

void infer_fast::cuda::bn_stat_backward(const at::Tensor& x, const at::Tensor& running_mean,
                                        const at::Tensor& stats,
                                        const std::optional<at::Tensor>& grad_loss, int64_t count,
                                        const at::Tensor& grad_input,
                                        const std::optional<at::Tensor>& grad_y,
                                        const std::optional<at::Tensor>& running_var,
                                        const std::optional<at::Tensor>& weight, double eps) {
  constexpr const char* op = "bn_stat_backward";
  TORCH_CHECK(stats.dim() == 3, "infer_fast_C::", op, ": stats must be (G, 2, C + 1), got ",
              stats.sizes());
  const int64_t groups = stats.size(0);
  const auto shape = check_bn_input(x, groups, op);
  const auto dtype = to_dtype(x.scalar_type(), "x", op);
  const auto acc = accumulate_dtype(x.scalar_type());
  check_tensor(stats, "stats", x, acc, {groups, 2, x.size(1) + 1}, op);
  TORCH_CHECK(grad_loss.has_value() || grad_y.has_value(), "infer_fast_C::", op,
              ": at least one of grad_loss and grad_y must be given");
  if (grad_loss.has_value()) {
    check_strided(*grad_loss, "grad_loss", x, acc, {groups}, op);  // a summed loss's: stride 0
    TORCH_CHECK(count >= 1, "infer_fast_C::", op, ": count must be >= 1, got ", count);
  }
  check_like_x(grad_input, "grad_input", x, op);
  const bool fused = grad_y.has_value();  // running_var, weight and eps serve grad_y only
  if (fused) {
    check_like_x(*grad_y, "grad_y", x, op);
    TORCH_CHECK(running_var.has_value(), "infer_fast_C::", op,
                ": running_var is required with grad_y");
  }
  const auto params = bn_params(x, running_mean, fused ? running_var : std::nullopt,
                                fused ? weight : std::nullopt, std::nullopt, eps, op);
  if (x.numel() == 0) return;

  const c10::cuda::CUDAGuard guard(x.device());
  const auto plan = checked_plan(x, dtype, shape, op);
  check_launch(launch_bn_stat_backward(plan, dtype, shape, x.const_data_ptr(), params,
                                       stats.const_data_ptr(), data_or_null(grad_loss),
                                       grad_loss.has_value() ? grad_loss->stride(0) : 0, count,
                                       grad_input.mutable_data_ptr(), data_or_null(grad_y),
                                       current_stream()),
               op);
}

void infer_fast::cuda::ufc_compose(const at::Tensor& natural, const at::Tensor& ufc,
                                   const at::Tensor& index, const std::optional<at::Tensor>& shifts,
                                   const std::optional<at::Tensor>& flips,
                                   const std::optional<at::Tensor>& lo,
                                   const std::optional<at::Tensor>& hi, const at::Tensor& out) {
  constexpr const char* op = "ufc_compose";
  const auto s = check_compose(natural, ufc, index, shifts, flips, lo, hi, op);
  check_tensor(out, "out", natural, natural.scalar_type(), {s.G, s.C, s.ch, s.H, s.W}, op);
  if (out.numel() == 0) return;
  TORCH_CHECK(s.K >= 1, "infer_fast_C::", op, ": natural has no image (K = 0)");

  const c10::cuda::CUDAGuard guard(natural.device());
  check_launch(launch_ufc_compose(to_dtype(natural.scalar_type(), "natural", op),
                                  natural.const_data_ptr(), ufc.const_data_ptr(),
                                  index.const_data_ptr<int64_t>(), shifts_or_null(shifts),
                                  flips_or_null(flips), data_or_null(lo), data_or_null(hi),
                                  out.mutable_data_ptr(), s.K, s.G, s.C, s.ch, s.H, s.W,
                                  current_stream()),
               op);
}

void infer_fast::cuda::ufc_compose_grad_ufc(const at::Tensor& grad_out, const at::Tensor& natural,
                                            const at::Tensor& ufc, const at::Tensor& index,
                                            const std::optional<at::Tensor>& shifts,
                                            const std::optional<at::Tensor>& flips,
                                            const std::optional<at::Tensor>& lo,
                                            const std::optional<at::Tensor>& hi,
                                            const at::Tensor& grad_ufc) {
  constexpr const char* op = "ufc_compose_grad_ufc";
  const auto s = check_compose(natural, ufc, index, shifts, flips, lo, hi, op);
  check_tensor(grad_out, "grad_out", natural, natural.scalar_type(), {s.G, s.C, s.ch, s.H, s.W},
               op);
  check_tensor(grad_ufc, "grad_ufc", natural, natural.scalar_type(), {s.G, s.ch, s.H, s.W}, op);
  if (grad_ufc.numel() == 0) return;
  TORCH_CHECK(s.K >= 1 || s.C == 0 || !lo.has_value(), "infer_fast_C::", op,
              ": natural has no image (K = 0)");

  const c10::cuda::CUDAGuard guard(natural.device());
  check_launch(launch_ufc_compose_grad_ufc(
                   to_dtype(natural.scalar_type(), "natural", op), grad_out.const_data_ptr(),
                   natural.const_data_ptr(), ufc.const_data_ptr(), index.const_data_ptr<int64_t>(),
                   shifts_or_null(shifts), flips_or_null(flips), data_or_null(lo),
                   data_or_null(hi), grad_ufc.mutable_data_ptr(), s.K, s.G, s.C, s.ch, s.H, s.W,
                   current_stream()),
               op);
}

// ------------------------------------------------------------------------------------------
// TEST-ONLY: the plan override and report of launchers.h, as plain C symbols of infer_fast._C
// (no schema, no static registration: infer_fast/ops/plan_override.py calls them through
// ctypes). Nothing outside tests may call them.
// ------------------------------------------------------------------------------------------
// Forces the plans of the following launches (0: the default) and clears the report; returns
// 0, or -1 when a value is out of range (nothing set then).
extern "C" __attribute__((visibility("default"))) int infer_fast_cuda_force_plan(
    int64_t splits, int64_t channel_tiles, int64_t compose_threads) {
  ifc::PlanOverride forced;
  forced.splits = splits;
  forced.channel_tiles = channel_tiles;
  forced.compose_threads = compose_threads;
  return ifc::set_plan_override(forced) ? 0 : -1;
}

// Writes what the last launch of each launcher ran with into out[0 .. kPlanReportFields):
// for bn_stat_sums, bn_stat_forward, bn_stat_backward in turn (9 values each): valid (0: no
// launch since the report was cleared), splits, channel_tiles, nlc, vec, block_x, block_y,
// workspace_elems, row_vecs; then the pixel chunks per plane of the ufc_compose forward and grad_ufc,
// and their threads per block (4 values; 0: no launch). Returns the number of values written,
// or -1 when `capacity` is too small.
extern "C" __attribute__((visibility("default"))) int64_t infer_fast_cuda_plan_report(
    int64_t* out, int64_t capacity) {
  constexpr int64_t kPlanReportFields = 3 * 9 + 4;
  if (out == nullptr || capacity < kPlanReportFields) return -1;
  const ifc::PlanReport report = ifc::plan_report();
  int64_t i = 0;
  for (const ifc::BnPlan& plan : report.bn) {
    for (const int64_t v : {int64_t{plan.valid}, plan.splits, plan.channel_tiles, int64_t{plan.nlc},
                            int64_t{plan.vec}, int64_t{plan.block_x}, int64_t{plan.block_y},
                            plan.workspace_elems, plan.row_vecs})
      out[i++] = v;
  }
  for (int k = 0; k < 2; ++k) out[i++] = report.compose_chunks[k];
  for (int k = 0; k < 2; ++k) out[i++] = report.compose_threads[k];
  return i;
}

#endif  // INFER_FAST_WITH_CUDA
