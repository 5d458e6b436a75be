"""TorchScript for fused_rnn.RNN: what torch.jit.script compiles of it.

fused_rnn.RNN's eager forward is Python that TorchScript cannot compile (it dispatches on the input's
type, reads weights that may be parametrized, catches the op's errors to re-raise them as nn.RNN
would). So fused_rnn.RNN.forward branches on torch.jit.is_scripting(): compiled by TorchScript it is
ScriptedForward._script_forward below, which calls the fused op directly on the weights that
prepare_scriptable (called by torch.jit.script through the module's __prepare_scriptable__) lists
in an attribute; in eager code it is the Python forward. The module itself is what gets scripted
(torch.jit.script writes what __prepare_scriptable__ returns back into the parent model, so it must
be the module itself), with its parameters, names and hooks (TorchScript refuses hooks it cannot compile, such as the
hook-based torch.nn.utils.weight_norm's, as it does for nn.RNN). A model that holds fused_rnn.RNN
modules scripts as it would with nn.RNN.

Scripted, the module takes padded input ([T, B, I], [B, T, I] with batch_first, unbatched [T, I]) and
an optional hx, with nn.RNN's checks and messages for the input's dimensions, feature size and hx's
shape; dropout between layers in training, from the same generator. Not scripted: PackedSequence
input (a scripted nn.RNN takes it through overloads) and autocast. A scripted or traced model calls
the op fused_rnn::rnn_forward: `import fused_rnn` before torch.jit.load.

Shapes: T steps, B batch, I input size, H hidden size, D = 2 if bidirectional else 1, L layers.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .functional import dropout_mask


def prepare_scriptable(module: nn.Module) -> nn.Module:
    """fused_rnn.RNN.__prepare_scriptable__: lists the module's weights, as they are now, in the
    attribute _script_weights that the scripted forward runs on (as a scripted nn.RNN runs on its
    _flat_weights), and returns the module itself."""
    for name in module._flat_weights_names:
        if parametrize.is_parametrized(module, name):
            raise RuntimeError(f"torch.jit.script: fused_rnn.RNN's {name} is parametrized "
                               "(torch.nn.utils.parametrize), which TorchScript cannot compile")
    module._script_weights = module._get_flat_weights()
    return module


class ScriptedForward:
    """The forward TorchScript compiles for fused_rnn.RNN (a base class of it)."""

    _script_weights: List[Tensor]

    def _script_forward(self, input: Tensor, hx: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        D = 2 if self.bidirectional else 1
        batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if batched:
            if hx is not None and hx.dim() != 3:
                raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
        else:
            if input.dim() != 2:
                raise ValueError(f"RNN: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
            input = input.unsqueeze(batch_dim)
            if hx is not None:
                if hx.dim() != 2:
                    raise RuntimeError(
                        f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor")
                hx = hx.unsqueeze(1)
        if input.size(-1) != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                               f"got {input.size(-1)}")
        x = input.transpose(0, 1) if self.batch_first else input  # [T, B, I]
        B = x.size(1)
        if hx is None:
            h0 = torch.zeros(self.num_layers * D, B, self.hidden_size, dtype=x.dtype, device=x.device)
        else:
            h0 = hx
            if h0.size(0) != self.num_layers * D or h0.size(1) != B or h0.size(2) != self.hidden_size:
                raise RuntimeError(f"Expected hidden size ({self.num_layers * D}, {B}, {self.hidden_size}), "
                                   f"got {h0.size()}")
        mask: Optional[Tensor] = None
        if self.training and self.dropout > 0.0 and self.num_layers > 1:
            mask = dropout_mask([self.num_layers - 1, x.size(0), B, D * self.hidden_size], self.dropout, x)
        out, hy, _ = torch.ops.fused_rnn.rnn_forward(x, h0, self._script_weights, None, mask, self.num_layers,
                                                     self.bidirectional, self.mode != "RNN_TANH", self.bias)
        if self.batch_first:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(batch_dim)
            hy = hy.squeeze(1)
        return out, hy
