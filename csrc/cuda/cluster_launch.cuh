// The launch of the resident kernels in thread-block clusters (cluster.cuh has their device side).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <utility>

namespace fused_rnn {
namespace cuda {

// Launches kernel(args...) on grid in clusters of C CTAs along x (C = 1: a plain launch) and
// returns true, or returns false without launching when the GPU cannot schedule such a cluster.
// Sizes over 8 are non-portable: they are allowed explicitly, and an occupancy query that refuses
// them is an answer (the caller falls back), where for portable sizes it is an error.
template <int C, typename... Params, typename... Args>
bool launch_in_clusters(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                        Args&&... args) {
  if constexpr (C == 1) {
    kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
  } else {
    if constexpr (C > 8) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    }
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    cudaLaunchAttribute attribute[1];
    attribute[0].id = cudaLaunchAttributeClusterDimension;
    attribute[0].val.clusterDim.x = C;
    attribute[0].val.clusterDim.y = 1;
    attribute[0].val.clusterDim.z = 1;
    config.attrs = attribute;
    config.numAttrs = 1;
    int clusters = 0;
    const cudaError_t err = cudaOccupancyMaxActiveClusters(&clusters, kernel, &config);
    if (C > 8 && err != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    C10_CUDA_CHECK(err);
    if (clusters < 1) return false;
    C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

}  // namespace cuda
}  // namespace fused_rnn
