"""Pure-PyTorch reference of the fused ops: the specification, step by step, used by the tests.

Same arguments as torch.ops.fused_rnn.rnn_forward (see ops.py), differentiable by autograd.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor


def rnn_reference(input: Tensor, hx: Tensor, weights: List[Tensor], batch_sizes: Optional[Tensor],
                  dropout_mask: Optional[Tensor], num_layers: int, bidirectional: bool, relu: bool,
                  has_biases: bool) -> Tuple[Tensor, Tensor]:
    """Returns (output, hy) like rnn_forward. input is [T, B, I], or packed [N, I] with batch_sizes [T]."""
    act = torch.relu if relu else torch.tanh
    D = 2 if bidirectional else 1
    per = 4 if has_biases else 2
    if batch_sizes is None:
        T, B = input.shape[0], input.shape[1]
        sizes = [B] * T
        steps = list(input.unbind(0))  # T x [B, I]
    else:
        sizes = [int(b) for b in batch_sizes]
        steps = list(input.split(sizes, 0))  # T x [batch_t, I]
    T = len(sizes)
    hy = []
    layer_in = steps
    for layer in range(num_layers):
        outs_per_dir = []
        for d in range(D):
            w = weights[(layer * D + d) * per:(layer * D + d + 1) * per]
            w_ih, w_hh = w[0], w[1]
            h_all = hx[layer * D + d]  # [B, H]: the running state of every sequence
            outs = [None] * T
            order = range(T) if d == 0 else range(T - 1, -1, -1)
            for t in order:
                n = sizes[t]
                pre = layer_in[t] @ w_ih.t() + h_all[:n] @ w_hh.t()
                if has_biases:
                    pre = pre + w[2] + w[3]
                h = act(pre)
                outs[t] = h
                h_all = torch.cat([h, h_all[n:]], 0)
            hy.append(h_all)
            outs_per_dir.append(outs)
        layer_out = [torch.cat([o[t] for o in outs_per_dir], -1) for t in range(T)]
        if dropout_mask is not None and layer < num_layers - 1:
            m = dropout_mask[layer]
            m_steps = m.unbind(0) if batch_sizes is None else m.split(sizes, 0)
            layer_in = [o * mt for o, mt in zip(layer_out, m_steps)]
        else:
            layer_in = layer_out
    output = torch.stack(layer_out, 0) if batch_sizes is None else torch.cat(layer_out, 0)
    return output, torch.stack(hy, 0)
