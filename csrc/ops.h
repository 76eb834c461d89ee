// The compiled backends' launchers, declared once (launchers.inc) for each device.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace infer_fast {
namespace cpu {
#include "launchers.inc"
}  // namespace cpu

#ifdef INFER_FAST_WITH_CUDA
namespace cuda {
#include "launchers.inc"
}  // namespace cuda
#endif
}  // namespace infer_fast
