"""Fixtures and helpers shared by the tests, one for each job: twin modules (nn.RNN and fused_rnn.RNN
with equal but separate parameters), one forward+backward runner, one comparison of results, the
"at most 2x the baseline's error" rule, random arguments of the ops, per-dtype tolerances, the
kernels' run-time switches, and the benchmarks/ scripts as modules.

Shapes: T steps, B batch, I input size, H hidden size, D directions, L layers.
"""
import contextlib
import importlib
import os
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils._pytree import keystr, tree_flatten_with_path

import fused_rnn
from fused_rnn.reference import rnn_reference

F64, F32 = torch.float64, torch.float32


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "opt_in: exercises a CUDA path that stays opt-in until a GPU run has validated it "
        "(benchmarks/gpu_check.sh runs these in a pytest process of their own, after the others, so "
        "that a fault in a kernel that never ran cannot take the validated tests' CUDA context down)")


def pytest_collection_modifyitems(items):
    """In tests/test_cuda.py, opt_in besides where a test says so: every test or case of the
    SM-resident regimes and of the tuned choice (whose trials run them), named so by convention; and
    the float16/bfloat16 cases of a forced per-step GEMM regime (cuda/gemm_steps_half.cu)."""
    for item in items:
        name = item.name
        if item.path.name == "test_cuda.py" and (
                "resident" in name or "tuned" in name or ("gemm" in name and "float16" in name)):
            item.add_marker(pytest.mark.opt_in)

# float64: parity to 1e-10; float32: 1e-5 relative. The atol is for O(1) values; assert_close_scaled
# scales it by the reference's largest magnitude (gradients are sums over T*B terms).
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=2e-6)}

# The ops' arguments after the tensors, in schema order.
OP_CONFIG = ("num_layers", "bidirectional", "relu", "has_biases")


def assert_close_scaled(actual, expected, dtype, **kwargs):
    """assert_close with TOL[dtype], atol scaled by max(1, max|expected|)."""
    tol = TOL[dtype]
    mags = expected.detach().abs().nan_to_num(posinf=0, neginf=0)
    scale = max(1.0, mags.max().item() if mags.numel() else 0.0)
    torch.testing.assert_close(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale, **kwargs)


# ---- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def poison():
    """Every at::empty (also inside the ops) is filled with NaN, so an unwritten element cannot pass."""
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    assert torch.empty(4).isnan().all()
    yield
    torch.use_deterministic_algorithms(prev)


@pytest.fixture
def switch():
    """switch(name, value) sets one of the kernels' run-time switches (switches.h: FUSED_RNN_CPU_REGIME,
    FUSED_RNN_CPU_ISA, FUSED_RNN_CUDA_REGIME, FUSED_RNN_CUDA_GEMM_TF32, ...) through fused_rnn._C.set_switch; after the test every
    switch it touched has its previous value again. The library reads the environment variables of
    those names once, when it loads, so setting them in a test would change nothing."""
    previous = {}

    def set_switch(name, value):
        previous.setdefault(name, fused_rnn._C.get_switch(name))
        fused_rnn._C.set_switch(name, value)

    yield set_switch
    for name, value in previous.items():
        fused_rnn._C.set_switch(name, value)


# ---- modules ------------------------------------------------------------------------------------------

def twin(make):
    """(make(nn.RNN), make(fused_rnn.RNN)): two modules built around either RNN class, the fused one
    given the first one's state_dict (its own Parameter objects)."""
    ref = make(nn.RNN)
    fused = make(fused_rnn.RNN)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def twins(*args, dtype=F64, **kwargs):
    """(nn.RNN, fused_rnn.RNN) with the same constructor arguments and the same state_dict."""
    return twin(lambda cls: cls(*args, dtype=dtype, **kwargs))


# ---- running a module ---------------------------------------------------------------------------------

def leaf(t, requires_grad=True):
    """A fresh contiguous leaf with t's values."""
    return t.detach().clone(memory_format=torch.contiguous_format).requires_grad_(requires_grad)


def upstream(t, salt):
    """A fixed random upstream gradient shaped like t (drawn in float64 on the CPU, then moved and cast)."""
    g = torch.Generator().manual_seed(1000 + salt)
    return torch.randn(t.shape, generator=g, dtype=F64).to(t.device, t.dtype)


def fwd_bwd(module, x, hx=None, leaves=None, upstream_grads=None, backward_of=("output", "h_n"),
            forward_contexts=()):
    """module(x[, hx]) inside forward_contexts (context managers), then backward of
    <output, g_out> + <h_n, g_hn>, only the terms named in backward_of.

    upstream_grads: (g_out, g_hn), cast to the outputs' dtypes; a function (output, h_n) -> (g_out,
    g_hn); or None for upstream(output, 1), upstream(h_n, 2).
    Returns {'output' (packed: its data), 'h_n', for packed output also 'batch_sizes', 'sorted_indices'
    and 'unsorted_indices', 'grad:<name>' for each of leaves {name: tensor}, 'grad:<parameter name>'}."""
    module.zero_grad(set_to_none=True)
    with contextlib.ExitStack() as stack:
        for context in forward_contexts:
            stack.enter_context(context)
        out, hn = module(x) if hx is None else module(x, hx)
    packed = isinstance(out, PackedSequence)
    out_t = out.data if packed else out
    if upstream_grads is None:
        g_out, g_hn = upstream(out_t, 1), upstream(hn, 2)
    elif callable(upstream_grads):
        g_out, g_hn = upstream_grads(out_t, hn)
    else:
        g_out, g_hn = upstream_grads[0].to(out_t.dtype), upstream_grads[1].to(hn.dtype)
    res = {"output": out_t, "h_n": hn}
    if packed:
        res.update(batch_sizes=out.batch_sizes, sorted_indices=out.sorted_indices,
                   unsorted_indices=out.unsorted_indices)
    terms = ([(out_t * g_out).sum()] if "output" in backward_of else []) + \
        ([(hn * g_hn).sum()] if "h_n" in backward_of else [])
    loss = sum(terms[1:], terms[0])
    if loss.requires_grad:
        loss.backward()
    for name, t in (leaves or {}).items():
        res["grad:" + name] = t.grad
    for name, p in module.named_parameters():
        res["grad:" + name] = p.grad
    return res


def run(module, x, hx=None, **kwargs):
    """fwd_bwd (kwargs: its options) on fresh leaf copies of x (a tensor, or a PackedSequence's data)
    and hx, which keep their strides; the leaves are named 'input' and 'hx'."""
    packed = isinstance(x, PackedSequence)
    data = (x.data if packed else x).detach().clone().requires_grad_()
    inp = PackedSequence(data, x.batch_sizes, x.sorted_indices, x.unsorted_indices) if packed else data
    leaves = {"input": data}
    h = None
    if hx is not None:
        h = leaves["hx"] = hx.detach().clone().requires_grad_()
    return fwd_bwd(module, inp, h, leaves, **kwargs)


# ---- comparing results --------------------------------------------------------------------------------

def flat(obj):
    """{path: leaf} of a pytree of tensors and Python values."""
    leaves, _ = tree_flatten_with_path(obj)
    return {keystr(path): value for path, value in leaves}


def assert_same_results(expected, got, dtype, equal_nan=False, scaled=True):
    """got (fused_rnn's) against expected (nn.RNN's or the reference's), pytrees of the same structure:
    tensors of the same shape and dtype, floating ones within TOL[dtype] (atol scaled unless not
    scaled), others equal; a tensor where one is expected (None is not); other values equal."""
    got, expected = flat(got), flat(expected)
    assert got.keys() == expected.keys()
    for key, e in expected.items():
        g = got[key]
        if not isinstance(e, torch.Tensor):
            assert g == e, f"{key}: fused_rnn {g!r}, expected {e!r}"
            continue
        assert isinstance(g, torch.Tensor), f"{key}: fused_rnn gave {g!r}, expected a tensor"
        assert g.shape == e.shape and g.dtype == e.dtype, f"{key}: {g.shape} {g.dtype} vs {e.shape} {e.dtype}"
        if not e.is_floating_point():
            assert torch.equal(g, e), key
        elif scaled:
            assert_close_scaled(g.detach(), e.detach(), dtype, equal_nan=equal_nan, msg=lambda m, k=key: f"{k}: {m}")
        else:
            torch.testing.assert_close(g.detach(), e.detach(), **TOL[dtype], equal_nan=equal_nan,
                                       msg=lambda m, k=key: f"{k}: {m}")


def max_error(a, b):
    """max |a - b| in float64."""
    return (a.detach().double() - b.detach().double()).abs().max().item()


def assert_within_2x(got, baseline, exact, atol, what=""):
    """The rule for arithmetic coarser than the reference's (low precision, another device): got is at
    most twice as far from exact as the baseline (nn.RNN in the same dtype) is, plus atol."""
    e_got, e_base = max_error(got, exact), max_error(baseline, exact)
    assert e_got <= 2 * e_base + atol, f"{what}: fused error {e_got:.3g} > 2 x baseline error {e_base:.3g} + {atol:.3g}"


# ---- the ops' arguments -------------------------------------------------------------------------------

def op_args(T=5, B=3, I=4, H=6, num_layers=2, bidirectional=True, relu=False, has_biases=True, packed=False,
            mask_p=None, dtype=torch.float64, requires_grad=False):
    """Arguments of rnn_forward as a dict, in schema order: random input, hx and weights (and dropout
    mask, batch_sizes). packed: True for random lengths (the first T) or the sequence lengths, sorted
    descending. mask_p: the dropout probability of an inverted-dropout mask (1: all zeros)."""
    D = 2 if bidirectional else 1
    batch_sizes = None
    if packed:
        if packed is True:
            lengths = sorted(torch.randint(1, T + 1, (B,)).tolist(), reverse=True)
            lengths[0] = T
        else:
            lengths = list(packed)
        batch_sizes = torch.tensor([sum(n > t for n in lengths) for t in range(T)], dtype=torch.long)
        x = torch.randn(int(batch_sizes.sum()), I, dtype=dtype)
    else:
        x = torch.randn(T, B, I, dtype=dtype)
    weights = []
    for layer in range(num_layers):
        for _ in range(D):
            in_l = I if layer == 0 else D * H
            ws = [torch.randn(H, in_l), torch.randn(H, H)] + ([torch.randn(H), torch.randn(H)] if has_biases else [])
            weights += [(w * 0.4).to(dtype) for w in ws]
    mask = None
    if mask_p is not None:
        shape = (num_layers - 1, *x.shape[:-1], D * H)
        if mask_p >= 1:
            mask = torch.zeros(shape, dtype=dtype)
        else:
            mask = torch.bernoulli(torch.full(shape, 1 - mask_p, dtype=dtype)) / (1 - mask_p)
    hx = torch.randn(num_layers * D, B, H, dtype=dtype)
    args = dict(input=x, hx=hx, weights=weights, batch_sizes=batch_sizes, dropout_mask=mask, num_layers=num_layers,
                bidirectional=bidirectional, relu=relu, has_biases=has_biases)
    if requires_grad:
        for t in [x, hx, *weights]:
            t.requires_grad_()
    return args


def op_inputs(a):
    """The differentiable arguments of op_args a: (input, hx, *weights)."""
    return (a["input"], a["hx"], *a["weights"])


def op_fn(a):
    """f(input, hx, *weights) -> (output, hy) through torch.ops.fused_rnn.rnn_forward, with a's other
    arguments."""
    def f(x, hx, *weights):
        out, hy, _ = torch.ops.fused_rnn.rnn_forward(x, hx, list(weights), a["batch_sizes"], a["dropout_mask"],
                                                     *(a[k] for k in OP_CONFIG))
        return out, hy
    return f


def reference_fn(a):
    """op_fn's counterpart through fused_rnn.reference.rnn_reference."""
    def f(x, hx, *weights):
        return rnn_reference(x, hx, list(weights), a["batch_sizes"], a["dropout_mask"], *(a[k] for k in OP_CONFIG))
    return f


def benchmark_script(name):
    """benchmarks/<name>.py as a module: a script, not part of the package (its folder goes on
    sys.path while it loads, for the scripts it imports in turn)."""
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    sys.path.insert(0, folder)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(folder)
