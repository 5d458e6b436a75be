// One layer's recurrence arguments (recurrence.h) for a CUDA kernel's CPU execution in tests
// (*_kernel_on_cpu.cpp): checked and made contiguous, with the kernel's outputs in guarded buffers
// (guarded_buffer.h: out starts as buf, h_out as NaN, so an element the kernel fails to write shows).
//   buf [N, D*H] (pre-activations, or g in BPTT), y [N, D*H] (BPTT only), h_in [D, B, H],
//   w_hh [D, H, H]: CPU tensors of one dtype; uniform: N must be a whole number of steps of B rows.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <utility>

#include "cuda/rec_params.h"
#include "guarded_buffer.h"

namespace fused_rnn {

class LayerOnCpu {
 public:
  LayerOnCpu(const at::Tensor& buf, const at::Tensor& y, const at::Tensor& h_in, const at::Tensor& w_hh,
             bool backward, bool uniform)
      : D(directions(buf, h_in, w_hh)), H(w_hh.size(2)), B(h_in.size(1)), N(buf.size(0)),
        dtype(buf.scalar_type()), backward_(backward),
        out_(N * D * H, dtype, 0.0), h_out_(D * B * H, dtype, NAN) {
    TORCH_CHECK(w_hh.size(1) == H && h_in.size(0) == D && h_in.size(2) == H && buf.size(1) == D * H && B > 0 &&
                    H > 0 && (!uniform || N % B == 0),
                "w_hh [D, H, H], h_in [D, B, H], buf [N, D*H]", uniform ? " with N = T*B" : "");
    for (const at::Tensor* t : {&buf, &h_in, &w_hh}) {
      TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == dtype, "CPU tensors of one dtype");
    }
    TORCH_CHECK(!backward || (y.sizes() == buf.sizes() && y.scalar_type() == dtype && y.device().is_cpu()),
                "BPTT: y [N, D*H] like buf");
    h_in_ = h_in.contiguous();
    w_hh_ = w_hh.contiguous();
    if (backward) y_ = y.contiguous();
    out_.inner().copy_(buf.reshape(-1));
  }

  // The kernels' parameters over these buffers: T steps, the packed step table (null: uniform),
  // the kernel's scratch state (null where it has none).
  cuda::RecParams params(int64_t T, const int64_t* steps, void* scratch, bool relu) const {
    return cuda::RecParams{out_.data(), backward_ ? y_.data_ptr() : nullptr, h_in_.data_ptr(), h_out_.data(),
                           w_hh_.data_ptr(), steps, scratch, T, B, H, D, relu, backward_};
  }

  // After the kernel: the guard bands checked, and new tensors buf [N, D*H] and h_out [D, B, H].
  std::pair<at::Tensor, at::Tensor> results(const char* kernel) const {
    out_.check(kernel, "buf");
    h_out_.check(kernel, "h_out");
    return {out_.inner().clone().view({N, D * H}), h_out_.inner().clone().view({D, B, H})};
  }

  const int64_t D, H, B, N;
  const at::ScalarType dtype;

 private:
  // D, once the ranks are right (the first member initialised: the others read the sizes).
  static int64_t directions(const at::Tensor& buf, const at::Tensor& h_in, const at::Tensor& w_hh) {
    TORCH_CHECK(w_hh.dim() == 3 && h_in.dim() == 3 && buf.dim() == 2, "w_hh [D, H, H], h_in [D, B, H], buf [N, D*H]");
    return w_hh.size(0);
  }

  bool backward_;
  at::Tensor h_in_, w_hh_, y_;
  GuardedBuffer out_, h_out_;
};

}  // namespace fused_rnn
