// The recurrence (recurrence.h contract) as one library GEMM plus one in-place pointwise op per step,
// written in ATen ops, so it runs on any device. The CUDA build uses it where a step is a large
// matrix product (B·H² ≥ kGemmRecurrenceMinWork, float32/float64): there cuBLAS's tiled GEMM beats
// the persistent kernel's per-CTA mat-vec, and the per-step launch cost of two ops is small against
// the product itself. No allocation inside the step loop: every operand is a view. The products go
// through matmul_into: the device's own GEMM where given (gemm, RecurrenceKernels::gemm), else ATen.
#include "recurrence_gemm.h"

#include <ATen/ATen.h>

#include "matmul.h"

namespace fused_rnn {

void recurrence_forward_gemm(const at::Tensor& out, const at::Tensor& h0, const at::Tensor& w_hh,
                             const StepLayout& lay, bool relu, const at::Tensor& hy, GemmFn gemm) {
  const int64_t D = w_hh.size(0), H = w_hh.size(2), B = h0.size(1), N = out.size(0);
  if (B == 0 || H == 0 || N == 0) return;
  const StepRule rule = lay.rule();
  for (int64_t d = 0; d < D; ++d) {
    const bool reverse = d == 1;
    const at::Tensor od = out.narrow(1, d * H, H);  // [N, H], row stride D*H
    const at::Tensor wt = w_hh[d].t();              // [H, H]: h·W_hhᵀ
    const at::Tensor h0d = h0[d], hyd = hy[d];      // [B, H]
    for (int64_t s = 0; s < lay.T; ++s) {
      const int64_t t = rule.step(s, reverse);
      const int64_t n = lay.batch[t];
      at::Tensor cur = od.narrow(0, lay.offset[t], n);  // [n, H]: pre_t on entry
      // Continued rows add the previous step's state; the others begin here, from h0.
      const int64_t carried = rule.continued_rows(t, reverse);
      if (carried > 0) {
        const at::Tensor rows = cur.narrow(0, 0, carried);
        matmul_into(gemm, rows, od.narrow(0, lay.offset[rule.prev_step(t, reverse)], carried), wt, rows);
      }
      if (carried < n) {
        const at::Tensor rows = cur.narrow(0, carried, n - carried);
        matmul_into(gemm, rows, h0d.narrow(0, carried, n - carried), wt, rows);
      }
      if (relu) {
        cur.relu_();
      } else {
        cur.tanh_();
      }
      const int64_t e0 = rule.first_ending_row(t, reverse);  // rows whose pass ends here give hy
      if (e0 < n) hyd.narrow(0, e0, n - e0).copy_(cur.narrow(0, e0, n - e0));
    }
  }
}

void recurrence_backward_gemm(const at::Tensor& dpre, const at::Tensor& y, const at::Tensor& ghy,
                              const at::Tensor& w_hh, const StepLayout& lay, bool relu, const at::Tensor& dh0,
                              GemmFn gemm) {
  const int64_t D = w_hh.size(0), H = w_hh.size(2), B = ghy.size(1), N = dpre.size(0);
  if (B == 0 || H == 0 || N == 0) return;
  const StepRule rule = lay.rule();
  for (int64_t d = 0; d < D; ++d) {
    const bool reverse = d == 1;
    const at::Tensor gd = dpre.narrow(1, d * H, H), yd = y.narrow(1, d * H, H);  // [N, H]
    const at::Tensor w = w_hh[d];                                                  // [H, H]: δ·W_hh
    const at::Tensor ghyd = ghy[d], dh0d = dh0[d];                                 // [B, H]
    for (int64_t s = 0; s < lay.T; ++s) {
      const int64_t t = rule.step(s, !reverse);  // against the direction's forward order
      const int64_t n = lay.batch[t];
      at::Tensor cur = gd.narrow(0, lay.offset[t], n);  // [n, H]: g_t on entry, δ_t on exit
      // Rows that live on at the next step of the forward order get δ_next·W_hh; the rest end
      // their pass here and get the hy gradient.
      const int64_t carried = rule.first_ending_row(t, reverse);
      if (carried > 0) {
        const at::Tensor rows = cur.narrow(0, 0, carried);
        matmul_into(gemm, rows, gd.narrow(0, lay.offset[rule.next_step(t, reverse)], carried), w, rows);
      }
      if (carried < n) cur.narrow(0, carried, n - carried).add_(ghyd.narrow(0, carried, n - carried));
      const at::Tensor yt = yd.narrow(0, lay.offset[t], n);
      if (relu) {
        at::threshold_backward_out(cur, cur, yt, 0);
      } else {
        at::tanh_backward_out(cur, cur, yt);
      }
      const int64_t b0 = rule.continued_rows(t, reverse);  // rows whose pass began here: dh0
      if (b0 < n) matmul_into(gemm, dh0d.narrow(0, b0, n - b0), cur.narrow(0, b0, n - b0), w);
    }
  }
}

}  // namespace fused_rnn
