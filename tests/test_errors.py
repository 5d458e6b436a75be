"""Bad input: fused_rnn.RNN raises what torch.nn.RNN raises (same type, same message), and the ops
reject what they cannot compute with a message that says what is wrong. Where nn.RNN's message is an
accident of its implementation (the first of its kernels to trip over the bad tensor), ours says what
is wrong instead (KEPT_MESSAGES, same type); where nn.RNN returns or raises another type, the outcome is
pinned in DIFFERENT_OUTCOMES. The fake (meta) kernels check what the CPU kernels check, so that one
argument on meta makes a CPU call raise, never return uninitialised tensors."""
import warnings

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import fused_rnn
from conftest import op_args


def _raised(fn):
    with pytest.raises(Exception) as info:
        fn()
    return info.value


def assert_same_error(make_call):
    """make_call(cls_or_module_factory) raises the same exception type and message for both."""
    expected = _raised(lambda: make_call(nn.RNN))
    got = _raised(lambda: make_call(fused_rnn.RNN))
    assert type(got) is type(expected)
    assert str(got) == str(expected)
    assert str(expected)  # nn.RNN says something: the comparison is meaningful


CONSTRUCTOR_CASES = {
    "nonlinearity": lambda c: c(3, 4, nonlinearity="sigmoid"),
    "nonlinearity_positional": lambda c: c(3, 4, 1, "gelu"),
    "proj_size": lambda c: c(3, 4, proj_size=2),
    "dropout_negative": lambda c: c(3, 4, 2, dropout=-0.1),
    "dropout_above_one": lambda c: c(3, 4, 2, dropout=1.5),
    "dropout_bool": lambda c: c(3, 4, 2, dropout=True),
    "dropout_bool_false": lambda c: c(3, 4, 2, dropout=False),
    "dropout_str": lambda c: c(3, 4, 2, dropout="0.5"),
    "bias_int": lambda c: c(3, 4, bias=1),
    "batch_first_int": lambda c: c(3, 4, batch_first=1),
    "input_size_zero": lambda c: c(0, 4),
    "hidden_size_zero": lambda c: c(3, 0),
    "hidden_size_negative": lambda c: c(3, -2),
    "num_layers_zero": lambda c: c(3, 4, 0),
    "num_layers_negative": lambda c: c(3, 4, -1),
    "input_size_float": lambda c: c(3.0, 4),
    "hidden_size_float": lambda c: c(3, 4.0),
    "num_layers_float": lambda c: c(3, 4, 2.0),
    "input_size_negative": lambda c: c(-1, 4),
    "dropout_none": lambda c: c(3, 4, 2, dropout=None),
    "dropout_non_numeric_str": lambda c: c(3, 4, 2, dropout="abc"),
    "dropout_nan": lambda c: c(3, 4, 2, dropout=float("nan")),
    "dtype_int": lambda c: c(3, 4, dtype=torch.int64),
    "unknown_keyword": lambda c: c(3, 4, foo=1),
    "no_arguments": lambda c: c(),
    "mode_keyword": lambda c: c(3, 4, mode="LSTM"),
    # nn.RNN's positional slots: (input_size, hidden_size, num_layers, nonlinearity, bias, batch_first,
    # dropout, bidirectional, proj_size, device, dtype)
    "proj_size_positional_negative": lambda c: c(3, 4, 1, "tanh", True, False, 0.0, False, -1),
    "proj_size_positional_too_big": lambda c: c(3, 4, 1, "tanh", True, False, 0.0, False, 4),
    "proj_size_positional_none": lambda c: c(3, 4, 1, "tanh", True, False, 0.0, False, None, None, 1),
    "too_many_positional": lambda c: c(3, 4, 1, "tanh", True, False, 0.0, False, 0, None, None, 1),
}


@pytest.mark.parametrize("case", CONSTRUCTOR_CASES)
def test_constructor_errors(case):
    assert_same_error(CONSTRUCTOR_CASES[case])


def test_dropout_with_one_layer_warns_like_nn_rnn():
    for cls in (nn.RNN, fused_rnn.RNN):
        with pytest.warns(UserWarning) as record:
            cls(3, 4, 1, dropout=0.5)
        if cls is nn.RNN:
            expected = [str(w.message) for w in record]
        else:
            assert [str(w.message) for w in record] == expected
            assert record[0].filename == __file__  # stacklevel points at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fused_rnn.RNN(3, 4, 2, dropout=0.5)
        fused_rnn.RNN(3, 4, 1, dropout=0.0)


def _model(cls, **kwargs):
    torch.manual_seed(0)
    return cls(3, 4, 2, **kwargs)


FORWARD_CASES = {
    "input_1d": (dict(), lambda: (torch.randn(3),)),
    "input_4d": (dict(), lambda: (torch.randn(2, 2, 2, 3),)),
    "input_0d": (dict(), lambda: (torch.tensor(1.0),)),
    "feature_size": (dict(), lambda: (torch.randn(5, 2, 4),)),
    "feature_size_unbatched": (dict(), lambda: (torch.randn(5, 2),)),
    "feature_size_packed": (dict(), lambda: (pack_sequence([torch.randn(3, 5), torch.randn(2, 5)]),)),
    "hx_layers": (dict(), lambda: (torch.randn(5, 2, 3), torch.randn(1, 2, 4))),
    "hx_batch": (dict(), lambda: (torch.randn(5, 2, 3), torch.randn(2, 3, 4))),
    "hx_hidden": (dict(), lambda: (torch.randn(5, 2, 3), torch.randn(2, 2, 5))),
    "hx_batch_first": (dict(batch_first=True), lambda: (torch.randn(2, 5, 3), torch.randn(2, 5, 4))),
    "hx_bidirectional": (dict(bidirectional=True), lambda: (torch.randn(5, 2, 3), torch.randn(2, 2, 4))),
    "hx_rank_2_for_batched": (dict(), lambda: (torch.randn(5, 2, 3), torch.randn(2, 4))),
    "hx_rank_4_for_batched": (dict(), lambda: (torch.randn(5, 2, 3), torch.randn(2, 2, 4, 1))),
    "hx_rank_3_for_unbatched": (dict(), lambda: (torch.randn(5, 3), torch.randn(2, 1, 4))),
    "hx_rank_1_for_unbatched": (dict(), lambda: (torch.randn(5, 3), torch.randn(4))),
    "hx_shape_unbatched": (dict(), lambda: (torch.randn(5, 3), torch.randn(3, 4))),
    "hx_shape_packed": (dict(), lambda: (pack_sequence([torch.randn(3, 3), torch.randn(2, 3)]), torch.randn(2, 3, 4))),
    "zero_length": (dict(), lambda: (torch.randn(0, 2, 3),)),
    "zero_length_batch_first": (dict(batch_first=True), lambda: (torch.randn(2, 0, 3),)),
    "zero_length_unbatched": (dict(), lambda: (torch.randn(0, 3),)),
    "input_float64": (dict(), lambda: (torch.randn(5, 2, 3, dtype=torch.float64),)),
    "input_int": (dict(), lambda: (torch.randint(0, 3, (5, 2, 3)),)),
    "input_float16_unbatched": (dict(), lambda: (torch.randn(5, 3, dtype=torch.float16),)),
    "input_float64_packed": (dict(), lambda: (pack_sequence([torch.randn(3, 3, dtype=torch.float64)]),)),
    "input_meta": (dict(), lambda: (torch.randn(5, 2, 3, device="meta"),)),
    "hx_meta": (dict(), lambda: (torch.randn(5, 2, 3), torch.randn(2, 2, 4, device="meta"))),
    "hx_meta_unbatched": (dict(), lambda: (torch.randn(5, 3), torch.randn(2, 4, device="meta"))),
    "hx_meta_wrong_shape": (dict(), lambda: (torch.randn(5, 2, 3), torch.randn(2, 3, 4, device="meta"))),
    "hx_float64_wrong_shape": (dict(), lambda: (torch.randn(5, 2, 3), torch.randn(2, 3, 4, dtype=torch.float64))),
    "hx_0d": (dict(), lambda: (torch.randn(5, 2, 3), torch.tensor(1.0))),
    "hx_zero_batch_mismatch": (dict(), lambda: (torch.randn(5, 0, 3), torch.randn(2, 1, 4))),
    "input_5d": (dict(), lambda: (torch.randn(1, 1, 1, 1, 3),)),
    "input_bfloat16": (dict(), lambda: (torch.randn(5, 2, 3, dtype=torch.bfloat16),)),
    "input_float16_with_hx": (dict(), lambda: (torch.randn(5, 2, 3, dtype=torch.float16),
                                               torch.randn(2, 2, 4, dtype=torch.float16))),
    "input_bool": (dict(), lambda: (torch.ones(5, 2, 3, dtype=torch.bool),)),
    "input_complex": (dict(), lambda: (torch.randn(5, 2, 3, dtype=torch.complex64),)),
    "input_int_with_hx": (dict(), lambda: (torch.randint(0, 3, (5, 2, 3)), torch.randn(2, 2, 4))),
    "input_none": (dict(), lambda: (None,)),
    "input_list": (dict(), lambda: ([torch.randn(5, 2, 3)],)),
    "feature_size_zero": (dict(), lambda: (torch.randn(5, 2, 0),)),
    "zero_length_with_hx": (dict(), lambda: (torch.randn(0, 2, 3), torch.randn(2, 2, 4))),
    "zero_length_zero_batch": (dict(), lambda: (torch.randn(0, 0, 3),)),
    "zero_length_batch_first_with_hx": (dict(batch_first=True), lambda: (torch.randn(2, 0, 3), torch.randn(2, 2, 4))),
    "zero_length_float64": (dict(), lambda: (torch.randn(0, 2, 3, dtype=torch.float64),)),
    "zero_length_feature_size": (dict(), lambda: (torch.randn(0, 2, 4),)),
    "packed_empty": (dict(), lambda: (PackedSequence(torch.randn(0, 3), torch.zeros(0, dtype=torch.long)),)),
    "packed_empty_with_hx": (dict(), lambda: (PackedSequence(torch.randn(0, 3), torch.zeros(0, dtype=torch.long)),
                                              torch.randn(2, 0, 4))),
    "packed_hx_batch_small": (dict(), lambda: (pack_sequence([torch.randn(3, 3), torch.randn(2, 3)]),
                                               torch.randn(2, 1, 4))),
    "packed_hx_rank_2": (dict(), lambda: (pack_sequence([torch.randn(3, 3), torch.randn(2, 3)]), torch.randn(2, 4))),
    "packed_hx_layers": (dict(), lambda: (pack_sequence([torch.randn(3, 3), torch.randn(2, 3)]), torch.randn(1, 2, 4))),
    "packed_unsorted_hx_batch_small": (dict(), lambda: (
        pack_sequence([torch.randn(2, 3), torch.randn(3, 3)], enforce_sorted=False), torch.randn(2, 1, 4))),
    "packed_data_3d": (dict(), lambda: (PackedSequence(torch.randn(5, 1, 3), torch.tensor([2, 2, 1])),)),
    "packed_int": (dict(), lambda: (PackedSequence(torch.ones(5, 3, dtype=torch.long), torch.tensor([2, 2, 1])),)),
}


@pytest.mark.parametrize("case", FORWARD_CASES)
def test_forward_errors(case):
    kwargs, make_args = FORWARD_CASES[case]

    def call(cls):
        model = _model(cls, **kwargs)
        torch.manual_seed(1)
        return model(*make_args())

    assert_same_error(call)


def test_positional_proj_size_slot_like_nn_rnn():
    """device and dtype sit behind nn.RNNBase's proj_size slot, positionally too."""
    args = (3, 4, 1, "tanh", True, False, 0.0, False, 0, "meta", torch.float64)
    for cls in (nn.RNN, fused_rnn.RNN):
        p = cls(*args).weight_hh_l0
        assert p.device.type == "meta" and p.dtype == torch.float64


# ---- bad weights: replaced by one on the meta device, of another dtype or shape, or None ----------

BIDI_NAMES = [f"{kind}_l{layer}{suffix}" for layer in range(2) for suffix in ("", "_reverse")
              for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


def _meta_weight(model, name):
    setattr(model, name, nn.Parameter(torch.empty(getattr(model, name).shape, device="meta")))


def _x(form):
    if form == "batched":
        return torch.randn(5, 2, 3)
    if form == "unbatched":
        return torch.randn(5, 3)
    return pack_sequence([torch.randn(3, 3), torch.randn(2, 3)])


@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("form", ["batched", "unbatched"])
@pytest.mark.parametrize("name", BIDI_NAMES)
def test_weight_on_meta_raises_like_nn_rnn(name, form, with_hx):
    """A CPU input with any one weight on meta: nn.RNN's device error, never uninitialised outputs."""
    def call(cls):
        model = _model(cls, bidirectional=True)
        _meta_weight(model, name)
        hx = torch.randn(4, 2, 4) if form == "batched" else torch.randn(4, 4)
        out, hn = model(_x(form), hx) if with_hx else model(_x(form))
        (out.sum() + hn.sum()).backward()

    assert_same_error(call)
    assert "parameter tensor at meta" in str(_raised(lambda: call(fused_rnn.RNN)))


@pytest.mark.parametrize("name", ["weight_ih_l0", "weight_hh_l1_reverse"])
def test_hx_and_weight_on_meta_report_hx_first(name):
    def call(cls):
        model = _model(cls, bidirectional=True)
        _meta_weight(model, name)
        return model(torch.randn(5, 2, 3), torch.randn(4, 2, 4, device="meta"))

    assert_same_error(call)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
@pytest.mark.parametrize("name", ["weight_hh_l1", "bias_ih_l0", "weight_hh_l0"])
@pytest.mark.parametrize("form", ["batched", "packed"])
def test_weight_none_like_nn_rnn(name, form, dropout):
    """nn.RNN's TypeError from its argument parsing, also where the dropout mask or the zero state
    (packed input) would read the None weight's shape first."""
    def call(cls):
        model = _model(cls, dropout=dropout)
        setattr(model, name, None)
        return model(_x(form))

    assert_same_error(call)


@pytest.mark.parametrize("value", [[[1.0] * 4] * 4, "numpy"], ids=["list", "numpy"])
def test_weight_not_a_tensor_named_like_nn_rnn(value):
    """A weight replaced by something that is not a tensor: nn.RNN's TypeError, with the type named
    as Python's C API names it (numpy.ndarray, list)."""
    np = pytest.importorskip("numpy") if value == "numpy" else None

    def call(cls):
        model = _model(cls)
        del model.weight_hh_l1
        model.weight_hh_l1 = np.ones((4, 4), dtype=np.float32) if np is not None else value
        model._flat_weights_names  # noqa: B018
        return model.forward(torch.randn(5, 2, 3))

    got = _raised(lambda: call(fused_rnn.RNN))
    assert type(got) is TypeError
    assert str(got) == f"expected Tensor as element 5 in argument 2, but got {'numpy.ndarray' if np else 'list'}"
    if np is not None:  # (a list: nn.RNN fails earlier, making a weak reference to it)
        assert_same_error(call)


def test_first_weight_none_like_nn_rnn():
    def call(cls):
        model = _model(cls)
        model.weight_ih_l0 = None
        return model(torch.randn(5, 2, 3))

    assert_same_error(call)


# ---- bad input where nn.RNN's message is an accident of its implementation --------------------------
# nn.RNN's message there names whichever of its kernels first trips over the bad tensor ("mat1 and
# mat2 must have the same dtype" from a matmul, another wording on its bias=False path, another on
# cuDNN); fused_rnn.RNN says what is wrong instead. Same exception type; listed in the README.

def _reweighted(name, value):
    def make(cls):
        model = _model(cls)
        setattr(model, name, nn.Parameter(value, requires_grad=value.is_floating_point()))
        return model
    return make


def _autocast_call(x, hx=None):
    def call(model):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x) if hx is None else model(x, hx)
    return call


_META_WEIGHT_MESSAGE = ("Input and parameter tensors are not at the same device, found input tensor at cpu and "
                        "parameter tensor at meta")
_PACKED = lambda: pack_sequence([torch.randn(3, 3), torch.randn(2, 3)])  # noqa: E731
_F64 = dict(dtype=torch.float64)

# case: (model factory (cls -> module), call (module -> result), our exact message)
KEPT_MESSAGES = {
    "hx_float64": (_model, lambda m: m(torch.randn(5, 2, 3), torch.randn(2, 2, 4, **_F64)),
                   "hx has dtype Double but input has dtype Float"),
    "hx_float16": (_model, lambda m: m(torch.randn(5, 2, 3), torch.randn(2, 2, 4, dtype=torch.float16)),
                   "hx has dtype Half but input has dtype Float"),
    "hx_int": (_model, lambda m: m(torch.randn(5, 2, 3), torch.zeros(2, 2, 4, dtype=torch.long)),
               "hx has dtype Long but input has dtype Float"),
    "hx_bool": (_model, lambda m: m(torch.randn(5, 2, 3), torch.zeros(2, 2, 4, dtype=torch.bool)),
                "hx has dtype Bool but input has dtype Float"),
    "hx_complex": (_model, lambda m: m(torch.randn(5, 2, 3), torch.zeros(2, 2, 4, dtype=torch.complex64)),
                   "hx has dtype ComplexFloat but input has dtype Float"),
    "hx_float64_unbatched": (_model, lambda m: m(torch.randn(5, 3), torch.randn(2, 4, **_F64)),
                             "hx has dtype Double but input has dtype Float"),
    "hx_float64_packed": (_model, lambda m: m(_PACKED(), torch.randn(2, 2, 4, **_F64)),
                          "hx has dtype Double but input has dtype Float"),
    "hx_float64_no_bias": (lambda c: _model(c, bias=False),
                           lambda m: m(torch.randn(5, 2, 3), torch.randn(2, 2, 4, **_F64)),
                           "hx has dtype Double but input has dtype Float"),
    "hx_float32_float64_model": (lambda c: _model(c, **_F64),
                                 lambda m: m(torch.randn(5, 2, 3, **_F64), torch.randn(2, 2, 4)),
                                 "hx has dtype Float but input has dtype Double"),
    "weight_dtype": (_reweighted("weight_hh_l1", torch.randn(4, 4, **_F64)), lambda m: m(torch.randn(5, 2, 3)),
                     "a parameter tensor has dtype Double but input has dtype Float"),
    "bias_dtype": (_reweighted("bias_ih_l0", torch.randn(4, **_F64)), lambda m: m(torch.randn(5, 2, 3)),
                   "a parameter tensor has dtype Double but input has dtype Float"),
    "weight_int": (_reweighted("weight_hh_l1", torch.ones(4, 4, dtype=torch.long)), lambda m: m(torch.randn(5, 2, 3)),
                   "a parameter tensor has dtype Long but input has dtype Float"),
    "weight_shape": (_reweighted("weight_hh_l1", torch.randn(4, 5)), lambda m: m(torch.randn(5, 2, 3)),
                     "weight_hh_l1 must have shape [4, 4], got [4, 5]"),
    "first_weight_shape": (_reweighted("weight_ih_l0", torch.randn(4, 5)), lambda m: m(torch.randn(5, 2, 3)),
                           "weight_ih_l0 must have shape [4, 3], got [4, 5]"),
    "bias_shape": (_reweighted("bias_hh_l0", torch.randn(5)), lambda m: m(torch.randn(5, 2, 3)),
                   "bias_hh_l0 must have shape [4], got [5]"),
    # the op infers H from W_hh of layer 0: the module names the weight that is wrong
    "first_w_hh_shape": (_reweighted("weight_hh_l0", torch.randn(1, 1)), lambda m: m(torch.randn(5, 2, 3)),
                         "weight_hh_l0 must have shape [4, 4], got [1, 1]"),
    "sparse_input": (_model, lambda m: m(torch.randn(5, 2, 3).to_sparse()),
                     "fused_rnn.RNN takes dense (strided) tensors only: input has layout torch.sparse_coo"),
    "bidirectional_int": (lambda c: _model(c, bidirectional=2), lambda m: m(torch.randn(5, 2, 3)),
                          "bidirectional should be of type bool, got: int"),
    "proj_size_float_positional": (lambda c: c(3, 4, 1, "tanh", True, False, 0.0, False, 1.5),
                                   lambda m: m(torch.randn(5, 2, 3)), "proj_size should be of type int, got: float"),
    "packed_batch_sizes_int32": (
        _model, lambda m: m(PackedSequence(torch.randn(5, 3), torch.tensor([2, 2, 1], dtype=torch.int32))),
        "batch_sizes must be a 1-D CPU int64 tensor (PackedSequence.batch_sizes)"),
    "packed_batch_sizes_sum_above_rows": (
        _model, lambda m: m(PackedSequence(torch.randn(4, 3), torch.tensor([2, 2, 1]))),
        "packed input has 4 rows but batch_sizes sum to 5"),
    "packed_hx_on_meta": (_model, lambda m: m(_PACKED(), torch.randn(2, 2, 4, device="meta")),
                          "Input and hidden tensors are not at the same device, found input tensor at cpu and hidden "
                          "tensor at meta"),
    "packed_bias_on_meta": (
        lambda c: _meta_weight_model(c, "bias_ih_l0"), lambda m: m(_PACKED()),
        _META_WEIGHT_MESSAGE),
    "autocast_hx_float64": (_model, _autocast_call(torch.randn(5, 2, 3), torch.randn(2, 2, 4, **_F64)),
                            "hx has dtype Double but input has dtype BFloat16"),
    "autocast_input_int": (_model, _autocast_call(torch.randint(0, 3, (5, 2, 3))),
                           "input must be a floating point tensor, got Long"),
    "autocast_input_complex": (_model, _autocast_call(torch.randn(5, 2, 3, dtype=torch.complex64)),
                               "input must be a floating point tensor, got ComplexFloat"),
    "autocast_input_float64": (_model, _autocast_call(torch.randn(5, 2, 3, **_F64), torch.randn(2, 2, 4)),
                               "hx has dtype BFloat16 but input has dtype Double"),
}
# Message prefixes, where ours ends with the op's print of a tensor.
KEPT_MESSAGE_PREFIXES = {
    "packed_batch_sizes_increasing": (
        _model, lambda m: m(PackedSequence(torch.randn(5, 3), torch.tensor([1, 2, 2]))),
        "batch_sizes must be non-negative and non-increasing, got"),
    "packed_batch_sizes_negative": (
        _model, lambda m: m(PackedSequence(torch.randn(3, 3), torch.tensor([2, 2, -1]))),
        "batch_sizes must be non-negative and non-increasing, got"),
}


def _meta_weight_model(cls, name):
    model = _model(cls, bidirectional=True)
    _meta_weight(model, name)
    return model


@pytest.mark.parametrize("case", [*KEPT_MESSAGES, *KEPT_MESSAGE_PREFIXES])
def test_kept_messages(case):
    """Same exception type as nn.RNN; our message, not its."""
    make, call, message = KEPT_MESSAGES.get(case) or KEPT_MESSAGE_PREFIXES[case]
    expected = _raised(lambda: call(make(nn.RNN)))
    got = _raised(lambda: call(make(fused_rnn.RNN)))
    assert type(got) is type(expected) and str(expected) and not str(expected).startswith(message)
    if case in KEPT_MESSAGES:
        assert str(got) == message
    else:
        assert str(got).startswith(message)


# Where nn.RNN does not raise, or raises another type: (model factory, call, nn.RNN's exception type
# or None when it returns, our type, our message or None when we return).
DIFFERENT_OUTCOMES = {
    # A hand-made PackedSequence whose batch_sizes are not int64 / 1-D: nn.RNN's TypeError from
    # torch.zeros when hx is omitted (a RuntimeError or ValueError from elsewhere when it is given).
    "packed_batch_sizes_float": (
        _model, lambda m: m(PackedSequence(torch.randn(5, 3), torch.tensor([2.0, 2.0, 1.0]))), TypeError, RuntimeError,
        "batch_sizes must be a 1-D CPU int64 tensor (PackedSequence.batch_sizes)"),
    "packed_batch_sizes_2d": (
        _model, lambda m: m(PackedSequence(torch.randn(5, 3), torch.tensor([[2, 2, 1]]))), TypeError, RuntimeError,
        "batch_sizes must be a 1-D CPU int64 tensor (PackedSequence.batch_sizes)"),
    # nn.RNN's packed path does not check every weight's device: it returns.
    "packed_weight_ih_l0_on_meta": (
        lambda c: _meta_weight_model(c, "weight_ih_l0"), lambda m: m(_PACKED()), None, RuntimeError,
        _META_WEIGHT_MESSAGE),
    "packed_weight_hh_l1_on_meta": (
        lambda c: _meta_weight_model(c, "weight_hh_l1"), lambda m: m(_PACKED()), None, RuntimeError,
        _META_WEIGHT_MESSAGE),
    # On meta nn.RNN checks no dtypes; fused_rnn's fake kernel checks what its CPU kernel checks.
    "meta_hx_float64": (
        lambda c: _model(c, device="meta"),
        lambda m: m(torch.randn(5, 2, 3, device="meta"), torch.randn(2, 2, 4, device="meta", **_F64)),
        None, RuntimeError, "hx has dtype Double but input has dtype Float"),
    # nn.RNN builds a module with a projection weight, which its forward then cannot run.
    "proj_size_positional": (
        lambda c: c(3, 4, 1, "tanh", True, False, 0.0, False, 2), lambda m: m(torch.randn(5, 2, 3)),
        RuntimeError, ValueError, "proj_size argument is only supported for LSTM, not RNN or GRU"),
    # Complex weights and input: nn.RNN computes in complex arithmetic; the fused kernels are real.
    "complex_model": (
        lambda c: _model(c, dtype=torch.complex64), lambda m: m(torch.randn(5, 2, 3, dtype=torch.complex64)),
        None, RuntimeError, "input must be a floating point tensor, got ComplexFloat"),
    # A 0-D batch_sizes: nn.RNN indexes it (IndexError); ours is the batch_sizes message above.
    "packed_batch_sizes_0d": (
        _model, lambda m: m(PackedSequence(torch.randn(5, 3), torch.tensor(5))), IndexError, RuntimeError,
        "batch_sizes must be a 1-D CPU int64 tensor (PackedSequence.batch_sizes)"),
    # A bias of one element: nn.RNN's addition broadcasts it; the fused kernels take [H] biases only.
    "bias_one_element": (
        _reweighted("bias_hh_l0", torch.randn(1)), lambda m: m(torch.randn(5, 2, 3)), None, RuntimeError,
        "bias_hh_l0 must have shape [4], got [1]"),
    # nn.RNN computes with a sparse hx (the fused kernels are dense only)
    "sparse_hx": (_model, lambda m: m(torch.randn(5, 2, 3), torch.randn(2, 2, 4).to_sparse()), None, RuntimeError,
                  "fused_rnn.RNN takes dense (strided) tensors only: hx has layout torch.sparse_coo"),
}


@pytest.mark.parametrize("case", DIFFERENT_OUTCOMES)
def test_different_outcomes(case):
    make, call, nn_type, our_type, message = DIFFERENT_OUTCOMES[case]

    def outcome(cls):
        try:
            call(make(cls))
        except Exception as e:  # noqa: BLE001
            return e
        return None

    expected, got = outcome(nn.RNN), outcome(fused_rnn.RNN)
    assert type(expected) is (type(None) if nn_type is None else nn_type), expected
    if our_type is None:
        assert got is None, got
    else:
        assert type(got) is our_type and str(got) == message


def test_packed_rows_past_batch_sizes_are_ignored_in_both_directions():
    """nn.RNN ignores data rows past sum(batch_sizes) in its forward direction but starts its reverse
    direction from the data's end, reading them; fused_rnn.RNN ignores them in both (zero gradient)."""
    fused = fused_rnn.RNN(3, 4, bidirectional=True, dtype=torch.float64)
    data = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    out, hy = fused(PackedSequence(data, torch.tensor([2, 2, 1])))
    (out.data.sum() + hy.sum()).backward()
    exact = data.detach()[:5].clone().requires_grad_()
    out5, hy5 = fused(PackedSequence(exact, torch.tensor([2, 2, 1])))
    (out5.data.sum() + hy5.sum()).backward()
    assert out.data.shape == (5, 8)
    torch.testing.assert_close(out.data, out5.data, rtol=0, atol=0)
    torch.testing.assert_close(hy, hy5, rtol=0, atol=0)
    torch.testing.assert_close(data.grad[:5], exact.grad, rtol=0, atol=0)
    assert data.grad[5:].eq(0).all()


def test_autocast_leaves_float64_alone_like_nn_rnn():
    """Autocast casts float32 (and float16) tensors only: a float64 model with float64 input runs in
    float64 under CPU autocast, in both."""
    ref, fused = _model(nn.RNN, **_F64), _model(fused_rnn.RNN, **_F64)
    x = torch.randn(5, 2, 3, **_F64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (ro, rh), (fo, fh) = ref(x), fused(x)
    assert fo.dtype == ro.dtype == torch.float64 and fh.dtype == torch.float64
    torch.testing.assert_close(fo, ro, rtol=1e-10, atol=1e-10)


def test_any_autocast_skips_the_input_dtype_check_like_nn_rnn():
    """nn.RNN skips its input-dtype ValueError whenever any autocast is on, for any device's tensors.
    Here CPU autocast with meta tensors (which it leaves alone): nn.RNN returns, as meta checks no
    dtypes; fused_rnn's fake kernel refuses the mismatch (a RuntimeError, not the ValueError)."""
    def call(cls):
        model = _model(cls, device="meta")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(torch.randn(5, 2, 3, device="meta", dtype=torch.float16))

    call(nn.RNN)
    with pytest.raises(RuntimeError, match="a parameter tensor has dtype Float but input has dtype Half"):
        call(fused_rnn.RNN)


def test_meta_model_runs_like_nn_rnn():
    """A model on the meta device runs (shape inference), as nn.RNN does."""
    for kwargs in (dict(), dict(bidirectional=True, batch_first=True)):
        ref, fused = nn.RNN(3, 4, 2, device="meta", **kwargs), fused_rnn.RNN(3, 4, 2, device="meta", **kwargs)
        x = torch.randn(5, 2, 3, device="meta")
        (ro, rh), (fo, fh) = ref(x), fused(x)
        assert fo.device.type == fh.device.type == "meta"
        assert fo.shape == ro.shape and fh.shape == rh.shape


# ---- the functional form and the ops: checks of what nn.RNN's module layer would have caught ----

def _op_args(**over):
    """A float32 one-layer call, T=4 B=2 I=3 H=5, with some arguments replaced."""
    return {**op_args(T=4, B=2, I=3, H=5, num_layers=1, bidirectional=False, dtype=torch.float32), **over}


OP_CASES = {
    "weight_count": (dict(weights=[torch.randn(5, 3), torch.randn(5, 5)]), "expected 4 weight tensors"),
    "weight_shape": (dict(weights=[torch.randn(5, 4), torch.randn(5, 5), torch.randn(5), torch.randn(5)]),
                     "must have shape [5, 3], got [5, 4]"),
    "weight_dtype": (dict(weights=[torch.randn(5, 3).double(), torch.randn(5, 5), torch.randn(5), torch.randn(5)]),
                     "has dtype Double but input has dtype Float"),
    "hx_shape": (dict(hx=torch.randn(2, 2, 5)), "Expected hidden size [1, 2, 5], got [2, 2, 5]"),
    "input_rank": (dict(input=torch.randn(4, 3)), "input must have 3 dimensions"),
    "input_int": (dict(input=torch.ones(4, 2, 3, dtype=torch.long)), "input must be a floating point tensor"),
    "zero_length": (dict(input=torch.randn(0, 2, 3)), "Expected sequence length to be larger than 0 in RNN"),
    "mask_shape": (dict(num_layers=2, dropout_mask=torch.ones(1, 4, 2, 4),
                        weights=[torch.randn(5, 3), torch.randn(5, 5), torch.randn(5), torch.randn(5),
                                 torch.randn(5, 5), torch.randn(5, 5), torch.randn(5), torch.randn(5)],
                        hx=torch.randn(2, 2, 5)), "dropout_mask must have shape [1, 4, 2, 5]"),
    "num_layers": (dict(num_layers=0, hx=torch.randn(0, 2, 5)), "num_layers must be greater than zero"),
    "batch_sizes_increasing": (dict(input=torch.randn(5, 3), batch_sizes=torch.tensor([2, 3])),
                               "and non-increasing, got"),
    "batch_sizes_sum": (dict(input=torch.randn(6, 3), batch_sizes=torch.tensor([2, 2])),
                        "packed input has 6 rows but batch_sizes sum to 4"),
    "batch_sizes_dtype": (dict(input=torch.randn(4, 3), batch_sizes=torch.tensor([2, 2], dtype=torch.int32)),
                          "batch_sizes must be a 1-D CPU int64 tensor"),
    "batch_sizes_empty": (dict(input=torch.randn(0, 3), batch_sizes=torch.zeros(0, dtype=torch.long)),
                          "Expected sequence length to be larger than 0 in RNN"),
    "packed_hx_batch": (dict(input=torch.randn(4, 3), batch_sizes=torch.tensor([2, 2]), hx=torch.randn(1, 3, 5)),
                        "hx must have batch size 2"),
}


@pytest.mark.parametrize("case", OP_CASES)
def test_op_input_checks(case):
    over, message = OP_CASES[case]
    with pytest.raises(RuntimeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        torch.ops.fused_rnn.rnn_forward(**_op_args(**over))


def test_functional_unknown_nonlinearity():
    a = _op_args()
    with pytest.raises(ValueError, match="Unknown nonlinearity 'gelu'"):
        fused_rnn.rnn(a["input"], a["hx"], a["weights"], nonlinearity="gelu")


def test_backward_grad_shape_checks():
    a = _op_args()
    out, hy, reserve = torch.ops.fused_rnn.rnn_forward(**a)
    rest = (a["input"], a["hx"], a["weights"], None, None, out, reserve, 1, False, False, True)
    with pytest.raises(RuntimeError, match="grad_output must have shape"):
        torch.ops.fused_rnn.rnn_backward(out[:2], torch.ones_like(hy), *rest)
    with pytest.raises(RuntimeError, match="grad_hy must have shape"):
        torch.ops.fused_rnn.rnn_backward(torch.ones_like(out), hy[:, :1], *rest)


def test_packed_sequence_with_wrong_batch_sizes_is_rejected():
    model = fused_rnn.RNN(3, 4)
    bad = PackedSequence(torch.randn(5, 3), torch.tensor([2, 3]), None, None)  # increasing
    with pytest.raises(RuntimeError, match="non-increasing"):
        model(bad, torch.zeros(1, 2, 4))


# ---- meta arguments through the functional form and the ops ------------------------------------------
# One argument on meta sends the whole call to the fake (meta) kernel, which must then refuse a CPU
# input as the real kernels refuse mixed devices, instead of returning uninitialised CPU tensors.

_DEVICE_MESSAGE = "Input and parameter tensors are not at the same device, found input tensor at cpu and {} at meta"


def _bidi_op_args(packed=False):
    """A float32 two-layer bidirectional call, T=4 B=2 I=3 H=5, with an all-ones dropout mask; packed:
    lengths 4 and 2."""
    return op_args(T=4, B=2, I=3, H=5, dtype=torch.float32, mask_p=0.0, packed=(4, 2) if packed else False)


def _meta(t):
    return torch.empty(t.shape, dtype=t.dtype, device="meta")


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("position", [*range(16), "hx", "hx_none", "dropout_mask"])
def test_functional_and_op_forward_with_one_meta_argument_raise(position, packed):
    a = _bidi_op_args(packed)
    if position in ("hx", "dropout_mask"):
        a[position], name = _meta(a[position]), position
    else:
        i = 5 if position == "hx_none" else position
        a["weights"][i], name = _meta(a["weights"][i]), "a parameter tensor"
        if position == "hx_none":
            a["hx"] = None
    message = _DEVICE_MESSAGE.format(name)
    if position != "dropout_mask":  # the functional form makes its own mask
        with pytest.raises(RuntimeError, match=message):
            fused_rnn.rnn(a["input"], a["hx"], a["weights"], num_layers=2, bidirectional=True,
                          batch_sizes=a["batch_sizes"])
    if a["hx"] is not None:
        with pytest.raises(RuntimeError, match=message):
            torch.ops.fused_rnn.rnn_forward(**a)


@pytest.mark.parametrize("position", [0, 1, 6, 15, "hx", "dropout_mask", "grad_output", "grad_hy", "output",
                                      "reserve"])
def test_op_backward_with_one_meta_argument_raises(position):
    a = _bidi_op_args()
    out, hy, reserve = torch.ops.fused_rnn.rnn_forward(**a)
    b = dict(grad_output=torch.ones_like(out), grad_hy=torch.ones_like(hy), input=a["input"], hx=a["hx"],
             weights=a["weights"], batch_sizes=None, dropout_mask=a["dropout_mask"], output=out, reserve=reserve,
             num_layers=2, bidirectional=True, relu=False, has_biases=True)
    if isinstance(position, int):
        b["weights"] = list(b["weights"])
        b["weights"][position] = _meta(b["weights"][position])
        message = _DEVICE_MESSAGE.format("a parameter tensor")
    elif position in ("hx", "dropout_mask"):
        b[position] = _meta(b[position])
        message = _DEVICE_MESSAGE.format(position)
    else:
        b[position] = _meta(b[position])
        message = (r"rnn_backward: gradients, output and reserve must have input's device and dtype \(cpu, Float\), "
                   r"got meta, Float")
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fused_rnn.rnn_backward(**b)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_all_meta_forward_and_backward_still_run(packed):
    """Everything on meta (batch_sizes aside, which stays on the CPU): shape inference, forward and
    backward, through the op, the functional form and the module, with nn.RNN's shapes."""
    a = _bidi_op_args(packed)
    for k in ("input", "hx", "dropout_mask"):
        a[k] = _meta(a[k])
    a["weights"] = [_meta(w).requires_grad_() for w in a["weights"]]
    out, hy, reserve = torch.ops.fused_rnn.rnn_forward(**a)
    assert out.device.type == hy.device.type == reserve.device.type == "meta"
    o, h = fused_rnn.rnn(a["input"].requires_grad_(), a["hx"], a["weights"], num_layers=2, bidirectional=True,
                         batch_sizes=a["batch_sizes"])
    (o.sum() + h.sum()).backward()
    assert all(w.grad.device.type == "meta" and w.grad.shape == w.shape for w in a["weights"])
    assert a["input"].grad.shape == a["input"].shape

    results = []
    for cls in (nn.RNN, fused_rnn.RNN):
        model = cls(3, 5, 2, bidirectional=True, device="meta")
        x = torch.randn(6, 3, device="meta", requires_grad=True)
        inp = PackedSequence(x, torch.tensor([2, 2, 1, 1])) if packed else x.view(3, 2, 3)
        out, hn = model(inp, torch.randn(4, 2, 5, device="meta"))
        out = out.data if packed else out
        (out.sum() + hn.sum()).backward()
        results.append((out.shape, hn.shape, x.grad.shape, [p.grad.shape for p in model.parameters()]))
        assert all(p.grad.device.type == "meta" for p in model.parameters())
    assert results[0] == results[1]


# The OP_CASES whose check reads batch_sizes' values, which the fake kernel cannot (a traced
# batch_sizes has none).
_DATA_DEPENDENT = {"batch_sizes_increasing", "batch_sizes_sum", "packed_hx_batch"}
FAKE_CASES = {
    **{k: v[0] for k, v in OP_CASES.items() if k not in _DATA_DEPENDENT},
    "hx_dtype": dict(hx=torch.randn(1, 2, 5).double()),
    "hx_rank": dict(hx=torch.randn(2, 5)),
    "bias_dtype": dict(weights=[torch.randn(5, 3), torch.randn(5, 5), torch.randn(5).half(), torch.randn(5)]),
    "bias_shape": dict(weights=[torch.randn(5, 3), torch.randn(5, 5), torch.randn(5), torch.randn(6)]),
    "packed_rank": dict(input=torch.randn(4, 2, 3), batch_sizes=torch.tensor([2, 2])),
    "mask_dtype": dict(num_layers=2, dropout_mask=torch.ones(1, 4, 2, 5).double(), hx=torch.randn(2, 2, 5),
                       weights=[torch.randn(5, 3), torch.randn(5, 5), torch.randn(5), torch.randn(5),
                                torch.randn(5, 5), torch.randn(5, 5), torch.randn(5), torch.randn(5)]),
}


def _tensors_to(args, to):
    out = dict(args)
    for k, v in args.items():
        if k == "weights":
            out[k] = [to(w) for w in v]
        elif isinstance(v, torch.Tensor) and k != "batch_sizes":
            out[k] = to(v)
    return out


@pytest.mark.parametrize("case", FAKE_CASES)
def test_fake_kernel_rejects_what_the_cpu_kernel_rejects(case):
    """The same RuntimeError and message from the fake kernel, reached with every tensor on meta
    and under FakeTensorMode (as torch.compile / torch.export trace), as from the CPU kernel."""
    args = _op_args(**FAKE_CASES[case])
    expected = _raised(lambda: torch.ops.fused_rnn.rnn_forward(**args))
    assert type(expected) is RuntimeError
    got = _raised(lambda: torch.ops.fused_rnn.rnn_forward(**_tensors_to(args, _meta)))
    assert type(got) is RuntimeError and str(got) == str(expected)
    with FakeTensorMode() as mode:
        fake_args = _tensors_to(args, mode.from_tensor)
        if args["batch_sizes"] is not None:
            fake_args["batch_sizes"] = mode.from_tensor(args["batch_sizes"])
        got = _raised(lambda: torch.ops.fused_rnn.rnn_forward(**fake_args))
    assert type(got) is RuntimeError and str(got) == str(expected)


def test_fake_kernel_backward_checks_match_the_cpu_kernel():
    a = _op_args()
    out, hy, reserve = torch.ops.fused_rnn.rnn_forward(**a)
    rest = dict(input=a["input"], hx=a["hx"], weights=a["weights"], batch_sizes=None, dropout_mask=None,
                num_layers=1, bidirectional=False, relu=False, has_biases=True)
    cases = [dict(grad_output=out[:2], grad_hy=torch.ones_like(hy), output=out, reserve=reserve),
             dict(grad_output=torch.ones_like(out), grad_hy=hy[:, :1], output=out, reserve=reserve),
             dict(grad_output=torch.ones_like(out), grad_hy=torch.ones_like(hy), output=out[:1], reserve=reserve),
             dict(grad_output=torch.ones_like(out), grad_hy=torch.ones_like(hy).double(), output=out,
                  reserve=reserve)]
    for grads in cases:
        args = {**rest, **grads}
        expected = _raised(lambda: torch.ops.fused_rnn.rnn_backward(**args))
        got = _raised(lambda: torch.ops.fused_rnn.rnn_backward(**_tensors_to(args, _meta)))
        assert type(got) is type(expected) is RuntimeError
        assert str(got) == str(expected).replace("cpu", "meta")  # the last names the devices
