// The differentiable ops: bn_stat_loss, bn_eval_with_stat_loss and ufc_compose. Each is a
// C++ autograd function over the functional ops (functional.cpp), so a call costs one
// dispatch forward and one backward, whatever the backend. The backward formulas live here
// once for every backend; the heavy passes are the functional ops, the parameter gradients
// (running statistics, BN weight and bias, natural images: off the recovery's hot path)
// are plain ATen.
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <array>
#include <string>

#include "dispatch.h"

namespace infer_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using OptTensor = std::optional<at::Tensor>;

// The functional ops (schemas: ops.cpp), looked up once.
const auto& bn_stat_forward_op() {
  static const auto handle = op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                    const at::Tensor&, int64_t, c10::string_view)>(
      "infer_fast_C::bn_stat_forward");
  return handle;
}

const auto& bn_eval_stat_forward_op() {
  static const auto handle =
      op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                        const OptTensor&, const OptTensor&, double, int64_t,
                                                        c10::string_view)>("infer_fast_C::bn_eval_stat_forward");
  return handle;
}

const auto& bn_stat_backward_op() {
  static const auto handle =
      op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
                    const OptTensor&, const OptTensor&, double, c10::string_view)>("infer_fast_C::bn_stat_backward");
  return handle;
}

using ComposeSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                                    const OptTensor&, const OptTensor&, const OptTensor&, c10::string_view);
using ComposeGradSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                                        c10::string_view);

const auto& ufc_compose_forward_op() {
  static const auto handle = op<ComposeSignature>("infer_fast_C::ufc_compose_forward");
  return handle;
}

const auto& ufc_compose_backward_op() {
  static const auto handle = op<ComposeGradSignature>("infer_fast_C::ufc_compose_backward");
  return handle;
}

const auto& ufc_compose_grad_natural_op() {  // the torch reference, registered from Python
  static const auto handle =
      op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                    const OptTensor&, const OptTensor&, const OptTensor&)>("infer_fast_C::ufc_compose_grad_natural");
  return handle;
}

// Optional tensors are saved as undefined tensors.
at::Tensor or_undefined(const OptTensor& t) { return t.has_value() ? *t : at::Tensor(); }
OptTensor defined_or_none(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

void save_backend(AutogradContext* ctx, c10::string_view backend) {
  ctx->saved_data["backend"] = std::string(backend);
}

std::string saved_backend(AutogradContext* ctx) { return ctx->saved_data["backend"].toStringRef(); }

// The backward formulas are first order: the statistics they reuse are constants to
// autograd, so a graph of them (create_graph=True) would give a second derivative missing
// terms. `formulas` runs without a graph; when one was asked for, the gradients get an Error
// node instead, with the edges of this op's inputs (and of grads): differentiating them
// again raises one clear error rather than giving a wrong or None result. (Python's
// @once_differentiable links only the grads: a second derivative w.r.t. x would be None.)
template <typename Formulas>
variable_list first_order(const char* op, const variable_list& grads, Formulas&& formulas) {
  const bool graph_asked = at::GradMode::is_enabled();
  variable_list out;
  {
    const at::NoGradGuard no_graph;
    out = formulas();
  }
  const c10::intrusive_ptr<torch::autograd::Node> node = torch::autograd::get_current_node();  // this op's
  if (!graph_asked || !node) return out;
  torch::autograd::edge_list edges = node->next_edges();
  for (torch::autograd::Edge& edge : torch::autograd::collect_next_edges(grads)) edges.push_back(std::move(edge));
  const auto error = c10::make_intrusive<torch::autograd::Error>(
      std::string("double backward through ") + op + " is not supported (its backward is first order; " + op +
          "_naive of infer_fast.ops, the torch reference, supports it)",
      std::move(edges));
  for (at::Tensor& t : out) {
    if (!t.defined()) continue;
    t = t.tensor_data();
    torch::autograd::set_history(t, error);
  }
  return out;
}

// d loss / d running_mean = -sum_g gl_g delta_g / ||delta_g||, d loss / d running_var =
// -sum_g gl_g e_g / ||e_g|| (zero norms count as 1), in the statistics' dtype: (2, C).
at::Tensor loss_grad_running_stats(const at::Tensor& stats, const at::Tensor& grad_loss) {
  const int64_t C = stats.size(2) - 1;
  const at::Tensor norms = stats.select(2, C).unsqueeze(2);  // (G, 2, 1)
  const at::Tensor safe = at::where(norms > 0, norms, at::ones_like(norms));
  return -(grad_loss.to(stats.scalar_type()).view({-1, 1, 1}) * stats.narrow(2, 0, C) / safe).sum(0);
}

struct BnStatLoss : public torch::autograd::Function<BnStatLoss> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& running_mean,
                            const at::Tensor& running_var, int64_t groups, c10::string_view backend) {
    const at::Tensor xk = in_kept_format(x);
    auto [loss, stats] = bn_stat_forward_op().call(xk, running_mean, running_var, groups, backend);
    ctx->save_for_backward({xk, running_mean, stats});
    save_backend(ctx, backend);
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return first_order("bn_stat_loss", grads, [&] { return gradients(ctx, grads[0]); });
  }

  static variable_list gradients(AutogradContext* ctx, const at::Tensor& grad_loss) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &running_mean = saved[1], &stats = saved[2];
    at::Tensor grad_x, grad_mean, grad_var;
    if (ctx->needs_input_grad(0)) {
      grad_x = bn_stat_backward_op().call(x, running_mean, stats, grad_loss, std::nullopt, std::nullopt,
                                          std::nullopt, 0.0, saved_backend(ctx));
    }
    if (ctx->needs_input_grad(1) || ctx->needs_input_grad(2)) {
      const at::Tensor grad_stats = loss_grad_running_stats(stats, grad_loss).to(running_mean.scalar_type());
      grad_mean = grad_stats[0];
      grad_var = grad_stats[1];
    }
    return {grad_x, grad_mean, grad_var, at::Tensor(), at::Tensor()};
  }
};

struct BnEvalWithStatLoss : public torch::autograd::Function<BnEvalWithStatLoss> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& running_mean,
                               const at::Tensor& running_var, const OptTensor& weight, const OptTensor& bias,
                               double eps, int64_t groups, c10::string_view backend) {
    const at::Tensor xk = in_kept_format(x);
    auto [y, loss, stats] =
        bn_eval_stat_forward_op().call(xk, running_mean, running_var, weight, bias, eps, groups, backend);
    ctx->save_for_backward({xk, running_mean, running_var, or_undefined(weight), stats});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["has_weight"] = weight.has_value();
    ctx->saved_data["has_bias"] = bias.has_value();
    save_backend(ctx, backend);
    ctx->set_materialize_grads(false);  // an unused output (or loss) costs no backward pass
    return {y, loss};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return first_order("bn_eval_with_stat_loss", grads, [&] { return gradients(ctx, grads[0], grads[1]); });
  }

  static variable_list gradients(AutogradContext* ctx, const at::Tensor& grad_y, const at::Tensor& grad_loss) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &running_mean = saved[1], &running_var = saved[2], &weight = saved[3],
                     &stats = saved[4];
    const double eps = ctx->saved_data["eps"].toDouble();
    at::Tensor grad_x;
    if (ctx->needs_input_grad(0) && (grad_y.defined() || grad_loss.defined())) {
      grad_x = bn_stat_backward_op().call(x, running_mean, stats, defined_or_none(grad_loss),
                                          defined_or_none(grad_y), running_var, defined_or_none(weight), eps,
                                          saved_backend(ctx));
    }
    variable_list params = parameter_grads(ctx, x, running_mean, running_var, weight, stats, grad_y, grad_loss, eps);
    return {grad_x, params[0], params[1], params[2], params[3], at::Tensor(), at::Tensor(), at::Tensor()};
  }

  // Whether running_mean, running_var, weight, bias need a gradient. Autograd numbers only
  // the tensors given (x, running_mean, running_var, then weight and bias when not None).
  static std::array<bool, 4> parameters_needing_grad(AutogradContext* ctx) {
    const bool has_weight = ctx->saved_data["has_weight"].toBool(), has_bias = ctx->saved_data["has_bias"].toBool();
    return {ctx->needs_input_grad(1), ctx->needs_input_grad(2), has_weight && ctx->needs_input_grad(3),
            has_bias && ctx->needs_input_grad(has_weight ? 4 : 3)};
  }

  // Gradients w.r.t. running_mean, running_var, weight, bias (undefined where not needed),
  // of y = (x - rm) * s + bias with s = weight * rsqrt(rv + eps), plus the loss's share.
  static variable_list parameter_grads(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& running_mean,
                                       const at::Tensor& running_var, const at::Tensor& weight,
                                       const at::Tensor& stats, const at::Tensor& grad_y,
                                       const at::Tensor& grad_loss, double eps) {
    variable_list out(4);
    const std::array<bool, 4> needed = parameters_needing_grad(ctx);
    if (!(needed[0] || needed[1] || needed[2] || needed[3])) return out;
    const at::ScalarType acc = stats.scalar_type();
    const int64_t C = x.size(1);
    at::Tensor grad_mean = at::zeros({C}, stats.options()), grad_var = at::zeros({C}, stats.options());
    if (grad_y.defined()) {
      std::vector<int64_t> dims = {0};
      std::vector<int64_t> shape = {1, C};
      for (int64_t d = 2; d < x.dim(); ++d) {
        dims.push_back(d);
        shape.push_back(1);
      }
      const at::Tensor dy = grad_y.to(acc);
      const at::Tensor rsqrt_var = at::rsqrt(running_var.to(acc) + eps);
      const at::Tensor w = weight.defined() ? weight.to(acc) : at::ones({C}, stats.options());
      const at::Tensor sum_dy = dy.sum(dims);
      const at::Tensor sum_dy_xc = (dy * (x.to(acc) - running_mean.to(acc).view(shape))).sum(dims);
      out[2] = (sum_dy_xc * rsqrt_var).to(running_mean.scalar_type());
      out[3] = sum_dy.to(running_mean.scalar_type());
      grad_mean -= sum_dy * w * rsqrt_var;
      grad_var -= 0.5 * sum_dy_xc * w * rsqrt_var.pow(3);
    }
    if (grad_loss.defined()) {
      const at::Tensor from_loss = loss_grad_running_stats(stats, grad_loss);
      grad_mean += from_loss[0];
      grad_var += from_loss[1];
    }
    out[0] = grad_mean.to(running_mean.scalar_type());
    out[1] = grad_var.to(running_var.scalar_type());
    for (size_t i = 0; i < 4; ++i) {
      if (!needed[i]) out[i] = at::Tensor();
    }
    return out;
  }
};

struct UfcCompose : public torch::autograd::Function<UfcCompose> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& natural, const at::Tensor& ufc,
                            const at::Tensor& index, const OptTensor& shifts, const OptTensor& flips,
                            const OptTensor& lo, const OptTensor& hi, c10::string_view backend) {
    ctx->save_for_backward({natural, ufc, index, or_undefined(shifts), or_undefined(flips), or_undefined(lo),
                            or_undefined(hi)});
    save_backend(ctx, backend);
    return ufc_compose_forward_op().call(natural, ufc, index, shifts, flips, lo, hi, backend);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return first_order("ufc_compose", grads, [&] { return gradients(ctx, grads[0]); });
  }

  static variable_list gradients(AutogradContext* ctx, const at::Tensor& grad_out) {
    const variable_list s = ctx->get_saved_variables();
    const OptTensor shifts = defined_or_none(s[3]), flips = defined_or_none(s[4]), lo = defined_or_none(s[5]),
                    hi = defined_or_none(s[6]);
    at::Tensor grad_natural, grad_ufc;
    if (ctx->needs_input_grad(1)) {
      grad_ufc =
          ufc_compose_backward_op().call(grad_out, s[0], s[1], s[2], shifts, flips, lo, hi, saved_backend(ctx));
    }
    if (ctx->needs_input_grad(0)) {  // natural images are fixed during recovery: the reference
      grad_natural = ufc_compose_grad_natural_op().call(grad_out, s[0], s[1], s[2], shifts, flips, lo, hi);
    }
    return {grad_natural, grad_ufc, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

// Autograd kernels.
at::Tensor bn_stat_loss(const at::Tensor& x, const at::Tensor& running_mean, const at::Tensor& running_var,
                        int64_t groups, c10::string_view backend) {
  return BnStatLoss::apply(x, running_mean, running_var, groups, backend);
}

std::tuple<at::Tensor, at::Tensor> bn_eval_with_stat_loss(const at::Tensor& x, const at::Tensor& running_mean,
                                                          const at::Tensor& running_var, const OptTensor& weight,
                                                          const OptTensor& bias, double eps, int64_t groups,
                                                          c10::string_view backend) {
  variable_list out = BnEvalWithStatLoss::apply(x, running_mean, running_var, weight, bias, eps, groups, backend);
  return {out[0], out[1]};
}

at::Tensor ufc_compose(const at::Tensor& natural, const at::Tensor& ufc, const at::Tensor& index,
                       const OptTensor& shifts, const OptTensor& flips, const OptTensor& lo, const OptTensor& hi,
                       c10::string_view backend) {
  return UfcCompose::apply(natural, ufc, index, shifts, flips, lo, hi, backend);
}

// Forward-only kernels, for tensors that carry no autograd (inference mode).
at::Tensor bn_stat_loss_forward_only(const at::Tensor& x, const at::Tensor& running_mean,
                                     const at::Tensor& running_var, int64_t groups, c10::string_view backend) {
  return std::get<0>(bn_stat_forward_op().call(in_kept_format(x), running_mean, running_var, groups, backend));
}

std::tuple<at::Tensor, at::Tensor> bn_eval_with_stat_loss_forward_only(
    const at::Tensor& x, const at::Tensor& running_mean, const at::Tensor& running_var, const OptTensor& weight,
    const OptTensor& bias, double eps, int64_t groups, c10::string_view backend) {
  auto [y, loss, stats] =
      bn_eval_stat_forward_op().call(in_kept_format(x), running_mean, running_var, weight, bias, eps, groups, backend);
  return {y, loss};
}

}  // namespace

void register_autograd_ops(torch::Library& autograd, torch::Library& forward_only) {
  autograd.impl("bn_stat_loss", &bn_stat_loss);
  autograd.impl("bn_eval_with_stat_loss", &bn_eval_with_stat_loss);
  autograd.impl("ufc_compose", &ufc_compose);
  forward_only.impl("bn_stat_loss", &bn_stat_loss_forward_only);
  forward_only.impl("bn_eval_with_stat_loss", &bn_eval_with_stat_loss_forward_only);
  forward_only.impl("ufc_compose", [](const at::Tensor& natural, const at::Tensor& ufc, const at::Tensor& index,
                                      const OptTensor& shifts, const OptTensor& flips, const OptTensor& lo,
                                      const OptTensor& hi, c10::string_view backend) {
    return ufc_compose_forward_op().call(natural, ufc, index, shifts, flips, lo, hi, backend);
  });
}

}  // namespace infer_fast
