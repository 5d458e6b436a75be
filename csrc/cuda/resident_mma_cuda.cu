// The launch of the tensor-core SM-resident recurrence kernel (resident_mma_kernel.cuh has the
// kernel and its description; mma_layout.h the tilings).
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "cuda/cluster_launch.cuh"
#include "cuda/recurrence_cuda.h"
#include "cuda/resident_mma_kernel.cuh"
#include "switches.h"

namespace fused_rnn {
namespace cuda {
namespace {

using namespace mma;

// Launches, or returns false without launching when the GPU cannot schedule the cluster.
template <typename scalar_t, class Tl, bool Backward, bool Mbar = false>
bool launch(const RecParams& p, cudaStream_t stream) {
  auto kernel = &resident_mma_kernel<scalar_t, Tl::KT, Tl::KP, Tl::C, Backward, Mbar>;
  constexpr int64_t smem = Tl::smem_bytes() + (Mbar ? 2 * sizeof(unsigned long long) : 0);
  static_assert(smem <= 48 * 1024, "the state and partial sums fit the default dynamic shared memory");
  const unsigned tiles = static_cast<unsigned>((p.B + kBatchTile - 1) / kBatchTile);
  const int warps = Tl::KP == 1 && Tl::C == 1 ? warps_for(p.H) : Tl::kWarps;
  return launch_in_clusters<Tl::C>(kernel, dim3(Tl::C * tiles, static_cast<unsigned>(p.D)), dim3(warps * kWarp), smem,
                                   stream, p);
}

// Launches, or returns false; *on_mbarriers: whether the launch exchanged on mbarriers.
template <typename scalar_t>
bool launch_typed(const RecParams& p, bool clusters, cudaStream_t stream, bool* on_mbarriers) {
  using S = typename Operand<scalar_t>::Shape;
  const int tiling = tiling_for<S>(p.H, clusters);
  if (tiling < 0) return false;
  bool launched = false;
  with_tiling<S>(tiling, [&](auto t) {
    using Tl = decltype(t);
    if constexpr (Tl::C > 1) {
      if (switches::cluster_exchange() == switches::ClusterExchange::Mbarrier) {
        launched = p.backward ? launch<scalar_t, Tl, true, true>(p, stream)
                              : launch<scalar_t, Tl, false, true>(p, stream);
        *on_mbarriers = launched;
        return;
      }
    }
    launched = p.backward ? launch<scalar_t, Tl, true>(p, stream) : launch<scalar_t, Tl, false>(p, stream);
  });
  return launched;
}

}  // namespace

bool launch_resident_mma(const RecParams& p, at::ScalarType dtype, bool clusters, cudaStream_t stream) {
  if (p.steps != nullptr) return false;  // packed input: the general kernels
  // The kernel indexes in 32 bits: every buffer must have fewer than 2^31 elements.
  if (p.T * p.B * p.D * p.H > INT32_MAX || p.D * p.H * p.H > INT32_MAX) return false;
  bool launched = false, on_mbarriers = false;
  switch (dtype) {
    case at::kHalf: launched = launch_typed<c10::Half>(p, clusters, stream, &on_mbarriers); break;
    case at::kBFloat16: launched = launch_typed<c10::BFloat16>(p, clusters, stream, &on_mbarriers); break;
    case at::kFloat: launched = launch_typed<float>(p, clusters, stream, &on_mbarriers); break;
    default: break;
  }
  if (launched) {
    const bool tf32 = dtype == at::kFloat;
    switches::record_cuda_regime(on_mbarriers ? (tf32 ? "resident_tf32_mbarrier" : "resident_mma_mbarrier")
                                              : (tf32 ? "resident_tf32" : "resident_mma"));
  }
  return launched;
}

}  // namespace cuda
}  // namespace fused_rnn
