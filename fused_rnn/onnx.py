"""ONNX export of fused_rnn.RNN as ONNX's own RNN operator (https://onnx.ai/onnx/operators/onnx__RNN.html).

While torch.onnx.export(..., dynamo=True) (the default since torch 2.9) traces the model,
fused_rnn.functional.rnn calls rnn_symbolic below instead of the fused C++ op: one ONNX RNN node per
layer, written with torch.onnx.ops.symbolic_multi_out (torch >= 2.8), so a plain

    torch.onnx.export(model, (x,), "model.onnx")

needs no custom_translation_table, no extra import and no onnxscript code of ours. (torch's own
dynamo export of nn.RNN unrolls the loop into MatMul/Tanh nodes; only the legacy TorchScript
exporter emits RNN nodes for it.) The legacy exporter (dynamo=False) is not supported.

Shapes (T steps, B batch, I input, H hidden, D directions, L layers), ONNX layout 0:
    ONNX RNN: X [T, B, I], W [D, H, I], R [D, H, H], B [D, 2H] (= [b_ih, b_hh]), initial_h [D, B, H]
              -> Y [T, D, B, H], Y_h [D, B, H]
    ours:     output [T, B, D*H] = Y.permute(0, 2, 1, 3).reshape(T, B, D*H); h_n [L*D, B, H]
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor


def exporting() -> bool:
    """True while torch.onnx.export's torch.export-based exporter traces the model. The legacy
    TorchScript exporter also sets is_in_onnx_export(), but traces with torch.jit: excluded.
    torch.compiler.is_compiling() (true while torch.export traces) is checked first: it is cheap."""
    return (torch.compiler.is_compiling() and torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing()
            and hasattr(torch.onnx, "ops") and hasattr(torch.onnx.ops, "symbolic_multi_out"))


def rnn_symbolic(input: Tensor, hx: Tensor, weights: List[Tensor], num_layers: int, bidirectional: bool,
                 relu: bool, has_biases: bool, dropout_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """input [T, B, I], hx [L*D, B, H], weights in nn.RNN's order -> output [T, B, D*H], h_n [L*D, B, H],
    as ONNX RNN nodes in the exported graph (dropout_mask [L-1, T, B, D*H] multiplies between layers)."""
    if input.dtype == torch.bfloat16:
        raise TypeError("ONNX's RNN operator has no bfloat16 version: export the model in float32 or float16")
    D = 2 if bidirectional else 1
    per = 4 if has_biases else 2
    T, B = input.shape[0], input.shape[1]
    H = hx.shape[2]
    attrs = {"hidden_size": H, "direction": "bidirectional" if bidirectional else "forward",
             "activations": ["Relu" if relu else "Tanh"] * D}
    x = input
    h_n = []
    for layer in range(num_layers):
        ws = [weights[(layer * D + d) * per:(layer * D + d + 1) * per] for d in range(D)]
        w = torch.stack([w_d[0] for w_d in ws])                                          # [D, H, I_l]
        r = torch.stack([w_d[1] for w_d in ws])                                          # [D, H, H]
        b = torch.stack([torch.cat([w_d[2], w_d[3]]) for w_d in ws]) if has_biases else None  # [D, 2H]
        h0 = hx[layer * D:(layer + 1) * D]                                               # [D, B, H]
        y, y_h = torch.onnx.ops.symbolic_multi_out(
            "RNN", [x, w, r, b, None, h0], attrs, dtypes=[x.dtype, x.dtype], shapes=[[T, D, B, H], [D, B, H]])
        x = y.permute(0, 2, 1, 3).reshape(T, B, D * H)
        if dropout_mask is not None and layer < num_layers - 1:
            x = x * dropout_mask[layer]
        h_n.append(y_h)
    return x, torch.cat(h_n)
