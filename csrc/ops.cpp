// Schemas of the compiled ops and the Python module of infer_fast._C.
//
// The ops write into caller-provided outputs (marked mutable): the Python layer allocates,
// the kernels fill every element. Semantics: infer_fast/ops/backends.py ("Backend contract").
// CPU kernels: csrc/cpu/*.cpp; CUDA kernels: csrc/cuda/ (built only with a CUDA torch).
#include <torch/extension.h>
#include <torch/library.h>

#ifdef _OPENMP
#include <omp.h>
#endif

TORCH_LIBRARY(infer_fast_C, m) {
  // scale/shift/y and grad_y/scale: the optional fused eval-mode BatchNorm (y = x * scale + shift
  // written by the statistics pass; its input gradient added by the backward pass).
  m.def(
      "bn_stat_sums(Tensor x, Tensor running_mean, int groups, Tensor(a!) out, Tensor? scale=None, "
      "Tensor? shift=None, Tensor(b!)? y=None) -> ()");
  m.def(
      "bn_stat_backward(Tensor x, Tensor coef_a, Tensor coef_b, Tensor mean, int groups, "
      "Tensor(a!) grad_input, Tensor? grad_y=None, Tensor? scale=None) -> ()");
  m.def(
      "ufc_compose(Tensor natural, Tensor ufc, Tensor index, Tensor shifts, Tensor flips, "
      "Tensor? lo, Tensor? hi, Tensor(a!) out) -> ()");
  m.def(
      "ufc_compose_grad_ufc(Tensor grad_out, Tensor natural, Tensor ufc, Tensor index, "
      "Tensor shifts, Tensor flips, Tensor? lo, Tensor? hi, Tensor(a!) grad_ufc) -> ()");
}

namespace {
bool cuda_compiled() {
#ifdef INFER_FAST_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int openmp_max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "infer-fast compiled kernels (ops registered under torch.ops.infer_fast_C)";
  m.def("cuda_compiled", &cuda_compiled, "True when the CUDA kernels were built into this extension");
  m.def("openmp_max_threads", &openmp_max_threads, "OpenMP threads the CPU kernels may use");
}
