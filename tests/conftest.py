"""Shared helpers: twin modules (nn.RNN and fused_rnn.RNN with equal but separate parameters), a
forward+backward runner, and per-dtype tolerances.

Shapes: T steps, B batch, I input size, H hidden size, D directions, L layers.
"""
import pytest
import torch
from torch import nn

import fused_rnn

# float64: parity to 1e-10; float32: 1e-5 relative. The atol is for O(1) values; assert_close_scaled
# scales it by the reference's largest magnitude (gradients are sums over T*B terms).
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=2e-6)}


def assert_close_scaled(actual, expected, dtype, **kwargs):
    """assert_close with TOL[dtype], atol scaled by max(1, max|expected|)."""
    tol = TOL[dtype]
    mags = expected.detach().abs().nan_to_num(posinf=0, neginf=0)
    scale = max(1.0, mags.max().item() if mags.numel() else 0.0)
    torch.testing.assert_close(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale, **kwargs)


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


def twins(*args, dtype=torch.float64, **kwargs):
    """(nn.RNN, fused_rnn.RNN) with the same state_dict but their own Parameter objects."""
    ref = nn.RNN(*args, dtype=dtype, **kwargs)
    fused = fused_rnn.RNN(*args, dtype=dtype, **kwargs)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def run(module, x, hx=None):
    """Forward and backward with a fixed random upstream gradient for output and h_n.

    Returns (output, h_n, grads) with grads = {'input', 'hx' (when given), parameter names}.
    x / hx may be a tensor or a PackedSequence; fresh leaf copies are made here."""
    packed = isinstance(x, nn.utils.rnn.PackedSequence)
    data = (x.data if packed else x).detach().clone().requires_grad_()
    inp = nn.utils.rnn.PackedSequence(data, x.batch_sizes, x.sorted_indices, x.unsorted_indices) if packed else data
    h = None if hx is None else hx.detach().clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    out, hn = module(inp) if h is None else module(inp, h)
    out_t = out.data if packed else out
    g = torch.Generator().manual_seed(1234)
    g_out = torch.randn(out_t.shape, generator=g, dtype=out_t.dtype)
    g_hn = torch.randn(hn.shape, generator=g, dtype=hn.dtype)
    ((out_t * g_out).sum() + (hn * g_hn).sum()).backward()
    grads = {"input": data.grad}
    if h is not None:
        grads["hx"] = h.grad
    grads.update({n: p.grad for n, p in module.named_parameters()})
    return out, hn, grads


def assert_same_run(ref_result, fused_result, dtype):
    """Outputs, h_n and every gradient of two `run` results agree within TOL[dtype]."""
    (ro, rh, rg), (fo, fh, fg) = ref_result, fused_result
    if isinstance(ro, nn.utils.rnn.PackedSequence):
        assert isinstance(fo, nn.utils.rnn.PackedSequence)
        assert torch.equal(ro.batch_sizes, fo.batch_sizes)
        for a, b in ((ro.sorted_indices, fo.sorted_indices), (ro.unsorted_indices, fo.unsorted_indices)):
            assert (a is None and b is None) or torch.equal(a, b)
        ro, fo = ro.data, fo.data
    assert fo.shape == ro.shape and fo.dtype == ro.dtype
    assert fh.shape == rh.shape and fh.dtype == rh.dtype
    assert_close_scaled(fo, ro, dtype)
    assert_close_scaled(fh, rh, dtype)
    assert fg.keys() == rg.keys()
    for name in rg:
        assert fg[name] is not None, name
        assert_close_scaled(fg[name], rg[name], dtype, msg=lambda m, n=name: f"grad of {n}: {m}")
