// The compiled backends' launchers, declared once (launchers.inc) for each device.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace infer_fast {

// The accumulate ("acc") dtype of the statistics and compositions: fp64 for fp64 inputs,
// fp32 otherwise (every backend's, and the dtype of the ops' loss and stats outputs).
inline at::ScalarType accumulate_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// ---- the contract's argument checks (infer_fast/ops/backends.py), defined once (functional.cpp) ----
// The functional ops run them before any launcher of any backend (the torch and Triton
// launchers trust their arguments). The C++ CPU launchers, which Python also calls directly
// (infer_fast._C.launchers: the chunked mode, tests), run them too: they read and write
// through raw pointers. Each raises a c10::Error "<op>: <argument> ..." naming the argument.
// (A namespace of their own: the CUDA launchers' file has checks of the same names.)
namespace contract {

// x of the BN ops, its rank checked by the caller ((N, C, H, W) or (N, C) for the ops,
// (N, C, L) for the launchers): one of the four float dtypes; groups >= 1 dividing N.
void check_bn_x(const at::Tensor& x, int64_t groups, const char* op);

// A BN parameter (running_mean, running_var, weight, bias): a float tensor of shape (C,), C =
// x.size(1), on x's device; of dtype `dtype` unless that is Undefined.
void check_bn_param(const at::Tensor& t, const at::Tensor& x, at::ScalarType dtype, const char* op,
                    const char* name);

// stats of bn_stat_backward: (G, 2, C + 1), contiguous, x's accumulate dtype and device, G >= 1
// dividing N. Returns G.
int64_t check_bn_stats(const at::Tensor& stats, const at::Tensor& x, const char* op);

// grad_loss of bn_stat_backward: (G,) of x's accumulate dtype on x's device, any stride.
void check_grad_loss(const at::Tensor& grad_loss, const at::Tensor& x, int64_t groups, const char* op);

// A companion of x read or written elementwise (grad_y, y, grad_input): x's device, dtype and
// shape (the launchers also need x's strides: their own check).
void check_like_x(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name);

// The compose ops' inputs: natural (K, C, ch, H, W) and ufc (G, ch, H, W) contiguous, one float
// dtype; index (G,) int64; shifts (G, 2) int64, flips (G,) uint8/bool, lo and hi (ch,) of the
// accumulate dtype, both or neither; all contiguous and on natural's device.
void check_compose_inputs(const at::Tensor& natural, const at::Tensor& ufc, const at::Tensor& index,
                          const std::optional<at::Tensor>& shifts, const std::optional<at::Tensor>& flips,
                          const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi, const char* op);

// Every value of a checked CPU index in [0, num_sets), read on the host.
void check_index_values(const at::Tensor& index, int64_t num_sets, const char* op);
}  // namespace contract

namespace cpu {
#include "launchers.inc"
}  // namespace cpu

#ifdef INFER_FAST_WITH_CUDA
namespace cuda {
#include "launchers.inc"
}  // namespace cuda
#endif
}  // namespace infer_fast
