// The tensor-core SM-resident CUDA kernel (cuda/resident_mma_kernel.cuh; opt-in, FUSED_RNN_CUDA_REGIME=
// resident for float16/bfloat16, and float32 with TF32 allowed), its own source compiled as host C++
// and run on the CPU by cuda_on_cpu.h, whose mma.sync follows the PTX ISA's fragment layouts
// written out independently of mma_layout.h (the kernel's): tests on machines without a GPU run the
// kernel itself, its A packing, B loads, C ownership, operand rounding and cluster exchange
// included (tests/test_kernel_on_cpu.py), with either cluster exchange (FUSED_RNN_CUDA_CLUSTER_EXCHANGE).
//
//   torch.ops.fused_rnn_emulation.resident_mma_kernel(buf, y, h_in, w_hh, relu, backward, clusters,
//       mbarrier, order, seed) -> (buf, h_out, plan)
//     As resident_kernel (resident_kernel_on_cpu.cpp), for float16, bfloat16 or float32 (TF32)
//     CPU tensors; plan: [tiling, KT, KP, CTAs per cluster, warps per CTA].
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "cuda/mma_layout.h"
#include "cuda/rec_params.h"
#include "layer_on_cpu.h"

// Last: it defines CUDA's qualifiers as macros.
#include "cuda_on_cpu_builtins.h"

namespace fused_rnn {
namespace cuda {
namespace {
// The kernel's dynamic shared memory (`extern __shared__ unsigned state_words[]`, in the kernel's
// unnamed namespace), up to sm_90's 227 KB.
constexpr size_t kSmemCapacity = 227 * 1024;
__attribute__((aligned(16))) unsigned state_words[kSmemCapacity / sizeof(unsigned)];
}  // namespace
}  // namespace cuda
}  // namespace fused_rnn

#include "cuda/resident_mma_kernel.cuh"

namespace fused_rnn {
namespace {

unsigned char* smem_base() { return reinterpret_cast<unsigned char*>(cuda::state_words); }

// The launch resident_mma_cuda.cu makes for tiling Tl.
template <typename scalar_t, class Tl, bool Backward, bool Mbar>
void run(const cuda::RecParams& p, cuda_on_cpu::Order order, uint64_t seed, std::vector<int64_t>& plan) {
  const int tiles = static_cast<int>((p.B + mma::kBatchTile - 1) / mma::kBatchTile);
  const int warps = Tl::KP == 1 && Tl::C == 1 ? mma::warps_for(p.H) : Tl::kWarps;
  cuda_on_cpu::LaunchConfig config;
  config.grid = {static_cast<unsigned>(Tl::C * tiles), static_cast<unsigned>(p.D), 1};
  config.block = {static_cast<unsigned>(warps * mma::kWarp), 1, 1};
  config.smem_bytes = Tl::smem_bytes() + (Mbar ? 2 * sizeof(unsigned long long) : 0);
  config.cluster = Tl::C;
  cuda_on_cpu::launch(
      config, [&] { cuda::resident_mma_kernel<scalar_t, Tl::KT, Tl::KP, Tl::C, Backward, Mbar>(p); },
      cuda_on_cpu::SharedMemory{smem_base, cuda::kSmemCapacity}, order, seed);
  plan = {Tl::KT, Tl::KP, Tl::C, warps};
}

// The tiling resident_mma_cuda.cu takes for H and scalar_t; plan: [tiling, KT, KP, C, warps].
template <typename scalar_t>
void run_typed(const cuda::RecParams& p, bool clusters, bool mbarrier, cuda_on_cpu::Order order, uint64_t seed,
               std::vector<int64_t>& plan) {
  using S = typename cuda::Operand<scalar_t>::Shape;
  const int tiling = mma::tiling_for<S>(p.H, clusters);
  TORCH_CHECK(tiling >= 0, "H = ", p.H, " is beyond the tensor-core kernels");
  mma::with_tiling<S>(tiling, [&](auto t) {
    using Tl = decltype(t);
    if constexpr (Tl::C > 1) {
      if (mbarrier) {
        p.backward ? run<scalar_t, Tl, true, true>(p, order, seed, plan) : run<scalar_t, Tl, false, true>(p, order, seed, plan);
        return;
      }
    }
    TORCH_CHECK(!mbarrier, "the mbarrier exchange is for clusters: H = ", p.H, " takes one CTA");
    p.backward ? run<scalar_t, Tl, true, false>(p, order, seed, plan) : run<scalar_t, Tl, false, false>(p, order, seed, plan);
  });
  plan.insert(plan.begin(), tiling);
}

std::tuple<at::Tensor, at::Tensor, std::vector<int64_t>> resident_mma_kernel_on_cpu(
    const at::Tensor& buf, const at::Tensor& y, const at::Tensor& h_in, const at::Tensor& w_hh, bool relu,
    bool backward, bool clusters, bool mbarrier, const std::string& order, int64_t seed) {
  const LayerOnCpu layer(buf, y, h_in, w_hh, backward, /*uniform=*/true);
  const at::ScalarType st = layer.dtype;
  TORCH_CHECK(st == at::kHalf || st == at::kBFloat16 || st == at::kFloat, "float16, bfloat16 or float32 (TF32)");
  const cuda_on_cpu::Order ord = cuda_on_cpu::order_named(order);
  const cuda::RecParams p = layer.params(layer.N / layer.B, nullptr, nullptr, relu);
  std::vector<int64_t> plan;
  switch (st) {
    case at::kHalf: run_typed<c10::Half>(p, clusters, mbarrier, ord, uint64_t(seed), plan); break;
    case at::kBFloat16: run_typed<c10::BFloat16>(p, clusters, mbarrier, ord, uint64_t(seed), plan); break;
    default: run_typed<float>(p, clusters, mbarrier, ord, uint64_t(seed), plan); break;
  }
  auto [out, h_out] = layer.results("tensor-core kernel");
  return {out, h_out, plan};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fused_rnn_emulation, m) {
  m.def(
      "resident_mma_kernel(Tensor buf, Tensor y, Tensor h_in, Tensor w_hh, bool relu, bool backward, "
      "bool clusters, bool mbarrier, str order, int seed) -> (Tensor, Tensor, int[])",
      &resident_mma_kernel_on_cpu);
}

}  // namespace fused_rnn
