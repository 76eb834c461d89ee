// CUDA implementations of the infer_fast_C ops (schemas: csrc/ops.cpp): the torch side of
// the CUDA kernels. Checks the backend contract (infer_fast/ops/backends.py) with
// TORCH_CHECK, allocates workspace through torch (caching allocator, current stream),
// and calls the plain launchers of launchers.h on the current stream. Launch errors are
// reported from cudaGetLastError() without synchronizing.
//
// Compiled by the host compiler, only in CUDA builds (setup.py defines INFER_FAST_WITH_CUDA).
// The stream and device guard come from c10/cuda (c10::cuda::getCurrentCUDAStream is what
// at::cuda::getCurrentCUDAStream forwards to); ATen/cuda/CUDAContext.h is not needed here and
// would also pull in cuBLAS/cuSPARSE headers.
#ifdef INFER_FAST_WITH_CUDA

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <optional>

#include "launchers.h"

namespace {

namespace ifc = infer_fast::cuda;

ifc::DType to_dtype(at::ScalarType t, const char* op) {
  switch (t) {
    case at::kFloat: return ifc::DType::kFloat32;
    case at::kDouble: return ifc::DType::kFloat64;
    case at::kHalf: return ifc::DType::kFloat16;
    case at::kBFloat16: return ifc::DType::kBFloat16;
    default:
      TORCH_CHECK(false, "infer_fast_C::", op, ": unsupported dtype ", t,
                  " (expected float32, float64, float16 or bfloat16)");
  }
  return ifc::DType::kFloat32;  // unreachable
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_on_device(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* op) {
  TORCH_CHECK(t.is_cuda(), "infer_fast_C::", op, ": ", name, " must be a CUDA tensor, got ",
              t.device());
  TORCH_CHECK(t.device() == ref.device(), "infer_fast_C::", op, ": ", name, " is on ", t.device(),
              " but the input is on ", ref.device());
}

void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& ref,
                  at::ScalarType dtype, at::IntArrayRef sizes, const char* op) {
  check_on_device(t, name, ref, op);
  TORCH_CHECK(t.scalar_type() == dtype, "infer_fast_C::", op, ": ", name, " must be ", dtype,
              ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == sizes, "infer_fast_C::", op, ": ", name, " must have shape ", sizes,
              ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "infer_fast_C::", op, ": ", name, " must be contiguous");
}

// Launchers take the NLC kernel when stride(2) != 1 (or L == 1); both layouts must match
// the contract's strides (strides of size-1 dims are irrelevant).
bool bn_layout_ok(const at::Tensor& x3) {
  const int64_t N = x3.size(0), C = x3.size(1), L = x3.size(2);
  const int64_t sN = x3.stride(0), sC = x3.stride(1), sL = x3.stride(2);
  if (N > 1 && sN != C * L) return false;
  const bool nlc = sL != 1 || L == 1;
  if (nlc) return (C <= 1 || sC == 1) && (L <= 1 || sL == C);
  return (C <= 1 || sC == L) && (L <= 1 || sL == 1);
}

void check_bn_input(const at::Tensor& x3, int64_t groups, const char* op) {
  TORCH_CHECK(x3.is_cuda(), "infer_fast_C::", op, ": x must be a CUDA tensor, got ", x3.device());
  TORCH_CHECK(x3.dim() == 3, "infer_fast_C::", op, ": x must be (N, C, L), got ", x3.sizes());
  TORCH_CHECK(groups >= 1, "infer_fast_C::", op, ": groups must be >= 1, got ", groups);
  TORCH_CHECK(x3.size(0) % groups == 0, "infer_fast_C::", op, ": N = ", x3.size(0),
              " is not a multiple of groups = ", groups);
  TORCH_CHECK(bn_layout_ok(x3), "infer_fast_C::", op,
              ": x must have strides (C*L, L, 1) (NCHW) or (C*L, 1, C) (channels_last), got ",
              x3.strides(), " for shape ", x3.sizes());
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

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "infer_fast_C::", op, ": CUDA kernel launch failed: ",
              cudaGetErrorString(err));
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

const void* opt_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr() : nullptr;
}

// ------------------------------------------------------------------------------------------
// scale, shift, y (all or none): the fused eval-mode BatchNorm y = x * scale[c] + shift[c],
// written by the same kernel that reads x for the sums.
void bn_stat_sums_cuda(const at::Tensor& x, const at::Tensor& running_mean, int64_t groups,
                       at::Tensor& out, const std::optional<at::Tensor>& scale,
                       const std::optional<at::Tensor>& shift, const std::optional<at::Tensor>& y) {
  constexpr const char* op = "bn_stat_sums";
  check_bn_input(x, groups, op);
  const auto dtype = to_dtype(x.scalar_type(), op);
  const auto acc = acc_type(x.scalar_type());
  const int64_t N = x.size(0), C = x.size(1), L = x.size(2);
  check_tensor(running_mean, "running_mean", x, acc, {C}, op);
  check_tensor(out, "out", x, acc, {2, groups, C}, op);
  TORCH_CHECK(scale.has_value() == y.has_value() && shift.has_value() == y.has_value(),
              "infer_fast_C::", op, ": scale, shift and y must be all given or all None");
  if (y.has_value()) {
    check_tensor(*scale, "scale", x, acc, {C}, op);
    check_tensor(*shift, "shift", x, acc, {C}, op);
    check_like_x(*y, "y", x, op);
  }
  if (out.numel() == 0) return;  // C == 0: y has no element either

  const c10::cuda::CUDAGuard guard(x.device());
  const auto plan =
      ifc::plan_bn_stat_sums(dtype, N, C, L, x.stride(0), x.stride(1), x.stride(2), groups);
  TORCH_CHECK(plan.valid, "infer_fast_C::", op, ": shape ", x.sizes(), " with groups = ", groups,
              " is too large for the CUDA kernel's grid");
  at::Tensor workspace;
  if (plan.workspace_elems > 0) workspace = at::empty({plan.workspace_elems}, out.options());
  const auto err = ifc::launch_bn_stat_sums(
      plan, dtype, x.const_data_ptr(), N, C, L, x.stride(0), x.stride(1), x.stride(2),
      running_mean.const_data_ptr(), groups, out.mutable_data_ptr(),
      workspace.defined() ? workspace.mutable_data_ptr() : nullptr, opt_ptr(scale), opt_ptr(shift),
      y.has_value() ? y->mutable_data_ptr() : nullptr, current_stream());
  check_launch(err, op);
}

// grad_y, scale (both or none): adds the fused eval-mode BatchNorm's input gradient
// grad_y * scale[c] in the same elementwise pass.
void bn_stat_backward_cuda(const at::Tensor& x, const at::Tensor& coef_a, const at::Tensor& coef_b,
                           const at::Tensor& mean, int64_t groups, at::Tensor& grad_input,
                           const std::optional<at::Tensor>& grad_y,
                           const std::optional<at::Tensor>& scale) {
  constexpr const char* op = "bn_stat_backward";
  check_bn_input(x, groups, op);
  const auto dtype = to_dtype(x.scalar_type(), op);
  const auto acc = acc_type(x.scalar_type());
  const int64_t N = x.size(0), C = x.size(1), L = x.size(2);
  check_tensor(coef_a, "coef_a", x, acc, {groups, C}, op);
  check_tensor(coef_b, "coef_b", x, acc, {groups, C}, op);
  check_tensor(mean, "mean", x, acc, {groups, C}, op);
  check_like_x(grad_input, "grad_input", x, op);
  TORCH_CHECK(grad_y.has_value() == scale.has_value(), "infer_fast_C::", op,
              ": grad_y and scale must be both given or both None");
  if (grad_y.has_value()) {
    check_like_x(*grad_y, "grad_y", x, op);
    check_tensor(*scale, "scale", x, acc, {C}, op);
  }
  if (x.numel() == 0) return;

  const c10::cuda::CUDAGuard guard(x.device());
  const auto err = ifc::launch_bn_stat_backward(
      dtype, x.const_data_ptr(), N, C, L, x.stride(0), x.stride(1), x.stride(2),
      coef_a.const_data_ptr(), coef_b.const_data_ptr(), mean.const_data_ptr(), groups,
      grad_input.mutable_data_ptr(), opt_ptr(grad_y), opt_ptr(scale), current_stream());
  check_launch(err, op);
}

// ------------------------------------------------------------------------------------------
struct ComposeShape {
  int64_t K, G, C, ch, H, W;
};

// Checks shared by both compose ops; returns the shape.
ComposeShape check_compose(const at::Tensor& natural, const at::Tensor& ufc, const at::Tensor& index,
                           const at::Tensor& shifts, const at::Tensor& flips,
                           const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                           const char* op) {
  TORCH_CHECK(natural.is_cuda(), "infer_fast_C::", op, ": natural must be a CUDA tensor, got ",
              natural.device());
  TORCH_CHECK(natural.dim() == 5, "infer_fast_C::", op, ": natural must be (K, C, ch, H, W), got ",
              natural.sizes());
  TORCH_CHECK(natural.is_contiguous(), "infer_fast_C::", op, ": natural must be contiguous");
  to_dtype(natural.scalar_type(), op);
  ComposeShape s{natural.size(0), 0, natural.size(1), natural.size(2), natural.size(3),
                 natural.size(4)};
  TORCH_CHECK(ufc.dim() == 4, "infer_fast_C::", op, ": ufc must be (G, ch, H, W), got ", ufc.sizes());
  s.G = ufc.size(0);
  check_tensor(ufc, "ufc", natural, natural.scalar_type(), {s.G, s.ch, s.H, s.W}, op);
  check_tensor(index, "index", natural, at::kLong, {s.G}, op);
  check_tensor(shifts, "shifts", natural, at::kLong, {s.G, 2}, op);
  // uint8 per the contract; bool has the same 1-byte 0/1 representation.
  check_on_device(flips, "flips", natural, op);
  TORCH_CHECK(flips.scalar_type() == at::kByte || flips.scalar_type() == at::kBool,
              "infer_fast_C::", op, ": flips must be uint8, got ", flips.scalar_type());
  TORCH_CHECK(flips.sizes() == at::IntArrayRef({s.G}), "infer_fast_C::", op,
              ": flips must have shape (G,) = (", s.G, "), got ", flips.sizes());
  TORCH_CHECK(flips.is_contiguous(), "infer_fast_C::", op, ": flips must be contiguous");
  TORCH_CHECK(lo.has_value() == hi.has_value(), "infer_fast_C::", op,
              ": lo and hi must be both given or both None");
  if (lo.has_value()) {
    const auto acc = acc_type(natural.scalar_type());
    check_tensor(*lo, "lo", natural, acc, {s.ch}, op);
    check_tensor(*hi, "hi", natural, acc, {s.ch}, op);
  }
  TORCH_CHECK(s.H == 0 || s.W <= int64_t{2147483647} / s.H, "infer_fast_C::", op,
              ": H * W must be < 2^31, got ", s.H, " x ", s.W);
  return s;
}

void ufc_compose_cuda(const at::Tensor& natural, const at::Tensor& ufc, const at::Tensor& index,
                      const at::Tensor& shifts, const at::Tensor& flips,
                      const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                      at::Tensor& out) {
  constexpr const char* op = "ufc_compose";
  const auto s = check_compose(natural, ufc, index, shifts, flips, lo, hi, op);
  check_tensor(out, "out", natural, natural.scalar_type(), {s.G, s.C, s.ch, s.H, s.W}, op);
  if (out.numel() == 0) return;
  TORCH_CHECK(s.K >= 1, "infer_fast_C::", op, ": natural has no image (K = 0)");

  const c10::cuda::CUDAGuard guard(natural.device());
  const auto err = ifc::launch_ufc_compose(
      to_dtype(natural.scalar_type(), op), natural.const_data_ptr(), ufc.const_data_ptr(),
      index.const_data_ptr<int64_t>(), shifts.const_data_ptr<int64_t>(),
      static_cast<const uint8_t*>(flips.const_data_ptr()), opt_ptr(lo), opt_ptr(hi),
      out.mutable_data_ptr(), s.K, s.G, s.C, s.ch, s.H, s.W, current_stream());
  check_launch(err, op);
}

void ufc_compose_grad_ufc_cuda(const at::Tensor& grad_out, const at::Tensor& natural,
                               const at::Tensor& ufc, const at::Tensor& index,
                               const at::Tensor& shifts, const at::Tensor& flips,
                               const std::optional<at::Tensor>& lo,
                               const std::optional<at::Tensor>& hi, at::Tensor& grad_ufc) {
  constexpr const char* op = "ufc_compose_grad_ufc";
  const auto s = check_compose(natural, ufc, index, shifts, flips, lo, hi, op);
  check_tensor(grad_out, "grad_out", natural, natural.scalar_type(), {s.G, s.C, s.ch, s.H, s.W},
               op);
  check_tensor(grad_ufc, "grad_ufc", natural, natural.scalar_type(), {s.G, s.ch, s.H, s.W}, op);
  if (grad_ufc.numel() == 0) return;
  TORCH_CHECK(s.K >= 1 || s.C == 0 || !lo.has_value(), "infer_fast_C::", op,
              ": natural has no image (K = 0)");

  const c10::cuda::CUDAGuard guard(natural.device());
  const auto err = ifc::launch_ufc_compose_grad_ufc(
      to_dtype(natural.scalar_type(), op), grad_out.const_data_ptr(), natural.const_data_ptr(),
      ufc.const_data_ptr(), index.const_data_ptr<int64_t>(), shifts.const_data_ptr<int64_t>(),
      static_cast<const uint8_t*>(flips.const_data_ptr()), opt_ptr(lo), opt_ptr(hi),
      grad_ufc.mutable_data_ptr(), s.K, s.G, s.C, s.ch, s.H, s.W, current_stream());
  check_launch(err, op);
}

}  // namespace

TORCH_LIBRARY_IMPL(infer_fast_C, CUDA, m) {
  m.impl("bn_stat_sums", &bn_stat_sums_cuda);
  m.impl("bn_stat_backward", &bn_stat_backward_cuda);
  m.impl("ufc_compose", &ufc_compose_cuda);
  m.impl("ufc_compose_grad_ufc", &ufc_compose_grad_ufc_cuda);
}

#endif  // INFER_FAST_WITH_CUDA
