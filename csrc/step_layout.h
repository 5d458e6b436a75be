// The step-major layout of a layer's buffers and its one rule: which rows of a step carry state.
//
// Every buffer of a layer is [N, D*H], step-major: step t owns the rows [offset(t), offset(t) +
// batch(t)). Batch sizes never increase with t (PackedSequence's rule), so the sequences alive at
// step t are rows 0 .. batch(t)-1 of that step.
//   - unpacked input:  batch(t) = B, offset(t) = t*B, N = T*B   (batch_sizes undefined)
//   - packed input:    batch_sizes is PackedSequence's CPU int64 [T], N = sum(batch_sizes)
// Direction d of a row lives in columns [d*H, (d+1)*H). Direction 0 runs t = 0 .. T-1 ("its
// forward order"); direction 1 runs t = T-1 .. 0, and each sequence's reverse pass starts at its
// own last step. BPTT walks each direction against its forward order.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#ifdef __CUDACC__
#define FUSED_RNN_HOST_DEVICE __host__ __device__
#else
#define FUSED_RNN_HOST_DEVICE
#endif

namespace fused_rnn {

// The rule over a batch table, for host and device code. batch: [T + 1] with batch[T] = 0.
struct StepRule {
  const int64_t* batch;
  int64_t T;

  // The step processed s-th in a direction's forward order.
  FUSED_RNN_HOST_DEVICE int64_t step(int64_t s, bool reverse) const { return reverse ? T - 1 - s : s; }
  // The step before / after t in the direction's forward order.
  FUSED_RNN_HOST_DEVICE int64_t prev_step(int64_t t, bool reverse) const { return reverse ? t + 1 : t - 1; }
  FUSED_RNN_HOST_DEVICE int64_t next_step(int64_t t, bool reverse) const { return reverse ? t - 1 : t + 1; }
  // Rows [0, continued_rows) of step t read the state prev_step(t) wrote; rows [continued_rows,
  // batch[t]) begin their pass at t, from h0 (so BPTT gives them their dh0 there).
  FUSED_RNN_HOST_DEVICE int64_t continued_rows(int64_t t, bool reverse) const {
    return reverse ? batch[t + 1] : (t == 0 ? 0 : batch[t]);
  }
  // Rows [first_ending_row, batch[t]) end their pass at t: their h_t is hy (and BPTT adds hy's
  // gradient there); rows before it live on at next_step(t).
  FUSED_RNN_HOST_DEVICE int64_t first_ending_row(int64_t t, bool reverse) const {
    return reverse ? (t == 0 ? 0 : batch[t]) : batch[t + 1];
  }
};

// The layout of one call, built once on the host from batch_sizes (or T, B) and passed to every
// layer's kernels.
struct StepLayout {
  int64_t T = 0;
  int64_t B = 0;
  std::vector<int64_t> batch;   // [T + 1], batch[T] = 0
  std::vector<int64_t> offset;  // [T + 1], offset[T] = N
  // Packed input: batch then offset, int64 [2(T + 1)], on the device the call computes on; put there
  // once per call by the stack (rnn_stack.cpp), for the kernels and the backward's gather index.
  // Undefined for unpacked input.
  at::Tensor table;

  // batch_sizes: PackedSequence's CPU int64 [T], or undefined for an unpacked [T*B, ...] layout.
  StepLayout(const at::Tensor& batch_sizes, int64_t n_rows, int64_t b);
  bool uniform() const { return uniform_; }
  // batch then offset: the values of table.
  std::vector<int64_t> host_table() const;
  int64_t rows() const { return offset[T]; }
  StepRule rule() const { return StepRule{batch.data(), T}; }

 private:
  bool uniform_ = true;
};

// One step of a layer's pass over its buffers, for the per-step GEMM regimes (recurrence_gemm.cpp,
// cuda/gemm_steps_half.cu): the step's rows, which of them take their input from the step linked to
// it and which meet a sequence's boundary.
//   forward: linked = the previous step of the direction's order; rows [0, linked_rows) read its
//            h, the others begin here from h0; rows [boundary, n) end their pass here: hy.
//   BPTT:    linked = the next step of the direction's order; rows [0, linked_rows) take its δ·W_hh,
//            the others end their pass here and take the hy gradient; rows [boundary, n) began
//            their pass here: dh0.
struct PassStep {
  int64_t d;            // direction
  int64_t t;            // step
  int64_t row0;         // the step's rows of the [N, D*H] buffers: [row0, row0 + n)
  int64_t n;
  int64_t linked_rows;
  int64_t linked_row0;  // where the linked step's rows begin (when linked_rows > 0)
  int64_t boundary;
};

// Calls step(PassStep) for each direction d < D and each step in the order the pass runs: the
// direction's forward order (forward), or against it (BPTT). Steps without rows are skipped.
template <class F>
void for_each_pass_step(const StepLayout& lay, int64_t D, bool backward, F&& step) {
  const StepRule rule = lay.rule();
  for (int64_t d = 0; d < D; ++d) {
    const bool reverse = d == 1;
    for (int64_t s = 0; s < lay.T; ++s) {
      const int64_t t = rule.step(s, reverse != backward);
      const int64_t n = lay.batch[t];
      if (n == 0) continue;
      const int64_t linked = backward ? rule.first_ending_row(t, reverse) : rule.continued_rows(t, reverse);
      const int64_t linked_step = backward ? rule.next_step(t, reverse) : rule.prev_step(t, reverse);
      step(PassStep{d, t, lay.offset[t], n, linked, linked > 0 ? lay.offset[linked_step] : 0,
                    backward ? rule.continued_rows(t, reverse) : rule.first_ending_row(t, reverse)});
    }
  }
}

}  // namespace fused_rnn
