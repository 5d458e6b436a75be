"""fused_rnn.functional.rnn: the functional form of fused_rnn.RNN, and RNNFunction, the Python
torch.autograd.Function around the fused C++/CUDA ops.

Shapes: T steps, B batch, I input size, H hidden size, D = 2 if bidirectional else 1, L layers.
"""
import weakref
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
        config, weights = config_and_weights[:4], config_and_weights[4:]
        # As the C++ node: the arguments the backward reads are saved (version-checked); the others that
        # do not require grad as .data, an alias with a version counter of its own, with a weak
        # reference to the original and its version for the check of a differentiable backward, which
        # reads them all; those that require grad (whose autograd history that backward must reach)
        # themselves, outside save_for_backward.
        args = [input, hx, *weights]
        steps = batch_sizes.shape[0] if batch_sizes is not None else input.shape[0]
        read = read_by_backward(input, hx, weights, config[0], config[1], config[3],
                                steps if isinstance(steps, int) else 2)
        ctx.unread = [(i, (lambda t=t: t) if t.requires_grad else weakref.ref(t), t._version)
                      for i, (t, r) in enumerate(zip(args, read)) if not r]
        ctx.save_for_backward(batch_sizes, dropout_mask, saved_out, reserve,
                              *[t if r else None if t.requires_grad else t.data for t, r in zip(args, read)])
        ctx.config = config
        ctx.mark_non_differentiable(reserve)

    @staticmethod
    def backward(ctx, grad_output, grad_hy, grad_reserve):
        batch_sizes, dropout_mask, output, reserve, *args = ctx.saved_tensors
        for i, ref, version in ctx.unread:
            t = ref()  # None: the original is gone, and with it any later change of it
            if t is not None and t.requires_grad:
                args[i] = t
            if torch.is_grad_enabled() and t is not None and t._version != version:  # create_graph
                raise RuntimeError(
                    f"one of the variables needed for gradient computation has been modified by an inplace "
                    f"operation: [{t.type()} {list(t.shape)}] is at version {t._version}; expected version "
                    f"{version} instead. (fused_rnn: a differentiable backward, create_graph=True, recomputes "
                    f"the forward from every argument of fused_rnn::rnn_forward)")
        input, hx, *weights = args
        grad_input, grad_hx, grad_weights = ops.rnn_backward(grad_output, grad_hy, input, hx, weights, batch_sizes,
                                                             dropout_mask, output, reserve, *ctx.config)
        return (grad_input, grad_hx, None, None, None, None, None, None, *grad_weights)


def read_by_backward(input: Tensor, hx: Tensor, weights: Sequence[Tensor], num_layers: int, bidirectional: bool,
                     has_biases: bool, steps: int) -> List[bool]:
    """Which of input, hx, weights... the first-order backward reads, given which require grad (the
    rule and its derivation: csrc/autograd.cpp, read_by_backward): W_ih of a layer where its input's
    gradient is needed, W_hh of a layer whose backward runs (with one step, only for hx's gradient),
    the input where a layer-0 W_ih requires grad, hx where some W_hh does, never a bias."""
    D, per = (2 if bidirectional else 1), (4 if has_biases else 2)
    read = [False] * (2 + len(weights))
    below = input.requires_grad
    for layer in range(num_layers):
        cells = [weights[(layer * D + d) * per:(layer * D + d + 1) * per] for d in range(D)]
        in_layer = any(w.requires_grad for cell in cells for w in cell)
        for d in range(D):
            base = 2 + (layer * D + d) * per
            read[base] = below
            read[base + 1] = (steps > 1 and (below or any(w.requires_grad for w in cells[d]))) or hx.requires_grad
        below = below or in_layer or hx.requires_grad
    read[0] = any(weights[d * per].requires_grad for d in range(D))
    read[1] = any(weights[(i * per) + 1].requires_grad for i in range(num_layers * D))
    return read


def dropout_mask(shape: List[int], p: float, like: Tensor) -> Tensor:
    """Inverted-dropout mask: 0 with probability p, else 1/(1-p) (all zeros for p == 1). Also compiled
    by TorchScript, for the scripted forward (fused_rnn/scripting.py)."""
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
