"""Python side of the C++ ops: loads fused_rnn._C (which defines torch.ops.fused_rnn.* and their
autograd), registers their fake (meta) kernels for torch.compile / torch.export, and holds the
backward helpers of functional.RNNFunction.

Shapes (T steps, B batch, I input, H hidden, D directions, L layers, N packed rows):
    rnn_forward(input [T, B, I] | [N, I], hx [L*D, B, H], weights, batch_sizes [T] | None,
                dropout_mask [L-1, *input.shape[:-1], D*H] | None, num_layers, bidirectional, relu,
                has_biases) -> (output [*input.shape[:-1], D*H], hy [L*D, B, H],
                                reserve [L-1, *input.shape[:-1], D*H])
    rnn_backward(grad_output, grad_hy, input, hx, weights, batch_sizes, dropout_mask, output,
                 reserve, num_layers, bidirectional, relu, has_biases)
                -> (grad_input, grad_hx, grad_weights)
"""
import torch

from . import _C

rnn_forward = torch.ops.fused_rnn.rnn_forward
rnn_backward = torch.ops.fused_rnn.rnn_backward
_has_torch_function = torch._C._has_torch_function


def zeros_hx(input, weights, batch_sizes, num_layers, bidirectional):
    """The initial state nn.RNN uses when hx is omitted: zeros [L*D, B, H] like input (time-major
    [T, B, I], or packed data with batch_sizes; H from W_hh [H, H])."""
    batch = int(batch_sizes[0]) if batch_sizes is not None else input.shape[1]
    return input.new_zeros((num_layers * (2 if bidirectional else 1), batch, weights[1].shape[0]))


def rnn_forward_eager(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional, relu, has_biases):
    """rnn_forward for eager code (not while torch.compile / torch.export trace): through _C's direct
    entry (csrc/python_module.cpp: the same dispatch, without torch.ops' per-call argument matching,
    ~8 µs), unless a __torch_function__ override or mode is there to see the call as the op.
    hx may be None (zeros): for unpacked input the entry creates them in C++ (~3 µs less than here)."""
    overridden = _has_torch_function((input, *weights) if hx is None else (input, hx, *weights))
    if hx is None and (overridden or batch_sizes is not None):
        hx = zeros_hx(input, weights, batch_sizes, num_layers, bidirectional)
    if overridden:
        return rnn_forward(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional, relu, has_biases)
    return _C.rnn_forward(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional, relu, has_biases)


def with_cuda() -> bool:
    return _C.with_cuda()


@torch.library.register_fake("fused_rnn::rnn_forward")
def _rnn_forward_fake(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional, relu, has_biases):
    d = 2 if bidirectional else 1
    out_shape = (*input.shape[:-1], d * hx.shape[2])
    return input.new_empty(out_shape), hx.new_empty(hx.shape), input.new_empty((num_layers - 1, *out_shape))


@torch.library.register_fake("fused_rnn::rnn_backward")
def _rnn_backward_fake(grad_output, grad_hy, input, hx, weights, batch_sizes, dropout_mask, output, reserve,
                       num_layers, bidirectional, relu, has_biases):
    return input.new_empty(input.shape), hx.new_empty(hx.shape), [w.new_empty(w.shape) for w in weights]


# Autograd of both ops is registered in C++ (csrc/autograd.cpp): a Python registration would add
# ~100 µs to every call. rnn_forward's backward is rnn_backward; differentiating rnn_backward
# (double backward) raises. fused_rnn.functional.RNNFunction, the same autograd as a Python
# torch.autograd.Function, uses the two helpers below.


def save_for_backward(ctx, input, hx, weights, batch_sizes, dropout_mask, output, reserve, num_layers,
                      bidirectional, relu, has_biases):
    """What the backward needs."""
    ctx.save_for_backward(input, hx, batch_sizes, dropout_mask, output, reserve, *weights)
    ctx.config = (num_layers, bidirectional, relu, has_biases)


def backward(ctx, grad_output, grad_hy):
    """Returns (grad_input, grad_hx, grad_weights) from the saved forward. A gradient that autograd
    did not materialise (an unused output) counts as zeros."""
    input, hx, batch_sizes, dropout_mask, output, reserve, *weights = ctx.saved_tensors
    if grad_output is None:
        grad_output = torch.zeros_like(output)
    if grad_hy is None:
        grad_hy = torch.zeros_like(hx)
    return rnn_backward(grad_output, grad_hy, input, hx, weights, batch_sizes, dropout_mask, output, reserve,
                        *ctx.config)
