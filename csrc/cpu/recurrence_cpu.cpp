// CPU recurrence (forward and BPTT) of one layer, all directions; see recurrence.h for the contract.
//
// Strategy: the input projection is already in `out` (one GEMM in rnn_stack.cpp). Each step adds
// h_{t-1}·W_hhᵀ and applies the activation in place, with no allocation and no dispatcher call
// inside the step loop. Batch rows are independent, so the work is split into tasks of
// (direction, block of rows) that each run the whole time loop on their own thread: one parallel
// region per call, not one per step. The step GEMM is BLAS when it is large and BLAS is exported
// (then one task per direction, BLAS threading over the columns), otherwise a register-tiled
// micro-kernel over W_hh packed once per call.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <vector>

#include "cpu/blas.h"
#include "cpu/simd.h"
#include "recurrence.h"

namespace fused_rnn {
namespace {

using cpu::Simd;

// Step GEMM of at least this many multiply-adds (per task) goes to BLAS: a call costs about a
// microsecond, and the 4x16 micro-kernel wins below it (e.g. 4 rows x H=64: 3.5 vs 6.7 µs/step) but
// loses above (16 rows x H=128: 40 vs 27 µs/step). Measured with benchmarks/benchmark.py --quick on
// the 2-core AMD EPYC (noisy shared machine: the crossover is approximate).
constexpr int64_t kBlasMinFlops = 8 * 128 * 128;
// Below this many multiply-adds for the whole call, waking a second thread costs more than it saves.
constexpr int64_t kParallelMinFlops = int64_t(1) << 18;

// C[m, H] += A[m, H] · op(W_hh) for one direction: op = ᵀ in the forward, identity in BPTT.
template <typename T>
struct StepGemm {
  const T* w = nullptr;        // [H, H] row-major W_hh
  const T* panels = nullptr;   // packed op(W_hh) for the micro-kernel, or null when using BLAS
  int64_t H = 0;
  bool transpose = false;
  bool blas = false;
};

template <typename T>
FUSED_RNN_INLINE void step_gemm(const StepGemm<T>& g, int64_t m, const T* a, int64_t lda, T* c, int64_t ldc) {
  if (m <= 0) return;
  if (g.blas) {
    cpu::blas_gemm_acc<T>(g.transpose, m, g.H, g.H, a, lda, g.w, g.H, c, ldc);
  } else {
    cpu::gemm_acc<T>(m, g.H, g.H, a, lda, g.panels, c, ldc);
  }
}

// One task: direction `reverse` of rows [b0, b1).
template <typename T>
struct Task {
  const StepLayout* lay;
  StepGemm<T> gemm;
  T* buf;           // out (forward) or dpre (backward), already offset to this direction's columns
  int64_t ld;       // D*H
  const T* y;       // backward only: forward output, same offset and ld as buf
  const T* h_in;    // forward: h0 [B, H]; backward: ghy [B, H]
  T* h_out;         // forward: hy [B, H]; backward: dh0 [B, H]
  int64_t H;
  bool reverse;
  bool relu;
  int64_t b0, b1;
};

template <typename T>
FUSED_RNN_INLINE void copy_rows(int64_t m, int64_t H, const T* src, int64_t lds, T* dst, int64_t ldd) {
  for (int64_t i = 0; i < m; ++i) std::copy(src + i * lds, src + i * lds + H, dst + i * ldd);
}

template <typename T>
FUSED_RNN_INLINE void add_rows(int64_t m, int64_t H, const T* src, int64_t lds, T* dst, int64_t ldd) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < H; ++j) dst[i * ldd + j] += src[i * lds + j];
}

template <typename T>
FUSED_RNN_INLINE void forward_task(const Task<T>& k) {
  const StepLayout& lay = *k.lay;
  const int64_t H = k.H, ld = k.ld, b0 = k.b0;
  auto row = [&](int64_t t, int64_t b) { return k.buf + (lay.offset[t] + b) * ld; };
  for (const auto s : c10::irange(lay.T)) {
    const int64_t t = k.reverse ? lay.T - 1 - s : s;
    const int64_t hi = std::min(lay.batch[t], k.b1), n = hi - b0;
    if (n <= 0) continue;
    T* c = row(t, b0);
    if (s == 0) {
      step_gemm(k.gemm, n, k.h_in + b0 * H, H, c, ld);
    } else if (!k.reverse) {
      step_gemm(k.gemm, n, row(t - 1, b0), ld, c, ld);
    } else {
      // Rows alive at t+1 carry their state; the others start their reverse pass here from h0.
      const int64_t carried = std::clamp<int64_t>(lay.batch[t + 1] - b0, 0, n);
      step_gemm(k.gemm, carried, row(t + 1, b0), ld, c, ld);
      step_gemm(k.gemm, n - carried, k.h_in + (b0 + carried) * H, H, c + carried * ld, ld);
    }
    cpu::activate<T>(n, H, c, ld, k.relu);
    if (!k.reverse) {  // sequences whose last step is t: rows [batch[t+1], batch[t])
      const int64_t first = std::max(lay.batch[t + 1], b0);
      if (first < hi) copy_rows<T>(hi - first, H, row(t, first), ld, k.h_out + first * H, H);
    }
  }
  if (k.reverse && k.b1 > b0) copy_rows<T>(k.b1 - b0, H, row(0, b0), ld, k.h_out + b0 * H, H);
}

template <typename T>
FUSED_RNN_INLINE void backward_task(const Task<T>& k) {
  const StepLayout& lay = *k.lay;
  const int64_t H = k.H, ld = k.ld, b0 = k.b0;
  auto row = [&](int64_t t, int64_t b) { return k.buf + (lay.offset[t] + b) * ld; };
  auto yrow = [&](int64_t t, int64_t b) { return k.y + (lay.offset[t] + b) * ld; };
  // dh0 rows of this task start at zero; each row gets δ_first·W_hh once.
  if (k.b1 > b0) std::fill(k.h_out + b0 * H, k.h_out + k.b1 * H, T(0));
  for (const auto s : c10::irange(lay.T)) {
    // BPTT walks each direction against its forward order.
    const int64_t t = k.reverse ? s : lay.T - 1 - s;
    const int64_t hi = std::min(lay.batch[t], k.b1), n = hi - b0;
    if (n <= 0) continue;
    T* d = row(t, b0);
    // Rows that also live at the next step of the forward order get δ_next·W_hh; the rest get
    // the hy gradient (their forward pass ended at t).
    const int64_t carried = k.reverse ? (s == 0 ? 0 : n) : std::clamp<int64_t>(lay.batch[t + 1] - b0, 0, n);
    if (carried > 0) step_gemm(k.gemm, carried, k.reverse ? row(t - 1, b0) : row(t + 1, b0), ld, d, ld);
    add_rows<T>(n - carried, H, k.h_in + (b0 + carried) * H, H, d + carried * ld, ld);
    cpu::activation_grad<T>(n, H, d, ld, yrow(t, b0), ld, k.relu);
    if (k.reverse) {  // rows whose reverse pass began at t read h0 there
      const int64_t first = std::max(lay.batch[t + 1], b0);
      if (first < hi) step_gemm(k.gemm, hi - first, row(t, first), ld, k.h_out + first * H, H);
    }
  }
  if (!k.reverse && k.b1 > b0) step_gemm(k.gemm, k.b1 - b0, row(0, b0), ld, k.h_out + b0 * H, H);
}

// Two builds of each task body: baseline and AVX2+FMA, chosen once at run time.
template <typename T>
__attribute__((flatten)) void forward_task_generic(const Task<T>& k) { forward_task<T>(k); }
template <typename T>
__attribute__((flatten)) void backward_task_generic(const Task<T>& k) { backward_task<T>(k); }
#if defined(__x86_64__) && defined(__GNUC__)
template <typename T>
__attribute__((target("avx2,fma"), flatten)) void forward_task_avx2(const Task<T>& k) { forward_task<T>(k); }
template <typename T>
__attribute__((target("avx2,fma"), flatten)) void backward_task_avx2(const Task<T>& k) { backward_task<T>(k); }
bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#endif

template <typename T>
void run_task(const Task<T>& k, bool backward) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (has_avx2()) return backward ? backward_task_avx2<T>(k) : forward_task_avx2<T>(k);
#endif
  backward ? backward_task_generic<T>(k) : forward_task_generic<T>(k);
}

template <typename T>
void run(const at::Tensor& buf, const at::Tensor& y, const at::Tensor& h_in, const at::Tensor& w_hh,
         const at::Tensor& batch_sizes, bool relu, const at::Tensor& h_out, bool backward) {
  const int64_t D = w_hh.size(0), H = w_hh.size(2), B = h_in.size(1);
  const StepLayout lay(batch_sizes, buf.size(0), B);
  if (B == 0 || lay.T == 0) return;

  // Row blocks per direction: enough to give every thread a task when the call is big enough.
  const int64_t threads = at::get_num_threads();
  const int64_t flops = lay.rows() * H * H * D;
  int64_t blocks = 1;
  if (threads > 1 && flops >= kParallelMinFlops) blocks = std::min<int64_t>((threads + D - 1) / D, B);
  // Row blocks pay off for the micro-kernel. Where a block's step GEMM would go to BLAS anyway, one
  // task per direction is faster: BLAS then threads over the columns, so each core streams only its
  // share of W_hh (measured: B=16 H=256 42 vs 64 µs/step, B=32 H=128 25 vs 34, B=32 H=1024 1.0x vs
  // 0.85x of nn.RNN).
  if (blocks > 1 && (B + blocks - 1) / blocks * H * H >= kBlasMinFlops) blocks = 1;
  const int64_t MR = Simd<T>::kMR;
  const int64_t rows_per_block = std::max<int64_t>(1, (B + blocks - 1) / blocks);
  const int64_t block_rows = blocks > 1 && rows_per_block > MR ? (rows_per_block + MR - 1) / MR * MR : rows_per_block;
  blocks = (B + block_rows - 1) / block_rows;

  const bool blas = cpu::blas_available<T>() && block_rows * H * H >= kBlasMinFlops && cpu::fits_blas_int(H) &&
                    cpu::fits_blas_int(D * H) && cpu::fits_blas_int(block_rows);
  const T* w = w_hh.data_ptr<T>();
  std::vector<T> panels(blas ? 0 : D * cpu::packed_size<T>(H, H));
  std::vector<Task<T>> tasks;
  for (const auto d : c10::irange(D)) {
    StepGemm<T> g{w + d * H * H, nullptr, H, /*transpose=*/!backward, blas};
    if (!blas) {
      T* p = panels.data() + d * cpu::packed_size<T>(H, H);
      // forward: op(W) = W_hhᵀ, element (k, n) = W_hh[n, k]; BPTT: op(W) = W_hh.
      if (backward) cpu::pack_panels<T>(g.w, H, H, H, 1, p); else cpu::pack_panels<T>(g.w, H, H, 1, H, p);
      g.panels = p;
    }
    for (int64_t b0 = 0; b0 < B; b0 += block_rows) {
      tasks.push_back(Task<T>{&lay, g, buf.data_ptr<T>() + d * H, D * H, y.defined() ? y.data_ptr<T>() + d * H : nullptr,
                              h_in.data_ptr<T>() + d * B * H, h_out.data_ptr<T>() + d * B * H, H, d == 1, relu, b0,
                              std::min(B, b0 + block_rows)});
    }
  }
  if (tasks.size() == 1) {
    run_task(tasks[0], backward);  // outside a parallel region, so BLAS may use its own threads
  } else {
    at::parallel_for(0, static_cast<int64_t>(tasks.size()), 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) run_task(tasks[i], backward);
    });
  }
}

void check_contiguous(std::initializer_list<const at::Tensor*> ts) {
  for (const at::Tensor* t : ts) TORCH_CHECK(!t->defined() || t->is_contiguous(), "fused_rnn: internal buffers must be contiguous");
}

}  // namespace

void recurrence_forward_cpu(const at::Tensor& out, const at::Tensor& h0, const at::Tensor& w_hh,
                            const at::Tensor& batch_sizes, bool relu, const at::Tensor& hy) {
  check_contiguous({&out, &h0, &w_hh, &hy});
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "fused_rnn_recurrence_forward_cpu", [&] {
    run<scalar_t>(out, at::Tensor(), h0, w_hh, batch_sizes, relu, hy, /*backward=*/false);
  });
}

void recurrence_backward_cpu(const at::Tensor& dpre, const at::Tensor& y, const at::Tensor& ghy,
                             const at::Tensor& w_hh, const at::Tensor& batch_sizes, bool relu,
                             const at::Tensor& dh0) {
  check_contiguous({&dpre, &y, &ghy, &w_hh, &dh0});
  AT_DISPATCH_FLOATING_TYPES(dpre.scalar_type(), "fused_rnn_recurrence_backward_cpu", [&] {
    run<scalar_t>(dpre, y, ghy, w_hh, batch_sizes, relu, dh0, /*backward=*/true);
  });
}

}  // namespace fused_rnn
