"""The staged replay behind FUSED_RNN_CUDA_GEMM_GRAPH=reuse (csrc/staged_replay.h), emulated on the CPU
(csrc/staged_replay_emulation.cpp): the same cache and step-loop adapters the CUDA half GEMM regime uses,
with a recorder that keeps the loop's body and reruns it at each replay, as a CUDA graph replays its
launches on the tensors it captured. Each call brings fresh tensors, so a staging mistake (a tensor
not copied in or back, a body reading the recording call's tensors, a layout it does not own) gives a
wrong result on the calls after the recording. The reference is the same loop run directly."""
import pytest
import torch

emulation = torch.ops.fused_rnn_emulation


@pytest.fixture(autouse=True)
def _fresh_cache():
    emulation.staged_reset(8)
    yield
    emulation.staged_reset(8)


def _layout(T, B, batch_sizes):
    if batch_sizes is None:
        return T * B, B
    return int(sum(batch_sizes)), batch_sizes[0]


def _forward_args(T, B, H, D, batch_sizes=None):
    N, B = _layout(T, B, batch_sizes)
    return (torch.randn(N, D * H, dtype=torch.float64), torch.randn(D, B, H, dtype=torch.float64),
            torch.randn(D, H, H, dtype=torch.float64) * 0.4, torch.full((D, B, H), float("nan"), dtype=torch.float64))


def _backward_args(T, B, H, D, batch_sizes=None):
    N, B = _layout(T, B, batch_sizes)
    return (torch.randn(N, D * H, dtype=torch.float64), torch.rand(N, D * H, dtype=torch.float64) * 1.8 - 0.9,
            torch.randn(D, B, H, dtype=torch.float64), torch.randn(D, H, H, dtype=torch.float64) * 0.4,
            torch.full((D, B, H), float("nan"), dtype=torch.float64))


def _call(op, args, batch_sizes, relu):
    if op is emulation.staged_forward:
        out, h0, w_hh, hy = args
        return op(out, h0, w_hh, batch_sizes, relu, hy)
    dpre, y, ghy, w_hh, dh0 = args
    return op(dpre, y, ghy, w_hh, batch_sizes, relu, dh0)


def _reference(op, args, batch_sizes, relu):
    """The loop run directly, on copies: a cache that may record nothing runs every call eagerly. It
    drops the cache's recordings, so tests take their references before the staged calls."""
    copies = [a.clone() for a in args]
    emulation.staged_reset(0)
    assert _call(op, copies, batch_sizes, relu) == "eager"
    return copies


CASES = [
    pytest.param(emulation.staged_forward, _forward_args, None, id="forward-uniform"),
    pytest.param(emulation.staged_forward, _forward_args, [4, 4, 3, 2, 2, 1], id="forward-packed"),
    pytest.param(emulation.staged_backward, _backward_args, None, id="bptt-uniform"),
    pytest.param(emulation.staged_backward, _backward_args, [4, 4, 3, 2, 2, 1], id="bptt-packed"),
]


@pytest.mark.parametrize("relu", [False, True], ids=["tanh", "relu"])
@pytest.mark.parametrize("D", [1, 2], ids=["uni", "bi"])
@pytest.mark.parametrize("op, make, batch_sizes", CASES)
def test_recorded_then_replayed_on_each_calls_tensors(op, make, batch_sizes, D, relu):
    """Calls 1..4 of one kind, each on fresh tensors: eager, recorded, replayed, replayed, each bitwise
    the direct loop's result on its own inputs; an earlier call's tensors are not touched later."""
    T, B, H = 6, 4, 5
    bs = None if batch_sizes is None else torch.tensor(batch_sizes)
    calls = [make(T, B, H, D, batch_sizes) for _ in range(4)]
    expected = [_reference(op, args, bs, relu) for args in calls]
    emulation.staged_reset(8)
    kept = []
    for args, want, outcome in zip(calls, expected, ["eager", "recorded", "replayed", "replayed"]):
        assert _call(op, args, bs, relu) == outcome
        for got, ref in zip(args, want):
            torch.testing.assert_close(got, ref, rtol=0, atol=0, equal_nan=True)
        kept.append([a.clone() for a in args])
    for args, before in zip(calls, kept):  # later replays wrote only their own call's tensors
        for a, b in zip(args, before):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_kinds_are_told_apart():
    """Another T, activation, batch table or stride layout is another kind: its own first call is eager."""
    fwd = emulation.staged_forward
    base = dict(T=5, B=3, H=4, D=1)
    for _ in range(2):
        _call(fwd, _forward_args(**base), None, False)
    assert _call(fwd, _forward_args(**base), None, False) == "replayed"
    assert _call(fwd, _forward_args(**base), None, True) == "eager"  # relu
    assert _call(fwd, _forward_args(**dict(base, T=6)), None, False) == "eager"
    assert _call(fwd, _forward_args(5, 3, 4, 1, [3, 3, 3, 2, 1]), torch.tensor([3, 3, 3, 2, 1]), False) == "eager"
    out, h0, w_hh, hy = _forward_args(**base)
    h0_t = h0.transpose(1, 2).contiguous().transpose(1, 2)  # dense, other strides
    assert _call(fwd, (out, h0_t, w_hh, hy), None, False) == "eager"
    assert _call(fwd, _forward_args(**base), None, False) == "replayed"


def test_tensors_that_cannot_be_staged_run_eagerly():
    """A non-dense tensor, or two sharing storage, are never recorded, and still give the loop's result."""
    fwd = emulation.staged_forward
    T, B, H = 5, 3, 4
    for _ in range(3):
        out, h0, _, hy = _forward_args(T, B, H, 1)
        w_wide = torch.randn(1, H, 2 * H, dtype=torch.float64) * 0.4
        w_hh = w_wide[:, :, :H]  # not dense
        want = _reference(fwd, (out, h0, w_hh.contiguous(), hy), None, False)
        emulation.staged_reset(8)
        assert _call(fwd, (out, h0, w_hh, hy), None, False) == "eager"
        torch.testing.assert_close(out, want[0], rtol=0, atol=0)
    emulation.staged_reset(8)
    for _ in range(3):
        out, _, w_hh, _ = _forward_args(T, B, H, 1)
        state = torch.randn(2, 1, B, H, dtype=torch.float64)
        assert _call(fwd, (out, state[0], w_hh, state[1]), None, False) == "eager"  # h0, hy: one storage


def test_capacity_and_reset():
    """A full cache leaves new kinds eager for good; reset drops the recordings and reports how many."""
    emulation.staged_reset(1)
    fwd = emulation.staged_forward
    outcomes = [_call(fwd, _forward_args(5, 3, 4, 1), None, False) for _ in range(3)]
    assert outcomes == ["eager", "recorded", "replayed"]
    assert [_call(fwd, _forward_args(6, 3, 4, 1), None, False) for _ in range(3)] == ["eager"] * 3
    assert emulation.staged_reset(8) == 1
    assert emulation.staged_reset(8) == 0
    assert _call(fwd, _forward_args(5, 3, 4, 1), None, False) == "eager"  # counting starts again
