// The current CUDA device's attributes that the launch planners need, queried once per device.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <mutex>

namespace fused_rnn {
namespace cuda {

struct DeviceInfo {
  int sms = 0, smem_optin = 0, coop = 0, major = 0;  // major: compute capability (9: clusters)
};

// The current device's attributes, queried once per device and process (they never change), not
// on every launch.
inline DeviceInfo device_info() {
  constexpr int kMaxDevices = 64;
  static DeviceInfo known[kMaxDevices];
  static std::once_flag queried[kMaxDevices];
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  TORCH_INTERNAL_ASSERT(dev >= 0 && dev < kMaxDevices, "fused_rnn: device index ", dev, " out of range");
  std::call_once(queried[dev], [dev] {
    DeviceInfo info;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&info.sms, cudaDevAttrMultiProcessorCount, dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&info.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&info.coop, cudaDevAttrCooperativeLaunch, dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&info.major, cudaDevAttrComputeCapabilityMajor, dev));
    known[dev] = info;
  });
  return known[dev];
}

}  // namespace cuda
}  // namespace fused_rnn
