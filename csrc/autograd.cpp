// Autograd kernels of the ops, in C++ so that calling an op costs no Python (a Python autograd
// registration costs more per call than the whole forward of a small RNN).
//   rnn_forward:  one node for the whole multi-layer RNN; its backward is the rnn_backward op.
//                 Under a functorch transform or with forward-mode tangents it runs the composite
//                 formulation instead (rnn_composite.h), which every transform can see through.
//   rnn_backward: the fused kernels; when its result must itself be differentiable
//                 (create_graph=True) the gradients come from a recomputation in composite ops.
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "op_handles.h"
#include "rnn_composite.h"

namespace fused_rnn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using at::Tensor;

std::optional<Tensor> opt(const Tensor& t) { return t.defined() ? std::optional<Tensor>(t) : std::nullopt; }

// A tensor of a functorch transform (the wrappers of grad, vjp, jacrev, jvp, jacfwd; vmap's batches)
// or of the legacy vmap that torch.autograd.grad(is_grads_batched=True) runs a backward under. The
// fused kernels' opaque node cannot serve them: functorch refuses C++ autograd Functions, and under
// jvp the tangents would silently be zero.
bool is_transformed(const Tensor& t) {
  static const c10::DispatchKeySet kTransformKeys(
      {c10::DispatchKey::FuncTorchGradWrapper, c10::DispatchKey::FuncTorchBatched, c10::DispatchKey::Batched});
  return t.defined() && t.key_set().has_any(kTransformKeys);
}

// Whether pred holds for any tensor argument of an op: input, hx, or one of the weights.
template <typename Pred>
bool any_argument(const Tensor& input, const Tensor& hx, at::TensorList weights, Pred pred) {
  if (pred(input) || pred(hx)) return true;
  for (const auto& t : weights)
    if (pred(t)) return true;
  return false;
}

// Forward-mode AD (torch.autograd.forward_ad) tangents on a tensor; level 0 is the only level dual
// tensors use outside functorch.
bool has_tangent(const Tensor& t) { return t._fw_grad(0).defined(); }

bool any_requires_grad(const Tensor& input, const Tensor& hx, at::TensorList weights) {
  return at::GradMode::is_enabled() &&
         any_argument(input, hx, weights, [](const Tensor& t) { return t.requires_grad(); });
}

// The ops as the composite formulation, checked like the device kernels. They serve the autograd
// kernels' transform and create_graph routes, and vmap (functorch's, and the legacy one of
// is_grads_batched), which dispatches to a batching rule before autograd: every composite op has
// one. (Without them vmap reports "Batching rule not implemented": its generic loop fallback does
// not take a Tensor[].) The backward's result is differentiable when grad mode is on.
std::tuple<Tensor, Tensor, Tensor> rnn_forward_composite_kernel(const Tensor& input, const Tensor& hx,
                                                                at::TensorList weights,
                                                                const std::optional<Tensor>& batch_sizes,
                                                                const std::optional<Tensor>& dropout_mask,
                                                                int64_t num_layers, bool bidirectional, bool relu,
                                                                bool has_biases) {
  const CheckedRnnArgs checked(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional, relu,
                                has_biases);
  return rnn_forward_composite(checked.args);
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> rnn_backward_composite_kernel(
    const Tensor& grad_output, const Tensor& grad_hy, const Tensor& input, const Tensor& hx, at::TensorList weights,
    const std::optional<Tensor>& batch_sizes, const std::optional<Tensor>& dropout_mask, const Tensor& output,
    const Tensor& reserve, int64_t num_layers, bool bidirectional, bool relu, bool has_biases) {
  const CheckedRnnArgs checked(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional, relu,
                                has_biases);
  const RnnArgs& a = checked.args;
  check_rnn_backward_args(a, grad_output, grad_hy, output, reserve);
  return rnn_backward_by_recompute(a, grad_output, grad_hy, at::GradMode::is_enabled());
}

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
    // On the CPU nn.RNN lets the caller modify its output in place before backward (torch.relu_(out),
    // in-place dropout): the caller gets a copy, the backward reads the saved original. CUDA keeps
    // cuDNN's contract instead: the output itself is saved, and an in-place change of it is a
    // version-counter error at backward, as with nn.RNN there.
    if (output.is_cpu()) output = output.clone();
    return {output, hy, reserve};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    const auto cfg = ctx->saved_data["config"].toIntVector();
    const Tensor &input = s[0], &hx = s[1], &output = s[4], &reserve = s[5];
    const std::vector<Tensor> weights(s.begin() + 6, s.end());
    const int64_t num_layers = cfg[0];
    const bool bidirectional = cfg[1] != 0, relu = cfg[2] != 0, has_biases = cfg[3] != 0;
    // An output that did not reach the loss has an undefined gradient: zeros.
    const Tensor grad_output = grads[0].defined() ? grads[0] : at::zeros_like(output);
    const Tensor grad_hy = grads[1].defined() ? grads[1] : at::zeros_like(hx);
    Tensor grad_input, grad_hx;
    std::vector<Tensor> grad_weights;
    if (is_transformed(grads[0]) || is_transformed(grads[1])) {
      // Batched gradients (vmap over this backward): the fused op has no batching rule; the
      // composite ops all have one.
      std::tie(grad_input, grad_hx, grad_weights) =
          rnn_backward_composite_kernel(grad_output, grad_hy, input, hx, weights, opt(s[2]), opt(s[3]), output,
                                        reserve, num_layers, bidirectional, relu, has_biases);
    } else {
      // rnn_backward's own autograd kernel takes the differentiable route under create_graph.
      std::tie(grad_input, grad_hx, grad_weights) =
          rnn_backward_op().call(grad_output, grad_hy, input, hx, weights, opt(s[2]), opt(s[3]), output, reserve,
                                 num_layers, bidirectional, relu, has_biases);
    }
    // One gradient per forward input, TensorList flattened: input, hx, weights..., then the
    // non-differentiable batch_sizes, dropout_mask, num_layers, bidirectional, relu, has_biases.
    variable_list result{grad_input, grad_hx};
    result.insert(result.end(), grad_weights.begin(), grad_weights.end());
    result.resize(result.size() + 6);
    return result;
  }
};

std::tuple<Tensor, Tensor, Tensor> rnn_forward_autograd(const Tensor& input, const Tensor& hx,
                                                        at::TensorList weights,
                                                        const std::optional<Tensor>& batch_sizes,
                                                        const std::optional<Tensor>& dropout_mask, int64_t num_layers,
                                                        bool bidirectional, bool relu, bool has_biases) {
  if (any_argument(input, hx, weights, is_transformed) || any_argument(input, hx, weights, has_tangent)) {
    return rnn_forward_composite_kernel(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional,
                                        relu, has_biases);
  }
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
  if (at::GradMode::is_enabled() && (grad_output.requires_grad() || grad_hy.requires_grad() ||
                                     any_requires_grad(input, hx, weights))) {
    // create_graph=True (double backward, gradgradcheck, Hessians): differentiable gradients.
    return rnn_backward_composite_kernel(grad_output, grad_hy, input, hx, weights, batch_sizes, dropout_mask, output,
                                         reserve, num_layers, bidirectional, relu, has_biases);
  }
  at::AutoDispatchBelowADInplaceOrView guard;  // the usual case
  return rnn_backward_op().call(grad_output, grad_hy, input, hx, weights, batch_sizes, dropout_mask, output, reserve,
                                num_layers, bidirectional, relu, has_biases);
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, Autograd, m) {
  m.impl("rnn_forward", &rnn_forward_autograd);
  m.impl("rnn_backward", &rnn_backward_autograd);
}

TORCH_LIBRARY_IMPL(fused_rnn, FuncTorchBatched, m) {
  m.impl("rnn_forward", &rnn_forward_composite_kernel);
  m.impl("rnn_backward", &rnn_backward_composite_kernel);
}

TORCH_LIBRARY_IMPL(fused_rnn, Batched, m) {
  m.impl("rnn_forward", &rnn_forward_composite_kernel);
  m.impl("rnn_backward", &rnn_backward_composite_kernel);
}

}  // namespace fused_rnn
