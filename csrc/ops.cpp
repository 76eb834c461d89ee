// infer_fast._C: the op schemas, their registration with the dispatcher, and the Python
// module.
//
// Three layers, all under torch.ops.infer_fast_C:
//   * differentiable ops (autograd.cpp): what infer_fast.ops calls, one dispatch each way;
//   * functional ops (functional.cpp): allocate outputs and call one launcher of the named
//     backend; what the autograd ops and torch.compile graphs call;
//   * launchers (launchers.inc): write into given outputs; C++/CUDA for the compiled
//     backends, Python for "torch" and "triton" (registered by infer_fast.ops).
// Registration happens when the module is imported, inside try/catch: a failure raises an
// ImportError with the reason (CPU part) or is reported by cuda_status() (CUDA part),
// instead of aborting the process from a static initializer.
#include <torch/extension.h>
#include <torch/library.h>

#include <memory>
#include <string>

#include "dispatch.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace infer_fast {
namespace {

void define_schemas(torch::Library& m) {
  // differentiable ops
  m.def("bn_stat_loss(Tensor x, Tensor running_mean, Tensor running_var, int groups, str backend) -> Tensor");
  m.def(
      "bn_eval_with_stat_loss(Tensor x, Tensor running_mean, Tensor running_var, Tensor? weight, Tensor? bias, "
      "float eps, int groups, str backend) -> (Tensor, Tensor)");
  m.def(
      "ufc_compose(Tensor natural, Tensor ufc, Tensor index, Tensor? shifts, Tensor? flips, Tensor? lo, Tensor? hi, "
      "str backend) -> Tensor");
  // functional ops (stats: (G, 2, C + 1), see the backend contract in infer_fast/ops/backends.py)
  m.def(
      "bn_stat_forward(Tensor x, Tensor running_mean, Tensor running_var, int groups, str backend) "
      "-> (Tensor loss, Tensor stats)");
  m.def(
      "bn_eval_stat_forward(Tensor x, Tensor running_mean, Tensor running_var, Tensor? weight, Tensor? bias, "
      "float eps, int groups, str backend) -> (Tensor y, Tensor loss, Tensor stats)");
  m.def(
      "bn_stat_backward(Tensor x, Tensor running_mean, Tensor stats, Tensor? grad_loss, Tensor? grad_y, "
      "Tensor? running_var, Tensor? weight, float eps, str backend) -> Tensor");
  m.def(
      "ufc_compose_forward(Tensor natural, Tensor ufc, Tensor index, Tensor? shifts, Tensor? flips, Tensor? lo, "
      "Tensor? hi, str backend) -> Tensor");
  m.def(
      "ufc_compose_backward(Tensor grad_out, Tensor natural, Tensor ufc, Tensor index, Tensor? shifts, "
      "Tensor? flips, Tensor? lo, Tensor? hi, str backend) -> Tensor");
  // the gradient w.r.t. the natural images (the torch reference, implemented in Python)
  m.def(
      "ufc_compose_grad_natural(Tensor grad_out, Tensor natural, Tensor ufc, Tensor index, Tensor? shifts, "
      "Tensor? flips, Tensor? lo, Tensor? hi) -> Tensor");
}

using LibraryPtr = std::unique_ptr<torch::Library>;

LibraryPtr impl_library(c10::DispatchKey key) {
  return std::make_unique<torch::Library>(torch::Library::IMPL, "infer_fast_C", key, __FILE__, __LINE__);
}

// Registered libraries stay alive for the life of the process.
struct Registrations {
  LibraryPtr schemas, cpu, autograd, forward_only, cuda;
  std::string cuda_status = "this build has no CUDA kernels";
};

Registrations& registrations() {
  static Registrations r;
  return r;
}

void register_all() {
  Registrations& r = registrations();
  r.schemas = std::make_unique<torch::Library>(torch::Library::DEF, "infer_fast_C", std::nullopt, __FILE__, __LINE__);
  define_schemas(*r.schemas);
  r.cpu = impl_library(c10::DispatchKey::CPU);
  register_functional_ops(*r.cpu);
  r.autograd = impl_library(c10::DispatchKey::Autograd);
  r.forward_only = impl_library(c10::DispatchKey::CompositeExplicitAutograd);
  register_autograd_ops(*r.autograd, *r.forward_only);
#ifdef INFER_FAST_WITH_CUDA
  try {
    r.cuda = impl_library(c10::DispatchKey::CUDA);
    register_functional_ops(*r.cuda);
    r.cuda_status = "";
  } catch (const std::exception& e) {
    r.cuda.reset();
    r.cuda_status = e.what();
  }
#endif
}

int openmp_max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

bool cuda_compiled() {
#ifdef INFER_FAST_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// The compiled backend for a tensor: the kernels of its device.
const char* device_backend(const at::Tensor& t) { return t.is_cuda() ? "cuda" : "cpu"; }

// The compiled backend's launchers for Python (tests, the chunked mode).
void bind_launchers(pybind11::module_& m) {
  namespace py = pybind11;
  m.def(
      "bn_stat_sums",
      [](const at::Tensor& x, const at::Tensor& running_mean, int64_t groups, const at::Tensor& out) {
        launch::bn_stat_sums(device_backend(x), x.device(), x, running_mean, groups, out);
      },
      py::arg("x3"), py::arg("running_mean"), py::arg("groups"), py::arg("out"));
  m.def(
      "bn_stat_forward",
      [](const at::Tensor& x, const at::Tensor& running_mean, const at::Tensor& running_var, int64_t groups,
         const at::Tensor& loss, const at::Tensor& stats, const std::optional<at::Tensor>& weight,
         const std::optional<at::Tensor>& bias, double eps, const std::optional<at::Tensor>& y) {
        launch::bn_stat_forward(device_backend(x), x.device(), x, running_mean, running_var, groups, loss,
                                stats, weight, bias, eps, y);
      },
      py::arg("x3"), py::arg("running_mean"), py::arg("running_var"), py::arg("groups"), py::arg("loss"),
      py::arg("stats"), py::arg("weight") = py::none(), py::arg("bias") = py::none(), py::arg("eps") = 0.0,
      py::arg("y3") = py::none());
  m.def(
      "bn_stat_backward",
      [](const at::Tensor& x, const at::Tensor& running_mean, const at::Tensor& stats,
         const std::optional<at::Tensor>& grad_loss, int64_t count, const at::Tensor& grad_input,
         const std::optional<at::Tensor>& grad_y, const std::optional<at::Tensor>& running_var,
         const std::optional<at::Tensor>& weight, double eps) {
        launch::bn_stat_backward(device_backend(x), x.device(), x, running_mean, stats, grad_loss, count,
                                 grad_input, grad_y, running_var, weight, eps);
      },
      py::arg("x3"), py::arg("running_mean"), py::arg("stats"), py::arg("grad_loss"), py::arg("count"),
      py::arg("grad_input"), py::arg("grad_y3") = py::none(), py::arg("running_var") = py::none(),
      py::arg("weight") = py::none(), py::arg("eps") = 0.0);
  m.def(
      "ufc_compose",
      [](const at::Tensor& natural, const at::Tensor& ufc, const at::Tensor& index,
         const std::optional<at::Tensor>& shifts, const std::optional<at::Tensor>& flips,
         const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi, const at::Tensor& out) {
        launch::ufc_compose(device_backend(natural), natural.device(), natural, ufc, index, shifts, flips,
                            lo, hi, out);
      },
      py::arg("natural"), py::arg("ufc"), py::arg("index"), py::arg("shifts"), py::arg("flips"), py::arg("lo"),
      py::arg("hi"), py::arg("out"));
  m.def(
      "ufc_compose_grad_ufc",
      [](const at::Tensor& grad_out, const at::Tensor& natural, const at::Tensor& ufc, const at::Tensor& index,
         const std::optional<at::Tensor>& shifts, const std::optional<at::Tensor>& flips,
         const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi, const at::Tensor& grad_ufc) {
        launch::ufc_compose_grad_ufc(device_backend(natural), natural.device(), grad_out, natural, ufc,
                                     index, shifts, flips, lo, hi, grad_ufc);
      },
      py::arg("grad_out"), py::arg("natural"), py::arg("ufc"), py::arg("index"), py::arg("shifts"), py::arg("flips"),
      py::arg("lo"), py::arg("hi"), py::arg("grad_ufc"));
}

}  // namespace
}  // namespace infer_fast

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "infer-fast compiled kernels (ops registered under torch.ops.infer_fast_C)";
  infer_fast::register_all();  // a failure propagates: the import raises with its reason
  m.def("cuda_compiled", &infer_fast::cuda_compiled, "True when the CUDA kernels were built into this extension");
  m.def("cuda_status", [] { return infer_fast::registrations().cuda_status; },
        "'' when the CUDA kernels are registered, else why not");
  m.def("openmp_max_threads", &infer_fast::openmp_max_threads, "OpenMP threads the CPU kernels may use");
  m.def("set_python_launchers", &infer_fast::set_python_launchers, py::arg("lookup"),
        "Set the function (backend, name) -> launcher the ops use for backends written in Python");
  py::module_ launchers = m.def_submodule("launchers", "The compiled backend's launchers (kernels of the device)");
  infer_fast::bind_launchers(launchers);
}
