// Autograd kernels of the ops, in C++ so that calling an op costs no Python (a Python autograd
// registration costs more per call than the whole forward of a small RNN).
//   rnn_forward:  one node for the whole multi-layer RNN; its backward is the rnn_backward op.
//                 Under a functorch transform or with forward-mode tangents it runs the composite
//                 formulation instead (rnn_composite.h), which every transform can see through.
//   rnn_backward: the fused kernels; when its result must itself be differentiable
//                 (create_graph=True) the gradients come from a recomputation in composite ops.
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <c10/util/SmallVector.h>

#include <string>
#include <vector>

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

// Which of the forward's arguments (input, hx, weights...) the first-order backward reads, given which
// of them require grad: nn.RNN's autograd (one node per primitive op) saves only those, so an in-place
// change of any other between forward and backward is no error there, and must not be one here.
// Per layer l (top down): δ_t = (dy_t + W_hhᵀ δ_{t+1}) ⊙ act'(y_t); dW_hh = Σ δ_t h_{t-1}ᵀ (h0 from hx);
// dW_ih = Σ δ_t x_tᵀ (x: input for layer 0, else the layer below's saved output); dx = W_ihᵀ δ (the
// layer below's dy); the biases' gradients are Σ δ. So:
//   W_hh of layer l:  when that layer and direction's backward runs at all (hx, a weight of its own,
//                     one of a layer below, or the input requires grad)
//   W_ih of layer l:  when the gradient of layer l's input is needed (the input; above layer 0 also
//                     hx or a weight of a layer below)
//   input:            when a layer-0 W_ih requires grad
//   hx:               when some W_hh requires grad
//   biases:           never
// With one time step there is no recursion: W_hh is read only for hx's gradient (dh0 = W_hhᵀ δ_0).
// Returns one flag per argument, in the order input, hx, weights.
c10::SmallVector<bool, 32> read_by_backward(const Tensor& input, const Tensor& hx, at::TensorList weights,
                                            int64_t num_layers, bool bidirectional, bool has_biases, int64_t steps) {
  const int64_t D = bidirectional ? 2 : 1, per = has_biases ? 4 : 2;
  c10::SmallVector<bool, 32> read(2 + weights.size(), false);
  bool below = input.requires_grad();  // the gradient of this layer's input is needed
  bool any_w_hh = false, first_w_ih = false;
  for (int64_t l = 0; l < num_layers; ++l) {
    bool layer = false;  // a weight of this layer requires grad
    for (int64_t d = 0; d < D; ++d) {
      const int64_t base = (l * D + d) * per;
      bool cell = false;  // a weight of this layer and direction requires grad
      for (int64_t w = 0; w < per; ++w) cell = cell || weights[base + w].requires_grad();
      layer = layer || cell;
      any_w_hh = any_w_hh || weights[base + 1].requires_grad();
      if (l == 0) first_w_ih = first_w_ih || weights[base].requires_grad();
      read[2 + base] = below;                                    // W_ih: dx of this layer
      read[2 + base + 1] = (steps > 1 && (below || cell)) || hx.requires_grad();  // W_hh: the recursion, dh0
    }
    below = below || layer || hx.requires_grad();  // this layer's output, the next one's input
  }
  read[0] = first_w_ih;
  read[1] = any_w_hh;
  return read;
}

// The saved_data key of argument i (input 0, hx 1, weights 2...) kept outside save_for_backward ("u"),
// or of the probe of its version counter ("p"). Short enough for std::string's inline buffer.
std::string unread_key(char kind, size_t i) { return kind + std::to_string(i); }

}  // namespace

// The autograd node of rnn_forward, named for what it computes, as ATen's nodes are (tensors print
// grad_fn=<CppNode<fused_rnn::RnnBackward>>): outside the anonymous namespace, whose name would
// show in it.
class RnnBackward : public torch::autograd::Function<RnnBackward> {
 public:
  // reserve_out: the inner layers' outputs, not a differentiable output of the node (not by
  // mark_non_differentiable, which compiled autograd refuses in a C++ Function: CppNode::compiled_args
  // asserts that none was marked; and no detach, a TensorImpl a call): handed out through a pointer.
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& hx, at::TensorList weights,
                               const std::optional<Tensor>& batch_sizes, const std::optional<Tensor>& dropout_mask,
                               int64_t num_layers, bool bidirectional, bool relu, bool has_biases,
                               Tensor* reserve_out) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, hy, reserve] = rnn_forward_op().call(input, hx, weights, batch_sizes, dropout_mask, num_layers,
                                                       bidirectional, relu, has_biases);
    *reserve_out = reserve;
    // The arguments the backward reads are saved, their version checked at backward. The others are
    // kept unchecked, with their version now: their values reach only gradients nobody asked for,
    // unless the backward is differentiated (create_graph), whose recomputation reads them all.
    //   input or hx (activations) that does not require grad: saved too, as an alias with a version
    //     counter of its own (released after backward, seen by saved-tensor hooks: checkpointing,
    //     save_on_cpu), and a 0-element probe sharing the original's version counter;
    //   a weight (alive with its module anyway), or input or hx that requires grad (a differentiable
    //     backward must reach its autograd history, which an alias lacks): the tensor itself, in
    //     saved_data (held until the graph is freed).
    // Their versions: one sum ("versions"; versions only grow, so an equal sum means none changed).
    // One saved_data entry per tensor: compiled autograd swaps a tensor entry for its proxy (not one
    // inside a list), and lifts a top-level int as an input (a version in a list would be hashed into
    // its cache key, and versions change with every optimizer step).
    // The step count where it is a plain number: a symbolic one (torch.compile, dynamic shapes) is
    // taken as more than one, not guarded on.
    const c10::SymInt sym_steps = batch_sizes.has_value() ? batch_sizes->sym_size(0) : input.sym_size(0);
    const int64_t steps = sym_steps.maybe_as_int().value_or(2);
    const auto read = read_by_backward(input, hx, weights, num_layers, bidirectional, has_biases, steps);
    variable_list saved{batch_sizes.value_or(Tensor()), dropout_mask.value_or(Tensor()), output, reserve, input, hx};
    saved.insert(saved.end(), weights.begin(), weights.end());
    ctx->saved_data.reserve(weights.size() + 4);
    int64_t versions = 0;
    for (size_t i = 0; i + 4 < saved.size(); ++i) {
      if (read[i]) continue;
      Tensor& t = saved[4 + i];
      versions += static_cast<int64_t>(t._version());
      if (i < 2 && !t.requires_grad()) {
        Tensor probe = at::empty({0}, t.options());
        torch::autograd::impl::set_version_counter(probe, torch::autograd::impl::version_counter(t));
        ctx->saved_data[unread_key('p', i)] = std::move(probe);
        t = t.variable_data();
      } else {
        ctx->saved_data[unread_key('u', i)] = t;
        t = Tensor();
      }
    }
    ctx->save_for_backward(saved);
    ctx->saved_data["config"] = std::vector<int64_t>{num_layers, bidirectional, relu, has_biases};
    ctx->saved_data["versions"] = versions;
    // No gradient is materialised for an output that did not reach the loss: backward takes
    // undefined gradients as zeros.
    ctx->set_materialize_grads(false);
    // On the CPU nn.RNN lets the caller modify its output in place before backward (torch.relu_(out),
    // in-place dropout): the caller gets a copy, the backward reads the saved original. CUDA keeps
    // cuDNN's contract instead: the output itself is saved, and an in-place change of it is a
    // version-counter error at backward, as with nn.RNN there.
    if (output.is_cpu()) output = output.clone();
    return {output, hy};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    const auto cfg = ctx->saved_data["config"].toIntVector();
    // input, hx, weights: the saved ones, and the unread ones where nothing was saved
    std::vector<Tensor> args(s.begin() + 4, s.end());
    // A differentiable backward (create_graph, or vmap over it) recomputes the forward from all of
    // them: there an unread argument changed in place is the error a saved one would give.
    const bool reads_all = at::GradMode::is_enabled() || is_transformed(grads[0]) || is_transformed(grads[1]);
    int64_t versions = 0;
    for (size_t i = 0; i < args.size(); ++i) {
      // unread: kept itself (saved as undefined), or an alias with a probe (input, hx)
      if (!args[i].defined()) {
        args[i] = ctx->saved_data[unread_key('u', i)].toTensor();
        versions += reads_all ? static_cast<int64_t>(args[i]._version()) : 0;
      } else if (reads_all && i < 2) {
        const auto probe = ctx->saved_data.find(unread_key('p', i));
        if (probe != ctx->saved_data.end()) versions += static_cast<int64_t>(probe->second.toTensor()._version());
      }
    }
    TORCH_CHECK(!reads_all || versions == ctx->saved_data["versions"].toInt(),
                "one of the variables needed for gradient computation has been modified by an inplace operation: "
                "fused_rnn::rnn_forward's input, hx or a weight changed in place after the forward (a differentiable "
                "backward, create_graph=True, recomputes the forward from every one of them)");
    const Tensor &input = args[0], &hx = args[1], &output = s[2], &reserve = s[3];
    const std::vector<Tensor> weights(args.begin() + 2, args.end());
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
          rnn_backward_composite_kernel(grad_output, grad_hy, input, hx, weights, opt(s[0]), opt(s[1]), output,
                                        reserve, num_layers, bidirectional, relu, has_biases);
    } else {
      // rnn_backward's own autograd kernel takes the differentiable route under create_graph.
      std::tie(grad_input, grad_hx, grad_weights) =
          rnn_backward_op().call(grad_output, grad_hy, input, hx, weights, opt(s[0]), opt(s[1]), output, reserve,
                                 num_layers, bidirectional, relu, has_biases);
    }
    // One gradient per forward input, TensorList flattened: input, hx, weights..., then the
    // non-differentiable batch_sizes, dropout_mask, num_layers, bidirectional, relu, has_biases,
    // reserve_out.
    variable_list result{grad_input, grad_hx};
    result.insert(result.end(), grad_weights.begin(), grad_weights.end());
    result.resize(result.size() + 7);
    return result;
  }
};

namespace {

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
  Tensor reserve;
  auto r = RnnBackward::apply(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional, relu,
                             has_biases, &reserve);
  return {r[0], r[1], reserve};
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
