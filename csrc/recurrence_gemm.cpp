// The recurrence (recurrence.h contract) as one library GEMM plus one in-place pointwise op per step,
// written in ATen ops, so it runs on any device. The CUDA build uses it where a step is a large
// matrix product (B·H² ≥ kGemmRecurrenceMinWork, float32/float64): there cuBLAS's tiled GEMM beats
// the persistent kernel's per-CTA mat-vec, and the per-step launch cost (~10 µs for two ops) is
// small against the product itself. No allocation inside the step loop: every operand is a view.
#include "recurrence_gemm.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace fused_rnn {

void recurrence_forward_gemm(const at::Tensor& out, const at::Tensor& h0, const at::Tensor& w_hh,
                             const at::Tensor& batch_sizes, bool relu, const at::Tensor& hy) {
  const int64_t D = w_hh.size(0), H = w_hh.size(2), B = h0.size(1), N = out.size(0);
  if (B == 0 || H == 0 || N == 0) return;
  const StepLayout lay(batch_sizes, N, B);
  const int64_t T = lay.T;
  for (int64_t d = 0; d < D; ++d) {
    const at::Tensor od = out.narrow(1, d * H, H);  // [N, H], row stride D*H
    const at::Tensor wt = w_hh[d].t();              // [H, H]: h·W_hhᵀ
    const at::Tensor h0d = h0[d], hyd = hy[d];      // [B, H]
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = d == 0 ? s : T - 1 - s;
      const int64_t n = lay.batch[t];
      at::Tensor cur = od.narrow(0, lay.offset[t], n);  // [n, H]: pre_t on entry
      // Rows alive at the previous processed step continue from it; the others start from h0
      // (only the reverse direction of a packed batch has such rows after its first step).
      const int64_t tp = d == 0 ? t - 1 : t + 1;
      const int64_t np = s == 0 ? 0 : std::min(n, lay.batch[tp]);
      if (np > 0) cur.narrow(0, 0, np).addmm_(od.narrow(0, lay.offset[tp], np), wt);
      if (np < n) cur.narrow(0, np, n - np).addmm_(h0d.narrow(0, np, n - np), wt);
      if (relu) {
        cur.relu_();
      } else {
        cur.tanh_();
      }
      // hy: the rows whose sequence ends at this step (forward: not alive at t+1; reverse: t == 0).
      const int64_t e0 = d == 0 ? lay.batch[t + 1] : (t == 0 ? 0 : n);
      if (e0 < n) hyd.narrow(0, e0, n - e0).copy_(cur.narrow(0, e0, n - e0));
    }
  }
}

void recurrence_backward_gemm(const at::Tensor& dpre, const at::Tensor& y, const at::Tensor& ghy,
                              const at::Tensor& w_hh, const at::Tensor& batch_sizes, bool relu,
                              const at::Tensor& dh0) {
  const int64_t D = w_hh.size(0), H = w_hh.size(2), B = ghy.size(1), N = dpre.size(0);
  if (B == 0 || H == 0 || N == 0) return;
  const StepLayout lay(batch_sizes, N, B);
  const int64_t T = lay.T;
  for (int64_t d = 0; d < D; ++d) {
    const at::Tensor gd = dpre.narrow(1, d * H, H), yd = y.narrow(1, d * H, H);  // [N, H]
    const at::Tensor w = w_hh[d];                                                  // [H, H]: δ·W_hh
    const at::Tensor ghyd = ghy[d], dh0d = dh0[d];                                 // [B, H]
    // BPTT walks the direction's forward order backwards: direction 0 from t = T-1 down, direction 1 up.
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = d == 0 ? T - 1 - s : s;
      const int64_t n = lay.batch[t];
      at::Tensor cur = gd.narrow(0, lay.offset[t], n);  // [n, H]: g_t on entry, δ_t on exit
      // Rows alive at the step processed before this one get δ of that step through W_hh; a row
      // whose sequence ends here (in the forward order) gets the hy gradient instead.
      const int64_t tn = d == 0 ? t + 1 : t - 1;
      const int64_t nn = s == 0 ? 0 : std::min(n, lay.batch[tn]);
      if (nn > 0) cur.narrow(0, 0, nn).addmm_(gd.narrow(0, lay.offset[tn], nn), w);
      if (nn < n) cur.narrow(0, nn, n - nn).add_(ghyd.narrow(0, nn, n - nn));
      const at::Tensor yt = yd.narrow(0, lay.offset[t], n);
      if (relu) {
        at::threshold_backward_out(cur, cur, yt, 0);
      } else {
        at::tanh_backward_out(cur, cur, yt);
      }
      // dh0 of the rows whose sequence starts here in the forward order (direction 0: t == 0;
      // direction 1: the rows not alive at t + 1).
      const int64_t b0 = d == 0 ? (t == 0 ? 0 : n) : lay.batch[t + 1];
      if (b0 < n) {
        at::Tensor dst = dh0d.narrow(0, b0, n - b0);
        at::mm_out(dst, cur.narrow(0, b0, n - b0), w);
      }
    }
  }
}

}  // namespace fused_rnn
