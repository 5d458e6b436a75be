// Autograd kernels of the ops, in C++ so that calling an op costs no Python (a Python autograd
// registration adds ~100 µs per call, more than the whole forward of a small RNN).
//   rnn_forward:  one node for the whole multi-layer RNN; its backward is the rnn_backward op.
//   rnn_backward: not differentiable; differentiating it (double backward) raises a clear error.
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "op_handles.h"

namespace fused_rnn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using at::Tensor;

std::optional<Tensor> opt(const Tensor& t) { return t.defined() ? std::optional<Tensor>(t) : std::nullopt; }

class RnnForward : public torch::autograd::Function<RnnForward> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& hx, at::TensorList weights,
                               const std::optional<Tensor>& batch_sizes, const std::optional<Tensor>& dropout_mask,
                               int64_t num_layers, bool bidirectional, bool relu, bool has_biases) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, hy, reserve] = rnn_forward_op().call(input, hx, weights, batch_sizes, dropout_mask, num_layers,
                                                   bidirectional, relu, has_biases);
    variable_list saved{input, hx, batch_sizes.value_or(Tensor()), dropout_mask.value_or(Tensor()), output, reserve};
    saved.insert(saved.end(), weights.begin(), weights.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["config"] = std::vector<int64_t>{num_layers, bidirectional, relu, has_biases};
    ctx->mark_non_differentiable({reserve});
    return {output, hy, reserve};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    const auto cfg = ctx->saved_data["config"].toIntVector();
    const Tensor &input = s[0], &hx = s[1], &output = s[4], &reserve = s[5];
    const std::vector<Tensor> weights(s.begin() + 6, s.end());
    // An output that did not reach the loss has an undefined gradient: zeros.
    const Tensor grad_output = grads[0].defined() ? grads[0] : at::zeros_like(output);
    const Tensor grad_hy = grads[1].defined() ? grads[1] : at::zeros_like(hx);
    auto [grad_input, grad_hx, grad_weights] =
        rnn_backward_op().call(grad_output, grad_hy, input, hx, weights, opt(s[2]), opt(s[3]), output, reserve, cfg[0],
                           cfg[1] != 0, cfg[2] != 0, cfg[3] != 0);
    // One gradient per forward input, TensorList flattened: input, hx, weights..., then the
    // non-differentiable batch_sizes, dropout_mask, num_layers, bidirectional, relu, has_biases.
    variable_list result{grad_input, grad_hx};
    result.insert(result.end(), grad_weights.begin(), grad_weights.end());
    result.resize(result.size() + 6);
    return result;
  }
};

class RnnBackward : public torch::autograd::Function<RnnBackward> {
 public:
  static variable_list forward(AutogradContext*, const Tensor& grad_output, const Tensor& grad_hy,
                               const Tensor& input, const Tensor& hx, at::TensorList weights,
                               const std::optional<Tensor>& batch_sizes, const std::optional<Tensor>& dropout_mask,
                               const Tensor& output, const Tensor& reserve, int64_t num_layers, bool bidirectional,
                               bool relu, bool has_biases) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [grad_input, grad_hx, grad_weights] =
        rnn_backward_op().call(grad_output, grad_hy, input, hx, weights, batch_sizes, dropout_mask, output, reserve,
                           num_layers, bidirectional, relu, has_biases);
    variable_list result{grad_input, grad_hx};
    result.insert(result.end(), grad_weights.begin(), grad_weights.end());
    return result;
  }

  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false,
                "fused_rnn: double backward is not supported (a gradient of fused_rnn's RNN computed with "
                "create_graph=True is being differentiated again)");
  }
};

bool any_requires_grad(const Tensor& a, const Tensor& b, at::TensorList ts) {
  if (!at::GradMode::is_enabled()) return false;
  if (a.requires_grad() || b.requires_grad()) return true;
  for (const auto& t : ts)
    if (t.requires_grad()) return true;
  return false;
}

std::tuple<Tensor, Tensor, Tensor> rnn_forward_autograd(const Tensor& input, const Tensor& hx,
                                                        at::TensorList weights,
                                                        const std::optional<Tensor>& batch_sizes,
                                                        const std::optional<Tensor>& dropout_mask, int64_t num_layers,
                                                        bool bidirectional, bool relu, bool has_biases) {
  if (!any_requires_grad(input, hx, weights)) {  // inference: skip building an autograd node
    at::AutoDispatchBelowADInplaceOrView guard;
    return rnn_forward_op().call(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional, relu,
                             has_biases);
  }
  auto r = RnnForward::apply(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional, relu,
                             has_biases);
  return {r[0], r[1], r[2]};
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> rnn_backward_autograd(
    const Tensor& grad_output, const Tensor& grad_hy, const Tensor& input, const Tensor& hx, at::TensorList weights,
    const std::optional<Tensor>& batch_sizes, const std::optional<Tensor>& dropout_mask, const Tensor& output,
    const Tensor& reserve, int64_t num_layers, bool bidirectional, bool relu, bool has_biases) {
  if (!at::GradMode::is_enabled() || !(grad_output.requires_grad() || grad_hy.requires_grad() ||
                                       any_requires_grad(input, hx, weights))) {  // the usual case
    at::AutoDispatchBelowADInplaceOrView guard;
    return rnn_backward_op().call(grad_output, grad_hy, input, hx, weights, batch_sizes, dropout_mask, output, reserve,
                              num_layers, bidirectional, relu, has_biases);
  }
  auto r = RnnBackward::apply(grad_output, grad_hy, input, hx, weights, batch_sizes, dropout_mask, output, reserve,
                              num_layers, bidirectional, relu, has_biases);
  return {r[0], r[1], std::vector<Tensor>(r.begin() + 2, r.end())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, Autograd, m) {
  m.impl("rnn_forward", &rnn_forward_autograd);
  m.impl("rnn_backward", &rnn_backward_autograd);
}

}  // namespace fused_rnn
