"""The direct cuBLAS GEMM's argument mapping, checked without a GPU.

With FUSED_RNN_CUDA_GEMM_TF32=rnn, float32 matrix products of the CUDA stack go to cuBLAS's
column-major GEMM directly (csrc/cuda/cublas_gemm.cu), as do the float16/bfloat16 per-step GEMMs
(csrc/cuda/gemm_steps_half.cu), with ATen views passed as they lie in memory
(csrc/column_major_gemm.h: which operand goes first, op N or T, the leading dimensions).
torch.ops.fused_rnn_emulation.column_major_gemm runs the same arguments through a loop with BLAS's
own column-major semantics on the CPU, so a wrong operand order, transpose or leading dimension
gives a wrong product here against torch.addmm.
"""
import pytest
import torch

import fused_rnn  # noqa: F401  (loads the library that registers the emulation ops)

gemm = torch.ops.fused_rnn_emulation.column_major_gemm
F64 = torch.float64


def view(kind, rows, cols):
    """A [rows, cols] float64 matrix laid out as kind says, with the memory around it filled with a
    value that must never be read."""
    if kind == "contiguous":
        return torch.randn(rows, cols, dtype=F64)
    if kind == "transposed":  # column-major: unit row stride
        return torch.randn(cols, rows, dtype=F64).t()
    if kind == "column_slice":  # row stride over cols, as the stack's [N, D*H] direction slices
        wide = torch.full((rows, cols + 5), float("nan"), dtype=F64)
        return wide.narrow(1, 3, cols).copy_(torch.randn(rows, cols, dtype=F64))
    if kind == "transposed_slice":  # column-major with a leading dimension over rows
        wide = torch.full((cols, rows + 4), float("nan"), dtype=F64)
        return wide.narrow(1, 2, rows).copy_(torch.randn(cols, rows, dtype=F64)).t()
    raise ValueError(kind)


KINDS = ["contiguous", "transposed", "column_slice", "transposed_slice"]


@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5])
@pytest.mark.parametrize("c_kind", ["contiguous", "column_slice"])
@pytest.mark.parametrize("b_kind", KINDS)
@pytest.mark.parametrize("a_kind", KINDS)
@pytest.mark.parametrize("M,K,N", [(5, 7, 3), (1, 4, 6), (6, 1, 2), (3, 5, 1), (1, 1, 1), (8, 8, 8)])
def test_product_of_views(M, K, N, a_kind, b_kind, c_kind, beta):
    a, b, c = view(a_kind, M, K), view(b_kind, K, N), view(c_kind, M, N)
    if beta == 0.0:
        c.fill_(float("nan"))  # BLAS: with beta = 0, C is written, never read
    expected = a @ b if beta == 0.0 else torch.addmm(c, a, b, beta=beta)
    assert gemm(c, a, b, beta)
    torch.testing.assert_close(c, expected, rtol=1e-12, atol=1e-12)


def test_the_stacks_products():
    """The products rnn_stack.cpp and recurrence_gemm.cpp make, with their own views: the input
    projection into a layer's [N, D*H] buffer, a direction's step h·W_hhᵀ accumulated in place,
    dW_ih = δᵀ·x, dx = δ·W_ih."""
    T, B, I, H, D = 4, 3, 5, 6, 2
    N = T * B
    x, w_ih, w_hh = torch.randn(N, I, dtype=F64), torch.randn(D * H, I, dtype=F64), torch.randn(D, H, H, dtype=F64)
    out = torch.randn(N, D * H, dtype=F64)
    expected = x @ w_ih.t()
    assert gemm(out, x, w_ih.t(), 0.0)
    torch.testing.assert_close(out, expected)
    cur = out.narrow(1, H, H).narrow(0, B, B)  # direction 1, step 1
    prev = out.narrow(1, H, H).narrow(0, 2 * B, B)
    expected = cur + prev @ w_hh[1].t()
    assert gemm(cur, prev, w_hh[1].t(), 1.0)
    torch.testing.assert_close(cur, expected)
    delta = torch.randn(N, D * H, dtype=F64)
    dw = torch.empty(D * H, I, dtype=F64)
    assert gemm(dw, delta.t(), x, 0.0)
    torch.testing.assert_close(dw, delta.t() @ x)
    dx = torch.empty(N, I, dtype=F64)
    assert gemm(dx, delta, w_ih, 0.0)
    torch.testing.assert_close(dx, delta @ w_ih)


@pytest.mark.parametrize("case", ["c_transposed", "a_expanded", "b_strided_both", "empty_k"])
def test_refused_views_leave_c_alone(case):
    """Views cuBLAS cannot read as they lie are refused (the CUDA GEMM then leaves the product to
    ATen), and c is left as it was."""
    a, b, c = torch.randn(4, 3, dtype=F64), torch.randn(3, 5, dtype=F64), torch.randn(4, 5, dtype=F64)
    if case == "c_transposed":
        c = torch.randn(5, 4, dtype=F64).t()
    elif case == "a_expanded":  # rows overlap, as an expanded bias's
        a = torch.randn(1, 3, dtype=F64).expand(4, 3)
    elif case == "b_strided_both":
        b = torch.randn(6, 10, dtype=F64)[::2, ::2]
    else:
        a, b = torch.randn(4, 0, dtype=F64), torch.randn(0, 5, dtype=F64)
    before = c.clone()
    assert not gemm(c, a, b, 1.0)
    torch.testing.assert_close(c, before, rtol=0, atol=0)
