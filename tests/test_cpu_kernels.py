"""The CPU recurrence's code paths: the float32 rational tanh, relu, the micro-kernel's register
tiles and their row remainders, thread splits over B, uneven packed lengths, the tiny-layer
gradient loops. Every test runs twice: on the AVX2+FMA build of the task loops (what a CPU with
AVX2 picks) and on the baseline x86-64 build (FUSED_RNN_CPU_ISA=baseline: what a CPU without AVX2
runs, with BLAS for large step GEMMs). The switch itself is tested in test_switches.py."""
import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import fused_rnn
from conftest import assert_same_results, run, twins


@pytest.fixture(autouse=True, params=["avx2", "baseline"])
def isa(request, switch):
    switch("FUSED_RNN_CPU_ISA", request.param)
    return request.param


def _pointwise_rnn(n, nonlinearity):
    """W_ih = I, W_hh = 0, no bias: output = act(x) elementwise, each step independent."""
    model = fused_rnn.RNN(n, n, nonlinearity=nonlinearity, bias=False)
    with torch.no_grad():
        model.weight_ih_l0.copy_(torch.eye(n))
        model.weight_hh_l0.zero_()
    return model


@pytest.mark.parametrize("B", [1, 3, 40])  # 40 rows: two threads' tasks
def test_float32_tanh_error_bound(B):
    H = 64
    # the whole range, and magnitudes from subnormal (1e-45) up, where the rational's numerator underflows
    tiny = torch.logspace(-45, -2, 40 * B * H, dtype=torch.float64)
    x = torch.cat([torch.linspace(-10, 10, 400 * B * H, dtype=torch.float64), tiny, -tiny]).float()
    x = x[torch.randperm(x.numel())].view(-1, B, H)
    with torch.no_grad():
        y = _pointwise_rnn(H, "tanh")(x)[0]
    want = torch.tanh(x.double())
    err = (y.double() - want).abs()
    ulp = torch.nextafter(y.abs(), torch.tensor(2.0)).double() - y.abs().double()
    assert (err / ulp).max() <= 6, (err / ulp).max()   # a few ulp: a rational approximation, not libm
    assert (err / want.abs().clamp_min(1e-30)).max() <= 5e-7
    assert y.abs().max() <= 1
    assert torch.equal(y[x.abs() >= 9], torch.sign(x[x.abs() >= 9]))  # saturates to exactly +-1
    assert torch.equal(y[x == 0], x[x == 0])


def _per_row(values, nonlinearity, dtype=torch.float32):
    """act(v) for each value, one per batch row of a 1-unit RNN (so inf/NaN meet no 0 * inf)."""
    model = _pointwise_rnn(1, nonlinearity).to(dtype)
    with torch.no_grad():
        return model(values.to(dtype).view(1, -1, 1))[0].view(-1)


def test_float32_tanh_special_values_and_symmetry():
    inf, nan = float("inf"), float("nan")
    x = torch.tensor([0.0, 1e-30, -1e-30, 1e-6, 7.9, 8.0, 50.0, 3e38, -3e38, inf, -inf, nan, 0.5, -0.5])
    y = _per_row(x, "tanh")
    finite = x.isfinite()
    want = torch.tanh(x.double())
    assert ((y[finite].double() - want[finite]).abs() <= 5e-7 * want[finite].abs()).all()  # also tiny |x|
    assert y[6] == 1 and y[7] == 1 and y[8] == -1  # saturated
    assert y[9] == 1 and y[10] == -1 and y[11].isnan()
    assert y[12] == -y[13]
    v = torch.linspace(-9, 9, 1001)
    assert torch.equal(_per_row(v, "tanh"), -_per_row(-v, "tanh"))  # odd function, exactly


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relu_is_exact(dtype):
    H = 33
    x = torch.randn(50, 7, H, dtype=dtype) * 5
    model = _pointwise_rnn(H, "relu").to(dtype)
    with torch.no_grad():
        y = model(x)[0]
    assert torch.equal(y, torch.relu(x))
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, -1e-30, 1e-30])
    y = _per_row(special, "relu", dtype)
    want = torch.relu(special.to(dtype))
    assert torch.equal(y.isnan(), want.isnan()) and torch.equal(y.nan_to_num(), want.nan_to_num())


def test_float64_tanh_is_exact_libm():
    x = torch.linspace(-10, 10, 50 * 64, dtype=torch.float64).view(50, 1, 64)
    model = _pointwise_rnn(64, "tanh").double()
    with torch.no_grad():
        y = model(x)[0]
    torch.testing.assert_close(y, torch.tanh(x), rtol=1e-15, atol=1e-16)


# B sweeps: remainders of the 6-row register tile (1..5 rows) alone and after a split of the rows
# over two threads (balanced halves: H=33 splits from B=31 on, 16+15, 33+33, 34+33 rows ...). In the
# baseline build H=300 runs the micro-kernel for B<=2 and the BLAS step GEMM from 3 rows per block.
B_SWEEP = {7: [1, 2, 3, 4, 5, 70],
           33: [1, 2, 3, 5, 6, 7, 9, 31, 33, 64, 66, 67, 70],
           300: [1, 2, 3, 5, 6, 7, 9, 33, 70]}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("H", [7, 33, 300])  # partial panels; 300: BLAS step GEMM in the baseline build
def test_batch_sweep_against_nn_rnn(H, dtype):
    T = 3 if H == 300 else 8
    for nonlinearity, bidirectional in (("tanh", False), ("relu", True)):
        ref, fused = twins(5, H, 1, nonlinearity, bidirectional=bidirectional, dtype=dtype)
        if nonlinearity == "relu":  # keep relu from blowing up over steps
            with torch.no_grad():
                for m in (ref, fused):
                    for n, p in m.named_parameters():
                        if "weight_hh" in n:
                            p.mul_(0.5)
        for B in B_SWEEP[H]:
            x = torch.randn(T, B, 5, dtype=dtype)
            hx = torch.randn(2 if bidirectional else 1, B, H, dtype=dtype)
            assert_same_results(run(ref, x, hx), run(fused, x, hx), dtype)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("H", [33, 300])
def test_uneven_packed_lengths(H, threads):
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(H)
        lengths = torch.randint(1, 12, (37,), generator=g).tolist()
        lengths[5] = 12
        ref, fused = twins(4, H, 2, bidirectional=True)
        x = pack_sequence([torch.randn(n, 4, dtype=torch.float64) for n in lengths], enforce_sorted=False)
        hx = torch.randn(4, len(lengths), H, dtype=torch.float64)
        assert_same_results(run(ref, x, hx), run(fused, x, hx), torch.float64)
    finally:
        torch.set_num_threads(prev)


def test_threads_agree_with_nn_rnn():
    """A call big enough to split over threads and small enough for the micro-kernel, 1 vs 2 threads."""
    prev = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            ref, fused = twins(8, 40, 1, dtype=torch.float32)
            x, hx = torch.randn(30, 45, 8), torch.randn(1, 45, 40)
            r, f = run(ref, x, hx), run(fused, x, hx)
            assert_same_results(r, f, torch.float32)
            results.append(f)
        assert_same_results(results[0], results[1], torch.float32)
    finally:
        torch.set_num_threads(prev)


# A layer's weight and input gradients run as plain loops (csrc/cpu/small_layer_cpu.cpp) while
# N·D·H·(2·I_l + H) <= 2^16 multiply-adds, else as ATen GEMMs (rnn_stack.cpp). Packed input with
# uneven lengths in both directions, no-bias and relu variants, on both sides of that line:
# (N = 9 rows, H = 8: ~2.5k per layer; N = 120, H = 48: ~1.1M).
@pytest.mark.parametrize("H, lengths", [(8, [4, 3, 1, 1]), (48, [20, 20, 20, 17, 13, 11, 10, 9])],
                         ids=["tiny_loops", "aten_gemms"])
@pytest.mark.parametrize("nonlinearity, bias", [("tanh", True), ("relu", False)])
def test_layer_gradients_either_side_of_the_tiny_layer_line(H, lengths, nonlinearity, bias, poison):
    ref, fused = twins(5, H, 2, nonlinearity, bias=bias, bidirectional=True)
    if nonlinearity == "relu":
        with torch.no_grad():
            for m in (ref, fused):
                for n, p in m.named_parameters():
                    p.mul_(0.5)
    x = pack_sequence([torch.randn(n, 5, dtype=torch.float64) for n in lengths], enforce_sorted=False)
    hx = torch.randn(4, len(lengths), H, dtype=torch.float64)
    assert_same_results(run(ref, x, hx), run(fused, x, hx), torch.float64)
    xd = torch.randn(3, 2, 5, dtype=torch.float64)  # dense, hx omitted: zeros
    assert_same_results(run(ref, xd), run(fused, xd), torch.float64)
