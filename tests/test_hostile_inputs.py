"""Hostile input: every case runs the same call on torch.nn.RNN and on fused_rnn.RNN (twins with the same
state_dict) and asserts that fused_rnn reproduces nn.RNN's behaviour, either the same results (output, h_n
and every gradient, NaN positions included) or the same exception type (and the same message where
nn.RNN's message is its own Python check). Complements tests/test_errors.py, does not repeat it.

Each case first asserts what nn.RNN does (the premise), so that a case cannot pass vacuously.
Cases that could crash the process (undersized or strided storage, meta data pointers, hostile
batch_sizes) run in a child process: a crash fails those tests instead of killing pytest.

Shapes: T steps, B batch, I input size, H hidden size, D directions, L layers.
"""
import builtins
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn
from conftest import F32, F64, assert_same_results, assert_within_2x, fwd_bwd, leaf, run, twins, upstream

NAN, INF = float("nan"), float("inf")
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


# ---- helpers ---------------------------------------------------------------------------------------

def detached(obj):
    return torch.utils._pytree.tree_map(lambda v: v.detach() if isinstance(v, torch.Tensor) else v, obj)


def outcome(fn, *args):
    """('ok', result) or ('raise', exception)."""
    try:
        return "ok", fn(*args)
    except Exception as e:  # noqa: BLE001 - the exception is the result compared
        return "raise", e


def assert_same_outcome(got, expected, dtype, nn_raises=None, same_message=False):
    """got / expected: outcome() pairs, fused_rnn's and nn.RNN's. First the premise: nn.RNN raised
    nn_raises (None: it returned); then fused_rnn raised the same exception type (and message, if
    same_message) or returned the same results."""
    if nn_raises is None:
        assert expected[0] == "ok", f"premise: nn.RNN returns, but it raised {expected[1]!r}"
    else:
        assert expected[0] == "raise" and type(expected[1]) is nn_raises, f"premise: nn.RNN raises " \
            f"{nn_raises.__name__}, got {expected}"
    if expected[0] == "raise":
        e = expected[1]
        assert got[0] == "raise", f"nn.RNN raised {type(e).__name__}: {e}; fused_rnn returned"
        assert type(got[1]) is type(e), f"fused_rnn raised {type(got[1]).__name__}: {got[1]}; " \
                                        f"nn.RNN raised {type(e).__name__}: {e}"
        if same_message:
            assert str(got[1]) == str(e)
        return
    if got[0] == "raise":
        raise AssertionError(f"fused_rnn raised {type(got[1]).__name__}: {got[1]}; nn.RNN returned") from got[1]
    assert_same_results(expected[1], got[1], dtype, equal_nan=True)


def check(fn, ref, fused, dtype, nn_raises=None, same_message=False):
    """fn(module) on both twins. nn_raises: the exception type nn.RNN is known to raise (None: it returns)."""
    expected = outcome(fn, ref)
    assert_same_outcome(outcome(fn, fused), expected, dtype, nn_raises, same_message)


def poke(modules, name, index, value):
    with torch.no_grad():
        for m in modules:
            getattr(m, name)[index] = value


# ---- NaN / inf in input, hx and weights ------------------------------------------------------------
# RNN(3, 4, 2, bidirectional=True), T=5, B=3, hx given: every poison reaches both directions and layer 1.

T, B, I, H, L, D = 5, 3, 3, 4, 2, 2

POISON = {
    # name: (what, index, value)
    "x_nan_element": ("x", (2, 1, 0), NAN),
    "x_nan_whole_step": ("x", (1,), NAN),
    "x_posinf": ("x", (3, 0, 1), INF),
    "x_neginf": ("x", (0, 2, 2), -INF),
    "x_inf_and_neginf": ("x", (4, 1), torch.tensor([INF, -INF, INF])),
    "x_huge": ("x", (2, 0), "huge"),
    "hx_nan": ("hx", (1, 0, 2), NAN),
    "hx_posinf": ("hx", (0, 2, 1), INF),
    "hx_neginf_layer1": ("hx", (2, 1, 0), -INF),
    "w_ih_nan": ("weight_ih_l0", (1, 2), NAN),
    "w_hh_nan_reverse": ("weight_hh_l0_reverse", (0, 3), NAN),
    "w_hh_inf_layer1": ("weight_hh_l1", (2, 2), INF),
    "b_ih_nan_layer1": ("bias_ih_l1", (1,), NAN),
    "b_hh_neginf": ("bias_hh_l0", (0,), -INF),
}


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("case", POISON)
def test_nan_inf(case, nonlinearity, dtype):
    what, index, value = POISON[case]
    if isinstance(value, str):  # "huge": overflows the pre-activation to +-inf
        value = torch.finfo(dtype).max / 64  # no sum of products overflows, whatever the order
    ref, fused = twins(I, H, L, nonlinearity=nonlinearity, bidirectional=True, dtype=dtype)
    x, hx = torch.randn(T, B, I, dtype=dtype), torch.randn(L * D, B, H, dtype=dtype)
    if what == "x":
        x[index] = value
    elif what == "hx":
        hx[index] = value
    else:
        poke((ref, fused), what, index, value)

    check(lambda m: run(m, x, hx), ref, fused, dtype)


TINY_POISON = {
    # RNN(1, 1): x [3, 1, 1]; nn.RNN's relu backward lets the gradient through a NaN state
    # (threshold_backward: NaN <= 0 is false), so its input gradient is finite at every step.
    "nan_middle": [1.0, NAN, 1.0],
    "nan_first": [NAN, 1.0, 1.0],
    "nan_last": [1.0, 1.0, NAN],
    "inf_middle": [1.0, INF, 1.0],
    "neginf_middle": [1.0, -INF, 1.0],
}


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("case", TINY_POISON)
def test_nan_inf_one_unit(case, nonlinearity, dtype):
    ref, fused = twins(1, 1, nonlinearity=nonlinearity, dtype=dtype)
    with torch.no_grad():
        for m in (ref, fused):  # positive weights: relu stays active on the finite steps
            for p in m.parameters():
                p.fill_(0.5)
    x = torch.tensor(TINY_POISON[case], dtype=dtype).view(3, 1, 1)

    def fn(m):
        return run(m, x)

    if case == "nan_middle" and nonlinearity == "relu":  # the premise of TINY_POISON's comment
        gx = fn(ref)["grad:input"]
        assert gx.isfinite().all() and (gx != 0).all()
    check(fn, ref, fused, dtype)


# ---- layouts: non-contiguous input, hx and weights -------------------------------------------------

# name: (batch_first, base shape, view of the base). The base is the leaf; its gradient is compared.
INPUT_LAYOUTS = {
    "transposed": (False, (B, T, I), lambda b: b.transpose(0, 1)),
    "batch_slice": (False, (T, 2 * B, I), lambda b: b[:, ::2]),
    "time_slice": (False, (2 * T, B, I), lambda b: b[::2]),
    "feature_slice": (False, (T, B, 2 * I), lambda b: b[..., ::2]),
    "permute_channels_last": (False, (I, T, B), lambda b: b.permute(1, 2, 0)),
    "permute_batch_feature_time": (False, (B, I, T), lambda b: b.permute(2, 0, 1)),
    "storage_offset": (False, (T * B * I + 5,), lambda b: b[5:].view(T, B, I)),
    "slice_of_transposed": (False, (B, 2 * T, I + 1), lambda b: b.transpose(0, 1)[1::2, :, 1:]),
    "batch_first_time_major_storage": (True, (T, B, I), lambda b: b.transpose(0, 1)),
    "batch_first_time_slice": (True, (B, 2 * T, I), lambda b: b[:, ::2]),
    "batch_first_feature_slice": (True, (B, T, 2 * I), lambda b: b[..., 1::2]),
    "batch_first_permuted": (True, (I, B, T), lambda b: b.permute(1, 2, 0)),
    "unbatched_transposed": (False, (I, T), lambda b: b.t()),
    "unbatched_time_slice": (False, (2 * T, I), lambda b: b[::2]),
    "unbatched_batch_first_transposed": (True, (I, T), lambda b: b.t()),
}


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", INPUT_LAYOUTS)
def test_noncontiguous_input(case, dtype):
    batch_first, shape, view = INPUT_LAYOUTS[case]
    ref, fused = twins(I, H, L, bidirectional=True, batch_first=batch_first, dtype=dtype)
    base = torch.randn(shape, dtype=dtype)
    assert not view(base).is_contiguous() or view(base).storage_offset()

    def fn(m):
        lb = leaf(base)
        return fwd_bwd(m, view(lb), leaves={"x": lb})

    check(fn, ref, fused, dtype)


HX_LAYOUTS = {
    # name: (unbatched, base shape, view)
    "transposed": (False, (B, L * D, H), lambda b: b.transpose(0, 1)),
    "hidden_slice": (False, (L * D, B, 2 * H), lambda b: b[..., ::2]),
    "batch_slice": (False, (L * D, 2 * B, H), lambda b: b[:, 1::2]),
    "permuted": (False, (H, B, L * D), lambda b: b.permute(2, 1, 0)),
    "unbatched_transposed": (True, (H, L * D), lambda b: b.t()),
}


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", HX_LAYOUTS)
def test_noncontiguous_hx(case, dtype):
    unbatched, shape, view = HX_LAYOUTS[case]
    ref, fused = twins(I, H, L, bidirectional=True, dtype=dtype)
    x = torch.randn((T, I) if unbatched else (T, B, I), dtype=dtype)
    base = torch.randn(shape, dtype=dtype)
    assert not view(base).is_contiguous()

    def fn(m):
        lx, lb = leaf(x), leaf(base)
        return fwd_bwd(m, lx, view(lb), leaves={"x": lx, "hx": lb})

    check(fn, ref, fused, dtype)


def _transposed_like(p):
    """p's values in a tensor with transposed (2-D) or stride-2 (1-D) storage."""
    if p.dim() == 2:
        return p.detach().t().contiguous().t()
    return torch.stack([p.detach(), torch.zeros_like(p)], 1).view(-1)[::2]


def _offset_like(p):
    return torch.cat([torch.zeros(7, dtype=p.dtype), p.detach().reshape(-1)])[7:].view(p.shape)


WEIGHT_LAYOUTS = {
    # name: (which parameters, relayout)
    "w_ih_transposed": (lambda n: n.startswith("weight_ih"), _transposed_like),
    "w_hh_transposed": (lambda n: n.startswith("weight_hh"), _transposed_like),
    "biases_strided": (lambda n: n.startswith("bias"), _transposed_like),
    "all_transposed_or_strided": (lambda n: True, _transposed_like),
    "layer1_reverse_transposed": (lambda n: n.endswith("l1_reverse"), _transposed_like),
    "all_storage_offset": (lambda n: True, _offset_like),
}


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", WEIGHT_LAYOUTS)
def test_noncontiguous_weights_set_(case, dtype):
    which, relayout = WEIGHT_LAYOUTS[case]
    ref, fused = twins(I, H, L, bidirectional=True, dtype=dtype)
    with torch.no_grad():
        for m in (ref, fused):
            for name, p in m.named_parameters():
                if which(name):
                    p.set_(relayout(p))
    assert any(not p.is_contiguous() or p.storage_offset() for p in fused.parameters())
    x, hx = torch.randn(T, B, I, dtype=dtype), torch.randn(L * D, B, H, dtype=dtype)

    check(lambda m: run(m, x, hx), ref, fused, dtype)


@pytest.mark.parametrize("assign", [False, True], ids=["copy", "assign"])
def test_load_state_dict_of_transposed_tensors(assign):
    ref, fused = twins(I, H, L, bidirectional=True)
    sd = {k: _transposed_like(v) for k, v in ref.state_dict().items()}
    ref.load_state_dict(sd, assign=assign)
    fused.load_state_dict({k: _transposed_like(v) for k, v in sd.items()}, assign=assign)
    if assign:
        assert not fused.weight_hh_l1.is_contiguous()
    x, hx = torch.randn(T, B, I, dtype=F64), torch.randn(L * D, B, H, dtype=F64)

    check(lambda m: run(m, x, hx), ref, fused, F64)


# ---- parametrized weights (torch.nn.utils.parametrize, and the older hook-based weight/spectral norm) -----

class _Symmetric(nn.Module):
    def forward(self, X):
        return X.triu() + X.triu(1).transpose(-1, -2)


PARAMETRIZATIONS = {
    "register_parametrization_symmetric_hh": lambda m: torch.nn.utils.parametrize.register_parametrization(
        m, "weight_hh_l0", _Symmetric()),
    "register_parametrization_bias": lambda m: torch.nn.utils.parametrize.register_parametrization(
        m, "bias_ih_l1", nn.Tanh()),
    "weight_norm_ih": lambda m: torch.nn.utils.parametrizations.weight_norm(m, "weight_ih_l0"),
    "spectral_norm_hh_layer1": lambda m: torch.nn.utils.parametrizations.spectral_norm(m, "weight_hh_l1"),
    "orthogonal_hh_reverse": lambda m: torch.nn.utils.parametrizations.orthogonal(m, "weight_hh_l0_reverse"),
    "two_parametrizations": lambda m: (torch.nn.utils.parametrizations.weight_norm(m, "weight_ih_l1_reverse"),
                                       torch.nn.utils.parametrize.register_parametrization(
                                           m, "weight_hh_l1_reverse", _Symmetric())),
    "old_weight_norm_hook": lambda m: torch.nn.utils.weight_norm(m, "weight_hh_l0"),
    "old_spectral_norm_hook": lambda m: torch.nn.utils.spectral_norm(m, "weight_ih_l1"),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", PARAMETRIZATIONS)
def test_parametrized_weights(case, training):
    ref, fused = twins(I, H, L, bidirectional=True)
    for m in (ref, fused):
        torch.manual_seed(4)  # spectral norm draws its power-iteration vectors
        PARAMETRIZATIONS[case](m)
        m.train(training)
    x, hx = torch.randn(T, B, I, dtype=F64), torch.randn(L * D, B, H, dtype=F64)

    check(lambda m: run(m, x, hx), ref, fused, F64)


# ---- dtypes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_low_precision_modules(dtype, nonlinearity):
    """fp16/bf16 on CPU: no closer to nn.RNN than rounding allows, so both are measured against a float64
    nn.RNN on the same (rounded) values: fused_rnn's max error is at most 2x nn.RNN's own (plus one ulp)."""
    ref, fused = twins(I, H, L, nonlinearity=nonlinearity, bidirectional=True, dtype=dtype)
    exact = nn.RNN(I, H, L, nonlinearity=nonlinearity, bidirectional=True, dtype=F64)
    exact.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
    x, hx = torch.randn(T, B, I).to(dtype), torch.randn(L * D, B, H).to(dtype)

    def fn(m):
        cast = next(m.parameters()).dtype
        return run(m, x.to(cast), hx.to(cast))

    want = fn(exact)
    got_ref, got_fused = fn(ref), outcome(fn, fused)
    assert got_fused[0] == "ok", got_fused[1]
    got_fused = got_fused[1]
    assert got_fused.keys() == want.keys()
    eps = torch.finfo(dtype).eps
    for key, w in want.items():
        r, f = got_ref[key], got_fused[key]
        assert f.dtype == dtype and f.shape == w.shape, key
        assert_within_2x(f, r, w, eps * max(1.0, w.abs().max().item()), key)


# Input dtypes nn.RNN rejects with its own Python ValueError (message compared); test_errors.py has
# float32 model + int64 / float64 / unbatched float16 input.
BAD_INPUT_DTYPES = {
    "int32_into_f64": (F64, lambda: (torch.ones(T, B, I, dtype=torch.int32),)),
    "bool_into_f32": (F32, lambda: (torch.ones(T, B, I, dtype=torch.bool),)),
    "int64_unbatched_into_f64": (F64, lambda: (torch.ones(T, I, dtype=torch.long),)),
    "bf16_into_f32": (F32, lambda: (torch.randn(T, B, I, dtype=torch.bfloat16),)),
    "complex_into_f32": (F32, lambda: (torch.randn(T, B, I, dtype=torch.complex64),)),
    "f32_into_f64_with_f64_hx": (F64, lambda: (torch.randn(T, B, I), torch.randn(L * D, B, H, dtype=F64))),
    "int_packed_into_f64": (F64, lambda: (PackedSequence(torch.ones(4, I, dtype=torch.long),
                                                         torch.tensor([2, 1, 1]), None, None),)),
}


@pytest.mark.parametrize("case", BAD_INPUT_DTYPES)
def test_bad_input_dtype(case):
    dtype, make_args = BAD_INPUT_DTYPES[case]
    ref, fused = twins(I, H, L, bidirectional=True, dtype=dtype)
    args = make_args()
    check(lambda m: m(*args), ref, fused, dtype, nn_raises=ValueError, same_message=True)


# hx / weight dtypes that nn.RNN only rejects inside its kernels (RuntimeError, own message): same type.
BAD_STATE_DTYPES = {
    "f32_hx_f64_input": (F64, lambda: (torch.randn(T, B, I, dtype=F64), torch.randn(L * D, B, H))),
    "f16_hx_f32_input": (F32, lambda: (torch.randn(T, B, I), torch.randn(L * D, B, H, dtype=torch.float16))),
    "int_hx": (F32, lambda: (torch.randn(T, B, I), torch.zeros(L * D, B, H, dtype=torch.long))),
    "f64_hx_unbatched": (F32, lambda: (torch.randn(T, I), torch.randn(L * D, H, dtype=F64))),
    "f64_hx_packed": (F32, lambda: (PackedSequence(torch.randn(4, I), torch.tensor([2, 1, 1]), None, None),
                                    torch.randn(L * D, 2, H, dtype=F64))),
}


@pytest.mark.parametrize("case", BAD_STATE_DTYPES)
def test_bad_hx_dtype(case):
    dtype, make_args = BAD_STATE_DTYPES[case]
    ref, fused = twins(I, H, L, bidirectional=True, dtype=dtype)
    args = make_args()
    check(lambda m: m(*args), ref, fused, dtype, nn_raises=RuntimeError)


@pytest.mark.parametrize("name", ["weight_hh_l0", "bias_hh_l0", "weight_ih_l1_reverse", "bias_ih_l1"])
def test_one_weight_of_another_dtype(name):
    ref, fused = twins(I, H, L, bidirectional=True, dtype=F32)
    for m in (ref, fused):
        getattr(m, name).data = getattr(m, name).data.double()
    x = torch.randn(T, B, I)
    check(lambda m: m(x), ref, fused, F32, nn_raises=RuntimeError)


# ---- autograd modes -------------------------------------------------------------------------------

def _mode_no_grad(m, x, hx):
    with torch.no_grad():
        out, hn = m(leaf(x), leaf(hx))
    return {"output": out, "h_n": hn, "requires_grad": (out.requires_grad, hn.requires_grad)}


def _mode_inference(m, x, hx):
    with torch.inference_mode():
        out, hn = m(x.clone(), hx.clone())
    return {"output": out.clone(), "h_n": hn.clone(), "inference": (out.is_inference(), hn.is_inference())}


def _mode_enable_grad_in_no_grad(m, x, hx):
    with torch.no_grad():
        with torch.enable_grad():
            return run(m, x, hx)


def _mode_set_grad_enabled_false(m, x, hx):
    with torch.set_grad_enabled(False):
        out, hn = m(leaf(x), leaf(hx))
    return {"output": out, "h_n": hn, "requires_grad": (out.requires_grad, hn.requires_grad)}


def _frozen(m, keep=()):
    for name, p in m.named_parameters():
        p.requires_grad_(name in keep)


def _mode_only_hx(m, x, hx):
    _frozen(m)
    lh = leaf(hx)
    return fwd_bwd(m, x.clone(), lh, {"hx": lh})


def _mode_only_input(m, x, hx):
    _frozen(m)
    lx = leaf(x)
    return fwd_bwd(m, lx, hx.clone(), {"x": lx})


def _mode_only_one_weight(m, x, hx):
    _frozen(m, keep=("weight_hh_l0_reverse",))
    return fwd_bwd(m, x.clone(), hx.clone())


def _mode_only_one_bias_layer1(m, x, hx):
    _frozen(m, keep=("bias_ih_l1",))
    return fwd_bwd(m, x.clone(), hx.clone())


def _mode_nothing_requires_grad(m, x, hx):
    _frozen(m)
    out, hn = m(x.clone(), hx.clone())
    return {"output": out, "h_n": hn, "requires_grad": (out.requires_grad, hn.requires_grad)}


def _mode_retain_graph_twice(m, x, hx):
    lx, lh = leaf(x), leaf(hx)
    out, hn = m(lx, lh)
    loss = (out * upstream(out, 1)).sum() + (hn * upstream(hn, 2)).sum()
    loss.backward(retain_graph=True)
    first = lx.grad.clone()
    loss.backward()
    return {"first": first, "x": lx.grad, "hx": lh.grad, **{n: p.grad for n, p in m.named_parameters()}}


def _mode_backward_h_n_only(m, x, hx):
    return run(m, x, hx, backward_of=("h_n",))


def _mode_backward_output_only(m, x, hx):
    return run(m, x, hx, backward_of=("output",))


def _mode_backward_last_step_only(m, x, hx):
    def last_step(out, hn):
        g_out = torch.zeros_like(out)
        g_out[-1] = upstream(out[-1], 3)
        return g_out, None
    return run(m, x, hx, upstream_grads=last_step, backward_of=("output",))


def _mode_backward_one_direction_of_h_n(m, x, hx):
    def layer_0_reverse(out, hn):
        g_hn = torch.zeros_like(hn)
        g_hn[1] = 1
        return None, g_hn
    return run(m, x, hx, upstream_grads=layer_0_reverse, backward_of=("h_n",))


def _mode_autograd_grad_subset(m, x, hx):
    lx, lh = leaf(x), leaf(hx)
    out, hn = m(lx, lh)
    gx, gw = torch.autograd.grad((out * upstream(out, 1)).sum(), (lx, m.weight_ih_l1))
    return {"x": gx, "w": gw, "param_grads_untouched": all(p.grad is None for p in m.parameters())}


def _mode_unused_input_allow_unused(m, x, hx):
    lx, lh, other = leaf(x), leaf(hx), leaf(torch.ones(2, dtype=x.dtype))
    out, _ = m(lx, lh)
    gx, gother = torch.autograd.grad(out.sum(), (lx, other), allow_unused=True)
    return {"x": gx, "other_is_none": gother is None}


AUTOGRAD_MODES = {k[len("_mode_"):]: v for k, v in dict(globals()).items() if k.startswith("_mode_")}


@pytest.mark.parametrize("case", AUTOGRAD_MODES)
def test_autograd_modes(case):
    ref, fused = twins(I, H, L, bidirectional=True)
    x, hx = torch.randn(T, B, I, dtype=F64), torch.randn(L * D, B, H, dtype=F64)
    check(lambda m: AUTOGRAD_MODES[case](m, x, hx), ref, fused, F64)


# ---- in-place modification of the results before backward ---------------------------------------

def _inplace_relu_(out, hn):
    torch.relu_(out)


def _inplace_mul_(out, hn):
    out.mul_(2)


def _inplace_add_(out, hn):
    out.add_(1)


def _inplace_dropout(out, hn):
    torch.manual_seed(7)
    F.dropout(out, p=0.5, training=True, inplace=True)


def _inplace_zero_first_step(out, hn):
    out[0].zero_()


def _inplace_h_n_mul_(out, hn):
    hn.mul_(2)


def _inplace_both(out, hn):
    out.tanh_()
    hn.sigmoid_()


INPLACE = {k[len("_inplace_"):]: v for k, v in dict(globals()).items() if k.startswith("_inplace_")}


@pytest.mark.parametrize("layout", ["time_major", "batch_first", "unbatched", "packed"])
@pytest.mark.parametrize("case", INPLACE)
def test_inplace_on_results(case, layout):
    """nn.RNN on CPU accepts these (its output is not saved for backward); gradients reflect the op."""
    ref, fused = twins(I, H, L, bidirectional=True, batch_first=layout == "batch_first")
    base = torch.randn(T, B, I, dtype=F64)

    def fn(m):
        lx = leaf(base)
        if layout == "unbatched":
            x = lx[:, 0]
        elif layout == "packed":
            x = pack_padded_sequence(lx, torch.tensor([5, 3, 2]), enforce_sorted=False)
        elif layout == "batch_first":
            x = lx.transpose(0, 1)
        else:
            x = lx
        out, hn = m(x)
        out_t = out.data if layout == "packed" else out
        INPLACE[case](out_t, hn)
        ((out_t * upstream(out_t, 1)).sum() + (hn * upstream(hn, 2)).sum()).backward()
        return {"output": out_t, "h_n": hn, "x": lx.grad, **{n: p.grad for n, p in m.named_parameters()}}

    check(fn, ref, fused, F64)


# In-place modification of what the backward needs: nn.RNN raises (version counter) on backward;
# a fused_rnn that did not notice would return gradients of values that no longer exist.
SAVED_MODIFICATIONS = {
    "input_after_forward": lambda m, x, hx: x.add_(1),
    "hx_after_forward": lambda m, x, hx: hx.add_(1),
    "weight_hh_after_forward": lambda m, x, hx: m.weight_hh_l0.add_(1),
    "weight_ih_layer1_after_forward": lambda m, x, hx: m.weight_ih_l1_reverse.mul_(2),
}


@pytest.mark.parametrize("case", SAVED_MODIFICATIONS)
def test_inplace_on_saved_tensors(case):
    ref, fused = twins(I, H, L, bidirectional=True)
    base_x, base_h = torch.randn(T, B, I, dtype=F64), torch.randn(L * D, B, H, dtype=F64)

    def fn(m):
        x, hx = base_x.clone(), base_h.clone()  # not leaves (modified in place below); parameters require grad
        out, hn = m(x, hx)
        with torch.no_grad():
            SAVED_MODIFICATIONS[case](m, x, hx)
        (out.sum() + hn.sum()).backward()
        return {n: p.grad for n, p in m.named_parameters()}

    check(fn, ref, fused, F64, nn_raises=RuntimeError)


# ---- shapes ---------------------------------------------------------------------------------------

SHAPES = {
    # name: (module kwargs (I, H, L, ...), input factory -> (base, make_x), hx shape or None)
    "batch0_with_hx": (dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True),
                       (T, 0, 3), (4, 0, 4)),
    "batch0_batch_first": (dict(input_size=3, hidden_size=4, num_layers=2, batch_first=True), (0, T, 3), None),
    "T1": (dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True), (1, B, 3), (4, B, 4)),
    "H1": (dict(input_size=3, hidden_size=1, num_layers=3, bidirectional=True), (T, B, 3), (6, B, 1)),
    "I1": (dict(input_size=1, hidden_size=4, num_layers=2), (T, B, 1), (2, B, 4)),
    "all_ones": (dict(input_size=1, hidden_size=1), (1, 1, 1), (1, 1, 1)),
    "all_ones_relu_bidir": (dict(input_size=1, hidden_size=1, nonlinearity="relu", bidirectional=True),
                            (1, 1, 1), (2, 1, 1)),
    "B1_unbatched_like": (dict(input_size=2, hidden_size=3, bidirectional=True), (T, 1, 2), (2, 1, 3)),
    "long_T_tanh": (dict(input_size=2, hidden_size=2, bidirectional=True), (1000, 2, 2), (2, 2, 2)),
    "long_T_relu": (dict(input_size=2, hidden_size=2, nonlinearity="relu", num_layers=2), (300, 2, 2), None),
    "no_bias_3_layers": (dict(input_size=2, hidden_size=3, num_layers=3, bias=False, bidirectional=True),
                         (T, B, 2), (6, B, 3)),
    "unbatched_2d": (dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True), (T, 3), (4, 4)),
    "unbatched_T1": (dict(input_size=3, hidden_size=2), (1, 3), (1, 2)),
}


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", SHAPES)
def test_shapes(case, dtype):
    kwargs, x_shape, hx_shape = SHAPES[case]
    ref, fused = twins(**kwargs, dtype=dtype)
    x = torch.randn(x_shape, dtype=dtype)
    hx = None if hx_shape is None else torch.randn(hx_shape, dtype=dtype)

    check(lambda m: run(m, x, hx), ref, fused, dtype)


PACKED = {
    # name: (lengths, enforce_sorted, num_layers, bidirectional, with hx)
    "sorted_hx": ([5, 3, 2], True, 2, True, True),
    "unsorted_hx": ([2, 5, 3], False, 2, True, True),
    "unsorted_no_hx": ([1, 4, 4], False, 1, True, False),
    "equal_lengths_unsorted": ([4, 4, 4], False, 2, False, True),
    "single_sequence": ([6], True, 3, True, True),
    "all_length_one": ([1, 1, 1], False, 2, True, True),
    "unsorted_reverse_order": ([1, 2, 6], False, 1, False, True),
}


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("case", PACKED)
def test_packed(case, nonlinearity, dtype):
    lengths, enforce_sorted, layers, bidirectional, with_hx = PACKED[case]
    ref, fused = twins(I, H, layers, nonlinearity=nonlinearity, bidirectional=bidirectional, dtype=dtype)
    padded = torch.randn(max(lengths), len(lengths), I, dtype=dtype)
    hx = torch.randn(layers * (2 if bidirectional else 1), len(lengths), H, dtype=dtype) if with_hx else None

    def fn(m):
        lp = leaf(padded)
        x = pack_padded_sequence(lp, torch.tensor(lengths), enforce_sorted=enforce_sorted)
        if hx is None:
            return fwd_bwd(m, x, leaves={"x": lp})
        lh = leaf(hx)
        return fwd_bwd(m, x, lh, {"x": lp, "hx": lh})

    check(fn, ref, fused, dtype)


# ---- crash-prone cases: run in a child process --------------------------------------------------
# SUBPROCESS_CASES[name] = (fn(side) with side 'ref' / 'fused', exception nn.RNN raises or None, dtype).
# The child runs both sides of each case and saves the outcomes; the parent compares them.

SUBPROCESS_CASES = {}


def _sub(name, nn_raises=None, dtype=F64):
    def register(fn):
        SUBPROCESS_CASES[name] = (fn, nn_raises, dtype)
        return fn
    return register


def _side(side, *args, **kwargs):
    torch.manual_seed(0)
    ref, fused = twins(*args, **kwargs)
    return ref if side == "ref" else fused


def _meta_weight_case(name):
    def fn(side):
        m = _side(side, I, H, L, bidirectional=True)
        setattr(m, name, nn.Parameter(torch.empty(getattr(m, name).shape, dtype=F64, device="meta")))
        torch.manual_seed(1)
        out, hn = m(torch.randn(T, B, I, dtype=F64), torch.randn(L * D, B, H, dtype=F64))
        return {"output": out, "h_n": hn}
    return fn


for _name in ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_ih_l0_reverse",
              "weight_hh_l1", "bias_hh_l1_reverse"]:
    _sub(f"meta_{_name}", nn_raises=RuntimeError)(_meta_weight_case(_name))


def _meta_hx_case(kind):
    def fn(side):
        m = _side(side, I, H, L, bidirectional=True, batch_first=kind == "batch_first")
        torch.manual_seed(1)
        if kind == "packed":
            x = PackedSequence(torch.randn(4, I, dtype=F64), torch.tensor([2, 1, 1]), None, None)
            hx = torch.zeros(L * D, 2, H, dtype=F64, device="meta")
        elif kind == "unbatched":
            x, hx = torch.randn(T, I, dtype=F64), torch.zeros(L * D, H, dtype=F64, device="meta")
        else:
            x, hx = torch.randn(B, T, I, dtype=F64), torch.zeros(L * D, B, H, dtype=F64, device="meta")
        out, hn = m(x, hx)
        return {"output": out.data if kind == "packed" else out, "h_n": hn}
    return fn


for _kind in ["packed", "unbatched", "batch_first"]:
    _sub(f"meta_hx_{_kind}", nn_raises=RuntimeError)(_meta_hx_case(_kind))


def _expanded_case(what):
    """Zero-stride tensors: their storage is smaller than their logical size."""
    def fn(side):
        m = _side(side, I, H, L, bidirectional=True)
        torch.manual_seed(1)
        x_base, h_base = torch.randn(T, 1, I, dtype=F64), torch.randn(L * D, 1, H, dtype=F64)
        leaves = {}
        if what == "weights":
            with torch.no_grad():
                m.weight_hh_l0.set_(m.weight_hh_l0[:, :1].clone().expand(H, H))
                m.weight_ih_l1.set_(m.weight_ih_l1[:1].clone().expand(H, D * H))
                m.bias_ih_l0_reverse.set_(m.bias_ih_l0_reverse[:1].clone().expand(H))
            lx, lh = leaf(x_base.expand(T, B, I)), leaf(h_base.expand(L * D, B, H))
            x, hx, leaves = lx, lh, {"x": lx, "hx": lh}
        else:
            lx, lh = leaf(x_base), leaf(h_base)
            x = lx.expand(T, B, I) if what in ("input", "both") else lx.expand(T, B, I).clone()
            hx = lh.expand(L * D, B, H) if what in ("hx", "both") else lh.expand(L * D, B, H).clone()
            leaves = {"x": lx, "hx": lh}
        return fwd_bwd(m, x, hx, leaves)
    return fn


for _what in ["input", "hx", "both", "weights"]:
    _sub(f"expanded_{_what}")(_expanded_case(_what))


@_sub("expanded_input_all_dims")
def _expanded_all(side):
    m = _side(side, I, H, L, batch_first=True)
    lx = leaf(torch.randn(1, 1, I, dtype=F64))
    return fwd_bwd(m, lx.expand(B, T, I), leaves={"x": lx})


@_sub("expanded_packed_data")
def _expanded_packed(side):
    m = _side(side, I, H, L, bidirectional=True)
    lx = leaf(torch.randn(1, I, dtype=F64))
    return fwd_bwd(m, PackedSequence(lx.expand(6, I), torch.tensor([3, 2, 1]), None, None), leaves={"x": lx})


def _batch_sizes_case(sizes, rows, bidirectional=True, hx=True):
    def fn(side):
        m = _side(side, I, H, 2, bidirectional=bidirectional)
        torch.manual_seed(1)
        lx = leaf(torch.randn(rows, I, dtype=F64))
        x = PackedSequence(lx, torch.tensor(sizes), None, None)
        if not hx:
            return fwd_bwd(m, x, leaves={"x": lx})
        lh = leaf(torch.randn(2 * (2 if bidirectional else 1), sizes[0], H, dtype=F64))
        return fwd_bwd(m, x, lh, {"x": lx, "hx": lh})
    return fn


# nn.RNN accepts batch_sizes with trailing zeros and packed data with extra rows (ignored, zero gradient).
_sub("packed_trailing_zero")(_batch_sizes_case([2, 2, 1, 0], 5))
_sub("packed_two_trailing_zeros_no_hx")(_batch_sizes_case([3, 1, 0, 0], 4, hx=False))
# Unidirectional: nn.RNN ignores the extra rows. (Bidirectional, its reverse pass reads them from the
# data's end; fused_rnn ignores them there too: test_errors.py.)
_sub("packed_more_rows_than_batch_sizes")(_batch_sizes_case([2, 2, 1], 7, bidirectional=False))
_sub("packed_more_rows_and_trailing_zero")(_batch_sizes_case([2, 1, 0], 6, bidirectional=False))
# nn.RNN rejects a leading zero (RuntimeError from its kernel).
_sub("packed_leading_zero", nn_raises=RuntimeError)(_batch_sizes_case([0, 2, 2, 1], 5, hx=False))


@_sub("packed_int32_batch_sizes", nn_raises=RuntimeError)
def _int32_batch_sizes(side):
    m = _side(side, I, H)
    return fwd_bwd(m, PackedSequence(torch.randn(5, I, dtype=F64), torch.tensor([2, 2, 1], dtype=torch.int32),
                                     None, None))


_CHILD = """
import os, sys, torch
sys.path.insert(0, {tests!r})
import test_hostile_inputs as T
out_dir = sys.argv[1]
for name in sys.argv[2:]:
    print("BEGIN", name, flush=True)
    fn, _, _ = T.SUBPROCESS_CASES[name]
    res = {{}}
    for side in ("ref", "fused"):
        kind, value = T.outcome(fn, side)
        if kind == "ok":
            res[side] = ("ok", T.detached(value))
        else:
            res[side] = ("raise", type(value).__module__, type(value).__qualname__, str(value))
    torch.save(res, os.path.join(out_dir, name + ".pt"))
    print("END", name, flush=True)
"""


@pytest.fixture(scope="module")
def child_results(tmp_path_factory):
    """Runs every SUBPROCESS_CASES case in child processes; a case that kills its child is recorded as
    ('crashed', returncode, stderr) and the rest continue in a fresh child."""
    out_dir = tmp_path_factory.mktemp("hostile")
    remaining, results = list(SUBPROCESS_CASES), {}
    script = _CHILD.format(tests=TESTS_DIR)
    while remaining:
        proc = subprocess.run([sys.executable, "-c", script, str(out_dir), *remaining], capture_output=True,
                              text=True, timeout=300)
        ended = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("END ")]
        for name in ended:
            results[name] = torch.load(out_dir / (name + ".pt"), weights_only=False)
        remaining = [n for n in remaining if n not in ended]
        if remaining:
            assert proc.returncode != 0, proc.stderr[-2000:]
            results[remaining[0]] = ("crashed", proc.returncode, proc.stderr[-2000:])
            remaining = remaining[1:]
    return results


_EXC_TYPES = {}


def _rebuild(saved):
    """An outcome() pair from what the child saved (exceptions by module, name and message)."""
    if saved[0] == "ok":
        return saved
    _, module, qualname, message = saved
    exc_type = getattr(builtins, qualname, None) if module == "builtins" else None
    if not isinstance(exc_type, type):
        exc_type = _EXC_TYPES.setdefault((module, qualname), type(qualname, (Exception,), {"__module__": module}))
    return "raise", exc_type(message)


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_crash_prone_in_subprocess(case, child_results):
    _, nn_raises, dtype = SUBPROCESS_CASES[case]
    res = child_results[case]
    if isinstance(res, tuple):  # ("crashed", returncode, stderr)
        pytest.fail(f"the process died running this case (return code {res[1]}):\n{res[2]}")
    assert_same_outcome(_rebuild(res["fused"]), _rebuild(res["ref"]), dtype, nn_raises)


# A PackedSequence whose batch_sizes tensor is strided. nn.RNN reads the raw storage ([2, 9, 2]) and raises
# a meaningless error; fused_rnn's contract is the tensor's logical values: the same results as with the
# contiguous batch_sizes [2, 2, 1]. This once aborted the process (heap corruption), hence the child.

STRIDED_BATCH_SIZES = {
    "strided": lambda: torch.tensor([2, 9, 2, 9, 1, 9])[::2],
    "storage_offset": lambda: torch.tensor([7, 2, 2, 1])[1:],
    "strided_unsorted": lambda: torch.tensor([2, 9, 2, 9, 1, 9])[::2],
}


def strided_batch_sizes_run(variant, contiguous):
    torch.manual_seed(0)
    m = fused_rnn.RNN(2, 3, 2, bidirectional=True, dtype=F64)
    torch.manual_seed(1)
    data, hx = torch.randn(5, 2, dtype=F64), torch.randn(4, 2, 3, dtype=F64)
    bs = STRIDED_BATCH_SIZES[variant]()
    if contiguous:
        bs = torch.tensor(bs.tolist())
    else:
        assert not bs.is_contiguous() or bs.storage_offset()
    idx = (torch.tensor([1, 0]), torch.tensor([1, 0])) if variant.endswith("unsorted") else (None, None)
    ld, lh = leaf(data), leaf(hx)
    return fwd_bwd(m, PackedSequence(ld, bs, *idx), lh, {"x": ld, "hx": lh})


_STRIDED_CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
import test_hostile_inputs as T
res = {{v: {{k: None if t is None else t.tolist()
           for k, t in T.strided_batch_sizes_run(v, contiguous=False).items()}}
       for v in T.STRIDED_BATCH_SIZES}}
print("RESULT", json.dumps(res))
"""


def test_strided_batch_sizes_in_subprocess():
    proc = subprocess.run([sys.executable, "-c", _STRIDED_CHILD.format(tests=TESTS_DIR)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"child died with return code {proc.returncode}:\n{proc.stderr[-3000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    got = json.loads(lines[0][len("RESULT "):])
    for variant in STRIDED_BATCH_SIZES:
        want = strided_batch_sizes_run(variant, contiguous=True)
        assert got[variant].keys() == want.keys()
        got_tensors = {k: None if w is None else torch.tensor(got[variant][k], dtype=w.dtype) for k, w in want.items()}
        assert_same_results(want, got_tensors, F64)


# ---- gradcheck / gradgradcheck of fused_rnn.RNN -------------------------------------------------

def _gradcheck_inputs(nonlinearity):
    torch.manual_seed(3)
    m = fused_rnn.RNN(2, 2, 2, nonlinearity=nonlinearity, bidirectional=True, dtype=F64)
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(3, 2, 2, dtype=F64, requires_grad=True)
    hx = torch.randn(4, 2, 2, dtype=F64, requires_grad=True)
    weights = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def f(x, hx, *ws):
        return torch.func.functional_call(m, dict(zip(names, ws)), (x, hx))

    return f, (x, hx, *weights)


# One full first-order gradcheck (every Jacobian entry); the other checks in fast mode (a random
# projection: gradient checks compare v^T J u), a fraction of the full checks' time, the full
# gradgradcheck's above all. A zero or wrong tangent, batched gradient or second derivative still fails.
GRADCHECKS = {
    "gradcheck": lambda f, a: torch.autograd.gradcheck(f, a),  # check_undefined_grad=True by default
    "gradcheck_batched_grad": lambda f, a: torch.autograd.gradcheck(f, a, fast_mode=True, check_batched_grad=True),
    "gradcheck_forward_ad": lambda f, a: torch.autograd.gradcheck(f, a, fast_mode=True, check_forward_ad=True,
                                                                  check_backward_ad=False),
    "gradgradcheck": lambda f, a: torch.autograd.gradgradcheck(f, a, fast_mode=True),
    "gradgradcheck_batched_grad": lambda f, a: torch.autograd.gradgradcheck(f, a, fast_mode=True,
                                                                            check_batched_grad=True),
}


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("check_name", GRADCHECKS)
def test_gradcheck(check_name, nonlinearity):
    f, args = _gradcheck_inputs(nonlinearity)
    assert GRADCHECKS[check_name](f, args)


# ---- torch.func transforms (through functional_call) against nn.RNN ----------------------------

def _func_setup(m):
    params = {k: v.detach() for k, v in m.named_parameters()}
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3, 2, 2, generator=g, dtype=F64)
    hx = torch.randn(4, 2, 3, generator=g, dtype=F64)
    tx, th = torch.randn(x.shape, generator=g, dtype=F64), torch.randn(hx.shape, generator=g, dtype=F64)

    def outputs(p, x, hx):
        return torch.func.functional_call(m, p, (x, hx))

    def loss(p, x, hx):
        out, hn = outputs(p, x, hx)
        return out.sin().sum() + hn.pow(2).sum()

    return params, x, hx, tx, th, outputs, loss


def _func_grad(m):
    p, x, hx, _, _, _, loss = _func_setup(m)
    return torch.func.grad(loss, argnums=(0, 1, 2))(p, x, hx)


def _func_grad_and_value(m):
    p, x, hx, _, _, _, loss = _func_setup(m)
    return torch.func.grad_and_value(loss, argnums=(0, 1))(p, x, hx)


def _func_vjp(m):
    p, x, hx, tx, th, outputs, _ = _func_setup(m)
    (out, hn), pullback = torch.func.vjp(lambda x, hx: outputs(p, x, hx), x, hx)
    return out, hn, pullback((upstream(out, 1), upstream(hn, 2)))


def _func_jacrev(m):
    p, x, hx, _, _, outputs, _ = _func_setup(m)
    return torch.func.jacrev(lambda x, hx: outputs(p, x, hx)[1], argnums=(0, 1))(x, hx)


def _func_jvp(m):
    p, x, hx, tx, th, outputs, _ = _func_setup(m)
    return torch.func.jvp(lambda x, hx: outputs(p, x, hx), (x, hx), (tx, th))


def _func_jvp_params(m):
    p, x, hx, _, _, outputs, _ = _func_setup(m)
    tp = {k: upstream(v, i) for i, (k, v) in enumerate(p.items())}
    return torch.func.jvp(lambda p: outputs(p, x, hx), (p,), (tp,))


def _func_jacfwd(m):
    p, x, hx, _, _, outputs, _ = _func_setup(m)
    return torch.func.jacfwd(lambda x: outputs(p, x, hx)[0])(x)


def _func_hessian(m):
    p, x, hx, _, _, _, loss = _func_setup(m)
    return torch.func.hessian(loss, argnums=1)(p, x, hx)


FUNC = {k[len("_func_"):]: v for k, v in dict(globals()).items() if k.startswith("_func_") and k != "_func_setup"}


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("case", FUNC)
def test_torch_func(case, nonlinearity):
    ref, fused = twins(2, 3, 2, nonlinearity=nonlinearity, bidirectional=True)
    check(FUNC[case], ref, fused, F64)


# ---- torch.autograd.functional -------------------------------------------------------------------

def _af_setup(m):
    g = torch.Generator().manual_seed(12)
    x = torch.randn(3, 2, 2, generator=g, dtype=F64)
    hx = torch.randn(4, 2, 3, generator=g, dtype=F64)
    return x, hx


def _af_jacobian_vectorized(m):
    x, hx = _af_setup(m)
    return torch.autograd.functional.jacobian(lambda x, hx: m(x, hx), (x, hx), vectorize=True)


def _af_jacobian_loop(m):
    x, hx = _af_setup(m)
    return torch.autograd.functional.jacobian(lambda x, hx: m(x, hx), (x, hx))


def _af_jacobian_forward_mode(m):
    x, hx = _af_setup(m)
    return torch.autograd.functional.jacobian(lambda x: m(x, hx)[1], x, vectorize=True, strategy="forward-mode")


def _af_hessian(m):
    x, hx = _af_setup(m)
    return torch.autograd.functional.hessian(lambda x: m(x, hx)[0].sin().sum(), x)


def _af_hvp(m):
    x, hx = _af_setup(m)
    return torch.autograd.functional.hvp(lambda x, hx: m(x, hx)[1].pow(2).sum(), (x, hx),
                                         (upstream(x, 1), upstream(hx, 2)))


AUTOGRAD_FUNCTIONAL = {k[len("_af_"):]: v for k, v in dict(globals()).items()
                       if k.startswith("_af_") and k != "_af_setup"}


@pytest.mark.parametrize("case", AUTOGRAD_FUNCTIONAL)
def test_autograd_functional(case):
    ref, fused = twins(2, 3, 2, bidirectional=True)
    check(AUTOGRAD_FUNCTIONAL[case], ref, fused, F64)


# ---- forward-mode AD with dual tensors ------------------------------------------------------------

def _dual_run(m, dual_input, dual_hx, dual_weights):
    import torch.autograd.forward_ad as fwAD
    g = torch.Generator().manual_seed(13)
    x = torch.randn(4, 2, 3, generator=g, dtype=F64)
    hx = torch.randn(4, 2, 4, generator=g, dtype=F64)
    with fwAD.dual_level():
        if dual_input:
            x = fwAD.make_dual(x, upstream(x, 1))
        if dual_hx:
            hx = fwAD.make_dual(hx, upstream(hx, 2))
        params = {k: v.detach() for k, v in m.named_parameters()}
        if dual_weights:
            params = {k: fwAD.make_dual(v, upstream(v, 10 + i)) for i, (k, v) in enumerate(params.items())}
        out, hn = torch.func.functional_call(m, params, (x, hx))
        po, to = fwAD.unpack_dual(out)
        ph, th = fwAD.unpack_dual(hn)
        return {"output": po, "h_n": ph, "tangent_output": to, "tangent_h_n": th}


DUALS = {
    "input": (True, False, False),
    "hx": (False, True, False),
    "weights": (False, False, True),
    "all": (True, True, True),
}


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("case", DUALS)
def test_forward_ad_dual(case, nonlinearity):
    ref, fused = twins(3, 4, 2, nonlinearity=nonlinearity, bidirectional=True)
    check(lambda m: _dual_run(m, *DUALS[case]), ref, fused, F64)


# ---- double backward ------------------------------------------------------------------------------

def _double_backward(m, penalty, packed=False):
    g = torch.Generator().manual_seed(14)
    x = leaf(torch.randn(4, 3, 3, generator=g, dtype=F64))
    hx = leaf(torch.randn(4, 3, 4, generator=g, dtype=F64))
    params = list(m.parameters())
    inp = pack_padded_sequence(x, torch.tensor([4, 2, 1])) if packed else x
    out, hn = m(inp, hx)
    out_t = out.data if packed else out
    loss = (out_t * upstream(out_t, 1)).sum() + (hn * upstream(hn, 2)).sum()
    gx, gh, *gw = torch.autograd.grad(loss, [x, hx, *params], create_graph=True)
    if penalty == "input_grad_norm":
        second = gx.norm()
    elif penalty == "all_grad_norms":
        second = gx.norm() + gh.norm() + sum(g.pow(2).sum() for g in gw)
    else:  # "weight_grad_times_loss"
        second = gw[1].sum() * loss
    second.backward()
    return {"first": (gx, gh, *gw), "x": x.grad, "hx": hx.grad, **{n: p.grad for n, p in m.named_parameters()}}


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("penalty", ["input_grad_norm", "all_grad_norms", "weight_grad_times_loss"])
def test_double_backward(penalty, nonlinearity, packed):
    ref, fused = twins(3, 4, 2, nonlinearity=nonlinearity, bidirectional=True)
    check(lambda m: _double_backward(m, penalty, packed), ref, fused, F64)
