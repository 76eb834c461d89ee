// What each CUDA launch of the BN-statistics loss moves, from the kernels' own plan (plan_bn:
// shape-only host code, so it runs without a GPU), at the shapes measured on the H200 on
// 2026-11-30. Build and run (nvcc only, no GPU):
//   nvcc -std=c++17 -arch=sm_90 --expt-relaxed-constexpr -Icsrc -o /tmp/cuda_plan_bytes bench/cuda_plan_bytes.cpp \
//        csrc/cuda/bn_stat_loss.cu && /tmp/cuda_plan_bytes
// Floors at the H200's measured copy bandwidth (4.2 TB/s, read + write). "fused" is the eval-BN
// + loss op: its statistics launch also writes y, its backward also reads grad_y.
#include <cstdio>

#include "cuda/launchers.h"

using infer_fast::cuda::BnPlan;
using infer_fast::cuda::BnShape;
using infer_fast::cuda::DType;

namespace {

constexpr double kCopyBytesPerUs = 4.2e6;  // 4.2 TB/s

struct Case {
  const char* name;
  int64_t N, C, H, W, groups;
  bool channels_last;
  DType dtype;
  int64_t elem_bytes;
};

void report(const Case& c) {
  BnShape s;
  s.N = c.N, s.C = c.C, s.L = c.H * c.W, s.groups = c.groups, s.sN = c.C * s.L;
  s.sC = c.channels_last ? 1 : s.L;
  s.sL = c.channels_last ? c.C : 1;
  const BnPlan p = infer_fast::cuda::plan_bn(c.dtype, s);
  const double x = static_cast<double>(c.N * c.C * s.L * c.elem_bytes);
  const double acc = c.dtype == DType::kFloat64 ? 8 : 4;
  const double partials = static_cast<double>(p.workspace_elems) * acc;  // written, read back
  const double stats = static_cast<double>(c.groups * 2 * (c.C + 1)) * acc;
  const double stats_launch = x + partials;   // read x (+ rm), write the partial sums
  const double finalize = partials + stats;   // its last block per group: the partials read back, stats and loss
  const double backward = 2 * x;              // read x, write grad_input
  const double floor_us = (stats_launch + finalize + backward) / kCopyBytesPerUs;
  const double fused_floor_us = (stats_launch + x + finalize + backward + x) / kCopyBytesPerUs;
  char windows[32] = "";  // NCL: the vectors (windows, possibly partial) each row of L elements is cut into
  if (!p.nlc) std::snprintf(windows, sizeof windows, ", %lld per row", static_cast<long long>(p.row_vecs));
  std::printf("%-38s| %s vec %d%s | blocks %lld (splits %lld) | x %.1f MB | statistics %.1f MB + partials %.1f KB "
              "| last blocks %.1f KB | backward %.1f MB | floor fwd+bwd %.0f us, fused %.0f us\n",
              c.name, p.nlc ? "NLC" : "NCL", p.vec, windows,
              static_cast<long long>(c.groups * p.channel_tiles * p.splits), static_cast<long long>(p.splits),
              x / 1e6, x / 1e6, partials / 1e3, finalize / 1e3, backward / 1e6, floor_us, fused_floor_us);
}

}  // namespace

int main() {
  const Case cases[] = {
      {"(100,64,112,112) fp32 NCHW", 100, 64, 112, 112, 1, false, DType::kFloat32, 4},
      {"(100,64,112,112) fp32 channels_last", 100, 64, 112, 112, 1, true, DType::kFloat32, 4},
      {"(1000,64,56,56) bf16 channels_last", 1000, 64, 56, 56, 1, true, DType::kBFloat16, 2},
      {"(800,128,32,32) fp32 NCHW, 8 groups", 800, 128, 32, 32, 8, false, DType::kFloat32, 4},
      {"(1000,512,7,7) fp32 NCHW", 1000, 512, 7, 7, 1, false, DType::kFloat32, 4},
  };
  for (const Case& c : cases) report(c);
  return 0;
}
