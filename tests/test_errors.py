"""Bad input: fused_rnn.RNN raises what torch.nn.RNN raises (same type, same message), and the ops
reject what they cannot compute with a message that says what is wrong."""
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import fused_rnn


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
}


@pytest.mark.parametrize("case", FORWARD_CASES)
def test_forward_errors(case):
    kwargs, make_args = FORWARD_CASES[case]

    def call(cls):
        model = _model(cls, **kwargs)
        torch.manual_seed(1)
        return model(*make_args())

    assert_same_error(call)


def test_hx_dtype_mismatch():
    # nn.RNN fails inside its kernel ("mat1 and mat2 must have the same dtype ..."); ours checks up front.
    model = fused_rnn.RNN(3, 4)
    with pytest.raises(RuntimeError, match="hx has dtype Double but input has dtype Float"):
        model(torch.randn(5, 2, 3), torch.randn(1, 2, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError):
        nn.RNN(3, 4)(torch.randn(5, 2, 3), torch.randn(1, 2, 4, dtype=torch.float64))


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
    T, B, I, H = 4, 2, 3, 5
    args = dict(input=torch.randn(T, B, I), hx=torch.randn(1, B, H),
                weights=[torch.randn(H, I), torch.randn(H, H), torch.randn(H), torch.randn(H)],
                batch_sizes=None, dropout_mask=None, num_layers=1, bidirectional=False, relu=False, has_biases=True)
    args.update(over)
    return args


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
                               "batch_sizes must be positive and non-increasing"),
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
