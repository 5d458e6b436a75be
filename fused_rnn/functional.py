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
    """One autograd node for the whole multi-layer RNN: forward and BPTT are single C++ ops.

    The Python form of the autograd the ops already carry in C++ (csrc/autograd.cpp), for code that
    wants a torch.autograd.Function to compose or subclass; rnn() and fused_rnn.RNN call the op
    directly, which builds the same node without Python on the call path.

    apply(input, hx, batch_sizes, dropout_mask, num_layers, bidirectional, relu, has_biases, *weights)
    -> (output, hy, reserve); reserve (the inner layers' outputs) is not differentiable.
    Double backward works: under create_graph=True rnn_backward's autograd kernel (csrc/autograd.cpp)
    computes differentiable gradients through the composite formulation (csrc/rnn_composite.h).
    functorch transforms need the op itself (fused_rnn.rnn or fused_rnn.RNN), not this Function.
    """

    @staticmethod
    def forward(input, hx, batch_sizes, dropout_mask, num_layers, bidirectional, relu, has_biases, *weights):
        return ops.rnn_forward(input, hx, list(weights), batch_sizes, dropout_mask, num_layers, bidirectional, relu,
                               has_biases)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, hx, batch_sizes, dropout_mask, num_layers, bidirectional, relu, has_biases, *weights = inputs
        out, _, reserve = output
        ops.save_for_backward(ctx, input, hx, weights, batch_sizes, dropout_mask, out, reserve, num_layers,
                              bidirectional, relu, has_biases)
        ctx.mark_non_differentiable(reserve)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_output, grad_hy, grad_reserve):
        grad_input, grad_hx, grad_weights = ops.backward(ctx, grad_output, grad_hy)
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
    # torch::autograd::Function): the same node as RNNFunction.apply, without its Python cost
    # (~150 µs per training step on a small RNN).
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
