// The SM-resident float32 CUDA kernel (cuda/resident_kernel.cuh; opt-in, FUSED_RNN_CUDA_REGIME=
// resident), its own source compiled as host C++ and run on the CPU by cuda_on_cpu.h (CUDA threads
// as fibers, warp shuffles as rendezvous, cp.async deferred to its wait, clusters with their barrier
// and distributed shared memory), on the plan resident_cuda.cu launches (resident_layout.h): tests
// on machines without a GPU run the kernel itself, shuffles and cluster exchange included
// (tests/test_kernel_on_cpu.py), with either cluster exchange (FUSED_RNN_CUDA_CLUSTER_EXCHANGE).
//
//   torch.ops.fused_rnn_emulation.resident_kernel(buf, y, h_in, w_hh, relu, backward, sms, clusters,
//       mbarrier, order, seed) -> (buf, h_out, plan)
//     One layer's recurrence (recurrence.h), uniform batch, float32 CPU tensors: buf [T*B, D*H]
//     (pre-activations, or g in BPTT), y [T*B, D*H] (BPTT; else empty), h_in [D, B, H], w_hh
//     [D, H, H]; sms: the SM count the plan assumes; clusters: whether the GPU has them (sm_90);
//     mbarrier: the mbarrier exchange in clusters (as resident_cuda.cu launches it under
//     FUSED_RNN_CUDA_CLUSTER_EXCHANGE=mbarrier), else the cluster barrier;
//     order, seed: as for recurrence_kernel (recurrence_kernel_on_cpu.cpp). Returns new tensors buf
//     (h_t or δ_t) and h_out (hy or dh0), and the plan [shape, bt, CTAs per cluster, CTAs].
//   Buffers lie between guard bands and h_out starts as NaN, as in recurrence_kernel_on_cpu.cpp.
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "cuda/rec_params.h"
#include "cuda/resident_layout.h"
#include "layer_on_cpu.h"

// Last: it defines CUDA's qualifiers as macros.
#include "cuda_on_cpu_builtins.h"

namespace fused_rnn {
namespace cuda {
namespace {
// The kernel's dynamic shared memory (`extern __shared__ float4 smem4[]`, in the kernel's unnamed
// namespace), up to sm_90's 227 KB.
constexpr size_t kSmemCapacity = 227 * 1024;
float4 smem4[kSmemCapacity / sizeof(float4)];
}  // namespace
}  // namespace cuda
}  // namespace fused_rnn

#include "cuda/resident_kernel.cuh"

namespace fused_rnn {
namespace {

unsigned char* smem_base() { return reinterpret_cast<unsigned char*>(cuda::smem4); }

// The launch resident_cuda.cu makes for shape S and batch tile BT.
template <class S, int BT, bool Backward, bool Mbar>
void run(const cuda::RecParams& p, cuda_on_cpu::Order order, uint64_t seed) {
  cuda_on_cpu::LaunchConfig config;
  config.grid = {static_cast<unsigned>(S::C * ((p.B + BT - 1) / BT)), static_cast<unsigned>(p.D), 1};
  config.block = {static_cast<unsigned>(S::NT), 1, 1};
  config.smem_bytes = resident::smem_bytes<S, BT, Backward>() + (Mbar ? 2 * sizeof(unsigned long long) : 0);
  config.cluster = S::C;
  cuda_on_cpu::launch(
      config, [&] { cuda::resident_kernel<S, BT, Backward, Mbar>(p); },
      cuda_on_cpu::SharedMemory{smem_base, cuda::kSmemCapacity}, order, seed);
}

std::tuple<at::Tensor, at::Tensor, std::vector<int64_t>> resident_kernel_on_cpu(
    const at::Tensor& buf, const at::Tensor& y, const at::Tensor& h_in, const at::Tensor& w_hh, bool relu,
    bool backward, int64_t sms, bool clusters, bool mbarrier, const std::string& order, int64_t seed) {
  const LayerOnCpu layer(buf, y, h_in, w_hh, backward, /*uniform=*/true);
  TORCH_CHECK(layer.dtype == at::kFloat, "float32 CPU tensors");
  const int64_t H = layer.H;
  const cuda_on_cpu::Order ord = cuda_on_cpu::order_named(order);
  const resident::Plan plan = resident::plan(H, layer.B, layer.D, static_cast<int>(sms), clusters);
  TORCH_CHECK(plan.shape >= 0, "H = ", H, " is beyond the resident kernels");
  const cuda::RecParams p = layer.params(layer.N / layer.B, nullptr, nullptr, relu);
  bool ran = false;
  resident::with_shape(plan.shape, [&](auto shape) {
    using S = decltype(shape);
    resident::with_batch_tile(plan.bt, [&](auto btc) {
      constexpr int BT = decltype(btc)::value;
      if constexpr (BT <= S::MaxBT) {
        if constexpr (S::C > 1) {
          if (mbarrier) {
            backward ? run<S, BT, true, true>(p, ord, uint64_t(seed)) : run<S, BT, false, true>(p, ord, uint64_t(seed));
            ran = true;
            return;
          }
        }
        TORCH_CHECK(!mbarrier, "the mbarrier exchange is for clusters: H = ", H, " takes one CTA");
        backward ? run<S, BT, true, false>(p, ord, uint64_t(seed)) : run<S, BT, false, false>(p, ord, uint64_t(seed));
        ran = true;
      }
    });
  });
  TORCH_CHECK(ran, "the plan's batch tile ", plan.bt, " exceeds its shape's");
  auto [out, h_out] = layer.results("resident kernel");
  return {out, h_out, std::vector<int64_t>{plan.shape, plan.bt, plan.cluster, plan.ctas}};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fused_rnn_emulation, m) {
  m.def(
      "resident_kernel(Tensor buf, Tensor y, Tensor h_in, Tensor w_hh, bool relu, bool backward, int sms, "
      "bool clusters, bool mbarrier, str order, int seed) -> (Tensor, Tensor, int[])",
      &resident_kernel_on_cpu);
}

}  // namespace fused_rnn
