// Matrix products on cuBLAS called directly (cublas_gemm.cu), in a precision chosen per call rather
// than by torch.backends.cuda.matmul's process-wide flags, and without ATen's per-op dispatch: for
// the stack's float32 GEMMs under nn.RNN's TF32 rule, and the float16/bfloat16 per-step GEMM regime
// (gemm_steps_half.cu).
#pragma once

#include <ATen/core/Tensor.h>

namespace fused_rnn {
namespace cuda {

// c [M, N] = β·c + a [M, K] · b [K, N] on one CUDA device, on the current stream:
//   a, b float32, c float32: TF32 tensor cores, fp32 accumulation (CUBLAS_COMPUTE_32F_FAST_TF32);
//   a, b float16 (or both bfloat16), c float32 or of a's type: fp32 accumulation (CUBLAS_COMPUTE_32F),
//   rounded once where c is of the half type.
// Returns false, writing nothing, where cuBLAS cannot take the views as they lie
// (column_major_gemm.h) or its entry point cannot be found in the process.
bool cublas_gemm(const at::Tensor& c, const at::Tensor& a, const at::Tensor& b, float beta);

// Whether cuBLAS's entry point was found in the process (cublas_gemm then refuses only views).
bool cublas_available();

}  // namespace cuda
}  // namespace fused_rnn
