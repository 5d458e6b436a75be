"""The SM-resident CUDA kernels' thread → data mappings, checked without a GPU.

torch.ops.fused_rnn_emulation.resident runs the kernel's algorithm lane by lane in float64 on the
CPU with the kernel's own layout functions (csrc/cuda/resident_layout.h: launch plan, shapes, rows
and k chunks per lane, reduce-scatter ownership, state and prefetch-ring indices). A wrong index
there gives a wrong recurrence here, against a plain float64 loop; the emulation also raises if an
output is written other than exactly once per step, if a (row, k) of W_hh is held by other than
one lane, or if a float4 state read would have a shared-memory bank conflict.

torch.ops.fused_rnn_emulation.resident_mma does the same for the tensor-core kernel
(csrc/cuda/mma_layout.h): the PTX ISA fragment layouts of mma.m16n8k16 (float16/bfloat16) and
mma.m16n8k8 (TF32) as the kernel encodes them, the packing of W_hh into A fragments, the B loads
from the state (their addresses, which element each register holds, bank conflicts) and which lane
owns which C value. It computes in float64 without the kernel's operand rounding: it checks the
layout, not the precision.
"""
import pytest
import torch

import fused_rnn  # noqa: F401  (loads the library that registers the emulation ops)
from conftest import benchmark_script

emulation = torch.ops.fused_rnn_emulation

H200_SMS = 132


def reference(buf, y, h_in, w, relu, backward):
    """One layer's recurrence of recurrence.h in float64: buf [T*B, D*H], h_in [D, B, H], w [D, H, H]."""
    D, B, H = h_in.shape
    T = buf.shape[0] // B
    x = buf.view(T, B, D, H)
    out = torch.empty_like(x)
    h_out = torch.empty_like(h_in)
    for d in range(D):
        ascending = (d == 1) == backward
        order = range(T) if ascending else range(T - 1, -1, -1)
        if not backward:
            h = h_in[d]
            for t in order:
                z = x[t, :, d] + h @ w[d].T
                h = torch.relu(z) if relu else torch.tanh(z)
                out[t, :, d] = h
            h_out[d] = h
        else:
            yy = y.view(T, B, D, H)[:, :, d]
            delta = None
            for t in order:
                g = x[t, :, d] + (h_in[d] if delta is None else delta @ w[d])
                delta = torch.where(yy[t] <= 0, 0.0, g) if relu else g * (1 - yy[t] ** 2)
                out[t, :, d] = delta
            h_out[d] = delta @ w[d]
    return out.view(T * B, D * H), h_out


def inputs(T, B, H, D, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    buf = r(T * B, D * H)
    y = torch.tanh(r(T * B, D * H))
    h_in = r(D, B, H) * 0.5
    w = r(D, H, H) / H**0.5
    return buf, y, h_in, w


CASES = [
    # (T, B, H, D, sms): every shape (H up to 32, 64, 128, 192; 256 and 512 in clusters), odd sizes, sizes just past a
    # shape's capacity, every batch tile (few SMs force the larger tiles), both directions
    (4, 1, 1, 1, H200_SMS),
    (3, 3, 7, 2, H200_SMS),
    (5, 2, 20, 1, 1),
    (3, 9, 32, 1, 2),
    (4, 5, 33, 2, H200_SMS),
    (3, 17, 64, 1, 4),
    (3, 2, 65, 1, H200_SMS),
    (2, 11, 100, 2, 3),
    (3, 3, 128, 1, H200_SMS),
    (2, 9, 128, 1, 1),
    (2, 1, 129, 1, H200_SMS),
    (2, 5, 192, 2, 2),
    (1, 1, 160, 1, H200_SMS),
    # clusters (sm_90): 2 CTAs of 128 rows up to H = 256, 8 CTAs of 64 rows up to 512
    (3, 3, 193, 1, H200_SMS),
    (2, 5, 256, 2, 4),
    (2, 2, 300, 1, H200_SMS),
    (2, 3, 512, 2, H200_SMS),
]


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "bptt"])
@pytest.mark.parametrize("relu", [False, True], ids=["tanh", "relu"])
@pytest.mark.parametrize("T,B,H,D,sms", CASES, ids=[f"T{c[0]}B{c[1]}H{c[2]}D{c[3]}sms{c[4]}" for c in CASES])
def test_emulation_matches_reference(T, B, H, D, sms, relu, backward):
    buf, y, h_in, w = inputs(T, B, H, D, seed=T * 1000 + B * 100 + H + D)
    out, h_out = emulation.resident(buf, y, h_in, w, relu, backward, sms)
    ref_out, ref_h = reference(buf, y, h_in, w, relu, backward)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_out, ref_h, rtol=1e-12, atol=1e-12)


def test_emulation_leaves_its_inputs_alone():
    buf, y, h_in, w = inputs(3, 2, 16, 1, seed=1)
    before = buf.clone()
    emulation.resident(buf, y, h_in, w, False, False, H200_SMS)
    assert torch.equal(buf, before)


def test_emulation_refuses_hidden_sizes_over_the_regime():
    buf, y, h_in, w = inputs(2, 1, 513, 1, seed=2)
    with pytest.raises(RuntimeError, match="over the regime's largest shape"):
        emulation.resident(buf, y, h_in, w, False, False, H200_SMS)


@pytest.mark.parametrize(
    "H,B,D,sms,expected",
    [
        # [shape, batch tile, CTAs, threads per CTA, k capacity, row capacity, CTAs per cluster]
        (20, 1, 1, H200_SMS, [0, 1, 1, 128, 32, 32, 1]),
        (64, 64, 1, H200_SMS, [1, 1, 64, 256, 64, 64, 1]),  # one CTA per sequence: 64 SMs busy
        (64, 64, 2, 64, [1, 2, 64, 256, 64, 64, 1]),  # the tile grows only when the SMs run out
        (128, 256, 1, H200_SMS, [2, 2, 128, 512, 128, 128, 1]),
        (128, 4096, 1, H200_SMS, [2, 8, 512, 512, 128, 128, 1]),  # past 8 rows a tile: waves
        (192, 1000, 1, H200_SMS, [3, 2, 500, 384, 192, 192, 1]),  # H <= 192 tiles at most 2 rows
        (256, 64, 1, H200_SMS, [4, 1, 128, 512, 256, 256, 2]),  # 64 clusters of 2: 128 SMs busy
        (256, 64, 2, H200_SMS, [4, 2, 128, 512, 256, 256, 2]),
        (512, 1, 1, H200_SMS, [5, 1, 8, 512, 512, 512, 8]),
        (513, 1, 1, H200_SMS, [-1, 0, 0, 0, 0, 0, 0]),
    ],
)
def test_launch_plan(H, B, D, sms, expected):
    assert list(emulation.resident_plan(H, B, D, sms)) == expected


MMA_CASES = [
    # (T, B, H, shape, D): every tiling of both shapes (m16n8k16: H up to 32, 64, 128, 192, 256 in one
    # CTA; m16n8k8: up to 32, 64, 128, 192), H not a multiple of 16, partial and several batch tiles of 8
    (3, 1, 1, "m16n8k16", 1),
    (4, 3, 17, "m16n8k16", 2),
    (3, 8, 32, "m16n8k16", 1),
    (3, 9, 50, "m16n8k16", 2),
    (2, 20, 100, "m16n8k16", 1),
    (2, 5, 129, "m16n8k16", 2),
    (2, 2, 200, "m16n8k16", 1),
    (2, 9, 256, "m16n8k16", 1),
    (3, 1, 7, "m16n8k8", 2),
    (3, 10, 33, "m16n8k8", 1),
    (2, 8, 64, "m16n8k8", 2),
    (2, 3, 120, "m16n8k8", 1),
    (2, 17, 192, "m16n8k8", 1),
    # clusters (sm_90) with k parts: m16n8k16 4 CTAs x 2 parts (H <= 512), 16 x 4 (H <= 1024);
    # m16n8k8 2 CTAs x 2 parts (H <= 256), 8 x 4 (H <= 512)
    (2, 3, 257, "m16n8k16", 1),
    (2, 9, 512, "m16n8k16", 2),
    (2, 2, 700, "m16n8k16", 1),
    (1, 8, 1024, "m16n8k16", 1),
    (2, 5, 193, "m16n8k8", 2),
    (2, 3, 256, "m16n8k8", 1),
    (2, 2, 400, "m16n8k8", 1),
]


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "bptt"])
@pytest.mark.parametrize("relu", [False, True], ids=["tanh", "relu"])
@pytest.mark.parametrize("T,B,H,shape,D", MMA_CASES, ids=[f"T{c[0]}B{c[1]}H{c[2]}-{c[3]}-D{c[4]}" for c in MMA_CASES])
def test_mma_emulation_matches_reference(T, B, H, shape, D, relu, backward):
    buf, y, h_in, w = inputs(T, B, H, D, seed=T * 1000 + B * 100 + H + D)
    out, h_out = emulation.resident_mma(buf, y, h_in, w, relu, backward, shape)
    ref_out, ref_h = reference(buf, y, h_in, w, relu, backward)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_out, ref_h, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape,H", [("m16n8k16", 1025), ("m16n8k8", 513)])
def test_mma_emulation_refuses_hidden_sizes_over_the_largest_tiling(shape, H):
    buf, y, h_in, w = inputs(1, 1, H, 1, seed=3)
    with pytest.raises(RuntimeError, match="over the largest tiling"):
        emulation.resident_mma(buf, y, h_in, w, False, False, shape)



def test_sanitizer_script_reaches_every_cluster_shape():
    """benchmarks/gpu_sanitize.py's `cluster` configurations, the only compute-sanitizer run of the
    cluster kernels: by the launchers' own plans (sm_90) they cover every cluster shape of the FFMA
    kernel and every cluster tiling of the tensor-core kernel (TF32; float16 and bfloat16 each), with
    both exchanges, and each names the kernel it must find running. A cluster shape added to a
    launcher without a sanitizer case fails here."""
    gpu_sanitize = benchmark_script("gpu_sanitize")

    def ffma_shape(H):  # the FFMA launcher's shape for H, if a cluster (else None)
        p = emulation.resident_plan(H, 1, 2, H200_SMS)
        return p[0] if p[6] > 1 else None

    def mma_tiling(H, shape):  # the tensor-core launcher's tiling for H, if a cluster (else None)
        p = emulation.resident_mma_plan(H, shape)
        return p[0] if p[1] > 1 else None

    all_ffma = {ffma_shape(H) for H in range(1, 2049)} - {None}
    all_mma = {s: {mma_tiling(H, s) for H in range(1, 2049)} - {None} for s in ("m16n8k16", "m16n8k8")}
    assert all_ffma and all(all_mma.values())

    cases = gpu_sanitize.configs(["cluster"])
    for exchange, suffix in (("barrier", ""), ("mbarrier", "_mbarrier")):
        mine = [c for c in cases if c.exchange == exchange]
        ffma = [c for c in mine if c.dtype == "float32" and not c.tf32]
        tf32 = [c for c in mine if c.tf32]
        assert {ffma_shape(c.hidden) for c in ffma} == all_ffma
        assert {c.expect for c in ffma} == {"resident_cluster" + suffix}
        assert {mma_tiling(c.hidden, "m16n8k8") for c in tf32} == all_mma["m16n8k8"]
        assert {c.expect for c in tf32} == {"resident_tf32" + suffix}
        for dtype in ("float16", "bfloat16"):
            half = [c for c in mine if c.dtype == dtype]
            assert {mma_tiling(c.hidden, "m16n8k16") for c in half} == all_mma["m16n8k16"], dtype
            assert {c.expect for c in half} == {"resident_mma" + suffix}
        assert all(c.hidden % 2 == 1 and not c.packed and c.switch_regime == "resident" for c in mine)
