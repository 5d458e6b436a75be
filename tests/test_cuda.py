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
import re
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn
from conftest import assert_within_2x, op_args, run, twins

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
    pytest.mark.skipif(not fused_rnn.cuda_available(), reason="fused_rnn was built without CUDA (FUSED_RNN_CUDA=1)"),
]

DEV = "cuda"
F64 = torch.float64
# The "tiny atol", relative to the reference's largest magnitude (at least 1).
ATOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 4e-3}


def set_tf32(cudnn, matmul):
    """torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32, for the rest of the
    test (the _ieee_fp32 fixture puts the previous values back after it)."""
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


@pytest.fixture(autouse=True)
def _ieee_fp32():
    """True fp32 on both sides (cuDNN and the fused stack follow cudnn.allow_tf32)."""
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    set_tf32(False, False)
    yield
    set_tf32(*prev)


def modules(dtype, I, H, **kw):
    """(float64 reference nn.RNN, baseline nn.RNN in dtype, fused_rnn.RNN in dtype), same weights:
    the reference holds the dtype-rounded values."""
    base, fused = twins(I, H, device=DEV, dtype=dtype, **kw)
    ref = nn.RNN(I, H, device=DEV, dtype=F64, **kw)
    ref.load_state_dict({k: v.to(F64) for k, v in base.state_dict().items()})
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


def cuda_run(module, x, hx, g_out, g_hn, cudnn=True, autocast=False):
    """conftest.run with upstream gradients g_out, g_hn (cast to the outputs' dtypes), the forward
    with cuDNN enabled or not and under CUDA autocast or not."""
    return run(module, x, hx, upstream_grads=(g_out, g_hn),
               forward_contexts=(torch.backends.cudnn.flags(enabled=cudnn), torch.autocast("cuda", enabled=autocast)))


def assert_within_baseline(fused, base, ref, dtype):
    """Every result of the fused run at most 2x as far from the float64 reference as the baseline's
    (float64 itself: within 1e-10 of it), plus ATOL scaled by the reference's largest magnitude."""
    assert fused.keys() == ref.keys() == base.keys()
    for name, r in ref.items():
        f, b = fused[name], base[name]
        if not (isinstance(r, torch.Tensor) and r.is_floating_point()):  # packed output's batch_sizes, indices
            assert (f is None and r is None) or torch.equal(f, r), name
            continue
        assert f is not None and f.shape == r.shape, name
        assert f.dtype == b.dtype, name
        assert torch.isfinite(f).all(), f"{name}: non-finite values"
        r = r.to(F64)
        scale = max(1.0, r.abs().max().item())
        if dtype == F64:
            torch.testing.assert_close(f, r, rtol=1e-10, atol=1e-10 * scale, msg=lambda m: f"{name}: {m}")
            continue
        assert_within_2x(f, b, r, ATOL[dtype] * scale, name)


def compare(dtype=torch.float32, T=6, B=3, H=33, I=5, num_layers=1, bidirectional=False, nonlinearity="tanh",
            bias=True, packed=None, hx=True, batch_first=False):
    """Runs the three modules of modules() on the same data; returns the regime of the fused forward's
    last recurrence launch (fused_rnn._C.last_cuda_regime())."""
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, nonlinearity=nonlinearity, bias=bias,
              batch_first=batch_first)
    ref, base, fused = modules(dtype, I, H, **kw)
    x64 = cast(cast(make_input(T, B, I, packed, batch_first), dtype), F64)  # the dtype-rounded values
    D = 2 if bidirectional else 1
    h64 = torch.randn(num_layers * D, B, H, dtype=F64, device=DEV).to(dtype).to(F64) if hx else None
    out_rows = x64.data.shape[:-1] if packed else x64.shape[:-1]
    g_out = torch.randn(*out_rows, D * H, dtype=F64, device=DEV).to(dtype).to(F64)
    g_hn = torch.randn(num_layers * D, B, H, dtype=F64, device=DEV).to(dtype).to(F64)
    r = cuda_run(ref, x64, h64, g_out, g_hn)
    b = cuda_run(base, cast(x64, dtype), cast(h64, dtype), g_out, g_hn, cudnn=dtype != torch.bfloat16)
    # The fused module runs last; a layer's forward and backward take the same regime.
    f = cuda_run(fused, cast(x64, dtype), cast(h64, dtype), g_out, g_hn)
    regime = fused_rnn._C.last_cuda_regime()
    assert_within_baseline(f, b, r, dtype)
    return regime


# The regime each size takes in float32 on a GPU with 227 KB of shared memory per block and 132 SMs
# (launch_recurrence in csrc/cuda/recurrence_launch.cuh): H <= ~224 one CTA per batch tile holds
# W_hh ("single"); larger H the cooperative kernel ("grid"), for H = 2049 one launch per direction.
# With less shared memory or fewer SMs H = 2049 cannot be co-resident and takes the per-step kernel.
# test_step_fallback_huge_hidden and test_forced_regimes cover the per-step kernel.
HIDDEN_SIZE_REGIMES = {1: {"single"}, 7: {"single"}, 33: {"single"}, 257: {"grid"}, 1000: {"grid"},
                       2049: {"grid", "step"}}


@pytest.mark.parametrize("H", list(HIDDEN_SIZE_REGIMES))
def test_hidden_sizes(H):
    regime = compare(H=H, num_layers=1 if H > 1000 else 2, bidirectional=True,
                     packed="unsorted" if H % 2 else None)
    assert regime in HIDDEN_SIZE_REGIMES[H]


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


# (B, H): regime. (136, 1000): B·H² above kGemmRecurrenceMinWork, so float32 takes the per-step GEMM
# path; the others stay below it, (300, 64) in one CTA per batch tile of 8 rows, the rest in the
# cooperative kernel with several batch groups.
BATCH_TILE_REGIMES = {(1, 1000): "grid", (64, 1000): "grid", (300, 64): "single", (300, 400): "grid",
                      (136, 1000): "gemm"}


@pytest.mark.parametrize("B,H", list(BATCH_TILE_REGIMES))
def test_batch_tiles(B, H):
    regime = compare(B=B, H=H, T=5, bidirectional=True, packed="unsorted" if B in (300, 136) else None)
    assert regime == BATCH_TILE_REGIMES[B, H]


@pytest.mark.parametrize("B", [1, 9])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("regime", ["grid", "step", "gemm"])
def test_forced_regimes(regime, dtype, B, switch):
    """FUSED_RNN_CUDA_REGIME forces the cooperative and the per-step kernels, or the per-step GEMM
    path (every dtype; bfloat16 takes it only when forced), at small sizes."""
    switch("FUSED_RNN_CUDA_REGIME", regime)
    ran = compare(dtype=dtype, H=40, T=6, B=B, num_layers=2, bidirectional=True, packed="unsorted" if B > 1 else None,
                  nonlinearity="relu" if dtype == torch.float32 else "tanh")
    assert ran == regime


@pytest.mark.opt_in
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("H,B,nonlinearity,packed", [(300, 64, "tanh", None), (1024, 8, "tanh", None),
                                                     (200, 33, "relu", "unsorted"), (70, 5, "tanh", "sorted")])
def test_forced_gemm_path_in_half_types(H, B, nonlinearity, packed, dtype, switch):
    """The per-step GEMM path for float16/bfloat16 (opt-in; gemm_steps_half.cu: a cuBLAS product into
    fp32 and one pointwise kernel per step) against nn.RNN in the same dtype, 2x rule; packed input
    exercises the rows that begin and end mid-sequence (h0, hy, dh0 and the hy gradient)."""
    switch("FUSED_RNN_CUDA_REGIME", "gemm")
    assert compare(dtype=dtype, H=H, B=B, T=5, num_layers=2, bidirectional=True, nonlinearity=nonlinearity,
                   packed=packed) == "gemm"


def _half_gemm_calls(fused, dtype, T, B, I, packed, calls):
    """calls training steps of fused on fresh data, packed ones with one set of lengths (one kind):
    [(results, regime of the last launch)]."""
    D, H, L = 2, fused.hidden_size, fused.num_layers
    torch.manual_seed(7)
    lengths = torch.randint(1, T + 1, (B,))
    lengths[0] = T
    data = []
    for _ in range(calls):
        x = torch.randn(T, B, I, device=DEV, dtype=dtype)
        if packed:
            x = pack_padded_sequence(x, lengths, enforce_sorted=False)
        rows = x.data.shape[:-1] if packed else x.shape[:-1]
        data.append((x, torch.randn(L * D, B, H, device=DEV, dtype=dtype),
                     torch.randn(*rows, D * H, device=DEV, dtype=F64), torch.randn(L * D, B, H, device=DEV, dtype=F64)))
    results = []
    for x, hx, g_out, g_hn in data:
        fused.zero_grad()
        results.append((cuda_run(fused, x, hx, g_out, g_hn), fused_rnn._C.last_cuda_regime()))
    return results


@pytest.mark.opt_in
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("packed", [None, "unsorted"], ids=["dense", "packed"])
def test_half_gemm_graph_replays_match_eager(dtype, packed, switch):
    """FUSED_RNN_CUDA_GEMM_GRAPH=reuse (opt-in; gemm_steps_half.cu, staged_replay.h): a kind's first
    call runs eagerly, its second records the step loop into a CUDA graph, later ones replay it on
    staged copies of their own tensors. Four training steps on fresh data give eager's results (the
    same kernels; cuBLAS may pick another algorithm for the capture stream's workspace, hence a
    tolerance of a few roundings), and the regime names what ran."""
    switch("FUSED_RNN_CUDA_REGIME", "gemm")
    _, _, fused = modules(dtype, 24, 96, num_layers=2, bidirectional=True)
    fused_rnn._C.clear_step_graphs()
    eager = _half_gemm_calls(fused, dtype, 9, 6, 24, packed, 4)
    assert {regime for _, regime in eager} == {"gemm"}
    switch("FUSED_RNN_CUDA_GEMM_GRAPH", "reuse")
    try:
        graphed = _half_gemm_calls(fused, dtype, 9, 6, 24, packed, 4)
        # Both layers are one kind per pass: call 1's second layer already records it.
        assert [regime for _, regime in graphed] == ["gemm_graph"] * 4
        assert fused_rnn._C.clear_step_graphs() == 2  # the forward's kind and the BPTT's
        assert fused_rnn._C.clear_step_graphs() == 0
    finally:
        fused_rnn._C.clear_step_graphs()
    for (e, _), (g, _) in zip(eager, graphed):
        for name, value in e.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                scale = max(1.0, value.abs().max().item())
                torch.testing.assert_close(g[name], value, rtol=2e-2, atol=ATOL[dtype] * scale, msg=name)


@pytest.mark.opt_in
def test_half_gemm_graph_within_cudnn_rule_and_inside_a_user_capture(switch):
    """With graphs on, the 2x rule against cuDNN holds on a replayed call; inside a user's CUDA graph
    capture the loop is not recorded again (its launches go into the user's graph) and the user's
    replay equals an eager call."""
    switch("FUSED_RNN_CUDA_REGIME", "gemm")
    switch("FUSED_RNN_CUDA_GEMM_GRAPH", "reuse")
    try:
        for _ in range(3):
            regime = compare(dtype=torch.float16, H=200, B=16, T=7, num_layers=1, bidirectional=True)
        assert regime == "gemm_graph"
        _, _, fused = modules(torch.float16, 5, 64, num_layers=2, bidirectional=True)
        static_x = torch.randn(16, 4, 5, device=DEV, dtype=torch.float16)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(3):
                fused(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            static_out, _ = fused(static_x)
        assert fused_rnn._C.last_cuda_regime() == "gemm"
        static_x.copy_(torch.randn_like(static_x))
        graph.replay()
        switch("FUSED_RNN_CUDA_GEMM_GRAPH", "off")
        with torch.no_grad():
            out, _ = fused(static_x)
        torch.testing.assert_close(static_out, out, rtol=2e-2, atol=1e-3)
    finally:
        fused_rnn._C.clear_step_graphs()


# The SM-resident regime (csrc/cuda/resident_kernel.cuh), forced: every shape of resident_layout.h
# (H up to 32, 64, 128, 192), sizes just past a shape's capacity, batch tiles of 1, 2 and 8 rows on a
# 132-SM GPU (B = 300 with two directions: 2 rows; B = 5000: 8 rows in waves), long sequences
# (the prefetch ring wraps many times).
RESIDENT_CASES = [(1, 1, 6), (7, 5, 6), (32, 3, 6), (33, 64, 6), (64, 300, 5), (65, 2, 6), (100, 9, 300),
                  (128, 1, 6), (129, 17, 6), (192, 300, 4), (160, 5000, 3)]


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("H,B,T", RESIDENT_CASES, ids=[f"H{h}-B{b}-T{t}" for h, b, t in RESIDENT_CASES])
def test_resident_regime(H, B, T, nonlinearity, switch):
    switch("FUSED_RNN_CUDA_REGIME", "resident")
    ran = compare(H=H, B=B, T=T, I=7, num_layers=2, bidirectional=True, nonlinearity=nonlinearity)
    assert ran == "resident"


@pytest.mark.parametrize("case", ["no_hx", "no_bias", "batch_first", "one_step"])
def test_resident_regime_options(case, switch):
    switch("FUSED_RNN_CUDA_REGIME", "resident")
    kw = {"no_hx": dict(hx=False), "no_bias": dict(bias=False), "batch_first": dict(batch_first=True),
          "one_step": dict(T=1)}[case]
    assert compare(**{"H": 50, "B": 4, **kw}) == "resident"


@pytest.mark.parametrize("dtype,H,packed,expected", [
    (torch.float32, 40, "unsorted", {"single"}),  # packed input: the general kernels
    (torch.float32, 513, None, {"grid", "step"}),  # over the largest resident shape (clusters of 8)
    (torch.float64, 40, None, {"single"}),  # no resident kernel for float64
    (torch.bfloat16, 40, "sorted", {"single"}),
    (torch.float16, 1025, None, {"grid", "step"}),  # over the tensor-core kernel's largest tiling
])
def test_resident_regime_falls_back(dtype, H, packed, expected, switch):
    switch("FUSED_RNN_CUDA_REGIME", "resident")
    assert compare(dtype=dtype, H=H, B=5, packed=packed, bidirectional=True) in expected


# The cluster shapes of the FFMA resident kernel (sm_90): clusters of 2 CTAs up to H = 256, of 8 up
# to 512; batch tiles of 1 and 2 rows; a long sequence (many cluster barriers).
RESIDENT_CLUSTER_CASES = [(193, 3, 6), (256, 64, 5), (256, 300, 4), (300, 2, 100), (512, 9, 5)]


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability()[0] < 9,
                    reason="thread-block clusters need sm_90")
@pytest.mark.parametrize("exchange", ["barrier", "mbarrier"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("H,B,T", RESIDENT_CLUSTER_CASES, ids=[f"H{h}-B{b}-T{t}" for h, b, t in RESIDENT_CLUSTER_CASES])
def test_resident_cluster_regime(H, B, T, nonlinearity, exchange, switch):
    """The cluster kernels, with each way of handing a step's h to the peers: stores then a cluster
    barrier, or st.async stores completing on mbarriers (FUSED_RNN_CUDA_CLUSTER_EXCHANGE)."""
    switch("FUSED_RNN_CUDA_REGIME", "resident")
    switch("FUSED_RNN_CUDA_CLUSTER_EXCHANGE", exchange)
    ran = compare(H=H, B=B, T=T, I=7, num_layers=2, bidirectional=True, nonlinearity=nonlinearity)
    assert ran == ("resident_cluster" if exchange == "barrier" else "resident_cluster_mbarrier")


# The tensor-core resident kernel (csrc/cuda/resident_mma_kernel.cuh): every tile count (H up to 32,
# 64, 128, 192, 256), H not a multiple of 16, one partial and several batch tiles of 8 rows.
RESIDENT_MMA_CASES = [(1, 1, 6), (17, 9, 6), (64, 300, 5), (100, 3, 200), (129, 8, 6), (192, 17, 4), (256, 64, 4)]
# ... and its clusters with k parts (sm_90): 4 CTAs up to H = 512, 16 CTAs up to 1024 (an odd H: the
# mbarrier exchange's last word of a row holds one unit).
RESIDENT_MMA_CLUSTER_CASES = [(257, 5, 6), (300, 9, 5), (512, 64, 4), (700, 3, 50), (1024, 8, 4)]


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("H,B,T", RESIDENT_MMA_CASES, ids=[f"H{h}-B{b}-T{t}" for h, b, t in RESIDENT_MMA_CASES])
def test_resident_mma_regime(H, B, T, dtype, nonlinearity, switch):
    """float16 against cuDNN float16 and bfloat16 against PyTorch's native bfloat16 RNN, 2x rule."""
    switch("FUSED_RNN_CUDA_REGIME", "resident")
    ran = compare(dtype=dtype, H=H, B=B, T=T, I=7, num_layers=2, bidirectional=True, nonlinearity=nonlinearity)
    assert ran == "resident_mma"


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability()[0] < 9,
                    reason="thread-block clusters need sm_90")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("H,B,T", RESIDENT_MMA_CLUSTER_CASES, ids=[f"H{h}-B{b}-T{t}" for h, b, t in RESIDENT_MMA_CLUSTER_CASES])
@pytest.mark.parametrize("exchange", ["barrier", "mbarrier"])
def test_resident_mma_cluster_regime(H, B, T, dtype, exchange, switch):
    """The tensor-core kernel in thread-block clusters (a 16-CTA cluster at H = 1024 is a
    non-portable size: where the GPU cannot schedule it the call falls back, and the test says so),
    with each exchange: stores then a cluster barrier, or 32-bit words of two units each (paired
    across lanes, mma_layout.h) by st.async completing on mbarriers (FUSED_RNN_CUDA_CLUSTER_EXCHANGE)."""
    switch("FUSED_RNN_CUDA_REGIME", "resident")
    switch("FUSED_RNN_CUDA_CLUSTER_EXCHANGE", exchange)
    ran = compare(dtype=dtype, H=H, B=B, T=T, I=7, num_layers=1, bidirectional=True)
    expected = "resident_mma" if exchange == "barrier" else "resident_mma_mbarrier"
    assert ran == expected or (H > 512 and ran in {"grid", "step"})


@pytest.mark.parametrize("H,B,T", [(1, 1, 6), (33, 9, 6), (64, 64, 100), (128, 5, 6), (192, 20, 4), (256, 9, 5),
                                   (400, 3, 4)])
def test_resident_tf32_regime(H, B, T, switch):
    """float32 with TF32 allowed (nn.RNN's rule: torch.backends.cudnn.allow_tf32) takes the TF32
    tensor-core kernel (from H = 193 in clusters); its error stays within 2x cuDNN's TF32 error."""
    if H > 192 and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("from H = 193 the TF32 kernel runs in thread-block clusters (sm_90)")
    switch("FUSED_RNN_CUDA_REGIME", "resident")
    set_tf32(True, True)
    assert compare(H=H, B=B, T=T, I=7, num_layers=2, bidirectional=True) == "resident_tf32"


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability()[0] < 9,
                    reason="thread-block clusters need sm_90")
@pytest.mark.parametrize("exchange", ["barrier", "mbarrier"])
@pytest.mark.parametrize("H,B,T", [(193, 3, 6), (256, 64, 5), (300, 9, 60), (512, 17, 4)])
def test_resident_tf32_cluster_exchange(H, B, T, exchange, switch):
    """The TF32 tensor-core kernel in clusters (2 CTAs to H = 256, 8 to 512) with each way of handing
    a step's h to the peers: stores then a cluster barrier, or st.async stores completing on mbarriers
    (FUSED_RNN_CUDA_CLUSTER_EXCHANGE; last_cuda_regime resident_tf32_mbarrier); within 2x cuDNN TF32."""
    switch("FUSED_RNN_CUDA_REGIME", "resident")
    switch("FUSED_RNN_CUDA_CLUSTER_EXCHANGE", exchange)
    set_tf32(True, True)
    ran = compare(H=H, B=B, T=T, I=7, num_layers=2, bidirectional=True, nonlinearity="relu" if H == 300 else "tanh")
    assert ran == ("resident_tf32" if exchange == "barrier" else "resident_tf32_mbarrier")


@pytest.mark.opt_in
@pytest.mark.skipif(not hasattr(torch.backends.cudnn, "rnn"), reason="this torch has no per-operator TF32 flags")
@pytest.mark.parametrize("rnn_precision", ["ieee", "tf32"])
def test_per_operator_tf32_flags(rnn_precision, switch):
    """The RNN's own TF32 flag (torch.backends.cudnn.rnn.fp32_precision) decides, set apart from the
    convolution flag: the operator-less query (torch.backends.cudnn.allow_tf32) raises in this state,
    nn.RNN runs, and so must the fused RNN, in the precision the RNN flag names."""
    conv = "tf32" if rnn_precision == "ieee" else "ieee"
    prev = torch.backends.cudnn.rnn.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    torch.backends.cudnn.rnn.fp32_precision, torch.backends.cudnn.conv.fp32_precision = rnn_precision, conv
    switch("FUSED_RNN_CUDA_REGIME", "resident")
    try:
        ran = compare(H=64, B=9, T=6, I=7, num_layers=2, bidirectional=True)
    finally:
        torch.backends.cudnn.rnn.fp32_precision, torch.backends.cudnn.conv.fp32_precision = prev
    assert ran == ("resident_tf32" if rnn_precision == "tf32" else "resident")


@pytest.mark.opt_in
@pytest.mark.parametrize("regime,H,B,packed", [("gemm", 300, 9, None), ("gemm", 100, 6, "unsorted"),
                                               ("auto", 64, 5, None)])
def test_gemm_tf32_switch_follows_the_rnn_flag(regime, H, B, packed, switch):
    """FUSED_RNN_CUDA_GEMM_TF32=rnn, cuDNN's RNN flag allowing TF32 and torch.backends.cuda.matmul not
    (PyTorch's defaults): the stack's float32 GEMMs (projections, weight and input gradients, and in
    the gemm regime every step's product) run on TF32 through cuBLAS directly (cublas_gemm.cu). The
    results move off the IEEE ones by TF32's rounding and stay within 2x cuDNN's TF32 error."""
    switch("FUSED_RNN_CUDA_REGIME", regime)
    set_tf32(True, False)
    switch("FUSED_RNN_CUDA_GEMM_TF32", "rnn")
    assert compare(H=H, B=B, T=5, I=40, num_layers=2, bidirectional=True, packed=packed) == (
        "gemm" if regime == "gemm" else "single")
    torch.manual_seed(0)
    _, _, fused = modules(torch.float32, 40, H, num_layers=2, bidirectional=True)
    x = cast(make_input(5, B, 40, packed), torch.float32)
    g_out = torch.randn(*(x.data.shape[:-1] if packed else x.shape[:-1]), 2 * H, device=DEV, dtype=F64)
    g_hn = torch.randn(4, B, H, device=DEV, dtype=F64)
    runs = {}
    for rule in ("matmul", "rnn"):
        switch("FUSED_RNN_CUDA_GEMM_TF32", rule)
        runs[rule] = cuda_run(fused, x, None, g_out, g_hn)
    for name, ieee in runs["matmul"].items():
        if isinstance(ieee, torch.Tensor) and ieee.is_floating_point():
            moved = (runs["rnn"][name] - ieee).abs().max().item()
            assert moved > 1e-5 * max(1.0, ieee.abs().max().item()), f"{name}: TF32 changed nothing"


# What last_cuda_regime() names for each route the tuner times.
TUNED_ROUTES = {"kernel": {"single", "grid", "step"}, "gemm": {"gemm"},
                "resident": {"resident", "resident_cluster", "resident_cluster_mbarrier", "resident_mma",
                             "resident_mma_mbarrier", "resident_tf32", "resident_tf32_mbarrier"}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("H,B,T", [(67, 11, 20), (513, 64, 3), (1000, 33, 1)])
def test_tuned_regime(H, B, T, dtype, switch):
    """FUSED_RNN_CUDA_REGIME=tuned (opt-in): the first call of a kind times every route that applies
    (the persistent kernels, the SM-resident kernels, the per-step GEMMs) on copies of its first steps
    and runs the fastest, forward and BPTT each; a second call of the same kind reuses the choices.
    Results within 2x nn.RNN's error. (The sizes are unused elsewhere: choices last for the process.)"""
    switch("FUSED_RNN_CUDA_REGIME", "tuned")
    before = len(fused_rnn._C.tuning_log())
    ran = compare(dtype=dtype, H=H, B=B, T=T, I=7)
    lines = fused_rnn._C.tuning_log()[before:]
    assert len(lines) == 2, lines  # the layer's forward and its BPTT
    bptt = next(line for line in lines if " bptt" in line)
    times = {name: float(us) for name, us in re.findall(r" (\w+) ([0-9.e+-]+) us;", bptt)}
    chosen = bptt.rsplit("-> ", 1)[1]
    assert "kernel" in times and chosen == min(times, key=times.get), bptt
    assert ran in TUNED_ROUTES[chosen]  # compare() returns the BPTT's regime, the fused run's last launch
    assert compare(dtype=dtype, H=H, B=B, T=T, I=7) == ran
    assert len(fused_rnn._C.tuning_log()) == before + 2


def test_step_fallback_huge_hidden():
    """H = 8192: W_hh fits neither one CTA nor a co-resident grid, so the kernel path runs the per-step
    kernel (B = 1). From B = 2 B·H² reaches kGemmRecurrenceMinWork and float32 takes the per-step
    GEMM path instead."""
    assert compare(H=8192, T=3, B=1, I=3, bidirectional=True) == "step"
    assert compare(H=8192, T=3, B=2, I=3, bidirectional=True, packed="unsorted") == "gemm"


def test_dropout_mask_matches_cpu():
    """The ops with an explicit dropout mask: CUDA equals the CPU kernels in float64."""
    a = op_args(T=6, B=4, I=5, H=40, num_layers=3, bidirectional=True, mask_p=0.4)
    results = []
    for dev in ("cpu", DEV):
        x, hx, mask = (a[k].to(dev) for k in ("input", "hx", "dropout_mask"))
        ws = [w.to(dev) for w in a["weights"]]
        config = (a["num_layers"], a["bidirectional"], a["relu"], a["has_biases"])
        out, hy, reserve = torch.ops.fused_rnn.rnn_forward(x, hx, ws, None, mask, *config)
        g = torch.ops.fused_rnn.rnn_backward(torch.ones_like(out), torch.ones_like(hy), x, hx, ws, None, mask, out,
                                             reserve, *config)
        results.append([out, hy, reserve, g[0], g[1], *g[2]])
    for c, g in zip(*results):
        torch.testing.assert_close(g.cpu(), c, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("regime,H", [("auto", 64), ("auto", 1000), ("step", 100), ("gemm", 100), ("resident", 100)])
def test_deterministic(regime, H, switch):
    switch("FUSED_RNN_CUDA_REGIME", regime)
    torch.manual_seed(3)
    _, _, fused = modules(torch.float32, 5, H, num_layers=2, bidirectional=True)
    x = make_input(9, 6, 5, packed="unsorted")
    x = cast(x, torch.float32)
    g_out = torch.randn(x.data.shape[0], 2 * H, device=DEV)
    g_hn = torch.randn(4, 6, H, device=DEV)
    first = cuda_run(fused, x, None, g_out, g_hn)
    for _ in range(2):
        again = cuda_run(fused, x, None, g_out, g_hn)
        assert again.keys() == first.keys()
        for name, value in first.items():
            assert (value is None and again[name] is None) or torch.equal(value, again[name]), name


@pytest.mark.parametrize("regime,H", [("auto", 64), ("auto", 1000), ("gemm", 64), ("resident", 64)])
def test_cuda_graph_capture_and_replay(regime, H, switch):
    switch("FUSED_RNN_CUDA_REGIME", regime)
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


@pytest.mark.parametrize("regime,H", [("auto", 64), ("auto", 1000), ("gemm", 64), ("step", 64)])
def test_cuda_graph_capture_of_packed_forward_and_backward(regime, H, switch):
    """A packed input's step table reaches the device without a host copy (upload_by_value.cu) and
    the backward's gather index is built on the device, so a whole training step (forward, loss,
    backward) on a PackedSequence captures in one CUDA graph; each replay on new data gives exactly
    the eager results."""
    switch("FUSED_RNN_CUDA_REGIME", regime)
    _, _, fused = modules(torch.float32, 5, H, num_layers=2, bidirectional=True)
    # Packing itself copies its sort indices to the device, so it happens once, outside the capture.
    layout = pack_padded_sequence(torch.randn(9, 6, 5, device=DEV), torch.tensor([7, 3, 9, 1, 9, 4]),
                                  enforce_sorted=False)
    static_x = layout.data.clone()
    static_h = torch.randn(4, 6, H, device=DEV, requires_grad=True)
    w_out = torch.randn(static_x.shape[0], 2 * H, device=DEV)

    def step(x, h):
        out, hn = fused(PackedSequence(x, layout.batch_sizes, layout.sorted_indices, layout.unsorted_indices), h)
        return out.data, hn, (out.data * w_out).sum() + hn.square().sum()

    params = [static_h, *fused.parameters()]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm-up outside the capture (autograd's streams, the allocator)
            step(static_x, static_h)[2].backward()
    torch.cuda.current_stream().wait_stream(side)
    for p in params:
        p.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out, static_hn, static_loss = step(static_x, static_h)
        static_loss.backward()
    for _ in range(2):
        static_x.copy_(torch.randn_like(static_x))
        with torch.no_grad():
            static_h.copy_(torch.randn_like(static_h))
        graph.replay()
        out, hn, loss = step(static_x, static_h)
        grads = torch.autograd.grad(loss, params)
        torch.testing.assert_close(static_out, out, rtol=0, atol=0)
        torch.testing.assert_close(static_hn, hn, rtol=0, atol=0)
        for p, g in zip(params, grads):
            torch.testing.assert_close(p.grad, g, rtol=0, atol=0)


@pytest.mark.parametrize("regime", ["auto", "gemm"])
def test_packed_call_makes_no_host_synchronisation(regime, switch):
    """torch.cuda.set_sync_debug_mode('error') raises on a synchronising CUDA call made through
    PyTorch, a pageable host-to-device copy among them (what the step table and the backward's
    gather index each took before): a packed forward and backward make none."""
    switch("FUSED_RNN_CUDA_REGIME", regime)
    _, _, fused = modules(torch.float32, 5, 40, num_layers=2, bidirectional=True)
    packed = pack_padded_sequence(torch.randn(9, 6, 5, device=DEV), torch.tensor([7, 3, 9, 1, 9, 4]),
                                  enforce_sorted=False)  # packing itself copies its indices: outside
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, hn = fused(packed)
        (out.data.sum() + hn.sum()).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(p.grad is not None for p in fused.parameters())


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
    r = cuda_run(ref, x.to(F64), None, g_out, g_hn)
    b = cuda_run(base, x, None, g_out, g_hn, autocast=True)
    f = cuda_run(fused, x, None, g_out, g_hn, autocast=True)
    assert f["output"].dtype == torch.float16 and f["h_n"].dtype == torch.float16
    # Parameter gradients come back in the parameters' dtype (float32) on both sides.
    assert_within_baseline(f, b, r, torch.float16)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=lambda d: str(d).split(".")[-1])
def test_autocast_takes_the_tensor_core_resident_kernel(dtype, switch):
    """Under CUDA autocast (float16, or bfloat16 when asked) the fused module runs in the autocast
    dtype like nn.RNN, and with the resident regime forced that is the tensor-core kernel. The
    baseline: nn.RNN under the same autocast (bfloat16: with cuDNN disabled, which has no bf16 RNN)."""
    switch("FUSED_RNN_CUDA_REGIME", "resident")
    I, H, T, B = 5, 96, 8, 3
    base = nn.RNN(I, H, num_layers=2, bidirectional=True, device=DEV)
    fused = fused_rnn.RNN.from_torch(base)
    ref = nn.RNN(I, H, num_layers=2, bidirectional=True, device=DEV, dtype=F64)
    ref.load_state_dict({k: v.to(dtype).to(F64) for k, v in base.state_dict().items()})
    x = torch.randn(T, B, I, device=DEV).to(dtype).float()
    g_out = torch.randn(T, B, 2 * H, dtype=F64, device=DEV).to(dtype).to(F64)
    g_hn = torch.randn(4, B, H, dtype=F64, device=DEV).to(dtype).to(F64)
    contexts = lambda cudnn: (torch.backends.cudnn.flags(enabled=cudnn), torch.autocast("cuda", dtype=dtype))  # noqa: E731
    r = cuda_run(ref, x.to(F64), None, g_out, g_hn)
    b = run(base, x, None, upstream_grads=(g_out, g_hn), forward_contexts=contexts(dtype == torch.float16))
    f = run(fused, x, None, upstream_grads=(g_out, g_hn), forward_contexts=contexts(True))
    assert fused_rnn._C.last_cuda_regime() == "resident_mma"
    assert f["output"].dtype == dtype and f["h_n"].dtype == dtype
    assert_within_baseline(f, b, r, dtype)


@pytest.mark.parametrize("regime,H", [("auto", 33), ("auto", 1000), ("grid", 33), ("step", 33), ("gemm", 33),
                                      ("resident", 33)])
def test_poisoned_buffers_are_overwritten(regime, H, switch):
    """Every torch.empty (inside the ops too) is NaN-filled: an unwritten element shows up as NaN."""
    switch("FUSED_RNN_CUDA_REGIME", regime)
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
    """Everything runs on the caller's current stream: a side stream is held busy by a sleep kernel,
    then its input is written and the module called on it there; a kernel launched on another stream
    would start at once and read the input before it is written (zeros)."""
    _, _, fused = modules(torch.float32, 5, 257, bidirectional=True)
    x = torch.randn(12, 3, 5, device=DEV)
    stream = torch.cuda.Stream()
    with torch.no_grad():
        x_side = torch.zeros_like(x)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fused(x_side)  # warm-up: the side stream's memory pool, so that the call below allocates nothing new
            torch.cuda._sleep(200_000_000)  # far longer than the host takes to queue the call below
            x_side.copy_(x)
            out, hn = fused(x_side)
            assert not stream.query()  # still sleeping: the call was queued behind the sleep, not synchronised
        torch.cuda.current_stream().wait_stream(stream)
        expected, expected_hn = fused(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(hn, expected_hn, rtol=0, atol=0)


# ---- beyond first-order reverse mode, and the in-place contract, on the GPU ---------------------

def test_double_backward_and_torch_func_on_cuda():
    """create_graph and torch.func take the composite route on the GPU too; float64 against nn.RNN's
    native CUDA path (cuDNN's RNN is neither twice differentiable nor forward-mode differentiable)."""
    ref, fused = twins(3, 5, device=DEV, num_layers=2, bidirectional=True, nonlinearity="relu")
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
    ref, fused = twins(3, 5, device=DEV)
    for m in (ref, fused):
        x = torch.randn(4, 2, 3, dtype=F64, device=DEV, requires_grad=True)
        out, _ = m(x)
        out.mul_(2.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out.sum().backward()
