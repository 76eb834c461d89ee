// The functional ops: allocate the outputs and call one launcher of the named backend.
// They are what the autograd ops (autograd.cpp) and torch.compile graphs call; one C++
// kernel serves both devices and every backend (schemas: ops.cpp, fake kernels for tracing:
// infer_fast/ops/_library.py).
#include "dispatch.h"

#include <cmath>
#include <string>

#include "cpu/common.h"  // (the primitive checks: check_defined, check_dtype, check_shape, ...)

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

// ---- the contract's argument checks (declared in ops.h) ----
using cpu::check_contiguous;
using cpu::check_defined;
using cpu::check_dtype;
using cpu::check_shape;
using cpu::check_supported_float;

namespace {

void check_on_device(const at::Tensor& t, const at::Tensor& ref, const char* ref_name, const char* op,
                     const char* name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device());
}

// An optional tensor given as an undefined one counts as None (how autograd saves None).
bool given(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

}  // namespace

namespace contract {

void check_bn_x(const at::Tensor& x, int64_t groups, const char* op) {
  check_defined(x, op, "x");
  check_supported_float(x, op, "x");
  TORCH_CHECK(groups >= 1, op, ": groups must be >= 1, got ", groups);
  TORCH_CHECK(x.size(0) % groups == 0, op, ": groups=", groups, " does not divide the batch size N=", x.size(0),
              " of x (shape ", x.sizes(), ")");
}

void check_bn_param(const at::Tensor& t, const at::Tensor& x, at::ScalarType dtype, const char* op,
                    const char* name) {
  check_defined(t, op, name);
  check_on_device(t, x, "x", op, name);
  check_supported_float(t, op, name);
  if (dtype != at::ScalarType::Undefined) check_dtype(t, dtype, op, name);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == x.size(1), op, ": ", name, " must have shape [", x.size(1),
              "] (one value per channel of x), got ", t.sizes());
}

int64_t check_bn_stats(const at::Tensor& stats, const at::Tensor& x, const char* op) {
  check_defined(stats, op, "stats");
  check_on_device(stats, x, "x", op, "stats");
  TORCH_CHECK(stats.dim() == 3, op, ": stats must be (G, 2, C + 1), got shape ", stats.sizes());
  const int64_t groups = stats.size(0);
  TORCH_CHECK(groups >= 1, op, ": stats must hold groups >= 1 (its first dimension), got shape ", stats.sizes());
  TORCH_CHECK(x.size(0) % groups == 0, op, ": the ", groups, " groups of stats do not divide the batch size N=",
              x.size(0), " of x");
  check_dtype(stats, accumulate_dtype(x.scalar_type()), op, "stats");
  check_shape(stats, {groups, 2, x.size(1) + 1}, op, "stats");
  check_contiguous(stats, op, "stats");
  return groups;
}

void check_grad_loss(const at::Tensor& grad_loss, const at::Tensor& x, int64_t groups, const char* op) {
  check_defined(grad_loss, op, "grad_loss");
  check_on_device(grad_loss, x, "x", op, "grad_loss");
  check_dtype(grad_loss, accumulate_dtype(x.scalar_type()), op, "grad_loss");
  check_shape(grad_loss, {groups}, op, "grad_loss");  // any stride: a summed loss's gradient is expanded
}

void check_like_x(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name) {
  check_defined(t, op, name);
  check_on_device(t, x, "x", op, name);
  check_dtype(t, x.scalar_type(), op, name);
  check_shape(t, x.sizes(), op, name);
}

void check_compose_inputs(const at::Tensor& natural, const at::Tensor& ufc, const at::Tensor& index,
                          const std::optional<at::Tensor>& shifts, const std::optional<at::Tensor>& flips,
                          const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi, const char* op) {
  check_defined(natural, op, "natural");
  check_defined(ufc, op, "ufc");
  TORCH_CHECK(natural.dim() == 5, op, ": natural must be 5-D (K, C, ch, H, W), got shape ", natural.sizes());
  TORCH_CHECK(ufc.dim() == 4, op, ": ufc must be 4-D (G, ch, H, W), got shape ", ufc.sizes());
  check_supported_float(natural, op, "natural");
  check_on_device(ufc, natural, "natural", op, "ufc");
  check_dtype(ufc, natural.scalar_type(), op, "ufc");
  const int64_t G = ufc.size(0), ch = natural.size(2);
  TORCH_CHECK(ufc.sizes().slice(1) == natural.sizes().slice(2), op, ": ufc images ", ufc.sizes().slice(1),
              " must match natural images ", natural.sizes().slice(2), " (ch, H, W)");
  check_contiguous(natural, op, "natural");
  check_contiguous(ufc, op, "ufc");

  check_defined(index, op, "index");
  check_on_device(index, natural, "natural", op, "index");
  check_dtype(index, at::kLong, op, "index");
  TORCH_CHECK(index.sizes() == at::IntArrayRef{G}, op, ": index must have shape [", G,
              "] (one natural set per UFC of ufc), got ", index.sizes());
  check_contiguous(index, op, "index");
  if (shifts.has_value()) {
    check_defined(*shifts, op, "shifts");
    check_on_device(*shifts, natural, "natural", op, "shifts");
    check_dtype(*shifts, at::kLong, op, "shifts");
    TORCH_CHECK(shifts->sizes() == at::IntArrayRef({G, 2}), op, ": shifts must have shape [", G,
                ", 2] (an (H, W) roll per UFC of ufc), got ", shifts->sizes());
    check_contiguous(*shifts, op, "shifts");
  }
  if (flips.has_value()) {
    check_defined(*flips, op, "flips");
    check_on_device(*flips, natural, "natural", op, "flips");
    TORCH_CHECK(flips->scalar_type() == at::kByte || flips->scalar_type() == at::kBool, op,
                ": flips must have dtype uint8 or bool, got ", flips->scalar_type());
    TORCH_CHECK(flips->sizes() == at::IntArrayRef{G}, op, ": flips must have shape [", G,
                "] (one flag per UFC of ufc), got ", flips->sizes());
    check_contiguous(*flips, op, "flips");
  }
  TORCH_CHECK(given(lo) == given(hi), op, ": lo and hi must be both None or both tensors");  // (undefined: None)
  if (given(lo)) {
    const at::ScalarType acc = accumulate_dtype(natural.scalar_type());
    for (const auto& [bound, name] : {std::pair<const at::Tensor&, const char*>{*lo, "lo"}, {*hi, "hi"}}) {
      check_on_device(bound, natural, "natural", op, name);
      check_dtype(bound, acc, op, name);
      TORCH_CHECK(bound.sizes() == at::IntArrayRef{ch}, op, ": ", name, " must have shape [", ch,
                  "] (one bound per image channel), got ", bound.sizes());
      check_contiguous(bound, op, name);
    }
  }
}

void check_index_values(const at::Tensor& index, int64_t num_sets, const char* op) {
  TORCH_CHECK(index.device().is_cpu(), op, ": index values are read on the host here, got a ", index.device(),
              " index");
  const int64_t* values = index.const_data_ptr<int64_t>();
  for (int64_t g = 0; g < index.numel(); ++g) {
    TORCH_CHECK(values[g] >= 0 && values[g] < num_sets, op, ": index values must lie in [0, ", num_sets,
                ") (natural has ", num_sets, " sets), got index[", g, "] = ", values[g]);
  }
}

}  // namespace contract

namespace {

using namespace contract;

// The checks of x that only the functional ops make (the launchers take x as (N, C, L)).
void check_op_x(const at::Tensor& x, int64_t groups, const char* op) {
  check_defined(x, op, "x");
  TORCH_CHECK(x.dim() == 4 || x.dim() == 2, op, ": x must be (N, C, H, W) or (N, C), got shape ", x.sizes());
  check_bn_x(x, groups, op);
  TORCH_CHECK(x.numel() > 0, op, ": x must not be empty, got shape ", x.sizes());
}

void check_eps(double eps, const char* op) {
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, op, ": eps must be a finite non-negative number, got ", eps);
}

// The BN parameters the functional ops take (running_var: required unless `optional_var`): any
// of the four float dtypes each (converted to running_mean's where the launchers need it).
void check_op_params(const at::Tensor& x, const at::Tensor& running_mean, const std::optional<at::Tensor>& running_var,
                     const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, const char* op,
                     bool optional_var = false) {
  const auto undefined = at::ScalarType::Undefined;
  check_bn_param(running_mean, x, undefined, op, "running_mean");
  if (!optional_var || given(running_var)) {
    TORCH_CHECK(running_var.has_value(), op, ": running_var is None");
    check_bn_param(*running_var, x, undefined, op, "running_var");
  }
  if (given(weight)) check_bn_param(*weight, x, undefined, op, "weight");
  if (given(bias)) check_bn_param(*bias, x, undefined, op, "bias");
}

// A BN parameter in the launchers' form: (C,) contiguous with running_mean's dtype.
std::optional<at::Tensor> like_running_mean(const std::optional<at::Tensor>& t, const at::Tensor& running_mean) {
  if (!given(t)) return std::nullopt;
  if (t->scalar_type() == running_mean.scalar_type() && t->is_contiguous()) return t;
  return t->to(running_mean.scalar_type()).contiguous();
}

struct BnOutputs {
  at::Tensor loss, stats;
};

BnOutputs bn_outputs(const at::Tensor& x, int64_t groups) {
  const auto options = x.options().dtype(accumulate_dtype(x.scalar_type()));
  return {at::empty({groups}, options), at::empty({groups, 2, x.size(1) + 1}, options)};
}

// Each functional op checks its arguments (the contract's checks above, with messages naming
// the argument) before it allocates anything or calls a launcher of any backend: the torch and
// Triton launchers trust what they are given.
std::tuple<at::Tensor, at::Tensor> bn_stat_forward(const at::Tensor& x, const at::Tensor& running_mean,
                                                   const at::Tensor& running_var, int64_t groups,
                                                   c10::string_view backend) {
  constexpr const char* op = "bn_stat_forward";
  check_op_x(x, groups, op);
  check_op_params(x, running_mean, running_var, std::nullopt, std::nullopt, op);
  const at::Tensor xk = in_kept_format(x), rm = running_mean.contiguous();
  const BnOutputs out = bn_outputs(xk, groups);
  launch::bn_stat_forward(backend, x.device(), as_ncl(xk), rm, *like_running_mean(running_var, rm), groups, out.loss,
                          out.stats, {}, {}, 0.0, {});
  return {out.loss, out.stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_eval_stat_forward(
    const at::Tensor& x, const at::Tensor& running_mean, const at::Tensor& running_var,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps, int64_t groups,
    c10::string_view backend) {
  constexpr const char* op = "bn_eval_stat_forward";
  check_op_x(x, groups, op);
  check_op_params(x, running_mean, running_var, weight, bias, op);
  check_eps(eps, op);
  const at::Tensor xk = in_kept_format(x), rm = running_mean.contiguous();
  const BnOutputs out = bn_outputs(xk, groups);
  const at::Tensor y = at::empty_like(xk, kept_format(xk));
  launch::bn_stat_forward(backend, x.device(), as_ncl(xk), rm, *like_running_mean(running_var, rm), groups, out.loss,
                          out.stats, like_running_mean(weight, rm), like_running_mean(bias, rm), eps, as_ncl(y));
  return {y, out.loss, out.stats};
}

// dx of bn_stat_loss (grad_loss) and of the fused eval-mode BN (grad_y), either or both.
at::Tensor bn_stat_backward(const at::Tensor& x, const at::Tensor& running_mean, const at::Tensor& stats,
                            const std::optional<at::Tensor>& grad_loss, const std::optional<at::Tensor>& grad_y,
                            const std::optional<at::Tensor>& running_var, const std::optional<at::Tensor>& weight,
                            double eps, c10::string_view backend) {
  constexpr const char* op = "bn_stat_backward";
  check_op_x(x, 1, op);
  const int64_t groups = check_bn_stats(stats, x, op);  // (G >= 1 dividing N)
  check_op_params(x, running_mean, running_var, weight, std::nullopt, op, /*optional_var=*/true);
  TORCH_CHECK(given(grad_loss) || given(grad_y), op, ": grad_loss and grad_y are both None");
  if (given(grad_loss)) check_grad_loss(*grad_loss, x, groups, op);
  if (given(grad_y)) {
    check_like_x(*grad_y, x, op, "grad_y");
    TORCH_CHECK(given(running_var), op, ": grad_y needs running_var (the eval-mode BatchNorm's scale)");
  }
  check_eps(eps, op);
  const at::Tensor xk = in_kept_format(x), rm = running_mean.contiguous();
  const at::MemoryFormat format = kept_format(xk);
  const at::Tensor x3 = as_ncl(xk);
  const int64_t count = (x3.size(0) / groups) * x3.size(2);
  const at::Tensor grad_input = at::empty_like(xk, format);
  std::optional<at::Tensor> dy3;
  if (given(grad_y)) dy3 = as_ncl(grad_y->contiguous(format));  // read with x's strides
  launch::bn_stat_backward(backend, x.device(), x3, rm, stats, given(grad_loss) ? grad_loss : std::nullopt, count,
                           as_ncl(grad_input), dy3, like_running_mean(running_var, rm), like_running_mean(weight, rm),
                           eps);
  return grad_input;
}

// Compose arguments: the contract's checks, then (a CPU index: read on the host, no sync) the
// index values. A CUDA index is not read here (a host sync per call): the public ufc_compose
// checks it, and the CUDA and Triton kernels refuse an out-of-range one themselves.
void check_op_compose(const at::Tensor& natural, const at::Tensor& ufc, const at::Tensor& index,
                      const std::optional<at::Tensor>& shifts, const std::optional<at::Tensor>& flips,
                      const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi, const char* op) {
  check_compose_inputs(natural, ufc, index, shifts, flips, lo, hi, op);
  if (index.device().is_cpu()) check_index_values(index, natural.size(0), op);
}

at::Tensor ufc_compose_forward(const at::Tensor& natural, const at::Tensor& ufc, const at::Tensor& index,
                               const std::optional<at::Tensor>& shifts, const std::optional<at::Tensor>& flips,
                               const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                               c10::string_view backend) {
  check_op_compose(natural, ufc, index, shifts, flips, lo, hi, "ufc_compose_forward");
  const at::Tensor out = at::empty({ufc.size(0), natural.size(1), natural.size(2), natural.size(3), natural.size(4)},
                                   natural.options());
  launch::ufc_compose(backend, natural.device(), natural, ufc, index, shifts, flips, lo, hi, out);
  return out;
}

at::Tensor ufc_compose_backward(const at::Tensor& grad_out, const at::Tensor& natural, const at::Tensor& ufc,
                                const at::Tensor& index, const std::optional<at::Tensor>& shifts,
                                const std::optional<at::Tensor>& flips, const std::optional<at::Tensor>& lo,
                                const std::optional<at::Tensor>& hi, c10::string_view backend) {
  constexpr const char* op = "ufc_compose_backward";
  check_op_compose(natural, ufc, index, shifts, flips, lo, hi, op);
  check_defined(grad_out, op, "grad_out");
  check_on_device(grad_out, natural, "natural", op, "grad_out");
  check_dtype(grad_out, natural.scalar_type(), op, "grad_out");
  check_shape(grad_out, {ufc.size(0), natural.size(1), natural.size(2), natural.size(3), natural.size(4)}, op,
              "grad_out");
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
