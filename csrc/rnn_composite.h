// The RNN as a composition of differentiable ATen ops, step by step: the exact route for what the
// fused kernels cannot serve, because autograd (and functorch) see them as opaque nodes with one
// hand-written first-order backward:
//   - functorch transforms (torch.func.grad, vjp, jacrev, jvp, jacfwd, hessian, vmap) and
//     forward-mode AD (dual tensors): the forward runs here, so every transform sees plain ATen ops;
//   - a backward that must itself be differentiable (create_graph=True: double backward,
//     gradgradcheck, Hessians) or that runs under vmap (batched gradients: is_grads_batched,
//     gradcheck's check_batched_grad, jacobian(vectorize=True)): the gradients are taken through a
//     recomputation of this forward.
// Cost: one small matmul, add and activation per (layer, direction, step) as separate ATen calls,
// plus autograd's bookkeeping; several times the fused kernels' time. The fused path stays the
// default for everything else.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>
#include <vector>

#include "checks.h"

namespace fused_rnn {

// Same contract as rnn_forward_stack (rnn_stack.h): (output, hy, reserve), built from ATen ops that
// autograd records. a.batch_sizes must have been through canonical_batch_sizes and a checked.
std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_forward_composite(const RnnArgs& a);

// rnn_backward's result (grad_input, grad_hx, grad_weights), as the gradients of a recomputation by
// rnn_forward_composite. create_graph: record the computation, so the gradients are differentiable
// with respect to the forward's inputs and to grad_output / grad_hy.
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> rnn_backward_by_recompute(
    const RnnArgs& a, const at::Tensor& grad_output, const at::Tensor& grad_hy, bool create_graph);

}  // namespace fused_rnn
