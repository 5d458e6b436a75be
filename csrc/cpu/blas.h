// Optional BLAS for the per-step GEMM once it is large enough to pay for a library call.
// libtorch_cpu exports the Fortran BLAS symbols of the BLAS it was built with (MKL on x86 wheels).
// They are declared weak: where a torch build does not export them, the pointers are null and the
// recurrence uses its own packed micro-kernel (simd.h) for every size instead.
#pragma once

#include <cstdint>
#include <limits>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}

namespace fused_rnn::cpu {

template <typename T>
bool blas_available();
template <>
inline bool blas_available<float>() { return sgemm_ != nullptr; }
template <>
inline bool blas_available<double>() { return dgemm_ != nullptr; }

inline bool fits_blas_int(int64_t v) { return v <= std::numeric_limits<int>::max(); }

// Row-major C[m, n] += A[m, k] · op(W), W a row-major [n, k] matrix when transpose_w (op = ᵀ),
// else a row-major [k, n] matrix. Column-major BLAS sees the transposed problem Cᵀ = op(W)ᵀ Aᵀ.
template <typename T>
inline void blas_gemm_acc(bool transpose_w, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* w,
                          int64_t ldw, T* c, int64_t ldc) {
  const int im = static_cast<int>(m), in = static_cast<int>(n), ik = static_cast<int>(k);
  const int ilda = static_cast<int>(lda), ildw = static_cast<int>(ldw), ildc = static_cast<int>(ldc);
  const T one = 1;
  const char tw = transpose_w ? 'T' : 'N', ta = 'N';
  if constexpr (sizeof(T) == sizeof(float)) {
    sgemm_(&tw, &ta, &in, &im, &ik, &one, w, &ildw, a, &ilda, &one, c, &ildc);
  } else {
    dgemm_(&tw, &ta, &in, &im, &ik, &one, w, &ildw, a, &ilda, &one, c, &ildc);
  }
}

}  // namespace fused_rnn::cpu
