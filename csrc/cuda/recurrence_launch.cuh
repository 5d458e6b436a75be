// The host launch planner of the CUDA recurrence kernel (recurrence_kernel.cuh): which regime, batch
// tile, CTAs and threads a call gets, and the launches; see recurrence.h for the contract.
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
#include "switches.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace fused_rnn {
namespace cuda {

// Threads per CTA: about 8 k-values per thread and unit, at most kMaxThreads, and never fewer
// threads than units (J <= kMaxThreads is guaranteed by the planner).
inline int threads_for(int64_t J, int64_t H) {
  const int64_t n = ceil_div(J * std::max<int64_t>(1, ceil_div(H, 8)), 32) * 32;
  return static_cast<int>(std::clamp<int64_t>(n, 32, kMaxThreads));
}

template <typename F>
void with_bt(int bt, F&& f) {
  switch (bt) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    default: f(std::integral_constant<int, 8>{}); break;
  }
}

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

// Cooperative persistent launch; false (nothing launched) when it cannot be co-resident.
template <typename T>
bool launch_grid(RecParams p, const DeviceInfo& dev, at::Device device, cudaStream_t stream) {
  using acc_t = acc_type<T>;
  const int64_t H = p.H, B = p.B, D = p.D;
  const int bt = B == 1 ? 1 : (B <= 4 ? 4 : 8);
  const size_t fixed = 16 + align16(size_t(H) * bt * sizeof(acc_t)) + size_t(kMaxThreads) * bt * sizeof(acc_t);
  if (!dev.coop || fixed >= size_t(dev.smem_optin)) return false;
  const int64_t jmax = std::min<int64_t>(kMaxThreads, (dev.smem_optin - fixed) / (H * sizeof(T)));
  if (jmax < 1) return false;
  const int64_t cmin = ceil_div(H, jmax);
  if (cmin > dev.sms) return false;
  const int64_t nd = D * cmin <= dev.sms ? D : 1;
  // Units per CTA: enough CTAs to keep about 32K multiply-adds per CTA and step, within the SMs.
  const int64_t c_cap = std::max<int64_t>(cmin, dev.sms / nd);
  const int64_t c_want = std::clamp<int64_t>(ceil_div(H * H, 32768), cmin, c_cap);
  const int64_t J = ceil_div(H, c_want), C = ceil_div(H, J);
  const int64_t nchunks = ceil_div(B, bt);
  const int64_t nbg = std::clamp<int64_t>(dev.sms / (nd * C), 1, nchunks);
  const int threads = threads_for(J, H);
  const size_t smem = smem_bytes<T>(Mode::Grid, H, J, H, bt, threads);
  if (smem > size_t(dev.smem_optin)) return false;

  bool ok = false;
  with_bt(bt, [&](auto btc) {
    constexpr int BT = decltype(btc)::value;
    auto kernel = kernel_ptr<T, BT, Mode::Grid>(p.backward);
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    int per_sm = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
    if (int64_t(per_sm) * dev.sms < C * nbg * nd) return;
    at::Tensor scratch = alloc_scratch<T>(p, device);
    p.scratch = scratch.data_ptr();
    for (int64_t d0 = 0; d0 < D; d0 += nd) {
      Launch L{static_cast<int>(J), static_cast<int>(C), static_cast<int>(nbg), static_cast<int>(H),
               static_cast<int>(d0), 0, p.T + (p.backward ? 1 : 0)};
      void* args[] = {&p, &L};
      const cudaError_t err = cudaLaunchCooperativeKernel(kernel, dim3(C * nbg, nd),
                                                          dim3(threads), args, smem, stream);
      if (err == cudaErrorCooperativeLaunchTooLarge && d0 == 0) {
        (void)cudaGetLastError();  // clear it and take the per-step path instead
        return;
      }
      C10_CUDA_CHECK(err);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    ok = true;
  });
  return ok;
}

// One launch per step, W_hh from global memory: correct for every H.
template <typename T>
void launch_steps(RecParams p, const DeviceInfo& dev, at::Device device, cudaStream_t stream) {
  using acc_t = acc_type<T>;
  constexpr int BT = 4;
  const int64_t H = p.H, B = p.B, D = p.D;
  const int64_t J = std::min<int64_t>(H, 64), C = ceil_div(H, J);
  const int KT = static_cast<int>(std::min<int64_t>(H, 32768 / (BT * sizeof(acc_t))));
  const int threads = threads_for(J, H);
  const size_t smem = smem_bytes<T>(Mode::Step, H, J, KT, BT, threads);
  TORCH_INTERNAL_ASSERT(smem <= size_t(dev.smem_optin));
  auto kernel = kernel_ptr<T, BT, Mode::Step>(p.backward);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  at::Tensor scratch = alloc_scratch<T>(p, device);
  p.scratch = scratch.data_ptr();
  const int64_t nchunks = ceil_div(B, BT);
  for (int64_t s = 0; s < p.T + (p.backward ? 1 : 0); ++s) {
    const Launch L{static_cast<int>(J), static_cast<int>(C), static_cast<int>(nchunks), KT, 0, s, s + 1};
    kernel<<<dim3(C * nchunks, D), threads, smem, stream>>>(p, L);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
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
  const DeviceInfo dev = device_info();
  const int64_t H = p.H, B = p.B, D = p.D;
  const Mode first = first_regime();
  if (first == Mode::Single && H <= kMaxThreads) {
    // Smallest batch tile that still fills the GPU in one wave of independent CTAs.
    int bt = 8;
    for (int c : {1, 4}) {
      if (D * ceil_div(B, c) <= dev.sms) {
        bt = c;
        break;
      }
    }
    const int threads = threads_for(H, H);
    const size_t smem = smem_bytes<T>(Mode::Single, H, H, H, bt, threads);
    if (smem <= size_t(dev.smem_optin)) {
      with_bt(bt, [&](auto btc) {
        constexpr int BT = decltype(btc)::value;
        auto kernel = kernel_ptr<T, BT, Mode::Single>(p.backward);
        C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
        const int64_t nchunks = ceil_div(B, BT);
        const Launch L{static_cast<int>(H), 1, static_cast<int>(nchunks), static_cast<int>(H), 0, 0,
                       p.T + (p.backward ? 1 : 0)};
        kernel<<<dim3(nchunks, D), threads, smem, stream>>>(p, L);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      switches::record_cuda_regime("single");
      return;
    }
  }
  if (first != Mode::Step && launch_grid<T>(p, dev, device, stream)) {
    switches::record_cuda_regime("grid");
    return;
  }
  launch_steps<T>(p, dev, device, stream);
  switches::record_cuda_regime("step");
}

}  // namespace cuda
}  // namespace fused_rnn
