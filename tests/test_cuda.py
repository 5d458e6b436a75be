"""CUDA kernels against cuDNN's nn.RNN with the same weights.

Rule (as flash-attention's): on the GPU the fused result must be at most 2x as far from a float64
reference as PyTorch's own RNN in the same dtype, plus a tiny atol. The reference is nn.RNN in
float64 fed the same (rounded) weights, inputs and upstream gradients. PyTorch's baseline is cuDNN,
except bfloat16, which cuDNN's RNN lacks: there it is PyTorch's native CUDA RNN (cuDNN disabled).
float64 itself is compared with cuDNN float64 directly (1e-10).

Covers outputs, h_n and every gradient over tanh/relu, bias, layers, directions, packed (sorted and
unsorted), hx or not, batch_first, every dtype, odd sizes (H = 1 .. 2049, and 8192 for the per-step
fallback), T = 1 and long; determinism, CUDA graph capture, autocast, poisoned buffers, streams.

Shapes: T steps, B batch, I input size, H hidden size, D directions, L layers.
"""
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
    pytest.mark.skipif(not fused_rnn.cuda_available(), reason="fused_rnn was built without CUDA (FUSED_RNN_CUDA=1)"),
]

DEV = "cuda"
F64 = torch.float64
# The "tiny atol", relative to the reference's largest magnitude (at least 1).
ATOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 4e-3}


@pytest.fixture(autouse=True)
def _ieee_fp32():
    """True fp32 on both sides (cuDNN and the fused stack follow cudnn.allow_tf32)."""
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev


def modules(dtype, I, H, **kw):
    """(float64 reference nn.RNN, baseline nn.RNN in dtype, fused_rnn.RNN in dtype), same weights:
    the reference holds the dtype-rounded values."""
    base = nn.RNN(I, H, device=DEV, dtype=dtype, **kw)
    ref = nn.RNN(I, H, device=DEV, dtype=F64, **kw)
    ref.load_state_dict({k: v.to(F64) for k, v in base.state_dict().items()})
    fused = fused_rnn.RNN(I, H, device=DEV, dtype=dtype, **kw)
    fused.load_state_dict(base.state_dict())
    return ref, base, fused


def make_input(T, B, I, packed=None, batch_first=False):
    """float64 input [T, B, I] ([B, T, I] if batch_first), or a PackedSequence ('sorted'/'unsorted')."""
    x = torch.randn(B, T, I, dtype=F64, device=DEV) if batch_first else torch.randn(T, B, I, dtype=F64, device=DEV)
    if packed is None:
        return x
    lengths = torch.randint(1, T + 1, (B,))
    lengths[torch.randint(0, B, ())] = T
    if packed == "sorted":
        lengths = lengths.sort(descending=True).values
    return pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=packed == "sorted")


def cast(x, dtype):
    if isinstance(x, PackedSequence):
        return PackedSequence(x.data.to(dtype), x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    return None if x is None else x.to(dtype)


def run(module, x, hx, g_out, g_hn, cudnn=True, autocast=False):
    """Forward and backward with upstream gradients g_out, g_hn. Returns {name: tensor}: output, h_n,
    grad_input, grad_hx (when hx is given) and grad_<parameter>."""
    packed = isinstance(x, PackedSequence)
    data = (x.data if packed else x).detach().clone().requires_grad_()
    inp = PackedSequence(data, x.batch_sizes, x.sorted_indices, x.unsorted_indices) if packed else data
    h = None if hx is None else hx.detach().clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    with torch.backends.cudnn.flags(enabled=cudnn), torch.autocast("cuda", enabled=autocast):
        out, hn = module(inp) if h is None else module(inp, h)
    out_t = out.data if packed else out
    ((out_t * g_out.to(out_t.dtype)).sum() + (hn * g_hn.to(hn.dtype)).sum()).backward()
    res = {"output": out_t.detach(), "h_n": hn.detach(), "grad_input": data.grad}
    if h is not None:
        res["grad_hx"] = h.grad
    res.update({f"grad_{n}": p.grad for n, p in module.named_parameters()})
    return res


def assert_within_baseline(fused, base, ref, dtype):
    assert fused.keys() == ref.keys() == base.keys()
    for name, r in ref.items():
        f, b = fused[name], base[name]
        assert f is not None and f.shape == r.shape, name
        assert f.dtype == b.dtype, name
        assert torch.isfinite(f).all(), f"{name}: non-finite values"
        r = r.to(F64)
        scale = max(1.0, r.abs().max().item())
        if dtype == F64:
            torch.testing.assert_close(f, r, rtol=1e-10, atol=1e-10 * scale, msg=lambda m: f"{name}: {m}")
            continue
        ef = (f.to(F64) - r).abs().max().item()
        eb = (b.to(F64) - r).abs().max().item()
        assert ef <= 2 * eb + ATOL[dtype] * scale, (
            f"{name}: fused error {ef:.3g} > 2 x baseline error {eb:.3g} + {ATOL[dtype] * scale:.3g}")


def compare(dtype=torch.float32, T=6, B=3, H=33, I=5, num_layers=1, bidirectional=False, nonlinearity="tanh",
            bias=True, packed=None, hx=True, batch_first=False):
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, nonlinearity=nonlinearity, bias=bias,
              batch_first=batch_first)
    ref, base, fused = modules(dtype, I, H, **kw)
    x64 = cast(cast(make_input(T, B, I, packed, batch_first), dtype), F64)  # the dtype-rounded values
    D = 2 if bidirectional else 1
    h64 = torch.randn(num_layers * D, B, H, dtype=F64, device=DEV).to(dtype).to(F64) if hx else None
    out_rows = x64.data.shape[:-1] if packed else x64.shape[:-1]
    g_out = torch.randn(*out_rows, D * H, dtype=F64, device=DEV).to(dtype).to(F64)
    g_hn = torch.randn(num_layers * D, B, H, dtype=F64, device=DEV).to(dtype).to(F64)
    r = run(ref, x64, h64, g_out, g_hn)
    b = run(base, cast(x64, dtype), cast(h64, dtype), g_out, g_hn, cudnn=dtype != torch.bfloat16)
    f = run(fused, cast(x64, dtype), cast(h64, dtype), g_out, g_hn)
    assert_within_baseline(f, b, r, dtype)


# Regimes on an H100 (fp32): H <= ~224 one CTA per batch tile; larger H the cooperative kernel, for
# H = 2049 one launch per direction; H = 8192 the per-step fallback. test_forced_regimes covers the
# latter two at small sizes as well.
@pytest.mark.parametrize("H", [1, 7, 33, 257, 1000, 2049])
def test_hidden_sizes(H):
    compare(H=H, num_layers=1 if H > 1000 else 2, bidirectional=True, packed="unsorted" if H % 2 else None)


OPTIONS = {
    "plain": dict(),
    "relu": dict(nonlinearity="relu"),
    "no_bias": dict(bias=False),
    "3_layers_bidir": dict(num_layers=3, bidirectional=True),
    "packed_sorted_bidir": dict(packed="sorted", bidirectional=True, B=5),
    "packed_unsorted_relu_2_layers": dict(packed="unsorted", nonlinearity="relu", num_layers=2, B=6),
    "no_hx_bidir": dict(hx=False, bidirectional=True),
    "packed_no_hx": dict(packed="unsorted", hx=False, bidirectional=True, B=4),
    "batch_first": dict(batch_first=True, bidirectional=True),
    "T1_bidir": dict(T=1, bidirectional=True, num_layers=2),
}


@pytest.mark.parametrize("H", [33, 300])
@pytest.mark.parametrize("case", list(OPTIONS))
def test_options(case, H):
    compare(H=H, **OPTIONS[case])


@pytest.mark.parametrize("H", [33, 257, 1000])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).split(".")[-1])
def test_dtypes(dtype, H):
    compare(dtype=dtype, H=H, T=7, B=4, bidirectional=True, num_layers=2, packed="unsorted",
            nonlinearity="relu" if H == 257 else "tanh")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("H", [64, 600])
@pytest.mark.parametrize("T", [1, 512])
def test_sequence_lengths(T, H, dtype):
    compare(dtype=dtype, T=T, H=H, B=4, bidirectional=True)


@pytest.mark.parametrize("B,H", [(1, 1000), (64, 1000), (300, 64), (300, 400), (136, 1000)])
def test_batch_tiles(B, H):
    """(136, 1000): B·H² above kGemmRecurrenceMinWork, so float32 takes the per-step GEMM path."""
    compare(B=B, H=H, T=5, bidirectional=True, packed="unsorted" if B in (300, 136) else None)


@pytest.mark.parametrize("B", [1, 9])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("regime", ["grid", "step", "gemm"])
def test_forced_regimes(regime, dtype, B, monkeypatch):
    """FUSED_RNN_CUDA_REGIME forces the cooperative and the per-step kernels, or the per-step GEMM
    path (float32/float64 only; bfloat16 stays in the kernel), at small sizes."""
    monkeypatch.setenv("FUSED_RNN_CUDA_REGIME", regime)
    compare(dtype=dtype, H=40, T=6, B=B, num_layers=2, bidirectional=True, packed="unsorted" if B > 1 else None,
            nonlinearity="relu" if dtype == torch.float32 else "tanh")


def test_step_fallback_huge_hidden():
    compare(H=8192, T=3, B=2, I=3, bidirectional=True, packed="unsorted")


def test_dropout_mask_matches_cpu():
    """The ops with an explicit dropout mask: CUDA equals the CPU kernels in float64."""
    L, D, T, B, I, H = 3, 2, 6, 4, 5, 40
    x = torch.randn(T, B, I, dtype=F64)
    hx = torch.randn(L * D, B, H, dtype=F64)
    weights = []
    for layer in range(L):
        for _ in range(D):
            in_l = I if layer == 0 else D * H
            weights += [torch.randn(H, in_l, dtype=F64) * 0.3, torch.randn(H, H, dtype=F64) * 0.3,
                        torch.randn(H, dtype=F64), torch.randn(H, dtype=F64)]
    mask = torch.bernoulli(torch.full((L - 1, T, B, D * H), 0.6, dtype=F64)) / 0.6
    args = (L, True, False, True)
    results = []
    for dev in ("cpu", DEV):
        mv = lambda t: t.to(dev)  # noqa: E731
        ws = [mv(w) for w in weights]
        out, hy, reserve = torch.ops.fused_rnn.rnn_forward(mv(x), mv(hx), ws, None, mv(mask), *args)
        g = torch.ops.fused_rnn.rnn_backward(torch.ones_like(out), torch.ones_like(hy), mv(x), mv(hx), ws, None,
                                             mv(mask), out, reserve, *args)
        results.append([out, hy, reserve, g[0], g[1], *g[2]])
    for c, g in zip(*results):
        torch.testing.assert_close(g.cpu(), c, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("regime,H", [("auto", 64), ("auto", 1000), ("step", 100), ("gemm", 100)])
def test_deterministic(regime, H, monkeypatch):
    monkeypatch.setenv("FUSED_RNN_CUDA_REGIME", regime)
    torch.manual_seed(3)
    _, _, fused = modules(torch.float32, 5, H, num_layers=2, bidirectional=True)
    x = make_input(9, 6, 5, packed="unsorted")
    x = cast(x, torch.float32)
    g_out = torch.randn(x.data.shape[0], 2 * H, device=DEV)
    g_hn = torch.randn(4, 6, H, device=DEV)
    first = run(fused, x, None, g_out, g_hn)
    for _ in range(2):
        again = run(fused, x, None, g_out, g_hn)
        for name in first:
            assert torch.equal(first[name], again[name]), name


@pytest.mark.parametrize("regime,H", [("auto", 64), ("auto", 1000), ("gemm", 64)])
def test_cuda_graph_capture_and_replay(regime, H, monkeypatch):
    monkeypatch.setenv("FUSED_RNN_CUDA_REGIME", regime)
    _, _, fused = modules(torch.float32, 5, H, num_layers=2, bidirectional=True)
    static_x = torch.randn(16, 4, 5, device=DEV)
    static_h = torch.randn(4, 4, H, device=DEV)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(2):  # warm-up outside the capture
            fused(static_x, static_h)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_out, static_hn = fused(static_x, static_h)
    for _ in range(2):
        static_x.copy_(torch.randn_like(static_x))
        static_h.copy_(torch.randn_like(static_h))
        graph.replay()
        with torch.no_grad():
            out, hn = fused(static_x, static_h)
        torch.testing.assert_close(static_out, out, rtol=0, atol=0)
        torch.testing.assert_close(static_hn, hn, rtol=0, atol=0)


def test_autocast_runs_in_float16():
    """Under autocast both modules run in float16 (nn.RNN via cuDNN) and the fused error stays within
    2x cuDNN's."""
    I, H, T, B = 5, 96, 8, 3
    base = nn.RNN(I, H, num_layers=2, bidirectional=True, device=DEV)
    fused = fused_rnn.RNN.from_torch(base)
    ref = nn.RNN(I, H, num_layers=2, bidirectional=True, device=DEV, dtype=F64)
    ref.load_state_dict({k: v.half().to(F64) for k, v in base.state_dict().items()})
    x = torch.randn(T, B, I, device=DEV).half().float()
    g_out = torch.randn(T, B, 2 * H, dtype=F64, device=DEV).half().to(F64)
    g_hn = torch.randn(4, B, H, dtype=F64, device=DEV).half().to(F64)
    r = run(ref, x.to(F64), None, g_out, g_hn)
    b = run(base, x, None, g_out, g_hn, autocast=True)
    f = run(fused, x, None, g_out, g_hn, autocast=True)
    assert f["output"].dtype == torch.float16 and f["h_n"].dtype == torch.float16
    # Parameter gradients come back in the parameters' dtype (float32) on both sides.
    assert_within_baseline(f, b, r, torch.float16)


@pytest.mark.parametrize("regime,H", [("auto", 33), ("auto", 1000), ("grid", 33), ("step", 33), ("gemm", 33)])
def test_poisoned_buffers_are_overwritten(regime, H, monkeypatch):
    """Every torch.empty (inside the ops too) is NaN-filled: an unwritten element shows up as NaN."""
    monkeypatch.setenv("FUSED_RNN_CUDA_REGIME", regime)
    prev = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)  # warn_only: cuBLAS without a workspace config
    try:
        assert torch.empty(8, device=DEV).isnan().all()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compare(H=H, T=7, B=5, num_layers=2, bidirectional=True, packed="unsorted")
            compare(H=H, T=4, B=3, num_layers=2, hx=False)
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])


def test_runs_on_the_current_stream():
    _, _, fused = modules(torch.float32, 5, 257, bidirectional=True)
    x = torch.randn(12, 3, 5, device=DEV)
    with torch.no_grad():
        expected, _ = fused(x)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            out, _ = fused(x)
        torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


# ---- beyond first-order reverse mode, and the in-place contract, on the GPU ---------------------

def _cuda_twins(**kwargs):
    torch.manual_seed(0)
    ref = nn.RNN(3, 5, dtype=F64, device=DEV, **kwargs)
    fused = fused_rnn.RNN(3, 5, dtype=F64, device=DEV, **kwargs)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def test_double_backward_and_torch_func_on_cuda():
    """create_graph and torch.func take the composite route on the GPU too; float64 against nn.RNN's
    native CUDA path (cuDNN's RNN is neither twice differentiable nor forward-mode differentiable)."""
    ref, fused = _cuda_twins(num_layers=2, bidirectional=True, nonlinearity="relu")
    x = torch.randn(4, 2, 3, dtype=F64, device=DEV)
    results = []
    for m in (ref, fused):
        with torch.backends.cudnn.flags(enabled=False):
            xx = x.clone().requires_grad_()
            g, = torch.autograd.grad(m(xx)[0].sin().sum(), xx, create_graph=True)
            second = torch.autograd.grad(g.pow(2).sum(), [xx, *m.parameters()])
            params = {k: v.detach() for k, v in m.named_parameters()}
            jac = torch.func.jacfwd(lambda p: torch.func.functional_call(m, p, (x,))[0].sum(), argnums=0)(params)
        results.append((second, jac))
    for a, b in zip(torch.utils._pytree.tree_leaves(results[1]), torch.utils._pytree.tree_leaves(results[0])):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_inplace_change_of_output_raises_like_cudnn():
    """cuDNN saves its output for backward, so nn.RNN on the GPU refuses an in-place change of it
    before backward; the fused CUDA path saves its output too (no copy) and refuses it the same way."""
    ref, fused = _cuda_twins()
    for m in (ref, fused):
        x = torch.randn(4, 2, 3, dtype=F64, device=DEV, requires_grad=True)
        out, _ = m(x)
        out.mul_(2.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out.sum().backward()
