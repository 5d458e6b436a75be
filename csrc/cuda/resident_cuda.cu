// The launch of the SM-resident recurrence kernel for float32 (resident_kernel.cuh has the kernel
// and its description; resident_layout.h the plan).
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include "cuda/cluster_launch.cuh"
#include "cuda/recurrence_cuda.h"
#include "cuda/resident_kernel.cuh"
#include "switches.h"

namespace fused_rnn {
namespace cuda {
namespace {

using namespace resident;

// Launches, or returns false without launching when the GPU cannot schedule the cluster.
template <class S, int BT, bool Backward, bool Mbar>
bool launch(const RecParams& p, cudaStream_t stream) {
  auto kernel = &resident_kernel<S, BT, Backward, Mbar>;
  constexpr int64_t smem = smem_bytes<S, BT, Backward>() + (Mbar ? 2 * sizeof(unsigned long long) : 0);
  static_assert(smem <= 227 * 1024, "shared memory over an sm_80/sm_90 CTA's limit");
  if constexpr (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  const dim3 grid(static_cast<unsigned>(S::C * ((p.B + BT - 1) / BT)), static_cast<unsigned>(p.D));
  return launch_in_clusters<S::C>(kernel, grid, dim3(S::NT), smem, stream, p);
}

}  // namespace

bool launch_resident(const RecParams& p, int sms, bool clusters, cudaStream_t stream) {
  if (p.steps != nullptr || p.H > kMaxHidden) return false;  // packed input: the general kernels
  const Plan plan_ = plan(p.H, p.B, p.D, sms, clusters);
  if (plan_.shape < 0) return false;
  bool launched = false, exchanged_on_mbarriers = false;
  with_shape(plan_.shape, [&](auto shape) {
    using S = decltype(shape);
    with_batch_tile(plan_.bt, [&](auto btc) {
      constexpr int BT = decltype(btc)::value;
      if constexpr (BT <= S::MaxBT) {
        if constexpr (S::C > 1) {
          if (switches::cluster_exchange() == switches::ClusterExchange::Mbarrier) {
            launched = p.backward ? launch<S, BT, true, true>(p, stream) : launch<S, BT, false, true>(p, stream);
            exchanged_on_mbarriers = launched;
            return;
          }
        }
        launched = p.backward ? launch<S, BT, true, false>(p, stream) : launch<S, BT, false, false>(p, stream);
      }
    });
  });
  if (launched) {
    switches::record_cuda_regime(exchanged_on_mbarriers ? "resident_cluster_mbarrier"
                                 : plan_.cluster > 1    ? "resident_cluster"
                                                        : "resident");
  }
  return launched;
}

}  // namespace cuda
}  // namespace fused_rnn
