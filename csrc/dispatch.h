// How the ops reach a backend: a launcher is called by the backend's name. The compiled
// backends ("cpu", "cuda") run the C++/CUDA kernels of the tensors' device; the launchers of
// the Python backends ("torch", the reference, and "triton") are looked up through the
// function infer_fast.ops hands over (infer_fast.ops.backends.launcher) and called back with
// the GIL held.
#pragma once

#include <torch/extension.h>

#include "ops.h"

namespace infer_fast {

// "cpu" and "cuda": the launchers declared in launchers.inc.
bool is_compiled_backend(c10::string_view backend);

// Sets the Python function (backend, name) -> launcher that finds Python backends' launchers.
void set_python_launchers(const pybind11::object& lookup);

// The launcher `name` of Python backend `backend` (call with the GIL held).
pybind11::object python_launcher(c10::string_view backend, const char* name);

// One launcher of the contract, with the CPU and CUDA implementations of its declaration.
template <typename Fn>
struct Launcher;

template <typename... Params>
struct Launcher<void(Params...)> {
  const char* name;
  void (*cpu)(Params...);
  void (*cuda)(Params...);  // null in a build without CUDA kernels

  void operator()(c10::string_view backend, const at::Device& device, Params... args) const {
    if (is_compiled_backend(backend)) {
      TORCH_CHECK(device.is_cuda() == (backend == "cuda"), "infer_fast_C: backend '", backend,
                  "' cannot run on a ", device, " tensor");
      if (device.is_cpu()) return cpu(args...);
      TORCH_CHECK(cuda != nullptr, "infer_fast_C: this build of infer_fast._C has no CUDA kernels");
      return cuda(args...);
    }
    pybind11::gil_scoped_acquire gil;
    python_launcher(backend, name)(args...);
  }
};

#ifdef INFER_FAST_WITH_CUDA
#define INFER_FAST_LAUNCHER(name) Launcher<decltype(cpu::name)>{#name, &cpu::name, &cuda::name}
#else
#define INFER_FAST_LAUNCHER(name) Launcher<decltype(cpu::name)>{#name, &cpu::name, nullptr}
#endif

namespace launch {
inline const auto bn_stat_sums = INFER_FAST_LAUNCHER(bn_stat_sums);
inline const auto bn_stat_forward = INFER_FAST_LAUNCHER(bn_stat_forward);
inline const auto bn_stat_backward = INFER_FAST_LAUNCHER(bn_stat_backward);
inline const auto ufc_compose = INFER_FAST_LAUNCHER(ufc_compose);
inline const auto ufc_compose_grad_ufc = INFER_FAST_LAUNCHER(ufc_compose_grad_ufc);
}  // namespace launch

#undef INFER_FAST_LAUNCHER

// ---- layouts of the BN ops ----
// The layout the BN ops keep: channels_last for a 4-d tensor in that layout (and not also
// plain contiguous), contiguous otherwise. Outputs (y, dx) are laid out like x.
at::MemoryFormat kept_format(const at::Tensor& x);

// x in its kept layout (itself unless it has other strides: then a copy).
at::Tensor in_kept_format(const at::Tensor& x);

// (N, C, H, W) or (N, C) in a kept layout -> the (N, C, L) view the launchers take.
at::Tensor as_ncl(const at::Tensor& x);

// Registers the functional ops (the CPU or CUDA kernels of the schemas in ops.cpp).
void register_functional_ops(torch::Library& library);

// Registers the differentiable ops: their autograd kernels and, for tensors without
// autograd (inference mode), their forward-only kernels.
void register_autograd_ops(torch::Library& autograd, torch::Library& forward_only);

}  // namespace infer_fast
