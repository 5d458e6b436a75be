// The launch plan of the CUDA recurrence kernel (recurrence_kernel.cuh): which regime, batch tile,
// CTAs, threads and shared memory a call gets on a device. Plain host C++ (no CUDA headers), so
// that the launcher (recurrence_launch.cuh) and the kernel's CPU execution for tests
// (recurrence_kernel_on_cpu.cpp) follow one and the same plan.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <type_traits>

#include "cuda/device_attributes.h"

#ifdef __CUDACC__
#define FUSED_RNN_PLAN_HOST_DEVICE __host__ __device__
#else
#define FUSED_RNN_PLAN_HOST_DEVICE
#endif

namespace fused_rnn {
namespace cuda {

template <typename T>
using acc_type = std::conditional_t<std::is_same<T, double>::value, double, float>;

// How one launch splits the work: C CTAs of J units per batch group, NBG batch groups that take
// the tiles g, g + NBG, ...; directions d0 .. d0 + gridDim.y - 1; processing steps [s0, s1)
// (s == T is the BPTT's final dh0 = δ_first·W_hh pass); KT = k-tile of the staged v.
struct Launch {
  int J, C, NBG, KT, d0;
  int64_t s0, s1;
};

enum class Mode { Single, Grid, Step };

constexpr int kMaxThreads = 512;
constexpr int kStepBatchTile = 4;  // Step's batch tile

FUSED_RNN_PLAN_HOST_DEVICE inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
FUSED_RNN_PLAN_HOST_DEVICE inline size_t align16(size_t x) { return (x + 15) & ~size_t(15); }

// Shared memory: [W slice: H x J of T, Single/Grid only] [v: KT x BT acc] [partials: KS x BT x J acc].
template <typename T>
size_t smem_bytes(Mode m, int64_t H, int64_t J, int64_t KT, int BT, int threads) {
  using acc_t = acc_type<T>;
  const size_t w = m == Mode::Step ? 0 : align16(size_t(H) * J * sizeof(T));
  return w + align16(size_t(KT) * BT * sizeof(acc_t)) + size_t(threads) * BT * sizeof(acc_t);
}

// Threads per CTA: about 8 k-values per thread and unit, at most kMaxThreads, and never fewer
// threads than units (J <= kMaxThreads is guaranteed by the planner).
inline int threads_for(int64_t J, int64_t H) {
  const int64_t n = ceil_div(J * std::max<int64_t>(1, ceil_div(H, 8)), 32) * 32;
  return static_cast<int>(std::clamp<int64_t>(n, 32, kMaxThreads));
}

// One regime's launches for a layer: grid (ctas, dirs) of `threads` threads and `smem` bytes of
// dynamic shared memory, the kernel instantiation's batch tile bt, and what every Launch shares
// (for_each_launch sets each one's directions and steps).
struct KernelPlan {
  Mode mode;
  int bt;
  int threads;
  size_t smem;
  int64_t ctas;  // gridDim.x
  int64_t dirs;  // gridDim.y: directions per launch
  Launch launch;
};

// Single: W_hh of a direction fits one CTA (H <= kMaxThreads); nullopt where it does not.
template <typename T>
std::optional<KernelPlan> plan_single(int64_t H, int64_t B, int64_t D, const DeviceAttributes& dev) {
  if (H > kMaxThreads) return std::nullopt;
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
  if (smem > size_t(dev.smem_optin)) return std::nullopt;
  const int64_t nchunks = ceil_div(B, bt);
  return KernelPlan{Mode::Single, bt, threads, smem, nchunks, D,
                    Launch{static_cast<int>(H), 1, static_cast<int>(nchunks), static_cast<int>(H), 0, 0, 0}};
}

// Grid: C CTAs split W_hh's rows, co-resident in a cooperative launch; nullopt where W_hh cannot be
// split over the device's SMs (the launcher still checks the occupancy before launching).
template <typename T>
std::optional<KernelPlan> plan_grid(int64_t H, int64_t B, int64_t D, const DeviceAttributes& dev) {
  using acc_t = acc_type<T>;
  const int bt = B == 1 ? 1 : (B <= 4 ? 4 : 8);
  const size_t fixed = 16 + align16(size_t(H) * bt * sizeof(acc_t)) + size_t(kMaxThreads) * bt * sizeof(acc_t);
  if (!dev.coop || fixed >= size_t(dev.smem_optin)) return std::nullopt;
  const int64_t jmax = std::min<int64_t>(kMaxThreads, (dev.smem_optin - fixed) / (H * sizeof(T)));
  if (jmax < 1) return std::nullopt;
  const int64_t cmin = ceil_div(H, jmax);
  if (cmin > dev.sms) return std::nullopt;
  const int64_t nd = D * cmin <= dev.sms ? D : 1;
  // Units per CTA: enough CTAs to keep about 32K multiply-adds per CTA and step, within the SMs.
  const int64_t c_cap = std::max<int64_t>(cmin, dev.sms / nd);
  const int64_t c_want = std::clamp<int64_t>(ceil_div(H * H, 32768), cmin, c_cap);
  const int64_t J = ceil_div(H, c_want), C = ceil_div(H, J);
  const int64_t nchunks = ceil_div(B, bt);
  const int64_t nbg = std::clamp<int64_t>(dev.sms / (nd * C), 1, nchunks);
  const int threads = threads_for(J, H);
  const size_t smem = smem_bytes<T>(Mode::Grid, H, J, H, bt, threads);
  if (smem > size_t(dev.smem_optin)) return std::nullopt;
  return KernelPlan{Mode::Grid, bt, threads, smem, C * nbg, nd,
                    Launch{static_cast<int>(J), static_cast<int>(C), static_cast<int>(nbg), static_cast<int>(H), 0, 0, 0}};
}

// Step: one launch per step, W_hh from global memory; fits every H.
template <typename T>
KernelPlan plan_steps(int64_t H, int64_t B, int64_t D) {
  using acc_t = acc_type<T>;
  constexpr int BT = kStepBatchTile;
  const int64_t J = std::min<int64_t>(H, 64), C = ceil_div(H, J);
  const int KT = static_cast<int>(std::min<int64_t>(H, 32768 / (BT * sizeof(acc_t))));
  const int threads = threads_for(J, H);
  const size_t smem = smem_bytes<T>(Mode::Step, H, J, KT, BT, threads);
  const int64_t nchunks = ceil_div(B, BT);
  return KernelPlan{Mode::Step, BT, threads, smem, C * nchunks, D,
                    Launch{static_cast<int>(J), static_cast<int>(C), static_cast<int>(nchunks), KT, 0, 0, 0}};
}

// Calls f(std::integral_constant<int, bt>{}): a plan's batch tile (1, 4 or 8) as the kernel
// instantiation's compile-time BT.
template <typename F>
void with_bt(int bt, F&& f) {
  switch (bt) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    default: f(std::integral_constant<int, 8>{}); break;
  }
}

// Calls f(Launch) for each launch of plan k over `steps` processing steps (T, plus the BPTT's dh0
// pass) and D directions: Single one launch; Grid one per group of k.dirs directions; Step one per
// step.
template <typename F>
void for_each_launch(const KernelPlan& k, int64_t D, int64_t steps, F&& f) {
  if (k.mode == Mode::Step) {
    for (int64_t s = 0; s < steps; ++s) {
      Launch L = k.launch;
      L.s0 = s;
      L.s1 = s + 1;
      f(L);
    }
    return;
  }
  for (int64_t d0 = 0; d0 < D; d0 += k.dirs) {
    Launch L = k.launch;
    L.d0 = static_cast<int>(d0);
    L.s0 = 0;
    L.s1 = steps;
    f(L);
  }
}

}  // namespace cuda
}  // namespace fused_rnn
