// Host values to the device through kernel parameters: the values travel inside the launch itself,
// so there is no pageable host→device copy (which synchronises the stream with the host and cannot
// be captured), no pinned staging buffer whose lifetime a captured graph would outlive, and a CUDA
// graph captured around a call keeps the values it saw. For the packed-sequence step table, a few
// hundred to a few thousand int64: one launch per kChunk values.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "cuda/upload_by_value.h"

namespace fused_rnn {
namespace cuda {
namespace {

// 4 KB is the kernel-parameter limit on every CUDA version and architecture: 496 values plus the
// count and the destination pointer fill 3984 bytes of it.
constexpr int64_t kChunk = 496;

struct Chunk {
  int64_t values[kChunk];
};

__global__ void store_chunk(const Chunk chunk, int n, int64_t* __restrict__ dst) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = chunk.values[i];
}

}  // namespace

at::Tensor upload_by_value(const std::vector<int64_t>& values, at::Device device) {
  TORCH_CHECK(device.is_cuda(), "fused_rnn: upload_by_value needs a CUDA device");
  const c10::cuda::CUDAGuard guard(device);
  const at::TensorOptions options = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor out = at::empty({static_cast<int64_t>(values.size())}, options);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  int64_t* dst = out.data_ptr<int64_t>();
  const int64_t total = static_cast<int64_t>(values.size());
  for (int64_t begin = 0; begin < total; begin += kChunk) {
    const int n = static_cast<int>(std::min(kChunk, total - begin));
    Chunk chunk{};
    std::copy(values.begin() + begin, values.begin() + begin + n, chunk.values);
    store_chunk<<<1, 128, 0, stream>>>(chunk, n, dst + begin);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

}  // namespace cuda
}  // namespace fused_rnn
