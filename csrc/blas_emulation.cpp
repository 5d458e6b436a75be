// CPU emulation of the column-major GEMM call the direct cuBLAS GEMM makes (cuda/cublas_gemm.cu), for
// tests on machines without a GPU: column_major_gemm.h turns ATen views into BLAS arguments, and a
// plain loop with BLAS's own semantics (op, leading dimensions, column-major storage) runs them on
// the same memory, so a wrong transpose, leading dimension or operand order shows up as a wrong
// product against at::addmm (tests/test_column_major_gemm.py).
//
//   torch.ops.fused_rnn_emulation.column_major_gemm(c, a, b, beta) -> bool
//     c [M, N] = beta·c + a [M, K] · b [K, N] in place, float64 CPU views of any strides; returns
//     false, leaving c as it was, where column_major_gemm() refuses the views (the CUDA GEMM then
//     leaves the product to ATen).
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "column_major_gemm.h"

namespace fused_rnn {
namespace {

// C [m, n] = α·op(A)·op(B) + β·C, column-major, as BLAS defines it: element (i, j) of a stored
// matrix with leading dimension ld is at i + j·ld; op T reads the stored matrix transposed.
void reference_gemm(bool transa, bool transb, int64_t m, int64_t n, int64_t k, double alpha, const double* A,
                    int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < m; ++i) {
      double acc = 0;
      for (int64_t l = 0; l < k; ++l) {
        const double x = transa ? A[l + i * lda] : A[i + l * lda];  // op(A)(i, l)
        const double y = transb ? B[j + l * ldb] : B[l + j * ldb];  // op(B)(l, j)
        acc += x * y;
      }
      C[i + j * ldc] = alpha * acc + (beta == 0 ? 0.0 : beta * C[i + j * ldc]);
    }
}

bool emulate_column_major_gemm(const at::Tensor& c, const at::Tensor& a, const at::Tensor& b, double beta) {
  for (const at::Tensor* t : {&c, &a, &b}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kDouble && t->dim() == 2,
                "column_major_gemm emulation: 2-D float64 CPU tensors");
  }
  TORCH_CHECK(a.size(1) == b.size(0) && c.size(0) == a.size(0) && c.size(1) == b.size(1),
              "column_major_gemm emulation: c [M, N], a [M, K], b [K, N]");
  const std::optional<ColumnMajorGemm> g = column_major_gemm(c, a, b);
  if (!g) return false;
  reference_gemm(g->first.transpose, g->second.transpose, g->m, g->n, g->k, 1.0, b.const_data_ptr<double>(),
                 g->first.ld, a.const_data_ptr<double>(), g->second.ld, beta, c.data_ptr<double>(), g->ldc);
  return true;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fused_rnn_emulation, m) {
  m.def("column_major_gemm(Tensor(a!) c, Tensor a, Tensor b, float beta) -> bool");
  m.impl("column_major_gemm", c10::DispatchKey::CPU, TORCH_FN(emulate_column_major_gemm));
}

}  // namespace fused_rnn
