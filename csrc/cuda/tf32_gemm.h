// float32 matrix products on TF32 tensor cores through cuBLAS directly (tf32_gemm.cu), whatever
// torch.backends.cuda.matmul says: for the stack's GEMMs under nn.RNN's TF32 rule.
#pragma once

#include <ATen/core/Tensor.h>

namespace fused_rnn {
namespace cuda {

// c [M, N] = β·c + a [M, K] · b [K, N], float32 on one CUDA device, on the current stream, with
// TF32 inputs and fp32 accumulation (CUBLAS_COMPUTE_32F_FAST_TF32). Returns false, writing nothing,
// where cuBLAS cannot take the views as they lie (column_major_gemm.h) or its entry point cannot be
// found in the process.
bool tf32_gemm(const at::Tensor& c, const at::Tensor& a, const at::Tensor& b, float beta);

}  // namespace cuda
}  // namespace fused_rnn
