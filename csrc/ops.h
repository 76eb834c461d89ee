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

namespace cpu {
#include "launchers.inc"
}  // namespace cpu

#ifdef INFER_FAST_WITH_CUDA
namespace cuda {
#include "launchers.inc"
}  // namespace cuda
#endif
}  // namespace infer_fast
