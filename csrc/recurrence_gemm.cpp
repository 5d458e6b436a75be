// The recurrence (recurrence.h contract) as one library GEMM plus one in-place pointwise op per step,
// written in ATen ops, so it runs on any device. The CUDA build uses it where a step is a large
// matrix product (B·H² ≥ kGemmRecurrenceMinWork, float32/float64): there cuBLAS's tiled GEMM beats
// the persistent kernel's per-CTA mat-vec, and the per-step launch cost of two ops is small against
// the product itself. No allocation inside the step loop: every operand is a view. The products go
// through matmul_into: the device's own GEMM where given (gemm, RecurrenceKernels::gemm), else ATen.
#include "recurrence_gemm.h"

#include <ATen/ATen.h>

#include <array>

#include "matmul.h"

namespace fused_rnn {

void recurrence_forward_gemm(const at::Tensor& out, const at::Tensor& h0, const at::Tensor& w_hh,
                             const StepLayout& lay, bool relu, const at::Tensor& hy, GemmFn gemm) {
  const int64_t D = w_hh.size(0), H = w_hh.size(2), B = h0.size(1), N = out.size(0);
  if (B == 0 || H == 0 || N == 0) return;
  std::array<at::Tensor, 2> outs, wts, h0s, hys;  // per direction, made once, not per step
  for (int64_t d = 0; d < D; ++d) {
    outs[d] = out.narrow(1, d * H, H);  // [N, H], row stride D*H
    wts[d] = w_hh[d].t();               // [H, H]: h·W_hhᵀ
    h0s[d] = h0[d];                     // [B, H]
    hys[d] = hy[d];                     // [B, H]
  }
  for_each_pass_step(lay, D, /*backward=*/false, [&](const PassStep& p) {
    const at::Tensor &od = outs[p.d], &wt = wts[p.d], &h0d = h0s[p.d], &hyd = hys[p.d];
    at::Tensor cur = od.narrow(0, p.row0, p.n);  // [n, H]: pre_t on entry
    // Continued rows add the previous step's state; the others begin here, from h0.
    if (p.linked_rows > 0) {
      const at::Tensor rows = cur.narrow(0, 0, p.linked_rows);
      matmul_into(gemm, rows, od.narrow(0, p.linked_row0, p.linked_rows), wt, rows);
    }
    if (p.linked_rows < p.n) {
      const at::Tensor rows = cur.narrow(0, p.linked_rows, p.n - p.linked_rows);
      matmul_into(gemm, rows, h0d.narrow(0, p.linked_rows, p.n - p.linked_rows), wt, rows);
    }
    if (relu) {
      cur.relu_();
    } else {
      cur.tanh_();
    }
    const int64_t ending = p.n - p.boundary;  // rows [boundary, n) end their pass here: hy
    if (ending > 0) hyd.narrow(0, p.boundary, ending).copy_(cur.narrow(0, p.boundary, ending));
  });
}

void recurrence_backward_gemm(const at::Tensor& dpre, const at::Tensor& y, const at::Tensor& ghy,
                              const at::Tensor& w_hh, const StepLayout& lay, bool relu, const at::Tensor& dh0,
                              GemmFn gemm) {
  const int64_t D = w_hh.size(0), H = w_hh.size(2), B = ghy.size(1), N = dpre.size(0);
  if (B == 0 || H == 0 || N == 0) return;
  std::array<at::Tensor, 2> gs, ys, ws, ghys, dh0s;  // per direction, made once, not per step
  for (int64_t d = 0; d < D; ++d) {
    gs[d] = dpre.narrow(1, d * H, H);  // [N, H], row stride D*H
    ys[d] = y.narrow(1, d * H, H);     // [N, H]
    ws[d] = w_hh[d];                   // [H, H]: δ·W_hh
    ghys[d] = ghy[d];                  // [B, H]
    dh0s[d] = dh0[d];                  // [B, H]
  }
  for_each_pass_step(lay, D, /*backward=*/true, [&](const PassStep& p) {
    const at::Tensor &gd = gs[p.d], &yd = ys[p.d], &w = ws[p.d], &ghyd = ghys[p.d], &dh0d = dh0s[p.d];
    at::Tensor cur = gd.narrow(0, p.row0, p.n);  // [n, H]: g_t on entry, δ_t on exit
    // Rows that live on at the next step of the forward order get δ_next·W_hh; the rest end their
    // pass here and get the hy gradient.
    if (p.linked_rows > 0) {
      const at::Tensor rows = cur.narrow(0, 0, p.linked_rows);
      matmul_into(gemm, rows, gd.narrow(0, p.linked_row0, p.linked_rows), w, rows);
    }
    if (p.linked_rows < p.n) {
      cur.narrow(0, p.linked_rows, p.n - p.linked_rows).add_(ghyd.narrow(0, p.linked_rows, p.n - p.linked_rows));
    }
    const at::Tensor yt = yd.narrow(0, p.row0, p.n);
    if (relu) {
      at::threshold_backward_out(cur, cur, yt, 0);
    } else {
      at::tanh_backward_out(cur, cur, yt);
    }
    const int64_t beginning = p.n - p.boundary;  // rows [boundary, n) began their pass here: dh0
    if (beginning > 0) matmul_into(gemm, dh0d.narrow(0, p.boundary, beginning), cur.narrow(0, p.boundary, beginning), w);
  });
}

}  // namespace fused_rnn
