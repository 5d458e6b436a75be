// Matrix products on cuBLAS called directly (see cublas_gemm.h).
//
// ATen's matmul follows torch.backends.cuda.matmul's flag (off by default) and offers no per-call
// way to turn TF32 on short of flipping that process-wide flag, which another thread's matmul would
// see. cuBLAS takes the precision per call: cublasGemmEx's compute type. The handle is ATen's for
// the current device and stream (its stream and workspace set), so a call is ordered like any ATen
// op, graph capture included.
//
// The extension does not link cuBLAS (the CUDA toolkit on a build machine need not have it; torch
// brings its own): cublasGemmEx is looked up once in the libcublas torch has loaded.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cublas_api.h>
#include <dlfcn.h>

#include <string>

#include "column_major_gemm.h"
#include "cuda/cublas_gemm.h"

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

cudaDataType data_type(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return CUDA_R_32F;
    case at::kHalf: return CUDA_R_16F;
    case at::kBFloat16: return CUDA_R_16BF;
    default: TORCH_CHECK(false, "fused_rnn: cublas_gemm takes float32, float16 or bfloat16, got ", st);
  }
}

}  // namespace

bool cublas_available() { return cublas_gemm_ex() != nullptr; }

bool cublas_gemm(const at::Tensor& c, const at::Tensor& a, const at::Tensor& b, float beta) {
  const at::ScalarType in = a.scalar_type();
  TORCH_CHECK(b.scalar_type() == in && (c.scalar_type() == in || c.scalar_type() == at::kFloat),
              "fused_rnn: cublas_gemm: a and b of one type, c of theirs or float32");
  for (const at::Tensor* t : {&c, &a, &b}) {
    TORCH_CHECK(t->is_cuda() && t->device() == c.device() && t->dim() == 2,
                "fused_rnn: cublas_gemm takes 2-D tensors on one CUDA device");
  }
  const std::optional<ColumnMajorGemm> g = column_major_gemm(c, a, b);
  const GemmExFn gemm_ex = cublas_gemm_ex();
  if (!g || gemm_ex == nullptr) return false;
  const cublasComputeType_t compute = in == at::kFloat ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  const c10::cuda::CUDAGuard guard(c.device());
  const cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();  // current stream, workspace set
  const float alpha = 1.0f;  // α and β are float for both compute types
  const cublasStatus_t status =
      gemm_ex(handle, op(g->first), op(g->second), static_cast<int>(g->m), static_cast<int>(g->n),
              static_cast<int>(g->k), &alpha, b.const_data_ptr(), data_type(in), static_cast<int>(g->first.ld),
              a.const_data_ptr(), data_type(in), static_cast<int>(g->second.ld), &beta, c.data_ptr(),
              data_type(c.scalar_type()), static_cast<int>(g->ldc), compute, CUBLAS_GEMM_DEFAULT);
  TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS, "fused_rnn: cublasGemmEx failed with status ", static_cast<int>(status));
  return true;
}

}  // namespace cuda
}  // namespace fused_rnn
