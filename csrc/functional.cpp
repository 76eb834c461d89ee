// The functional ops: allocate the outputs and call one launcher of the named backend.
// They are what the autograd ops (autograd.cpp) and torch.compile graphs call; one C++
// kernel serves both devices and every backend (schemas: ops.cpp, fake kernels for tracing:
// infer_fast/ops/_library.py).
#include "dispatch.h"

#include <string>

namespace infer_fast {

bool is_compiled_backend(c10::string_view backend) { return backend == "cpu" || backend == "cuda"; }

namespace {
// The lookup function, never destroyed: its destructor would run after the interpreter has gone.
pybind11::object*& python_lookup() {
  static pybind11::object* lookup = nullptr;
  return lookup;
}
}  // namespace

void set_python_launchers(const pybind11::object& lookup) {
  delete python_lookup();
  python_lookup() = new pybind11::object(lookup);
}

pybind11::object python_launcher(c10::string_view backend, const char* name) {
  TORCH_CHECK(python_lookup() != nullptr, "infer_fast_C: backend '", backend,
              "' is written in Python and infer_fast.ops has not been imported");
  return (*python_lookup())(pybind11::str(backend.data(), backend.size()), name);
}

at::MemoryFormat kept_format(const at::Tensor& x) {
  if (x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

at::Tensor in_kept_format(const at::Tensor& x) { return x.contiguous(kept_format(x)); }

at::Tensor as_ncl(const at::Tensor& x) {
  const int64_t N = x.size(0), C = x.size(1);
  if (x.dim() == 2) return x.view({N, C, 1});
  const int64_t L = x.size(2) * x.size(3);
  if (kept_format(x) == at::MemoryFormat::ChannelsLast) return x.as_strided({N, C, L}, {C * L, 1, C});
  return x.view({N, C, L});
}

namespace {

// A BN parameter in the launchers' form: (C,) contiguous with running_mean's dtype.
std::optional<at::Tensor> like_running_mean(const std::optional<at::Tensor>& t, const at::Tensor& running_mean) {
  if (!t.has_value() || (t->scalar_type() == running_mean.scalar_type() && t->is_contiguous())) return t;
  return t->to(running_mean.scalar_type()).contiguous();
}

struct BnOutputs {
  at::Tensor loss, stats;
};

BnOutputs bn_outputs(const at::Tensor& x, int64_t groups) {
  const auto options = x.options().dtype(accumulate_dtype(x.scalar_type()));
  return {at::empty({groups}, options), at::empty({groups, 2, x.size(1) + 1}, options)};
}

std::tuple<at::Tensor, at::Tensor> bn_stat_forward(const at::Tensor& x, const at::Tensor& running_mean,
                                                   const at::Tensor& running_var, int64_t groups,
                                                   c10::string_view backend) {
  const at::Tensor xk = in_kept_format(x);
  const BnOutputs out = bn_outputs(xk, groups);
  launch::bn_stat_forward(backend, x.device(), as_ncl(xk), running_mean, *like_running_mean(running_var, running_mean),
                          groups, out.loss, out.stats, {}, {}, 0.0, {});
  return {out.loss, out.stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_eval_stat_forward(
    const at::Tensor& x, const at::Tensor& running_mean, const at::Tensor& running_var,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps, int64_t groups,
    c10::string_view backend) {
  const at::Tensor xk = in_kept_format(x);
  const BnOutputs out = bn_outputs(xk, groups);
  const at::Tensor y = at::empty_like(xk, kept_format(xk));
  launch::bn_stat_forward(backend, x.device(), as_ncl(xk), running_mean, *like_running_mean(running_var, running_mean),
                          groups, out.loss, out.stats, like_running_mean(weight, running_mean),
                          like_running_mean(bias, running_mean), eps, as_ncl(y));
  return {y, out.loss, out.stats};
}

// dx of bn_stat_loss (grad_loss) and of the fused eval-mode BN (grad_y), either or both.
at::Tensor bn_stat_backward(const at::Tensor& x, const at::Tensor& running_mean, const at::Tensor& stats,
                            const std::optional<at::Tensor>& grad_loss, const std::optional<at::Tensor>& grad_y,
                            const std::optional<at::Tensor>& running_var, const std::optional<at::Tensor>& weight,
                            double eps, c10::string_view backend) {
  const at::Tensor xk = in_kept_format(x);
  const at::MemoryFormat format = kept_format(xk);
  const at::Tensor x3 = as_ncl(xk);
  const int64_t count = (x3.size(0) / stats.size(0)) * x3.size(2);
  const at::Tensor grad_input = at::empty_like(xk, format);
  std::optional<at::Tensor> dy3;
  if (grad_y.has_value()) dy3 = as_ncl(grad_y->contiguous(format));  // read with x's strides
  launch::bn_stat_backward(backend, x.device(), x3, running_mean, stats, grad_loss, count, as_ncl(grad_input), dy3,
                           like_running_mean(running_var, running_mean), like_running_mean(weight, running_mean),
                           eps);
  return grad_input;
}

at::Tensor ufc_compose_forward(const at::Tensor& natural, const at::Tensor& ufc, const at::Tensor& index,
                               const std::optional<at::Tensor>& shifts, const std::optional<at::Tensor>& flips,
                               const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                               c10::string_view backend) {
  const at::Tensor out = at::empty({ufc.size(0), natural.size(1), natural.size(2), natural.size(3), natural.size(4)},
                                   natural.options());
  launch::ufc_compose(backend, natural.device(), natural, ufc, index, shifts, flips, lo, hi, out);
  return out;
}

at::Tensor ufc_compose_backward(const at::Tensor& grad_out, const at::Tensor& natural, const at::Tensor& ufc,
                                const at::Tensor& index, const std::optional<at::Tensor>& shifts,
                                const std::optional<at::Tensor>& flips, const std::optional<at::Tensor>& lo,
                                const std::optional<at::Tensor>& hi, c10::string_view backend) {
  const at::Tensor grad_ufc = at::empty_like(ufc);
  launch::ufc_compose_grad_ufc(backend, natural.device(), grad_out.contiguous(), natural, ufc, index, shifts, flips,
                               lo, hi, grad_ufc);
  return grad_ufc;
}

}  // namespace

void register_functional_ops(torch::Library& library) {
  library.impl("bn_stat_forward", &bn_stat_forward);
  library.impl("bn_eval_stat_forward", &bn_eval_stat_forward);
  library.impl("bn_stat_backward", &bn_stat_backward);
  library.impl("ufc_compose_forward", &ufc_compose_forward);
  library.impl("ufc_compose_backward", &ufc_compose_backward);
}

}  // namespace infer_fast
