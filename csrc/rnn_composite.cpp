// The RNN in differentiable ATen ops (rnn_composite.h): the route for functorch transforms,
// forward-mode AD, double backward and batched gradients. It follows fused_rnn/reference.py, the
// specification the tests hold both routes to.
#include "rnn_composite.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>  // at::AutoGradMode: torch 2.11's ATen.h does not reach it (2.14's does)
#include <c10/util/irange.h>
#include <torch/csrc/autograd/autograd.h>

namespace fused_rnn {

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_forward_composite(const RnnArgs& a) {
  const int64_t L = a.num_layers, D = a.bidirectional ? 2 : 1, B = a.hx.size(1);
  const int64_t per = weights_per_direction(a.has_biases);
  // The rows of each step, [batch_t, I] (step-major layout, recurrence.h).
  std::vector<int64_t> sizes;
  std::vector<at::Tensor> layer_in;
  if (a.batch_sizes) {
    const int64_t* p = a.batch_sizes->const_data_ptr<int64_t>();
    sizes.assign(p, p + a.batch_sizes->numel());
    layer_in = a.input.split_with_sizes(sizes, 0);
  } else {
    layer_in = a.input.unbind(0);
    sizes.assign(layer_in.size(), B);
  }
  const int64_t T = static_cast<int64_t>(sizes.size());
  auto steps_of = [&](const at::Tensor& t) {  // [N or T*B, ...] -> its T step slices
    return a.batch_sizes ? t.split_with_sizes(sizes, 0) : t.unbind(0);
  };
  auto join_steps = [&](const std::vector<at::Tensor>& steps) {
    return a.batch_sizes ? at::cat(steps, 0) : at::stack(steps, 0);
  };

  std::vector<at::Tensor> hy, reserve;
  at::Tensor output;
  for (const auto l : c10::irange(L)) {
    std::vector<std::vector<at::Tensor>> h_steps(D, std::vector<at::Tensor>(T));  // [d][t]: h_t [batch_t, H]
    for (const auto d : c10::irange(D)) {
      const at::Tensor* w = a.weights.data() + (l * D + d) * per;
      const at::Tensor w_ih_t = w[0].t(), w_hh_t = w[1].t();
      const at::Tensor bias = a.has_biases ? w[2] + w[3] : at::Tensor();
      at::Tensor h = a.hx[l * D + d];  // [B, H]: every sequence's state; rows past batch_t keep theirs
      for (const auto s : c10::irange(T)) {
        const int64_t t = d == 0 ? s : T - 1 - s, n = sizes[t];
        at::Tensor pre = at::mm(layer_in[t], w_ih_t) + at::mm(h.narrow(0, 0, n), w_hh_t);
        if (bias.defined()) pre = pre + bias;
        const at::Tensor h_t = a.relu ? at::relu(pre) : at::tanh(pre);
        h_steps[d][t] = h_t;
        h = n == B ? h_t : at::cat({h_t, h.narrow(0, n, B - n)}, 0);
      }
      hy.push_back(h);
    }
    std::vector<at::Tensor> layer_out(T);
    for (const auto t : c10::irange(T))
      layer_out[t] = D == 1 ? h_steps[0][t] : at::cat({h_steps[0][t], h_steps[1][t]}, 1);
    if (l == L - 1) {
      output = join_steps(layer_out);
      break;
    }
    reserve.push_back(join_steps(layer_out));
    if (a.dropout_mask) {
      const std::vector<at::Tensor> mask = steps_of((*a.dropout_mask)[l]);
      for (const auto t : c10::irange(T)) layer_out[t] = layer_out[t] * mask[t];
    }
    layer_in = std::move(layer_out);
  }
  std::vector<int64_t> reserve_shape(output.sizes().begin(), output.sizes().end());
  reserve_shape.insert(reserve_shape.begin(), 0);
  return {output, at::stack(hy, 0), L > 1 ? at::stack(reserve, 0) : output.new_empty(reserve_shape)};
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> rnn_backward_by_recompute(
    const RnnArgs& a, const at::Tensor& grad_output, const at::Tensor& grad_hy, bool create_graph) {
  at::AutoGradMode grad_mode(true);
  // A fresh differentiable alias per argument position, so that a tensor passed twice (tied
  // weights) gets each position's own partial gradient, as from the fused backward. Under
  // create_graph a tensor that requires grad is aliased by a view, which keeps the gradient's
  // dependence on it in the graph.
  auto alias = [&](const at::Tensor& t) {
    return create_graph && t.requires_grad() ? t.view_as(t) : t.detach().requires_grad_(true);
  };
  const at::Tensor x = alias(a.input), h = alias(a.hx);
  std::vector<at::Tensor> w;
  w.reserve(a.weights.size());
  for (const at::Tensor& t : a.weights) w.push_back(alias(t));
  const RnnArgs r{x, h, w, a.batch_sizes, a.dropout_mask, a.num_layers, a.bidirectional, a.relu, a.has_biases};
  const auto recomputed = rnn_forward_composite(r);
  const at::Tensor &output = std::get<0>(recomputed), &hy = std::get<1>(recomputed);

  torch::autograd::variable_list inputs{x, h};
  inputs.insert(inputs.end(), w.begin(), w.end());
  torch::autograd::variable_list grads = torch::autograd::grad({output, hy}, inputs, {grad_output, grad_hy},
                                                               /*retain_graph=*/std::nullopt, create_graph,
                                                               /*allow_unused=*/true);
  for (const auto i : c10::irange(grads.size()))
    if (!grads[i].defined()) grads[i] = at::zeros_like(inputs[i]);
  return {grads[0], grads[1], std::vector<at::Tensor>(grads.begin() + 2, grads.end())};
}

}  // namespace fused_rnn
