"""The per-step GEMM recurrence (csrc/recurrence_gemm.cpp), which the CUDA build runs for large
float32/float64 steps, checked on the CPU against nn.RNN: FUSED_RNN_CPU_REGIME=gemm routes the CPU
ops through it. Covers both directions, packed batches whose rows start and end at different steps
(reverse direction starting mid-batch, hy/dh0 per row), relu and tanh, layers, hx given or not."""
import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

from conftest import assert_same_results, run, twins


@pytest.fixture(autouse=True)
def _gemm_regime(switch):
    switch("FUSED_RNN_CPU_REGIME", "gemm")


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("layers", [1, 2])
def test_dense_against_nn_rnn(layers, nonlinearity, bidirectional):
    ref, fused = twins(5, 9, layers, nonlinearity, bidirectional=bidirectional)
    x = torch.randn(6, 4, 5, dtype=torch.float64)
    hx = torch.randn(layers * (2 if bidirectional else 1), 4, 9, dtype=torch.float64)
    assert_same_results(run(ref, x, hx), run(fused, x, hx), torch.float64)
    assert_same_results(run(ref, x), run(fused, x), torch.float64)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_uneven_lengths_against_nn_rnn(enforce_sorted, nonlinearity):
    lengths = [7, 7, 5, 3, 3, 1] if enforce_sorted else [3, 7, 1, 5, 7, 3]
    ref, fused = twins(4, 11, 2, nonlinearity, bidirectional=True)
    x = pack_sequence([torch.randn(n, 4, dtype=torch.float64) for n in lengths], enforce_sorted=enforce_sorted)
    hx = torch.randn(4, len(lengths), 11, dtype=torch.float64)
    assert_same_results(run(ref, x, hx), run(fused, x, hx), torch.float64)


def test_float32_and_single_step():
    ref, fused = twins(3, 16, 1, dtype=torch.float32, bidirectional=True)
    for T in (1, 5):
        x = torch.randn(T, 2, 3)
        assert_same_results(run(ref, x), run(fused, x), torch.float32)


def test_regime_switch_takes_effect(switch):
    """The switch reaches the op (so the tests above do test the GEMM path): in float32 the fused
    kernel's rational tanh and the GEMM path's ATen tanh differ in the last bits somewhere."""
    fused = twins(8, 64, 1, dtype=torch.float32)[1]
    x = torch.randn(20, 8, 8) * 3
    with torch.no_grad():
        gemm_out = fused(x)[0]
        switch("FUSED_RNN_CPU_REGIME", "fused")
        fused_out = fused(x)[0]
    torch.testing.assert_close(gemm_out, fused_out, rtol=1e-5, atol=1e-6)
    assert not torch.equal(gemm_out, fused_out)
