// The CUDA recurrence kernel (cuda/recurrence_kernel.cuh), its own source compiled as host C++ and
// run on the CPU by cuda_on_cpu.h (CUDA threads as fibers), on the launch plan the CUDA launcher makes
// (cuda/recurrence_plan.h) for a device described by hand: tests on machines without a GPU run the
// default CUDA kernels themselves (tests/test_kernel_on_cpu.py).
//
//   torch.ops.fused_rnn_emulation.recurrence_kernel(buf, y, h_in, w_hh, batch_sizes, relu, backward,
//       regime, sms, smem_optin, order, seed) -> (buf, h_out, plan)
//     The arguments of one layer's recurrence (recurrence.h), CPU tensors of one floating dtype:
//     buf [N, D*H] (pre-activations, or g in BPTT), y [N, D*H] (BPTT; else empty), h_in [D, B, H],
//     w_hh [D, H, H], batch_sizes (packed input: PackedSequence's [T]) or None.
//     regime: "auto" (single, else grid, else step, as launch_recurrence tries them), "grid" or
//     "step" (FUSED_RNN_CUDA_REGIME's forced regimes); sms, smem_optin: the device's SM count and
//     its opt-in shared memory per CTA (bytes); order: "ascending", "descending" or "shuffled", the
//     order in which a CTA's threads run between barriers (cuda_on_cpu.h), and seed the shuffle's.
//     Returns new tensors: buf after the recurrence (h_t or δ_t) and h_out (hy or dh0), and the plan
//     [mode (0 single, 1 grid, 2 step), bt, ctas, dirs, threads, smem, J, C, NBG, KT].
//   It fails (RuntimeError) where the launch breaks a CUDA rule (cuda_on_cpu.h) or writes outside
//   its buffers: each buffer (buf, h_out and the kernel's scratch state) lies between guard bands
//   that must stay untouched, and h_out and the scratch state start as NaN, so that an element the
//   kernel fails to write, or reads before writing, shows in the result.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "guarded_buffer.h"
#include "layer_on_cpu.h"
#include "step_layout.h"

namespace fused_rnn {
namespace cuda {
// The kernel's dynamic shared memory (`extern __shared__ ... smem[]`; the runtime swaps each CTA's
// in). Capacity: the largest opt-in of the GPUs the kernels target (sm_90: 227 KB).
constexpr size_t kSmemCapacity = 227 * 1024;
__attribute__((aligned(16))) unsigned char smem[kSmemCapacity];
}  // namespace cuda
}  // namespace fused_rnn

// Last: it defines CUDA's qualifiers as macros.
#include "cuda_on_cpu_builtins.h"
#include "cuda/recurrence_kernel.cuh"

namespace fused_rnn {
namespace {

unsigned char* smem_base() { return cuda::smem; }

// Every launch of plan k, by the instantiation <T, BT, M, Backward>, as launch_recurrence makes them.
template <typename T, int BT, cuda::Mode M, bool Backward>
void run_plan(const cuda::KernelPlan& k, const cuda::RecParams& p, cuda_on_cpu::Order order, uint64_t seed) {
  cuda_on_cpu::LaunchConfig config;
  config.grid = {static_cast<unsigned>(k.ctas), static_cast<unsigned>(k.dirs), 1};
  config.block = {static_cast<unsigned>(k.threads), 1, 1};
  config.smem_bytes = k.smem;
  config.cooperative = M == cuda::Mode::Grid;
  cuda::for_each_launch(k, p.D, p.T + (Backward ? 1 : 0), [&](const cuda::Launch& L) {
    cuda_on_cpu::launch(
        config, [&] { cuda::recurrence_kernel<T, BT, M, Backward>(p, L); },
        cuda_on_cpu::SharedMemory{smem_base, cuda::kSmemCapacity}, order, seed + uint64_t(L.s0) * 7919 + L.d0);
  });
}

template <typename T, bool Backward>
void run_plan_of_mode(const cuda::KernelPlan& k, const cuda::RecParams& p, cuda_on_cpu::Order order, uint64_t seed) {
  switch (k.mode) {
    case cuda::Mode::Single:
      cuda::with_bt(k.bt, [&](auto b) { run_plan<T, decltype(b)::value, cuda::Mode::Single, Backward>(k, p, order, seed); });
      break;
    case cuda::Mode::Grid:
      cuda::with_bt(k.bt, [&](auto b) { run_plan<T, decltype(b)::value, cuda::Mode::Grid, Backward>(k, p, order, seed); });
      break;
    case cuda::Mode::Step:
      TORCH_CHECK(k.bt == cuda::kStepBatchTile, "step plan with batch tile ", k.bt);
      run_plan<T, cuda::kStepBatchTile, cuda::Mode::Step, Backward>(k, p, order, seed);
      break;
  }
}

// The plan launch_recurrence makes (recurrence_launch.cuh), on a device that co-schedules every
// cooperative launch the grid plan makes (one CTA per SM, which the plan's size guarantees).
template <typename T>
cuda::KernelPlan make_plan(const std::string& regime, int64_t H, int64_t B, int64_t D,
                           const cuda::DeviceAttributes& dev) {
  TORCH_CHECK(regime == "auto" || regime == "grid" || regime == "step", "regime must be auto, grid or step, got ",
              regime);
  std::optional<cuda::KernelPlan> k;
  if (regime == "auto") k = cuda::plan_single<T>(H, B, D, dev);
  if (!k && regime != "step") {
    k = cuda::plan_grid<T>(H, B, D, dev);
    TORCH_CHECK(!k || k->ctas * k->dirs <= dev.sms, "grid plan of ", k->ctas, " x ", k->dirs, " CTAs on ", dev.sms,
                " SMs");
  }
  if (!k) k = cuda::plan_steps<T>(H, B, D);
  TORCH_CHECK(k->smem <= size_t(dev.smem_optin), "plan needs ", k->smem, " bytes of shared memory");
  return *k;
}

std::tuple<at::Tensor, at::Tensor, std::vector<int64_t>> recurrence_kernel_on_cpu(
    const at::Tensor& buf, const at::Tensor& y, const at::Tensor& h_in, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& batch_sizes, bool relu, bool backward, const std::string& regime, int64_t sms,
    int64_t smem_optin, const std::string& order, int64_t seed) {
  const LayerOnCpu layer(buf, y, h_in, w_hh, backward, !batch_sizes.has_value());
  const int64_t D = layer.D, H = layer.H, B = layer.B;
  TORCH_CHECK(sms > 0 && smem_optin > 0 && size_t(smem_optin) <= cuda::kSmemCapacity,
              "sms > 0 and 0 < smem_optin <= ", cuda::kSmemCapacity);
  const cuda_on_cpu::Order ord = cuda_on_cpu::order_named(order);
  const StepLayout lay(batch_sizes.value_or(at::Tensor()), layer.N, B);
  const std::vector<int64_t> table = lay.uniform() ? std::vector<int64_t>() : lay.host_table();
  const cuda::DeviceAttributes dev{static_cast<int>(sms), static_cast<int>(smem_optin), 1, 9};
  const at::ScalarType acc = layer.dtype == at::kDouble ? at::kDouble : at::kFloat;
  GuardedBuffer scratch((backward ? 3 : 2) * D * B * H, acc, NAN);
  const cuda::RecParams p = layer.params(lay.T, table.empty() ? nullptr : table.data(), scratch.data(), relu);
  std::vector<int64_t> plan;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, layer.dtype, "recurrence_kernel_on_cpu", [&] {
    const cuda::KernelPlan k = make_plan<scalar_t>(regime, H, B, D, dev);
    if (backward) {
      run_plan_of_mode<scalar_t, true>(k, p, ord, uint64_t(seed));
    } else {
      run_plan_of_mode<scalar_t, false>(k, p, ord, uint64_t(seed));
    }
    plan = {static_cast<int64_t>(k.mode), k.bt, k.ctas, k.dirs, k.threads, static_cast<int64_t>(k.smem),
            k.launch.J, k.launch.C, k.launch.NBG, k.launch.KT};
  });
  scratch.check("recurrence kernel", "the scratch state");
  auto [out, h_out] = layer.results("recurrence kernel");
  return {out, h_out, plan};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fused_rnn_emulation, m) {
  m.def(
      "recurrence_kernel(Tensor buf, Tensor y, Tensor h_in, Tensor w_hh, Tensor? batch_sizes, bool relu, "
      "bool backward, str regime, int sms, int smem_optin, str order, int seed) -> (Tensor, Tensor, int[])",
      &recurrence_kernel_on_cpu);
}

}  // namespace fused_rnn
