"""CUDA kernels' own source, compiled as host C++ and run on the CPU with one fiber per CUDA thread
(csrc/cuda_on_cpu.h), on the launch plans their launchers make, against nn.RNN in float64:
  - the default recurrence kernel (csrc/cuda/recurrence_kernel.cuh, plan: recurrence_plan.h) for a
    device described by hand: every regime (single, grid, step), every batch tile, forward and
    BPTT, packed and bidirectional, float64/32/16 and bfloat16;
  - the opt-in SM-resident float32 kernel (csrc/cuda/resident_kernel.cuh, plan: resident_layout.h):
    every shape, clusters of 2 and 8 CTAs exchanging h through distributed shared memory, warp
    shuffles, the cp.async prefetch ring, and both cluster exchanges (the cluster barrier, or st.async
    stores completing on mbarriers);
  - the opt-in tensor-core kernel (csrc/cuda/resident_mma_kernel.cuh, tilings: mma_layout.h) for
    float16, bfloat16 and TF32, on an mma.sync whose fragment layouts the runtime writes out from the
    PTX ISA independently of mma_layout.h: one-CTA tilings, k parts and clusters of 2, 4 and 8.
Each case runs with the threads (and CTAs) in ascending, descending and shuffled order between
barriers, and must give the same bits every time (a missing barrier would not).

The first tests show that the runtime catches what it claims to, on small kernels that break one
rule each (csrc/cuda_on_cpu_selftest.cpp).
"""
import math

import pytest
import torch

import fused_rnn  # noqa: F401  (loads the extension and its emulation ops)

kernel_on_cpu = torch.ops.fused_rnn_emulation.recurrence_kernel
selftest = torch.ops.fused_rnn_emulation.cuda_on_cpu_selftest

ORDERS = ("ascending", "descending", "shuffled")
SINGLE, GRID, STEP = 0, 1, 2
H100 = dict(sms=132, smem_optin=232448)  # cudaDevAttrMultiProcessorCount, ...SharedMemoryPerBlockOptin


# ---- the runtime's own gates ----------------------------------------------------------------------

@pytest.mark.parametrize("order", ORDERS)
def test_runtime_runs_a_correct_kernel_the_same_in_every_order(order):
    assert selftest("reverse", order) == [float(64 - i) for i in range(64)] + [0.0] * 64  # one CTA
    sums = selftest("grid_sum", order)
    assert sums == [float(sum(range(65, 129)))] * 64 + [float(sum(range(1, 65)))] * 64


def test_runtime_shows_a_missing_barrier_as_an_order_dependent_result():
    # out[i] = smem[63 - i] without a barrier after smem[i] = in[i]: a thread reads the word of a
    # thread that has not run yet (still the NaN fill) or has (right), depending on the order.
    right = [float(64 - i) for i in range(64)]
    ascending = selftest("missing_barrier", "ascending")[:64]
    descending = selftest("missing_barrier", "descending")[:64]
    assert all(math.isnan(v) for v in ascending[:32]) and ascending[32:] == right[32:]
    assert descending[:32] == right[:32] and all(math.isnan(v) for v in descending[32:])


@pytest.mark.parametrize("kernel, message", [
    ("divergent_barrier", "divergent barriers"),
    ("early_exit", "exited threads never reach"),
    ("smem_overflow", "past the launch's 256 bytes"),
    ("grid_sync_plain", "not cooperative"),
    ("grid_exit", "has exited"),
])
def test_runtime_stops_a_kernel_that_breaks_a_cuda_rule(kernel, message):
    with pytest.raises(RuntimeError, match=message):
        selftest(kernel, "ascending")


def test_runtime_shuffles_within_each_warp():
    assert selftest("warp_sum", "shuffled")[:64] == [float(sum(range(1, 33)))] * 32 + [float(sum(range(33, 65)))] * 32
    with pytest.raises(RuntimeError, match="while its warp's lanes wait at a warp shuffle"):
        selftest("shuffle_divergent", "ascending")


def test_runtime_completes_cp_async_copies_at_their_wait():
    out = selftest("copy_async", "ascending")
    assert all(math.isnan(v) for v in out[:64]) and out[64:] == [float(i + 1) for i in range(64)]


@pytest.mark.parametrize("order", ORDERS)
def test_runtime_exchanges_through_distributed_shared_memory_in_a_cluster(order):
    assert selftest("cluster_exchange", order) == [100.0 + i for i in range(64)] + [float(i) for i in range(64)]


def test_runtime_shows_a_missing_cluster_barrier_as_an_order_dependent_result():
    # CTA 0 runs first (ascending): its own words are not yet written by CTA 1; descending: the other way.
    ascending, descending = (selftest("cluster_no_barrier", order) for order in ("ascending", "descending"))
    assert all(math.isnan(v) for v in ascending[:64]) and ascending[64:] == [float(i) for i in range(64)]
    assert descending[:64] == [100.0 + i for i in range(64)] and all(math.isnan(v) for v in descending[64:])


@pytest.mark.parametrize("order", ORDERS)
def test_runtime_completes_mbarrier_phases_on_the_bytes_stored(order):
    assert selftest("mbarrier_exchange", order) == [100.0 + i for i in range(64)] + [float(i) for i in range(64)]


def test_runtime_reports_an_mbarrier_phase_that_never_completes():
    with pytest.raises(RuntimeError, match="deadlock: its threads wait on an mbarrier phase that never completes"):
        selftest("mbarrier_short", "ascending")


def test_runtime_gives_nan_for_shared_memory_that_no_thread_wrote():
    out = selftest("uninitialised_smem", "ascending")[:64]
    assert math.isnan(out[63]) and out[:63] == [1.0] * 63


# ---- the recurrence kernel against nn.RNN ---------------------------------------------------------

def reference(buf, h0, w_hh, relu, batch_sizes, grads=None):
    """One layer's recurrence (csrc/recurrence.h) by nn.RNN in float64: the input is buf itself
    (W_ih of direction d selects buf's columns d*H .. d*H+H-1, no biases), so the output is h_t and,
    with grads = (g, ghy), the input's gradient is BPTT's δ_t."""
    D, B, H = h0.shape
    rnn = torch.nn.RNN(D * H, H, nonlinearity="relu" if relu else "tanh", bias=False,
                       bidirectional=D == 2).double()
    with torch.no_grad():
        for d in range(D):
            suffix = "_reverse" if d else ""
            w_ih = torch.zeros(H, D * H, dtype=torch.double)
            w_ih[:, d * H:(d + 1) * H] = torch.eye(H, dtype=torch.double)
            getattr(rnn, "weight_ih_l0" + suffix).copy_(w_ih)
            getattr(rnn, "weight_hh_l0" + suffix).copy_(w_hh[d].double())
    x = buf.double().requires_grad_(grads is not None)
    h = h0.double().requires_grad_(grads is not None)
    if batch_sizes is None:
        out, hy = rnn(x.view(-1, B, D * H), h)
        out = out.reshape(-1, D * H)
    else:
        packed, hy = rnn(torch.nn.utils.rnn.PackedSequence(x, batch_sizes), h)
        out = packed.data
    if grads is None:
        return out.detach(), hy.detach()
    torch.autograd.backward([out, hy], [grads[0].double(), grads[1].double()])
    return x.grad, h.grad


TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 1e-1}


def run_all_orders(*args):
    """The kernel in every order: the same bits each time. Returns (buf, h_out, plan)."""
    runs = [kernel_on_cpu(*args, order, seed) for seed, order in enumerate(ORDERS)]
    for buf, h_out, plan in runs[1:]:
        assert plan == runs[0][2]
        assert torch.equal(buf, runs[0][0]) and torch.equal(h_out, runs[0][1]), "order-dependent result"
    return runs[0]


# (regime, dtype, T, B, H, D, relu, lengths, device attributes, expected plan: {field: value})
# plan fields: mode, bt, ctas, dirs, threads, smem, J, C, NBG, KT
FIELDS = ("mode", "bt", "ctas", "dirs", "threads", "smem", "J", "C", "NBG", "KT")
CASES = [
    # single: one CTA per batch tile and direction; the batch tile from the SM count
    ("auto", torch.float32, 5, 3, 20, 1, False, None, H100, dict(mode=SINGLE, bt=1)),
    ("auto", torch.float64, 4, 9, 70, 2, True, [9, 7, 7, 2], dict(sms=8, smem_optin=232448), dict(mode=SINGLE, bt=4)),
    ("auto", torch.float32, 3, 17, 37, 1, False, None, dict(sms=2, smem_optin=232448), dict(mode=SINGLE, bt=8)),
    ("auto", torch.float16, 4, 6, 48, 2, False, [6, 5, 3, 3], dict(sms=4, smem_optin=232448), dict(mode=SINGLE, bt=4)),
    ("auto", torch.bfloat16, 4, 6, 48, 2, True, None, dict(sms=4, smem_optin=232448), dict(mode=SINGLE, bt=4)),
    ("auto", torch.float32, 3, 2, 200, 2, False, [2, 1, 1], H100, dict(mode=SINGLE, bt=1, threads=512)),
    # grid: C CTAs split the units; batch groups (NBG); directions together or one launch each
    ("grid", torch.float32, 4, 9, 70, 2, False, None, dict(sms=8, smem_optin=26000), dict(mode=GRID, bt=8, C=3, NBG=1)),
    ("grid", torch.float32, 4, 9, 70, 2, True, [9, 9, 4, 1], dict(sms=16, smem_optin=26000),
     dict(mode=GRID, C=3, NBG=2, dirs=2)),
    ("grid", torch.float32, 3, 9, 70, 2, False, None, dict(sms=4, smem_optin=26000), dict(mode=GRID, C=3, dirs=1)),
    ("grid", torch.float64, 3, 1, 40, 2, False, None, dict(sms=8, smem_optin=12000), dict(mode=GRID, bt=1)),
    ("grid", torch.float16, 3, 4, 64, 1, False, [4, 3, 1], dict(sms=8, smem_optin=12000), dict(mode=GRID, bt=4)),
    ("auto", torch.float32, 2, 1, 1024, 1, False, None, H100, dict(mode=GRID, bt=1, C=32)),
    # step: one launch per step, W_hh from global memory, v staged in k-tiles of KT
    ("step", torch.float32, 3, 5, 33, 2, True, [5, 4, 4], H100, dict(mode=STEP, bt=4)),
    ("step", torch.float64, 3, 1, 70, 1, False, None, H100, dict(mode=STEP, J=64, C=2)),
    ("step", torch.float64, 2, 2, 1030, 1, False, None, H100, dict(mode=STEP, KT=1024)),  # a partial k-tile
    ("step", torch.bfloat16, 3, 3, 24, 2, False, [3, 2, 2], H100, dict(mode=STEP)),
]


def case_id(case):
    regime, dtype, T, B, H, D, relu, lengths, dev, _ = case
    return (f"{regime}-{str(dtype)[6:]}-T{T}B{B}H{H}D{D}-{'relu' if relu else 'tanh'}"
            f"{'-packed' if lengths else ''}-sms{dev['sms']}")


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_recurrence_kernel_matches_nn_rnn(case):
    regime, dtype, T, B, H, D, relu, lengths, dev, expected = case
    gen = torch.Generator().manual_seed(T * 1000 + B * 100 + H)
    batch_sizes = None if lengths is None else torch.tensor(lengths, dtype=torch.int64)
    N = T * B if lengths is None else sum(lengths)
    w_hh = (torch.randn(D, H, H, generator=gen, dtype=torch.float64) / math.sqrt(H)).to(dtype)
    h0 = torch.randn(D, B, H, generator=gen, dtype=torch.float64).to(dtype)
    pre = torch.randn(N, D * H, generator=gen, dtype=torch.float64).to(dtype)
    tol = TOLERANCE[dtype]

    out, hy, plan = run_all_orders(pre, torch.empty(0), h0, w_hh, batch_sizes, relu, False, regime,
                                   dev["sms"], dev["smem_optin"])
    got = dict(zip(FIELDS, plan))
    assert {k: got[k] for k in expected} == expected, got
    ref_out, ref_hy = reference(pre, h0, w_hh, relu, batch_sizes)
    torch.testing.assert_close(out.double(), ref_out, atol=tol, rtol=tol)
    torch.testing.assert_close(hy.double(), ref_hy, atol=tol, rtol=tol)

    g = torch.randn(N, D * H, generator=gen, dtype=torch.float64).to(dtype)
    ghy = torch.randn(D, B, H, generator=gen, dtype=torch.float64).to(dtype)
    y = ref_out.to(dtype)
    delta, dh0, bplan = run_all_orders(g, y, ghy, w_hh, batch_sizes, relu, True, regime, dev["sms"],
                                       dev["smem_optin"])
    assert bplan[0] == plan[0]
    # The reference's δ from the rounded y the kernel reads: the same forward, in float64.
    ref_delta, ref_dh0 = reference(pre, h0, w_hh, relu, batch_sizes, grads=(g, ghy))
    torch.testing.assert_close(delta.double(), ref_delta, atol=tol * 4, rtol=tol * 4)
    torch.testing.assert_close(dh0.double(), ref_dh0, atol=tol * 4, rtol=tol * 4)


def test_recurrence_kernel_stops_at_a_bad_argument():
    w, h0, buf = torch.zeros(1, 4, 4), torch.zeros(1, 2, 4), torch.zeros(6, 4)
    with pytest.raises(RuntimeError, match="regime must be"):
        kernel_on_cpu(buf, torch.empty(0), h0, w, None, False, False, "single", 8, 232448, "ascending", 0)
    with pytest.raises(RuntimeError, match="smem_optin"):
        kernel_on_cpu(buf, torch.empty(0), h0, w, None, False, False, "auto", 8, 1 << 20, "ascending", 0)


# ---- the SM-resident float32 kernel (opt-in) against nn.RNN --------------------------------------

resident_on_cpu = torch.ops.fused_rnn_emulation.resident_kernel

# (T, B, H, D, relu, sms, clusters, mbarrier exchange, expected plan [shape, bt, CTAs per cluster])
RESIDENT_CASES = [
    (4, 3, 20, 1, False, 132, True, False, [0, 1, 1]),     # Shape32
    (4, 5, 64, 2, True, 132, True, False, [1, 1, 1]),      # Shape64
    (3, 9, 100, 1, False, 4, True, False, [2, 4, 1]),      # Shape128, batch tile 4 (few SMs)
    (3, 17, 120, 1, True, 2, False, False, [2, 8, 1]),     # batch tile 8, no clusters (sm_80)
    (3, 2, 150, 2, False, 132, True, False, [3, 1, 1]),    # Shape192 (R = 2)
    (3, 3, 200, 1, True, 4, True, False, [4, 2, 2]),       # Shape256C2: a cluster of 2, batch tile 2
    (2, 1, 300, 2, False, 132, True, False, [5, 1, 8]),    # Shape512C8: a cluster of 8
    (4, 3, 200, 1, False, 4, True, True, [4, 2, 2]),       # the mbarrier exchange (st.async)
    (3, 2, 300, 1, True, 132, True, True, [5, 1, 8]),
]


def resident_id(c):
    return f"T{c[0]}B{c[1]}H{c[2]}D{c[3]}-sms{c[5]}{'-mbarrier' if c[7] else ''}"


@pytest.mark.parametrize("case", RESIDENT_CASES, ids=[resident_id(c) for c in RESIDENT_CASES])
def test_resident_kernel_matches_nn_rnn(case):
    T, B, H, D, relu, sms, clusters, mbarrier, expected = case
    gen = torch.Generator().manual_seed(H)
    w_hh = torch.randn(D, H, H, generator=gen) / math.sqrt(H)
    h0, pre = torch.randn(D, B, H, generator=gen), torch.randn(T * B, D * H, generator=gen)
    g, ghy = torch.randn(T * B, D * H, generator=gen), torch.randn(D, B, H, generator=gen)
    tol = TOLERANCE[torch.float32]

    def all_orders(*args):
        runs = [resident_on_cpu(*args, sms, clusters, mbarrier, order, seed) for seed, order in enumerate(ORDERS)]
        for buf, h_out, plan in runs[1:]:
            assert torch.equal(buf, runs[0][0]) and torch.equal(h_out, runs[0][1]), "order-dependent result"
        return runs[0]

    out, hy, plan = all_orders(pre, torch.empty(0), h0, w_hh, relu, False)
    assert plan[:3] == expected
    ref_out, ref_hy = reference(pre, h0, w_hh, relu, None)
    torch.testing.assert_close(out.double(), ref_out, atol=tol, rtol=tol)
    torch.testing.assert_close(hy.double(), ref_hy, atol=tol, rtol=tol)
    delta, dh0, _ = all_orders(g, ref_out.float(), ghy, w_hh, relu, True)
    ref_delta, ref_dh0 = reference(pre, h0, w_hh, relu, None, grads=(g, ghy))
    torch.testing.assert_close(delta.double(), ref_delta, atol=4 * tol, rtol=4 * tol)
    torch.testing.assert_close(dh0.double(), ref_dh0, atol=4 * tol, rtol=4 * tol)


# ---- the tensor-core kernel (opt-in) against nn.RNN ----------------------------------------------

mma_on_cpu = torch.ops.fused_rnn_emulation.resident_mma_kernel

# Forward and BPTT tolerances against float64: the kernel rounds the state to the operand type once
# per step (float16: 2^-11, bfloat16: 2^-8, TF32: 2^-11 relative), as cuDNN's half kernels do.
MMA_TOLERANCE = {torch.float16: (2e-3, 8e-3), torch.bfloat16: (2e-2, 6e-2), torch.float32: (3e-3, 6e-3)}

# (dtype, T, B, H, D, relu, clusters, mbarrier exchange, expected plan [tiling, KT, KP, CTAs per cluster, warps])
MMA_CASES = [
    (torch.float16, 3, 3, 20, 1, False, True, False, [0, 2, 1, 1, 2]),
    (torch.float16, 3, 9, 64, 2, True, True, False, [1, 4, 1, 1, 4]),        # two batch tiles of 8
    (torch.float16, 2, 2, 200, 1, False, True, False, [4, 16, 1, 1, 13]),
    (torch.float16, 2, 2, 300, 1, True, True, False, [5, 16, 2, 4, 16]),     # a cluster of 4, k parts
    (torch.float16, 3, 3, 300, 1, False, True, True, [5, 16, 2, 4, 16]),     # st.async of paired words
    (torch.bfloat16, 3, 5, 48, 2, False, True, False, [1, 4, 1, 1, 3]),
    (torch.bfloat16, 2, 2, 300, 1, False, True, False, [5, 16, 2, 4, 16]),
    (torch.float32, 3, 3, 20, 1, True, True, False, [0, 4, 1, 1, 2]),          # TF32
    (torch.float32, 2, 9, 150, 2, False, False, False, [3, 24, 1, 1, 10]),
    (torch.float32, 2, 2, 200, 1, False, True, False, [4, 16, 2, 2, 16]),      # a cluster of 2
    (torch.float32, 2, 2, 300, 1, True, True, False, [5, 16, 4, 8, 16]),       # a cluster of 8
    (torch.float32, 3, 2, 200, 1, True, True, True, [4, 16, 2, 2, 16]),        # st.async
]


def mma_id(c):
    return f"{str(c[0])[6:]}-T{c[1]}B{c[2]}H{c[3]}D{c[4]}{'-mbarrier' if c[7] else ''}"


@pytest.mark.parametrize("case", MMA_CASES, ids=[mma_id(c) for c in MMA_CASES])
def test_tensor_core_kernel_matches_nn_rnn(case):
    dtype, T, B, H, D, relu, clusters, mbarrier, expected = case
    gen = torch.Generator().manual_seed(H + B)
    w_hh = (torch.randn(D, H, H, generator=gen) / math.sqrt(H)).to(dtype)
    h0, pre = torch.randn(D, B, H, generator=gen).to(dtype), torch.randn(T * B, D * H, generator=gen).to(dtype)
    g, ghy = torch.randn(T * B, D * H, generator=gen).to(dtype), torch.randn(D, B, H, generator=gen).to(dtype)
    tol, tol_bptt = MMA_TOLERANCE[dtype]

    def all_orders(*args):
        runs = [mma_on_cpu(*args, clusters, mbarrier, order, seed) for seed, order in enumerate(ORDERS)]
        for buf, h_out, plan in runs[1:]:
            assert torch.equal(buf, runs[0][0]) and torch.equal(h_out, runs[0][1]), "order-dependent result"
        return runs[0]

    out, hy, plan = all_orders(pre, torch.empty(0), h0, w_hh, relu, False)
    assert plan == expected
    ref_out, ref_hy = reference(pre, h0, w_hh, relu, None)
    torch.testing.assert_close(out.double(), ref_out, atol=tol, rtol=tol)
    torch.testing.assert_close(hy.double(), ref_hy, atol=tol, rtol=tol)
    delta, dh0, _ = all_orders(g, ref_out.to(dtype), ghy, w_hh, relu, True)
    ref_delta, ref_dh0 = reference(pre, h0, w_hh, relu, None, grads=(g, ghy))
    torch.testing.assert_close(delta.double(), ref_delta, atol=tol_bptt, rtol=tol_bptt)
    torch.testing.assert_close(dh0.double(), ref_dh0, atol=tol_bptt, rtol=tol_bptt)
