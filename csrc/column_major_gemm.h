// An ATen (row-major) matrix product as one call of a column-major BLAS GEMM, without copies:
//   c [M, N] = β·c + a [M, K] · b [K, N]
// is computed as cᵀ [N, M] = bᵀ [N, K] · aᵀ [K, M], since a row-major matrix with row stride s is,
// in the same memory, the column-major matrix of its transpose with leading dimension s. An operand
// stored column-major (a transposed view: unit row stride) is passed as it is, with op T.
// Used by the direct cuBLAS calls (cuda/cublas_gemm.cu) and checked by its CPU emulation
// (blas_emulation.cpp, tests/test_column_major_gemm.py).
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>

namespace fused_rnn {

// How the column-major routine reads one operand X [R, C]: as stored (op N) it sees Xᵀ [C, R];
// with op T it sees X. ld: the leading dimension of the stored column-major matrix.
struct BlasOperand {
  bool transpose;
  int64_t ld;
};

// The arguments of gemm(transa, transb, m, n, k, α, A, lda, B, ldb, β, C, ldc) for c = β·c + a·b:
// the routine's A is our b, its B is our a, its C is our c.
struct ColumnMajorGemm {
  int64_t m, n, k;       // N, M, K
  BlasOperand first;     // b: the routine's A [m, k] after op
  BlasOperand second;    // a: the routine's B [k, n] after op
  int64_t ldc;           // c's row stride
};

// X [R, C] with strides (s0, s1), to be read as Xᵀ [C, R]:
//   row-major    (s1 = 1):  stored column-major as Xᵀ [C, R], ld = s0 ≥ C   → op N
//   column-major (s0 = 1):  stored column-major as X [R, C],  ld = s1 ≥ R   → op T
// The stride of a dimension of size 1 never addresses anything, so it may be anything (and that
// dimension's ld is then the smallest the routine accepts). nullopt for any other layout
// (overlapping rows such as an expanded bias, or no unit stride).
inline std::optional<BlasOperand> blas_operand(const at::Tensor& x) {
  const int64_t R = x.size(0), C = x.size(1), s0 = x.stride(0), s1 = x.stride(1);
  if ((s1 == 1 || C == 1) && (R == 1 || s0 >= std::max<int64_t>(C, 1))) {
    return BlasOperand{false, R == 1 ? std::max<int64_t>(C, 1) : s0};
  }
  if ((s0 == 1 || R == 1) && (C == 1 || s1 >= std::max<int64_t>(R, 1))) {
    return BlasOperand{true, C == 1 ? std::max<int64_t>(R, 1) : s1};
  }
  return std::nullopt;
}

// The call for c = β·c + a·b (2-D, sizes already matching), or nullopt where the routine cannot
// take the views as they are: c not row-major, an operand of another layout, an empty dimension,
// or a size or leading dimension beyond int32 (the routine's integer type).
inline std::optional<ColumnMajorGemm> column_major_gemm(const at::Tensor& c, const at::Tensor& a,
                                                        const at::Tensor& b) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  if (M == 0 || N == 0 || K == 0) return std::nullopt;
  const std::optional<BlasOperand> oc = blas_operand(c), oa = blas_operand(a), ob = blas_operand(b);
  if (!oc || oc->transpose || !oa || !ob) return std::nullopt;
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  for (const int64_t v : {M, N, K, oc->ld, oa->ld, ob->ld})
    if (v > kMax) return std::nullopt;
  return ColumnMajorGemm{N, M, K, *ob, *oa, oc->ld};
}

}  // namespace fused_rnn
