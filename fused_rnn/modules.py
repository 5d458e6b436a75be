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
from torch.fx import Proxy as _FxProxy
from torch.jit import is_scripting as _is_scripting
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence
from torch.nn.utils.spectral_norm import SpectralNorm, SpectralNormLoadStateDictPreHook, SpectralNormStateDictHook
from torch.nn.utils.weight_norm import WeightNorm

from .functional import rnn
from .scripting import ScriptedForward, prepare_scriptable

# Constructor arguments copied by from_torch / to_torch; then mode and nonlinearity, as attributes.
_CONVERTED_ATTRS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional")


def _autocast_enabled(device_type: str) -> bool:
    # _is_any_autocast_enabled first: cheap, and this runs on every forward. torch.is_autocast_enabled
    # raises for device types without autocast (meta: nn.RNN runs there).
    return (torch._C._is_any_autocast_enabled() and device_type != "meta"
            and torch.is_autocast_enabled(device_type))


def _autocast_cast(t, dtype: torch.dtype):
    # What autocast does to nn.RNN's arguments: floating-point tensors other than float64 run in the
    # autocast dtype; float64, integer and complex tensors pass unchanged (and are then rejected, or run
    # in float64, as with nn.RNN).
    if isinstance(t, Tensor) and t.is_floating_point() and t.dtype != torch.float64:
        return t.to(dtype)
    return t


class RNN(ScriptedForward, nn.Module):
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
            nonlinearity_arg = args[3]
            args = args[:3] + args[4:]
        else:
            nonlinearity_arg = kwargs.pop("nonlinearity", "tanh")
        if nonlinearity_arg == "tanh":
            mode = "RNN_TANH"
        elif nonlinearity_arg == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(f"Unknown nonlinearity '{nonlinearity_arg}'. Select from 'tanh' or 'relu'.")
        super().__init__()
        self.nonlinearity = nonlinearity_arg
        self._init(mode, *args, **kwargs)

    def _init(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
              batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
              device=None, dtype=None) -> None:
        # nn.RNNBase.__init__'s signature, proj_size slot included, so that positional device/dtype land
        # where they land in nn.RNN; and its order: float(dropout) before the checks (its TypeError for
        # dropout=None, its ValueError for a non-numeric string).
        factory_kwargs = {"device": device, "dtype": dtype}
        self.dropout = float(dropout)
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
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        if proj_size > 0:
            # Only reachable positionally (the keyword is refused in __init__). nn.RNN builds a module
            # with a projection weight that its own forward cannot run; refuse it here instead (with
            # its TypeError where a non-integer size makes its torch.empty fail).
            if not isinstance(proj_size, int):
                raise TypeError(f"proj_size should be of type int, got: {type(proj_size).__name__}")
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")

        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
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

    # Python's own argument errors (unknown keyword, missing or surplus arguments) name the function:
    # this one stands for nn.RNNBase.__init__, so that they read exactly as nn.RNN's.
    _init.__qualname__ = "RNNBase.__init__"

    def reset_parameters(self) -> None:
        """U(-1/sqrt(H), 1/sqrt(H)) for every parameter, drawn in nn.RNN's order (same seed, same weights)."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    @property
    def _flat_weights(self) -> List[Tensor]:
        """The weights in nn.RNN's flat order, as forward uses them (nn.RNN's attribute of that name)."""
        return self._get_flat_weights()

    @_flat_weights.setter
    def _flat_weights(self, weights: List[Tensor]) -> None:
        # As in nn.RNN, whose forward runs on the list in this attribute: forward runs on the list
        # assigned here (some weight-drop recipes assign one) until the module's own weights change
        # (nn.RNN's forward compares them with those it last saw, _weights_have_changed, and rebuilds
        # the list: a weight assigned by name, torch.func.functional_call, register_parameter), the
        # module is moved (_apply) or _init_flat_weights is called.
        self.__dict__["_flat_weights_assigned"] = (weights, self._own_weights())

    def _own_weights(self) -> List[Optional[Tensor]]:
        params = self._parameters
        return [params[n] if n in params else getattr(self, n, None) for n in self._flat_weights_names]

    def _init_flat_weights(self) -> None:
        """nn.RNN's: the weights are the module's own again (drops a list assigned to _flat_weights)."""
        self.__dict__.pop("_flat_weights_assigned", None)

    def _apply(self, fn, recurse=True):
        ret = super()._apply(fn, recurse)
        self._init_flat_weights()  # nn.RNN._apply rebuilds its list from the (moved) weights
        return ret

    # TorchScript (fused_rnn/scripting.py): forward compiles to ScriptedForward._script_forward; these
    # properties are Python only.
    __jit_unused_properties__ = ["_flat_weights", "all_weights"]

    def __prepare_scriptable__(self) -> nn.Module:
        return prepare_scriptable(self)

    def __setstate__(self, state) -> None:
        # A copy (pickle, deepcopy, torch.load) runs on its own weights, as nn.RNN's does (its
        # __setstate__ rebuilds its _flat_weights): not on a list assigned to the original.
        state.pop("_flat_weights_assigned", None)
        super().__setstate__(state)

    # nn.RNNBase's public helpers, for code that calls them on an RNN: its own functions (they read
    # only the configuration attributes and _flat_weights, which this module has too).
    check_input = nn.RNNBase.check_input
    get_expected_hidden_size = nn.RNNBase.get_expected_hidden_size
    check_hidden_size = nn.RNNBase.check_hidden_size
    check_forward_args = nn.RNNBase.check_forward_args
    permute_hidden = nn.RNNBase.permute_hidden

    def _get_flat_weights(self) -> List[Tensor]:
        # Looked up on every call, so torch.func.functional_call and parameter reassignment just work.
        # (_parameters directly: nn.Module.__getattr__ is the slow path, and tiny RNNs are overhead-bound.)
        # A method, not only the property above: an AttributeError inside a property is swallowed by
        # nn.Module.__getattr__, which would then report the property itself as missing.
        assigned = self.__dict__.get("_flat_weights_assigned")
        if assigned is not None:
            weights, seen = assigned
            if all(a is b for a, b in zip(self._own_weights(), seen)):
                return list(weights)
            self._init_flat_weights()  # the module's weights changed since: its own again
        params = self._parameters
        try:
            return [params[name] for name in self._flat_weights_names]
        except KeyError:
            # A weight that is not a registered Parameter: a torch.nn.utils.parametrize parametrization
            # (a property computing it from parametrizations.<name>), the hook-based weight_norm /
            # spectral_norm (a plain tensor attribute the hook recomputes before each forward), or a
            # weight deleted and re-assigned as a plain tensor or a view. getattr finds each of them, as
            # nn.RNN's own lookup does; a deleted weight raises AttributeError naming it.
            return [params[name] if name in params else getattr(self, name) for name in self._flat_weights_names]

    @property
    def all_weights(self) -> List[List[Tensor]]:
        """The weights per (layer, direction), as forward sees them (nn.RNN's all_weights): the Parameter
        objects, or for a parametrized weight the tensor its parametrization computes (a new one on
        every access, differentiable back to the parametrization's own parameters)."""
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
        """nn.RNN's checks, with its exception types and messages (hx None: the zeros made later fit).
        The weights' devices are checked only once the op has refused the call (_raise_as_nn_rnn)."""
        if not isinstance(self.bidirectional, bool):  # bool has no subclasses; dynamo 2.11 misreads .__class__
            # nn.RNN's _VF call refuses a non-bool at forward (a TypeError listing its signatures)
            raise TypeError(f"bidirectional should be of type bool, got: {type(self.bidirectional).__name__}")
        w0 = weights[0]
        # Any autocast, not just input's device type's: nn.RNN's condition, so that the same calls get
        # this ValueError.
        if input.dtype != w0.dtype and not torch._C._is_any_autocast_enabled():
            raise ValueError(f"RNN input dtype ({input.dtype}) does not match weight dtype ({w0.dtype}). "
                             f"Convert input: input.to({w0.dtype}), or convert model: model.to({input.dtype})")
        expected_input_dim = 2 if batch_sizes is not None else 3
        if input.dim() != expected_input_dim:
            raise RuntimeError(f"input must have {expected_input_dim} dimensions, got {input.dim()}")
        if self.input_size != input.size(-1):
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                               f"got {input.size(-1)}")
        if batch_sizes is not None and (batch_sizes.dtype != torch.int64 or batch_sizes.dim() != 1):
            # A hand-made PackedSequence. nn.RNN fails later, with a message (and type) that depends on
            # where the wrong tensor first trips (torch.zeros, int(), its kernel); the op's message
            # says what is wrong.
            raise RuntimeError("batch_sizes must be a 1-D CPU int64 tensor (PackedSequence.batch_sizes)")
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
            if hx.device != device:
                raise RuntimeError("Input and hidden tensors are not at the same device, found input tensor at "
                                   f"{device} and hidden tensor at {hx.device}")

    def _raise_as_nn_rnn(self, input: Tensor, hx: Optional[Tensor], batch_sizes: Optional[Tensor],
                         weights: List[Tensor], error: Exception) -> None:
        """Called once the op (or the code before it) has refused a call with `error`: raises what nn.RNN
        raises before computing, in its order, if that is the cause (a weight that is not a tensor; a
        weight on another device than input), or a clearer message than the op's (a sparse tensor; a
        weight of the wrong shape, named), else returns. Checking every weight up front would add a
        per-weight cost to every call, which tiny (overhead-bound) RNNs feel; these causes always make
        the op raise (another device's kernel, or the fake kernel for meta tensors, checks the
        devices), so checking after that finds the same errors at no cost to calls that succeed."""
        for i, w in enumerate(weights):
            if not isinstance(w, Tensor):
                # nn.RNN's _VF.rnn_tanh / rnn_relu argument parsing: the weights are its argument 2
                # (argument 3 for packed input, after batch_sizes); a type's name as Python's C API
                # prints it (numpy.ndarray, but list, NoneType, or a Python class's own name).
                t = type(w)
                name = t.__name__ if t.__module__ == "builtins" or t.__flags__ & (1 << 9) else \
                    f"{t.__module__}.{t.__name__}"  # 1 << 9: Py_TPFLAGS_HEAPTYPE, a class defined in Python
                raise TypeError(f"expected Tensor as element {i} in argument {2 if batch_sizes is None else 3}, "
                                f"but got {name}") from None
        device = input.device
        for w in weights:
            if w.device != device:
                raise RuntimeError("Input and parameter tensors are not at the same device, found input tensor "
                                   f"at {device} and parameter tensor at {w.device}") from None
        for what, t in [("input", input), ("hx", hx)] + list(zip(self._flat_weights_names, weights)):
            if t is not None and t.layout != torch.strided:
                # The ops' dispatcher says NotImplementedError naming the backend; nn.RNN raises a
                # RuntimeError from the first op that meets the sparse input (it computes with a sparse
                # hx or weight, which the fused kernels, dense only, do not).
                raise RuntimeError(f"fused_rnn.RNN takes dense (strided) tensors only: {what} has layout "
                                   f"{t.layout}") from None
        if "must have shape" in str(error):
            # The op names a weight by its index, and infers H from W_hh of layer 0 (or hx): name the
            # parameter, with the shape this module's configuration gives it.
            D, H = (2 if self.bidirectional else 1), self.hidden_size
            for name, w in zip(self._flat_weights_names, weights):
                layer = int(name.split("_l")[1].split("_")[0])
                expected = ([H, self.input_size if layer == 0 else D * H] if name.startswith("weight_ih") else
                            [H, H] if name.startswith("weight_hh") else [H])
                if list(w.shape) != expected:
                    raise RuntimeError(f"{name} must have shape {expected}, got {list(w.shape)}") from None

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        # input: [T, B, I] ([B, T, I] if batch_first), unbatched [T, I], or a PackedSequence (then the
        # output is one too). The annotations are TorchScript's, which compiles the first branch only.
        if _is_scripting():
            return self._script_forward(input, hx)
        return self._eager_forward(input, hx)

    @torch.jit.unused
    def _eager_forward(self, input: Union[Tensor, PackedSequence], hx: Optional[Tensor] = None
                       ) -> Tuple[Union[Tensor, PackedSequence], Tensor]:
        if isinstance(input, _FxProxy):
            return self._fx_leaf(input, hx)
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

    def _fx_leaf(self, input: "_FxProxy", hx) -> "_FxProxy":
        """Under torch.fx.symbolic_trace: one call_module node for this module, the node FX records for
        an nn.RNN (a leaf module there, being in torch.nn), instead of tracing into forward, whose
        checks branch on the input's sizes. The GraphModule then calls this module as it is. (With
        forward hooks, a call of its forward method instead: see below.)"""
        tracer = input.tracer
        if getattr(tracer, "root", None) is self:
            # nn.RNN cannot be traced as the root either (FX traces a root's forward): say so plainly
            raise RuntimeError("torch.fx.symbolic_trace: fused_rnn.RNN is traced as a leaf module, like nn.RNN, "
                               "so it cannot be the root of the trace; trace a module that holds it")
        args = (input,) if hx is None else (input, hx)
        if self._has_forward_hooks():
            # FX traces into a module it does not take as a leaf through its __call__, so its hooks
            # ran on the proxies and are in the graph already: call forward itself, not the module
            # (whose __call__ would run them a second time).
            module = tracer.create_proxy("get_attr", tracer.path_of_module(self), (), {})
            return tracer.create_proxy("call_method", "forward", (module, *args), {})
        return tracer.create_proxy("call_module", tracer.path_of_module(self), args, {})

    def _has_forward_hooks(self) -> bool:
        from torch.nn.modules import module as nn_module

        return bool(self._forward_hooks or self._forward_pre_hooks or nn_module._global_forward_hooks
                    or nn_module._global_forward_pre_hooks)

    def _forward_packed(self, input: PackedSequence, hx: Optional[Tensor]) -> Tuple[PackedSequence, Tensor]:
        data, batch_sizes, sorted_indices, unsorted_indices = input
        if batch_sizes.dim() == 1 and data.dim() == 2:
            rows = int(batch_sizes.sum())
            if data.size(0) > rows:
                # Rows past sum(batch_sizes) belong to no sequence: ignored (zero gradient), as nn.RNN's
                # forward direction does. (Its reverse direction starts from the data's end, so there it
                # reads them; the ops themselves refuse such input.)
                data = data[:rows]
        if hx is not None and sorted_indices is not None:
            hx = hx.index_select(1, sorted_indices)
        output, hy = self._run(data, hx, batch_sizes)
        if unsorted_indices is not None:
            hy = hy.index_select(1, unsorted_indices)
        return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), hy

    def _run(self, data: Tensor, hx: Optional[Tensor], batch_sizes: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """data [T, B, I] ([B, T, I] if batch_first) or packed [N, I]; hx [L*D, B, H] or None (zeros)."""
        weights = self._get_flat_weights()
        self._check_forward_args(data, hx, batch_sizes, weights)
        run_weights = weights
        if torch._C._is_any_autocast_enabled() and _autocast_enabled(data.device.type):
            # Like nn.RNN under autocast: run in the autocast dtype (float16 on CUDA by default).
            dt = torch.get_autocast_dtype(data.device.type)
            data, run_weights = _autocast_cast(data, dt), [_autocast_cast(w, dt) for w in weights]
            hx = None if hx is None else _autocast_cast(hx, dt)
        try:
            # nn.RNN's forward reads self.mode, not self.nonlinearity (only __init__ reads that): tanh for
            # RNN_TANH, relu for anything else.
            nonlinearity = "tanh" if self.mode == "RNN_TANH" else "relu"
            return rnn(data, hx, run_weights, num_layers=self.num_layers, nonlinearity=nonlinearity,
                       bias=self.bias, batch_first=self.batch_first and batch_sizes is None, dropout=self.dropout,
                       training=self.training, bidirectional=self.bidirectional, batch_sizes=batch_sizes)
        except (RuntimeError, TypeError, AttributeError, NotImplementedError) as error:
            # (AttributeError: a None weight met by the dropout mask's or the zero state's shape;
            # NotImplementedError: the dispatcher's, for a sparse tensor)
            self._raise_as_nn_rnn(data, hx, batch_sizes, weights, error)
            raise

    # ---- conversion to and from torch.nn.RNN -----------------------------------------------------

    @classmethod
    def from_torch(cls, module: nn.RNN) -> "RNN":
        """A fused_rnn.RNN that shares `module`'s weights (no copy: same device, dtype, and an optimizer
        built on `module` keeps working), with the same configuration and training mode.

        Shared: the Parameter objects; a plain tensor assigned in place of a weight (it stays a plain
        attribute); a torch.nn.utils.parametrize parametrization (parametrizations.<name> is the same
        module: its original tensors and the parametrization's own parameters and buffers, so
        state_dict keys match); the deprecated hook-based torch.nn.utils.weight_norm / spectral_norm
        (the same hook objects, with their <name>_g / _v / _orig parameters and _u / _v buffers).
        A weight deleted from `module` is absent from the result too. Other hooks are not copied."""
        return _convert(module, cls)

    def to_torch(self) -> nn.RNN:
        """The torch.nn.RNN twin of this module, sharing its weights as from_torch does."""
        return _convert(self, nn.RNN)


def _is_rnn(module: nn.Module, cls) -> bool:
    """`module` is a `cls` itself, or one that torch.nn.utils.parametrize has parametrized (which
    swaps its class for a generated subclass); not a user's subclass, whose forward may differ."""
    t = type(module)
    return t is cls or (t.__bases__ == (cls,) and parametrize.is_parametrized(module))


# nn.Module's hook registries (torch 2.11-2.14); convert() moves them to the module that replaces an
# nn.RNN, the same dict objects, so that hook handles the user holds still remove their hooks.
_HOOK_REGISTRIES = ("_backward_pre_hooks", "_backward_hooks", "_is_full_backward_hook", "_forward_hooks",
                    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
                    "_forward_pre_hooks_with_kwargs", "_state_dict_hooks", "_state_dict_pre_hooks",
                    "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")
# nn.RNN's own bookkeeping of its weights, which the other class keeps its own way.
_NOT_MOVED = frozenset(("_flat_weights", "_flat_weight_refs"))


def _convert(src: nn.Module, cls, replace: bool = False):
    """A cls twin of src sharing its weights (from_torch / to_torch). replace=True (convert(), where the
    twin takes src's place in a model): src's hooks (the same registries) and its other instance
    attributes (a user's own, e.g. m.tag) move to the twin too."""
    if not isinstance(src, (nn.RNN, RNN)):
        raise TypeError(f"expected a torch.nn.RNN or fused_rnn.RNN, got {type(src).__name__}")
    if getattr(src, "proj_size", 0):
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
    kwargs = {k: getattr(src, k) for k in _CONVERTED_ATTRS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dropout-with-one-layer warning was given when src was built
        # On meta: every weight is replaced (or deleted) below, so the dtype does not matter.
        dst = cls(**kwargs, device="meta")
    # What forward computes (mode) and the attribute only __init__ reads (nonlinearity), each as src has
    # it, even where one was edited after construction.
    dst.mode, dst.nonlinearity = src.mode, src.nonlinearity
    names = dst._flat_weights_names
    # Parametrized weights first, in src's order (that of its parametrizations ModuleDict, hence of
    # its state_dict keys). register_parametrization sets up dst's generated class and property; the
    # placeholder list it creates is then swapped for src's own.
    parametrized = [n for n in src.parametrizations if n in names] if parametrize.is_parametrized(src) else []
    for name in parametrized:
        parametrize.register_parametrization(dst, name, nn.Identity(), unsafe=True)
        dst.parametrizations[name] = src.parametrizations[name]
    for name in names:
        if name in parametrized:
            continue
        value = getattr(src, name, None)
        if isinstance(value, nn.Parameter) or (value is None and name in src._parameters):
            setattr(dst, name, value)  # a Parameter, or a None registered in its place
        else:
            delattr(dst, name)
            if value is not None:  # else deleted from src: absent from dst too
                setattr(dst, name, value)  # a plain tensor stays a plain attribute, shared, not promoted
    # What the hook-based torch.nn.utils.weight_norm / spectral_norm registered on src: their extra
    # parameters and buffers (<name>_g, <name>_v, <name>_orig, <name>_u), shared, and their hooks.
    flat = set(names)
    for pname, p in src._parameters.items():
        if pname not in flat and pname not in dst._parameters:
            dst.register_parameter(pname, p)
    for bname, b in src._buffers.items():
        if bname not in dst._buffers:
            dst.register_buffer(bname, b, persistent=bname not in src._non_persistent_buffers_set)
    if replace:
        # Every hook, weight_norm's and spectral_norm's among them, and the user's own attributes.
        for registry in _HOOK_REGISTRIES:
            if registry in src.__dict__:
                dst.__dict__[registry] = src.__dict__[registry]
        for attr, value in src.__dict__.items():
            if attr not in dst.__dict__ and attr not in _NOT_MOVED:
                dst.__dict__[attr] = value
    for hook in () if replace else src._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm):
            dst.register_forward_pre_hook(hook)
        elif isinstance(hook, SpectralNorm):
            dst.register_forward_pre_hook(hook)
            dst._register_state_dict_hook(SpectralNormStateDictHook(hook))
            dst._register_load_state_dict_pre_hook(SpectralNormLoadStateDictPreHook(hook))
    if isinstance(dst, nn.RNN):
        dst._init_flat_weights()
    dst.train(src.training)
    return dst


def convert(model: nn.Module) -> nn.Module:
    """Replaces every torch.nn.RNN inside `model` (in place; parametrized ones too, see
    RNN.from_torch) by a fused_rnn.RNN sharing its weights. Returns `model`, or the converted module
    if `model` itself is an nn.RNN. Subclasses of nn.RNN are left alone (their forward may differ).

    The fused module takes the nn.RNN's place with its hooks (forward, forward pre-, backward and
    state_dict hooks: the same registries, so handles still remove them) and its other attributes.
    An nn.RNN registered in several places (self.dec = self.enc, or one module in two containers)
    becomes one fused module registered in all of them."""
    if _is_rnn(model, nn.RNN):
        return _convert(model, RNN, replace=True)
    _convert_children(model, {}, set())
    return model


def _convert_children(module: nn.Module, converted: dict, visited: set) -> None:
    # module._modules, not named_children(): that skips a module's second registration.
    # converted: id(nn.RNN) -> (nn.RNN, its fused twin), the source kept alive so its id stays its own.
    visited.add(id(module))
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        if _is_rnn(child, nn.RNN):
            if id(child) not in converted:
                converted[id(child)] = (child, _convert(child, RNN, replace=True))
            setattr(module, name, converted[id(child)][1])
        elif id(child) not in visited:
            _convert_children(child, converted, visited)
