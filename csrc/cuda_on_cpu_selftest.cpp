// Small CUDA kernels that break one rule each, run by cuda_on_cpu.h, so that tests can show that
// the runtime catches what it claims to (tests/test_kernel_on_cpu.py):
//
//   torch.ops.fused_rnn_emulation.cuda_on_cpu_selftest(kernel, order) -> float[]
//     Runs the kernel (64 threads per CTA) with the order "ascending", "descending" or "shuffled"
//     and returns what it wrote, or raises RuntimeError where the runtime stops it:
//     "reverse"            out[i] = in[63 - i] through shared memory, with the barrier (correct)
//     "missing_barrier"    the same without the barrier: the result depends on the order
//     "divergent_barrier"  even and odd threads wait at different __syncthreads
//     "early_exit"         half the threads exit before a __syncthreads the others reach
//     "smem_overflow"      a write one element past the launch's dynamic shared memory
//     "uninitialised_smem" reads a shared word no thread wrote: NaN
//     "grid_sum"           2 cooperative CTAs: each writes its sum to global memory, grid.sync(),
//                          each reads the other's (correct)
//     "grid_sync_plain"    the same in a launch that is not cooperative
//     "grid_exit"          CTA 1 exits before the grid.sync() that CTA 0 waits at
//     "warp_sum"           each warp's sum of in[] by an xor butterfly of shuffles (correct)
//     "shuffle_divergent"  odd lanes skip a shuffle that even lanes wait at
//     "copy_async"         cp.async of in[i] into shared memory; out[i] read before the wait (the
//                          fill), out[64 + i] after it (in[i])
//     "cluster_exchange"   2 CTAs in a cluster: each stores into the other's shared memory, then
//                          cluster.sync(), then reads its own (correct)
//     "cluster_no_barrier" the same without the cluster barrier: the result depends on the order
//     "mbarrier_exchange"  the same exchange with st.async stores completing on the receiver's
//                          mbarrier (armed for 256 bytes), waited for instead of a cluster barrier
//     "mbarrier_short"     the receiver's mbarrier armed for 4 bytes more than arrive: a deadlock
#include <torch/library.h>

#include <string>
#include <vector>

namespace fused_rnn {
namespace selftest {
constexpr size_t kSmemCapacity = 1024;  // bytes
__attribute__((aligned(16))) unsigned char smem[kSmemCapacity];
}  // namespace selftest
}  // namespace fused_rnn

// Last: it defines CUDA's qualifiers as macros.
#include "cuda_on_cpu_builtins.h"

namespace fused_rnn {
namespace selftest {

constexpr int kThreads = 64;

__device__ float* shared_floats() {
  extern __shared__ unsigned char smem[];
  return reinterpret_cast<float*>(smem);
}

__global__ void reverse_kernel(const float* in, float* out, bool barrier) {
  float* smem = shared_floats();
  const int i = static_cast<int>(threadIdx.x);
  smem[i] = in[i];
  if (barrier) __syncthreads();
  out[i] = smem[kThreads - 1 - i];
}

__global__ void divergent_kernel(float* out) {
  const int i = static_cast<int>(threadIdx.x);
  if (i % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[i] = 1.f;
}

__global__ void early_exit_kernel(float* out) {
  const int i = static_cast<int>(threadIdx.x);
  if (i >= kThreads / 2) return;
  __syncthreads();
  out[i] = 1.f;
}

__global__ void overflow_kernel(float* out, int n) {
  float* smem = shared_floats();
  const int i = static_cast<int>(threadIdx.x);
  smem[i + (i == 0 ? n : 0)] = 1.f;  // thread 0 writes smem[n], one past the launch's n floats
  out[i] = 1.f;
}

__global__ void uninitialised_kernel(float* out) {
  float* smem = shared_floats();
  const int i = static_cast<int>(threadIdx.x);
  if (i > 0) smem[i] = 1.f;  // smem[0] is never written
  __syncthreads();
  out[i] = smem[(i + 1) % kThreads];
}

__global__ void grid_sum_kernel(const float* in, float* partial, float* out, bool exit_early) {
  float* smem = shared_floats();
  const int b = static_cast<int>(blockIdx.x), i = static_cast<int>(threadIdx.x);
  smem[i] = in[b * kThreads + i];
  __syncthreads();
  if (i == 0) {
    float s = 0.f;
    for (int k = 0; k < kThreads; ++k) s += smem[k];
    partial[b] = s;
  }
  if (exit_early && b == 1) return;
  cooperative_groups::this_grid().sync();
  out[b * kThreads + i] = partial[1 - b];
}

__global__ void warp_sum_kernel(const float* in, float* out) {
  const int i = static_cast<int>(threadIdx.x);
  float v = in[i];
  for (int m = 1; m < 32; m *= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
  out[i] = v;
}

__global__ void shuffle_divergent_kernel(float* out) {
  const int i = static_cast<int>(threadIdx.x);
  float v = 1.f;
  if (i % 2 == 0) v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[i] = v;
}

__global__ void copy_async_kernel(const float* in, float* out) {
  float* smem = shared_floats();
  const int i = static_cast<int>(threadIdx.x);
  cuda_on_cpu::copy_async(smem + i, in + i, sizeof(float));
  cuda_on_cpu::commit_group();
  out[i] = smem[i];  // before the wait: not yet there
  cuda_on_cpu::wait_group(0);
  out[kThreads + i] = smem[i];
}

__global__ void cluster_exchange_kernel(float* out, bool barrier) {
  float* smem = shared_floats();
  const int i = static_cast<int>(threadIdx.x);
  const unsigned rank = cooperative_groups::this_cluster().block_rank();
  const float v = static_cast<float>(100 * rank + i);
  cuda_on_cpu::store_in_cluster_cta(smem + i, &v, sizeof(float), 1 - rank);
  if (barrier) cooperative_groups::this_cluster().sync();
  out[rank * kThreads + i] = smem[i];
}

__global__ void mbarrier_exchange_kernel(float* out, unsigned expected_bytes) {
  extern __shared__ unsigned char smem[];
  float* data = reinterpret_cast<float*>(smem);
  void* bar = smem + kThreads * sizeof(float);  // after the data
  const int i = static_cast<int>(threadIdx.x);
  const unsigned rank = cooperative_groups::this_cluster().block_rank();
  if (i == 0) cuda_on_cpu::mbarrier_init(bar, 1);
  cooperative_groups::this_cluster().sync();  // the peer's barrier is initialised
  if (i == 0) cuda_on_cpu::mbarrier_arrive_expect_tx(bar, expected_bytes);
  const float v = static_cast<float>(100 * rank + i);
  cuda_on_cpu::store_async_in_cluster_cta(data + i, __float_as_uint(v), bar, 1 - rank);
  while (!cuda_on_cpu::mbarrier_test_wait_parity(__cvta_generic_to_shared(bar), 0)) {
    cuda_on_cpu::mbarrier_spin(__FILE__, __LINE__);
  }
  out[rank * kThreads + i] = data[i];
  cooperative_groups::this_cluster().sync();  // no CTA exits while its peer still stores into it
}

}  // namespace selftest

namespace {

std::vector<double> cuda_on_cpu_selftest(const std::string& kernel, const std::string& order_name) {
  using namespace cuda_on_cpu;
  const Order order = order_name == "ascending" ? Order::Ascending
                      : order_name == "descending" ? Order::Descending
                                                   : Order::Shuffled;
  const SharedMemory smem{[] { return selftest::smem; }, selftest::kSmemCapacity};
  constexpr int n = selftest::kThreads;
  std::vector<float> in(2 * n), out(2 * n, 0.f), partial(2, 0.f);
  for (int i = 0; i < 2 * n; ++i) in[i] = static_cast<float>(i + 1);
  LaunchConfig config;
  config.block = Dim3{unsigned(n), 1, 1};
  config.smem_bytes = n * sizeof(float);
  std::function<void()> body;
  if (kernel == "reverse" || kernel == "missing_barrier") {
    const bool barrier = kernel == "reverse";
    body = [&, barrier] { selftest::reverse_kernel(in.data(), out.data(), barrier); };
  } else if (kernel == "divergent_barrier") {
    body = [&] { selftest::divergent_kernel(out.data()); };
  } else if (kernel == "early_exit") {
    body = [&] { selftest::early_exit_kernel(out.data()); };
  } else if (kernel == "smem_overflow") {
    body = [&] { selftest::overflow_kernel(out.data(), n); };
  } else if (kernel == "uninitialised_smem") {
    body = [&] { selftest::uninitialised_kernel(out.data()); };
  } else if (kernel == "grid_sum" || kernel == "grid_sync_plain" || kernel == "grid_exit") {
    config.grid = Dim3{2, 1, 1};
    config.cooperative = kernel != "grid_sync_plain";
    const bool exit_early = kernel == "grid_exit";
    body = [&, exit_early] { selftest::grid_sum_kernel(in.data(), partial.data(), out.data(), exit_early); };
  } else if (kernel == "warp_sum") {
    body = [&] { selftest::warp_sum_kernel(in.data(), out.data()); };
  } else if (kernel == "shuffle_divergent") {
    body = [&] { selftest::shuffle_divergent_kernel(out.data()); };
  } else if (kernel == "copy_async") {
    body = [&] { selftest::copy_async_kernel(in.data(), out.data()); };
  } else if (kernel == "cluster_exchange" || kernel == "cluster_no_barrier") {
    config.grid = Dim3{2, 1, 1};
    config.cluster = 2;
    const bool barrier = kernel == "cluster_exchange";
    body = [&, barrier] { selftest::cluster_exchange_kernel(out.data(), barrier); };
  } else if (kernel == "mbarrier_exchange" || kernel == "mbarrier_short") {
    config.grid = Dim3{2, 1, 1};
    config.cluster = 2;
    config.smem_bytes = n * sizeof(float) + 8;
    const unsigned expected = n * sizeof(float) + (kernel == "mbarrier_short" ? 4 : 0);
    body = [&, expected] { selftest::mbarrier_exchange_kernel(out.data(), expected); };
  } else {
    TORCH_CHECK(false, "cuda_on_cpu_selftest: no kernel ", kernel);
  }
  launch(config, body, smem, order, 1);
  return std::vector<double>(out.begin(), out.end());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fused_rnn_emulation, m) {
  m.def("cuda_on_cpu_selftest(str kernel, str order) -> float[]", &cuda_on_cpu_selftest);
}

}  // namespace fused_rnn
