// The launches of the CUDA recurrence kernel (recurrence_kernel.cuh) on the plan that
// recurrence_plan.h makes for the device; see recurrence.h for the contract.
// Included by the .cu files that instantiate launch_recurrence<T> for their dtypes.
//
// launch_recurrence tries the regimes in order Single, Grid, Step (the first that fits the device);
// each launch picks the forward or BPTT instantiation of the kernel from RecParams::backward.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include "cuda/device_info.h"
#include "cuda/rec_params.h"
#include "cuda/recurrence_kernel.cuh"
#include "cuda/recurrence_plan.h"
#include "switches.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <type_traits>

namespace fused_rnn {
namespace cuda {

// The forward or BPTT instantiation of the kernel (both have the same signature).
template <typename T, int BT, Mode M>
auto kernel_ptr(bool backward) {
  return backward ? &recurrence_kernel<T, BT, M, true> : &recurrence_kernel<T, BT, M, false>;
}

template <typename T>
at::Tensor alloc_scratch(const RecParams& p, at::Device device) {
  const int64_t n = (p.backward ? 3 : 2) * p.D * p.B * p.H;
  return at::empty({n}, at::TensorOptions().device(device).dtype(std::is_same<T, double>::value ? at::kDouble : at::kFloat));
}

// Cooperative persistent launch of plan k (Mode::Grid); false (nothing launched) when it cannot be
// co-resident.
template <typename T>
bool launch_grid(RecParams p, const KernelPlan& k, const DeviceAttributes& dev, at::Device device,
                 cudaStream_t stream) {
  bool ok = false;
  with_bt(k.bt, [&](auto btc) {
    constexpr int BT = decltype(btc)::value;
    auto kernel = kernel_ptr<T, BT, Mode::Grid>(p.backward);
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(k.smem)));
    int per_sm = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, k.threads, k.smem));
    if (int64_t(per_sm) * dev.sms < k.ctas * k.dirs) return;
    at::Tensor scratch = alloc_scratch<T>(p, device);
    p.scratch = scratch.data_ptr();
    bool first = true, too_large = false;
    for_each_launch(k, p.D, p.T + (p.backward ? 1 : 0), [&](Launch L) {
      if (too_large) return;
      void* args[] = {&p, &L};
      const cudaError_t err = cudaLaunchCooperativeKernel(kernel, dim3(k.ctas, k.dirs), dim3(k.threads), args,
                                                          k.smem, stream);
      if (err == cudaErrorCooperativeLaunchTooLarge && first) {
        (void)cudaGetLastError();  // clear it and take the per-step path instead
        too_large = true;
        return;
      }
      first = false;
      C10_CUDA_CHECK(err);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    ok = !too_large;
  });
  return ok;
}

// Plan k's launches (Single or Step: plain launches) on the stream, by the instantiation <T, BT, M>.
template <typename T, int BT, Mode M>
void launch_plain(RecParams p, const KernelPlan& k, at::Device device, cudaStream_t stream) {
  auto kernel = kernel_ptr<T, BT, M>(p.backward);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(k.smem)));
  at::Tensor scratch;
  if constexpr (M == Mode::Step) {  // the state between launches
    scratch = alloc_scratch<T>(p, device);
    p.scratch = scratch.data_ptr();
  }
  for_each_launch(k, p.D, p.T + (p.backward ? 1 : 0), [&](const Launch& L) {
    kernel<<<dim3(k.ctas, k.dirs), k.threads, k.smem, stream>>>(p, L);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// The FUSED_RNN_CUDA_REGIME switch (switches.h: one enum for every forced regime) lets tests and
// compute-sanitizer cover every path at small sizes: grid or step skip the faster kernels, gemm
// takes the per-step GEMM path (chosen in recurrence_cuda.cu, float32/float64 only), resident the
// SM-resident kernels (resident_cuda.cu, resident_mma_cuda.cu; calls outside them take the
// automatic choice).
// The first kernel regime launch_recurrence tries.
inline Mode first_regime() {
  switch (switches::cuda_regime()) {
    case switches::CudaRegime::Grid: return Mode::Grid;
    case switches::CudaRegime::Step: return Mode::Step;
    default: return Mode::Single;
  }
}

template <typename T>
void launch_recurrence(const RecParams& p, at::Device device, cudaStream_t stream) {
  const DeviceAttributes dev = device_info();
  const Mode first = first_regime();
  if (first == Mode::Single) {
    if (const std::optional<KernelPlan> k = plan_single<T>(p.H, p.B, p.D, dev)) {
      with_bt(k->bt, [&](auto btc) { launch_plain<T, decltype(btc)::value, Mode::Single>(p, *k, device, stream); });
      switches::record_cuda_regime("single");
      return;
    }
  }
  if (first != Mode::Step) {
    const std::optional<KernelPlan> k = plan_grid<T>(p.H, p.B, p.D, dev);
    if (k && launch_grid<T>(p, *k, dev, device, stream)) {
      switches::record_cuda_regime("grid");
      return;
    }
  }
  const KernelPlan k = plan_steps<T>(p.H, p.B, p.D);
  TORCH_INTERNAL_ASSERT(k.smem <= size_t(dev.smem_optin));
  launch_plain<T, kStepBatchTile, Mode::Step>(p, k, device, stream);
  switches::record_cuda_regime("step");
}

}  // namespace cuda
}  // namespace fused_rnn
