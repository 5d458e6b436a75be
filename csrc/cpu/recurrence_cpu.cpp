// CPU recurrence (forward and BPTT) of one layer, all directions; see recurrence.h for the contract.
//
// Strategy: the input projection is already in `out` (one GEMM in rnn_stack.cpp). Each step adds
// h_{t-1}·W_hhᵀ and applies the activation in place, with no allocation and no dispatcher call
// inside the step loop. Batch rows are independent, so the work is split into tasks of
// (direction, block of rows) that each run the whole time loop on their own thread: one parallel
// region per call, not one per step. The step GEMM is a register-tiled micro-kernel over W_hh
// packed once per call (simd.h), in an AVX2+FMA build where the CPU has it; the baseline build
// sends large steps to BLAS instead (then one task per direction, BLAS threading over columns).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <vector>

#include "cpu/blas.h"
#include "cpu/panel_layout.h"
#include "cpu/recurrence_cpu.h"
#include "cpu/recurrence_task.h"
#include "switches.h"

namespace fused_rnn {
namespace {

using cpu::StepGemm;
using cpu::Task;

// Only the baseline build (a CPU without AVX2+FMA) sends a step GEMM of at least this many
// multiply-adds per task to BLAS: its SSE micro-kernel is far slower than the library there. The
// AVX2 micro-kernel beat MKL at every size measured (benchmarks/cpu_notes.md), so that build
// never calls BLAS.
constexpr int64_t kBaselineBlasMinMacs = 8 * 128 * 128;
// Below this many multiply-adds for the whole call, waking a second thread costs more than it saves.
constexpr int64_t kParallelMinMacs = int64_t(1) << 18;

// The AVX2+FMA build of the task loops where the CPU has both, else the baseline x86-64 one.
// The FUSED_RNN_CPU_ISA switch can force the baseline build (so the tests check it on an AVX2 machine).
bool use_avx2() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool cpu_has = cpu::avx2::compiled() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return cpu_has && switches::cpu_isa() != switches::CpuIsa::Baseline;
#else
  return false;
#endif
}

template <typename scalar_t>
void run_task(const Task<scalar_t>& task, bool avx2, bool backward) {
  if (avx2) return backward ? cpu::avx2::backward_task<scalar_t>(task) : cpu::avx2::forward_task<scalar_t>(task);
  backward ? cpu::baseline::backward_task<scalar_t>(task) : cpu::baseline::forward_task<scalar_t>(task);
}

// One layer's recurrence, forward or BPTT, as (direction, row block) tasks.
// buf [N, D*H] (out or dpre), y [N, D*H] or undefined, h_in/h_out [D, B, H], w_hh [D, H, H].
template <typename scalar_t>
void run_layer_tasks(const at::Tensor& buf, const at::Tensor& y, const at::Tensor& h_in, const at::Tensor& w_hh,
                     const StepLayout& lay, bool relu, const at::Tensor& h_out, bool backward) {
  const int64_t D = w_hh.size(0), H = w_hh.size(2), B = h_in.size(1);
  if (B == 0 || lay.T == 0) return;

  // Row blocks per direction: one task per thread when the call is big enough. Batch rows are
  // independent, so each task runs the whole time loop with no synchronisation.
  const bool avx2 = use_avx2();
  const int64_t threads = at::get_num_threads();
  const int64_t macs = lay.rows() * H * H * D;
  int64_t blocks = 1;
  if (threads > 1 && macs >= kParallelMinMacs) blocks = std::min<int64_t>((threads + D - 1) / D, B);
  // Baseline build: where a block's step GEMM would go to BLAS anyway, one task per direction is
  // faster: BLAS then threads over the columns.
  if (!avx2 && blocks > 1 && (B + blocks - 1) / blocks * H * H >= kBaselineBlasMinMacs) blocks = 1;
  const int64_t block_rows = (B + blocks - 1) / blocks;  // balanced: tasks differ by at most a row
  blocks = (B + block_rows - 1) / block_rows;

  const bool blas = !avx2 && cpu::blas_available<scalar_t>() && block_rows * H * H >= kBaselineBlasMinMacs &&
                    cpu::fits_blas_int(H) && cpu::fits_blas_int(D * H) && cpu::fits_blas_int(block_rows);
  const scalar_t* w = w_hh.data_ptr<scalar_t>();
  std::vector<scalar_t> panels(blas ? 0 : D * cpu::packed_size<scalar_t>(H, H));
  std::vector<Task<scalar_t>> tasks;
  for (const auto d : c10::irange(D)) {
    StepGemm<scalar_t> g{w + d * H * H, nullptr, H, /*transpose=*/!backward, blas};
    if (!blas) {
      scalar_t* p = panels.data() + d * cpu::packed_size<scalar_t>(H, H);
      // forward: op(W) = W_hhᵀ, element (k, n) = W_hh[n, k]; BPTT: op(W) = W_hh.
      if (backward) cpu::pack_panels<scalar_t>(g.w, H, H, H, 1, p); else cpu::pack_panels<scalar_t>(g.w, H, H, 1, H, p);
      g.panels = p;
    }
    for (int64_t b0 = 0; b0 < B; b0 += block_rows) {
      tasks.push_back(Task<scalar_t>{&lay, g, buf.data_ptr<scalar_t>() + d * H, D * H,
                                     y.defined() ? y.data_ptr<scalar_t>() + d * H : nullptr,
                                     h_in.data_ptr<scalar_t>() + d * B * H, h_out.data_ptr<scalar_t>() + d * B * H, H,
                                     d == 1, relu, b0, std::min(B, b0 + block_rows)});
    }
  }
  if (tasks.size() == 1) {
    run_task(tasks[0], avx2, backward);  // outside a parallel region, so BLAS may use its own threads
  } else {
    at::parallel_for(0, static_cast<int64_t>(tasks.size()), 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) run_task(tasks[i], avx2, backward);
    });
  }
}

void check_contiguous(std::initializer_list<const at::Tensor*> ts) {
  for (const at::Tensor* t : ts) TORCH_CHECK(!t->defined() || t->is_contiguous(), "fused_rnn: internal buffers must be contiguous");
}

}  // namespace

const char* cpu_isa_in_use() { return use_avx2() ? "avx2" : "baseline"; }

void recurrence_forward_cpu(const at::Tensor& out, const at::Tensor& h0, const at::Tensor& w_hh,
                            const StepLayout& lay, bool relu, const at::Tensor& hy) {
  check_contiguous({&out, &h0, &w_hh, &hy});
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "fused_rnn_recurrence_forward_cpu", [&] {
    run_layer_tasks<scalar_t>(out, at::Tensor(), h0, w_hh, lay, relu, hy, /*backward=*/false);
  });
}

void recurrence_backward_cpu(const at::Tensor& dpre, const at::Tensor& y, const at::Tensor& ghy,
                             const at::Tensor& w_hh, const StepLayout& lay, bool relu, const at::Tensor& dh0) {
  check_contiguous({&dpre, &y, &ghy, &w_hh, &dh0});
  AT_DISPATCH_FLOATING_TYPES(dpre.scalar_type(), "fused_rnn_recurrence_backward_cpu", [&] {
    run_layer_tasks<scalar_t>(dpre, y, ghy, w_hh, lay, relu, dh0, /*backward=*/true);
  });
}

}  // namespace fused_rnn
