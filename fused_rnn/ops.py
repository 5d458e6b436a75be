"""Python side of the C++ ops: loads fused_rnn._C (which defines torch.ops.fused_rnn.* and their
autograd) and registers their fake (meta) kernels for torch.compile / torch.export.

The autograd is registered in C++ (csrc/autograd.cpp), so that a call costs no Python:
rnn_forward's backward is rnn_backward (under create_graph, the composite formulation).
fused_rnn.functional.RNNFunction is the same autograd as a Python torch.autograd.Function over
the same two ops.

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
_is_tracing = torch._C._is_tracing


def zeros_hx(input, weights, batch_sizes, num_layers, bidirectional):
    """The initial state nn.RNN uses when hx is omitted: zeros [L*D, B, H] like input (time-major
    [T, B, I], or packed data with batch_sizes; H from W_hh [H, H]). Under torch.jit.trace the batch
    stays a traced value (input.shape[1], batch_sizes[0]), as in nn.RNN, so that the trace runs at
    other batch sizes."""
    if batch_sizes is None:
        batch = input.shape[1]
    else:
        batch = batch_sizes[0] if _is_tracing() else int(batch_sizes[0])
    return input.new_zeros((num_layers * (2 if bidirectional else 1), batch, weights[1].shape[0]))


def rnn_forward_eager(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional, relu, has_biases):
    """rnn_forward for eager code (not while torch.compile / torch.export trace): through _C's direct
    entry (csrc/python_module.cpp: the same dispatch, without torch.ops' per-call argument matching),
    unless a __torch_function__ override or mode is there to see the call as the op.
    hx may be None (zeros): for unpacked input the entry creates them in C++, cheaper than here
    (but not under torch.jit.trace, which would record their sizes as constants)."""
    overridden = _has_torch_function((input, *weights) if hx is None else (input, hx, *weights))
    if hx is None and (overridden or batch_sizes is not None or _is_tracing()):
        hx = zeros_hx(input, weights, batch_sizes, num_layers, bidirectional)
    if overridden:
        return rnn_forward(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional, relu, has_biases)
    return _C.rnn_forward(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional, relu, has_biases)


def with_cuda() -> bool:
    return _C.with_cuda()


def _check_args(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional, has_biases,
                backward=None):
    """csrc/checks.cpp's canonical_batch_sizes + check_rnn_args (and check_rnn_backward_args when
    backward = (grad_output, grad_hy, output, reserve)) for the fake kernels, with the same messages in
    the same order. The dispatcher sends a call to the fake kernel as soon as one argument is on the
    meta device, so these checks are all that stands between a CPU input with one meta weight (or
    hx) and uninitialised CPU outputs; under torch.compile / torch.export they make the trace reject
    what eager rejects. Not checked: batch_sizes' values (and what follows from them: the packed row
    count, hx's batch), which a traced batch_sizes does not have."""
    def name(dtype):  # c10::ScalarType's name, as the C++ checks print a dtype
        return {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
                torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char",
                torch.uint8: "Byte", torch.bool: "Bool", torch.complex32: "ComplexHalf",
                torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble"}.get(
                    dtype, str(dtype).replace("torch.", ""))

    def check_shape(t, expected, message):
        # torch._check per dimension: symbolic sizes under torch.compile become guards or runtime
        # asserts instead of being specialised.
        if t.dim() != len(expected):
            raise RuntimeError(message())
        for size, want in zip(t.shape, expected):
            torch._check(size == want, message)

    L, D, x = num_layers, 2 if bidirectional else 1, input
    if batch_sizes is not None:
        bs = batch_sizes
        if bs.device.type != "cpu" or bs.dtype != torch.int64 or bs.dim() != 1:
            raise RuntimeError("batch_sizes must be a 1-D CPU int64 tensor (PackedSequence.batch_sizes)")
        torch._check(bs.shape[0] > 0, lambda: "Expected sequence length to be larger than 0 in RNN")
    if L <= 0:
        raise RuntimeError(f"num_layers must be greater than zero, got {L}")
    if not x.is_floating_point():
        raise RuntimeError(f"input must be a floating point tensor, got {name(x.dtype)}")
    if batch_sizes is not None:
        if x.dim() != 2:
            raise RuntimeError(f"packed input must have 2 dimensions [N, I], got {x.dim()}")
    else:
        if x.dim() != 3:
            raise RuntimeError(f"input must have 3 dimensions [T, B, I], got {x.dim()}")
        torch._check(x.shape[0] > 0, lambda: "Expected sequence length to be larger than 0 in RNN")
    if hx.dim() != 3:
        raise RuntimeError(f"hx must have 3 dimensions [L*D, B, H], got {hx.dim()}")
    H = hx.shape[2]
    hx_shape = [L * D, hx.shape[1] if batch_sizes is not None else x.shape[1], H]
    check_shape(hx, hx_shape, lambda: f"Expected hidden size {hx_shape}, got {list(hx.shape)}")
    per = 4 if has_biases else 2
    if len(weights) != L * D * per:
        raise RuntimeError(f"expected {L * D * per} weight tensors for num_layers={L}, "
                           f"bidirectional={int(bidirectional)}, bias={int(has_biases)}, got {len(weights)}")

    def same(t, what):
        if t.device != x.device:
            raise RuntimeError("Input and parameter tensors are not at the same device, found input tensor at "
                               f"{x.device} and {what} at {t.device}")
        if t.dtype != x.dtype:
            raise RuntimeError(f"{what} has dtype {name(t.dtype)} but input has dtype {name(x.dtype)}")

    same(hx, "hx")
    for layer in range(L):
        in_l = x.shape[-1] if layer == 0 else D * H
        for direction in range(D):
            base = (layer * D + direction) * per
            for w, shape in enumerate(([H, in_l], [H, H], [H], [H])[:per]):
                t = weights[base + w]
                same(t, "a parameter tensor")
                check_shape(t, shape, lambda i=base + w, l=layer, d=direction, e=shape, t=t: (
                    f"weight {i} (layer {l}, direction {d}) must have shape {list(e)}, got {list(t.shape)}"))
    if dropout_mask is not None:
        m_shape = [L - 1, *x.shape[:-1], D * H]
        same(dropout_mask, "dropout_mask")
        check_shape(dropout_mask, m_shape,
                    lambda: f"dropout_mask must have shape {m_shape}, got {list(dropout_mask.shape)}")
    if backward is None:
        return
    grad_output, grad_hy, output, reserve = backward
    out_shape = [*x.shape[:-1], D * H]
    check_shape(output, out_shape, lambda: f"output must have shape {out_shape}, got {list(output.shape)}")
    reserve_shape = [L - 1, *out_shape]
    check_shape(reserve, reserve_shape, lambda: f"reserve must have shape {reserve_shape}, got {list(reserve.shape)}")
    check_shape(grad_output, list(output.shape),
                lambda: f"grad_output must have shape {list(output.shape)}, got {list(grad_output.shape)}")
    check_shape(grad_hy, list(hx.shape), lambda: f"grad_hy must have shape {list(hx.shape)}, got {list(grad_hy.shape)}")
    for t in backward:
        if t.device != x.device or t.dtype != x.dtype:
            raise RuntimeError(f"rnn_backward: gradients, output and reserve must have input's device and dtype "
                               f"({x.device}, {name(x.dtype)}), got {t.device}, {name(t.dtype)}")


@torch.library.register_fake("fused_rnn::rnn_forward")
def _rnn_forward_fake(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional, relu, has_biases):
    _check_args(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional, has_biases)
    d = 2 if bidirectional else 1
    out_shape = (*input.shape[:-1], d * hx.shape[2])
    return input.new_empty(out_shape), hx.new_empty(hx.shape), input.new_empty((num_layers - 1, *out_shape))


@torch.library.register_fake("fused_rnn::rnn_backward")
def _rnn_backward_fake(grad_output, grad_hy, input, hx, weights, batch_sizes, dropout_mask, output, reserve,
                       num_layers, bidirectional, relu, has_biases):
    _check_args(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional, has_biases,
                backward=(grad_output, grad_hy, output, reserve))
    return input.new_empty(input.shape), hx.new_empty(hx.shape), [w.new_empty(w.shape) for w in weights]
