"""fused_rnn.RNN: torch.nn.RNN's constructor, parameters and forward contract on the fused ops.

Not a subclass of nn.RNN on purpose: torch.compile graph-breaks on nn.RNN and its subclasses, while
this module compiles with fullgraph=True.
"""
import math
import numbers
import warnings
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .functional import rnn

_CONVERTED_ATTRS = ("input_size", "hidden_size", "num_layers", "nonlinearity", "bias", "batch_first", "dropout",
                    "bidirectional")


def _autocast_enabled(device_type: str) -> bool:
    # _is_any_autocast_enabled first: cheap, and this runs on every forward. torch.is_autocast_enabled
    # raises for device types without autocast (meta: nn.RNN runs there).
    return (torch._C._is_any_autocast_enabled() and device_type != "meta"
            and torch.is_autocast_enabled(device_type))


class RNN(nn.Module):
    r"""Elman RNN, h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), act = tanh or relu.

    Same constructor, attributes, parameters (names, shapes, order, initialisation), state_dict and
    forward contract as :class:`torch.nn.RNN`; the recurrence of each layer runs as one fused kernel.

    Args: input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, device=None, dtype=None (nonlinearity may be the 4th positional).

    Shapes (T steps, B batch, I input_size, H hidden_size, D = 2 if bidirectional else 1, L num_layers):
        input  [T, B, I] ([B, T, I] if batch_first), [T, I] unbatched, or a PackedSequence
        hx     [L*D, B, H] ([L*D, H] unbatched), zeros when omitted
        output [T, B, D*H] ([B, T, D*H] if batch_first), [T, D*H] unbatched, or a PackedSequence
        h_n    [L*D, B, H] ([L*D, H] unbatched)
    """

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            self_nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self_nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self_nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif self_nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(f"Unknown nonlinearity '{self_nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__()
        self.nonlinearity = self_nonlinearity
        self._init(mode, *args, **kwargs)

    def _init(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
              batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
              dtype=None) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        if not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1 or isinstance(dropout, bool):
            raise ValueError("dropout should be a number in range [0, 1] representing the probability of an "
                             "element being zeroed")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                          f"expects num_layers greater than 1, but got dropout={dropout} and "
                          f"num_layers={num_layers}", stacklevel=3)
        if not isinstance(bias, bool):
            raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
        if not isinstance(batch_first, bool):
            raise TypeError(f"batch_first should be of type bool, got: {type(batch_first).__name__}")
        if not isinstance(input_size, int):
            raise TypeError(f"input_size should be of type int, got: {type(input_size).__name__}")
        if input_size <= 0:
            raise ValueError("input_size must be greater than zero")
        if not isinstance(hidden_size, int):
            raise TypeError(f"hidden_size should be of type int, got: {type(hidden_size).__name__}")
        if hidden_size <= 0:
            raise ValueError("hidden_size must be greater than zero")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")

        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = 0
        num_directions = 2 if bidirectional else 1
        self._flat_weights_names: List[str] = []
        self._all_weights: List[List[str]] = []
        for layer in range(num_layers):
            for direction in range(num_directions):
                layer_input_size = input_size if layer == 0 else hidden_size * num_directions
                suffix = "_reverse" if direction == 1 else ""
                shapes = [(hidden_size, layer_input_size), (hidden_size, hidden_size)]
                names = [f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}"]
                if bias:
                    shapes += [(hidden_size,), (hidden_size,)]
                    names += [f"bias_ih_l{layer}{suffix}", f"bias_hh_l{layer}{suffix}"]
                for name, shape in zip(names, shapes):
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory_kwargs)))
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(-1/sqrt(H), 1/sqrt(H)) for every parameter, drawn in nn.RNN's order (same seed, same weights)."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    @property
    def _flat_weights(self) -> List[Tensor]:
        # Looked up on every call, so torch.func.functional_call and parameter reassignment just work.
        # (_parameters directly: nn.Module.__getattr__ is the slow path, and tiny RNNs are overhead-bound.)
        params = self._parameters
        return [params[name] for name in self._flat_weights_names]

    @property
    def all_weights(self) -> List[List[nn.Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def flatten_parameters(self) -> None:
        """No-op kept for nn.RNN compatibility: the fused kernels read the parameters where they are."""

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        return s.format(**self.__dict__)

    # ---- forward -------------------------------------------------------------------------------

    def _check_forward_args(self, input: Tensor, hx: Optional[Tensor], batch_sizes: Optional[Tensor],
                            weights: List[Tensor]) -> None:
        """nn.RNN's checks, with its exception types and messages (hx None: the zeros made later fit)."""
        w0 = weights[0]
        if input.dtype != w0.dtype and not _autocast_enabled(input.device.type):
            raise ValueError(f"RNN input dtype ({input.dtype}) does not match weight dtype ({w0.dtype}). "
                             f"Convert input: input.to({w0.dtype}), or convert model: model.to({input.dtype})")
        expected_input_dim = 2 if batch_sizes is not None else 3
        if input.dim() != expected_input_dim:
            raise RuntimeError(f"input must have {expected_input_dim} dimensions, got {input.dim()}")
        if self.input_size != input.size(-1):
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                               f"got {input.size(-1)}")
        device = input.device
        if hx is not None:
            if batch_sizes is not None:
                mini_batch = int(batch_sizes[0])
            else:
                mini_batch = input.size(0) if self.batch_first else input.size(1)
            num_directions = 2 if self.bidirectional else 1
            expected_hidden_size = (self.num_layers * num_directions, mini_batch, self.hidden_size)
            if hx.size() != expected_hidden_size:
                raise RuntimeError(f"Expected hidden size {expected_hidden_size}, got {list(hx.size())}")
        if w0.device != device:
            raise RuntimeError("Input and parameter tensors are not at the same device, found input tensor at "
                               f"{device} and parameter tensor at {w0.device}")
        if hx is not None and hx.device != device:
            raise RuntimeError("Input and hidden tensors are not at the same device, found input tensor at "
                               f"{device} and hidden tensor at {hx.device}")

    def forward(self, input: Union[Tensor, PackedSequence], hx: Optional[Tensor] = None
                ) -> Tuple[Union[Tensor, PackedSequence], Tensor]:
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx)
        dim = input.dim()
        if dim == 3:
            if hx is not None and hx.dim() != 3:
                raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
            return self._run(input, hx, None)
        if dim != 2:
            raise ValueError(f"RNN: Expected input to be 2D or 3D, got {dim}D tensor instead")
        # Unbatched [T, I]: a batch of one, squeezed out again.
        batch_dim = 0 if self.batch_first else 1
        if hx is not None:
            if hx.dim() != 2:
                raise RuntimeError(f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor")
            hx = hx.unsqueeze(1)
        output, hy = self._run(input.unsqueeze(batch_dim), hx, None)
        return output.squeeze(batch_dim), hy.squeeze(1)

    def _forward_packed(self, input: PackedSequence, hx: Optional[Tensor]) -> Tuple[PackedSequence, Tensor]:
        data, batch_sizes, sorted_indices, unsorted_indices = input
        if hx is not None and sorted_indices is not None:
            hx = hx.index_select(1, sorted_indices)
        output, hy = self._run(data, hx, batch_sizes)
        if unsorted_indices is not None:
            hy = hy.index_select(1, unsorted_indices)
        return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), hy

    def _run(self, data: Tensor, hx: Optional[Tensor], batch_sizes: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """data [T, B, I] ([B, T, I] if batch_first) or packed [N, I]; hx [L*D, B, H] or None (zeros)."""
        weights = self._flat_weights
        self._check_forward_args(data, hx, batch_sizes, weights)
        if torch._C._is_any_autocast_enabled() and _autocast_enabled(data.device.type):
            # Like nn.RNN under autocast: run in the autocast dtype (float16 on CUDA by default).
            dt = torch.get_autocast_dtype(data.device.type)
            data, weights = data.to(dt), [w.to(dt) for w in weights]
            hx = None if hx is None else hx.to(dt)
        return rnn(data, hx, weights, num_layers=self.num_layers, nonlinearity=self.nonlinearity, bias=self.bias,
                   batch_first=self.batch_first and batch_sizes is None, dropout=self.dropout,
                   training=self.training, bidirectional=self.bidirectional, batch_sizes=batch_sizes)

    # ---- conversion to and from torch.nn.RNN -----------------------------------------------------

    @classmethod
    def from_torch(cls, module: nn.RNN) -> "RNN":
        """A fused_rnn.RNN that shares `module`'s Parameter objects (no copy: same device, dtype, and an
        optimizer built on `module` keeps working), with the same configuration and training mode."""
        return _convert(module, cls)

    def to_torch(self) -> nn.RNN:
        """The torch.nn.RNN twin of this module, sharing its Parameter objects."""
        return _convert(self, nn.RNN)


def _convert(src: nn.Module, cls):
    if not isinstance(src, (nn.RNN, RNN)):
        raise TypeError(f"expected a torch.nn.RNN or fused_rnn.RNN, got {type(src).__name__}")
    if getattr(src, "proj_size", 0):
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
    kwargs = {k: getattr(src, k) for k in _CONVERTED_ATTRS}
    w0 = getattr(src, src._flat_weights_names[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dropout-with-one-layer warning was given when src was built
        dst = cls(**kwargs, device="meta", dtype=w0.dtype)
    for name in dst._flat_weights_names:
        setattr(dst, name, getattr(src, name))
    if isinstance(dst, nn.RNN):
        dst._init_flat_weights()
    dst.train(src.training)
    return dst


def convert(model: nn.Module) -> nn.Module:
    """Replaces every torch.nn.RNN inside `model` (in place) by a fused_rnn.RNN sharing its parameters.
    Returns `model`, or the converted module if `model` itself is an nn.RNN."""
    if type(model) is nn.RNN:
        return RNN.from_torch(model)
    for name, child in model.named_children():
        if type(child) is nn.RNN:
            setattr(model, name, RNN.from_torch(child))
        else:
            convert(child)
    return model
