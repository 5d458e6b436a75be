// float32 GEMM on TF32 tensor cores, called on cuBLAS directly (see tf32_gemm.h).
//
// ATen's matmul follows torch.backends.cuda.matmul's flag (off by default) and offers no per-call
// way to turn TF32 on short of flipping that process-wide flag, which another thread's matmul would
// see. cuBLAS takes the precision per call: the compute type CUBLAS_COMPUTE_32F_FAST_TF32 of
// cublasGemmEx. The handle is ATen's for the current device and stream (its stream and workspace
// set), so the call is ordered like any ATen op, graph capture included.
//
// The extension does not link cuBLAS (the CUDA toolkit on a build machine need not have it; torch
// brings its own): cublasGemmEx is looked up once in the libcublas torch has loaded.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cublas_api.h>
#include <dlfcn.h>

#include <string>

#include "column_major_gemm.h"
#include "cuda/tf32_gemm.h"

namespace fused_rnn {
namespace cuda {
namespace {

using GemmExFn = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                                    const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*,
                                    cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);

// cublasGemmEx of the libcublas already in the process (the one torch's CUDA library loaded; the
// soname's major version is the toolkit's this was built with), or null.
GemmExFn cublas_gemm_ex() {
  static const GemmExFn fn = [] {
    const std::string soname = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
    void* lib = dlopen(soname.c_str(), RTLD_NOW | RTLD_NOLOAD);
    return lib == nullptr ? nullptr : reinterpret_cast<GemmExFn>(dlsym(lib, "cublasGemmEx"));
  }();
  return fn;
}

cublasOperation_t op(const BlasOperand& o) { return o.transpose ? CUBLAS_OP_T : CUBLAS_OP_N; }

}  // namespace

bool tf32_gemm(const at::Tensor& c, const at::Tensor& a, const at::Tensor& b, float beta) {
  for (const at::Tensor* t : {&c, &a, &b}) {
    TORCH_CHECK(t->is_cuda() && t->device() == c.device() && t->scalar_type() == at::kFloat && t->dim() == 2,
                "fused_rnn: tf32_gemm takes 2-D float32 tensors on one CUDA device");
  }
  const std::optional<ColumnMajorGemm> g = column_major_gemm(c, a, b);
  const GemmExFn gemm_ex = cublas_gemm_ex();
  if (!g || gemm_ex == nullptr) return false;
  const c10::cuda::CUDAGuard guard(c.device());
  const cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();  // current stream, workspace set
  const float alpha = 1.0f;
  const cublasStatus_t status =
      gemm_ex(handle, op(g->first), op(g->second), static_cast<int>(g->m), static_cast<int>(g->n),
              static_cast<int>(g->k), &alpha, b.const_data_ptr(), CUDA_R_32F, static_cast<int>(g->first.ld),
              a.const_data_ptr(), CUDA_R_32F, static_cast<int>(g->second.ld), &beta, c.data_ptr(), CUDA_R_32F,
              static_cast<int>(g->ldc), CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT);
  TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS, "fused_rnn: cublasGemmEx failed with status ", static_cast<int>(status));
  return true;
}

}  // namespace cuda
}  // namespace fused_rnn
