"""fused_rnn.functional.rnn: the functional form of fused_rnn.RNN, and RNNFunction, the Python
torch.autograd.Function around the fused C++/CUDA ops.

Shapes: T steps, B batch, I input size, H hidden size, D = 2 if bidirectional else 1, L layers.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import onnx as _onnx
from . import ops


class RNNFunction(torch.autograd.Function):
    """The ops' autograd (csrc/autograd.cpp) as a Python torch.autograd.Function, for code that wants
    one to compose or subclass: the forward is rnn_forward, the backward rnn_backward, and what is
    saved in between is what rnn_backward takes, the forward's arguments and results. rnn() and
    fused_rnn.RNN call the op directly, which builds the same node without Python on the call path.

    apply(input, hx, batch_sizes, dropout_mask, num_layers, bidirectional, relu, has_biases, *weights)
    -> (output, hy, reserve); reserve (the inner layers' outputs) is not differentiable.
    Double backward works: under create_graph=True rnn_backward's autograd kernel computes
    differentiable gradients through the composite formulation (csrc/rnn_composite.h).
    functorch transforms need the op itself (fused_rnn.rnn or fused_rnn.RNN), not this Function.
    """

    @staticmethod
    def forward(input, hx, batch_sizes, dropout_mask, num_layers, bidirectional, relu, has_biases, *weights):
        return ops.rnn_forward(input, hx, list(weights), batch_sizes, dropout_mask, num_layers, bidirectional, relu,
                               has_biases)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, hx, batch_sizes, dropout_mask, *config_and_weights = inputs
        out, _, reserve = output
        # On the CPU nn.RNN lets the caller change its output in place before backward: the backward
        # reads a copy, as the C++ node's does.
        saved_out = out.clone() if out.device.type == "cpu" else out
        ctx.save_for_backward(input, hx, batch_sizes, dropout_mask, saved_out, reserve, *config_and_weights[4:])
        ctx.config = config_and_weights[:4]
        ctx.mark_non_differentiable(reserve)

    @staticmethod
    def backward(ctx, grad_output, grad_hy, grad_reserve):
        input, hx, batch_sizes, dropout_mask, output, reserve, *weights = ctx.saved_tensors
        grad_input, grad_hx, grad_weights = ops.rnn_backward(grad_output, grad_hy, input, hx, weights, batch_sizes,
                                                             dropout_mask, output, reserve, *ctx.config)
        return (grad_input, grad_hx, None, None, None, None, None, None, *grad_weights)


def dropout_mask(shape: Sequence[int], p: float, like: Tensor) -> Tensor:
    """Inverted-dropout mask: 0 with probability p, else 1/(1-p) (all zeros for p == 1)."""
    if p >= 1:
        return like.new_zeros(shape)
    return like.new_empty(shape).bernoulli_(1 - p).div_(1 - p)


def rnn(
    input: Tensor,
    hx: Optional[Tensor],
    weights: List[Tensor],
    *,
    num_layers: int = 1,
    nonlinearity: str = "tanh",
    bias: bool = True,
    batch_first: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    bidirectional: bool = False,
    batch_sizes: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Elman RNN over a whole sequence, h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh).

    input: [T, B, I] ([B, T, I] if batch_first), or packed data [N, I] with batch_sizes [T] (CPU int64)
    hx: [L*D, B, H], or None for zeros; weights: nn.RNN's flat weight list (w_ih, w_hh[, b_ih, b_hh]
    per layer and direction)
    Returns output [T, B, D*H] ([B, T, D*H] if batch_first; [N, D*H] when packed) and h_n [L*D, B, H].
    Dropout (p = dropout) applies to the outputs of all layers but the last, when training.
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    relu = nonlinearity == "relu"
    bidirectional, bias = bool(bidirectional), bool(bias)  # nn.RNN takes any truthy value, the op's schema bools
    if batch_first and batch_sizes is None:
        input = input.transpose(0, 1)
    mask = None
    if training and dropout > 0 and num_layers > 1:
        d = 2 if bidirectional else 1
        mask = dropout_mask((num_layers - 1, *input.shape[:-1], d * weights[1].shape[0]), dropout, input)
    # The op is differentiable through its C++ autograd kernel (csrc/autograd.cpp, a
    # torch::autograd::Function): the same node as RNNFunction.apply, without its Python cost.
    if torch.compiler.is_compiling():
        if hx is None:
            hx = ops.zeros_hx(input, weights, batch_sizes, num_layers, bidirectional)
        if batch_sizes is None and _onnx.exporting():  # torch.onnx.export: ONNX's RNN operator, see fused_rnn/onnx.py
            output, hy = _onnx.rnn_symbolic(input, hx, weights, num_layers, bidirectional, relu, bias, mask)
        else:
            output, hy, _ = ops.rnn_forward(input, hx, weights, batch_sizes, mask, num_layers, bidirectional, relu,
                                            bias)
    else:
        output, hy, _ = ops.rnn_forward_eager(input, hx, weights, batch_sizes, mask, num_layers, bidirectional, relu,
                                              bias)
    if batch_first and batch_sizes is None:
        output = output.transpose(0, 1)
    return output, hy
