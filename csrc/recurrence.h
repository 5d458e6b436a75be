// The sequential core of an Elman RNN layer: the one piece of code that differs per device.
//
// Shape letters used throughout csrc/:
//   T steps, B batch (largest batch for packed input), I layer input width, H hidden size,
//   D directions (1 or 2), L layers, N = rows of a layer's step-major buffers.
//
// The step-major layout of the buffers and its rule: step_layout.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "step_layout.h"

namespace fused_rnn {

// Forward recurrence of one layer, all directions, in place.
//   out  [N, D*H]  on entry: pre_t = x_t·W_ihᵀ + b_ih + b_hh;  on exit: h_t = act(pre_t + h_{t-1}·W_hhᵀ)
//   h0   [D, B, H] initial hidden state            w_hh [D, H, H]
//   hy   [D, B, H] written: each sequence's last hidden state (step len-1 forward, step 0 reverse)
using RecurrenceForwardFn = void (*)(const at::Tensor& out, const at::Tensor& h0, const at::Tensor& w_hh,
                                     const StepLayout& lay, bool relu, const at::Tensor& hy);

// Backward recurrence (BPTT) of one layer, all directions, in place.
//   dpre [N, D*H]  on entry: g_t = dL/dh_t from the layer above (or the loss);
//                  on exit:  δ_t = dL/dpre_t = (g_t + δ_{t+1}·W_hh) ⊙ act'(h_t)   (t+1 = next step in
//                  the direction's own order; the hy gradient enters at each sequence's last step)
//   y    [N, D*H]  the forward output h_t                 w_hh [D, H, H]
//   ghy  [D, B, H] gradient of hy                         dh0  [D, B, H] written: gradient of h0
using RecurrenceBackwardFn = void (*)(const at::Tensor& dpre, const at::Tensor& y, const at::Tensor& ghy,
                                      const at::Tensor& w_hh, const StepLayout& lay, bool relu,
                                      const at::Tensor& dh0);

// Optional: the input projection of one layer for sizes too small for a library GEMM call to pay
// off (on the CPU an addmm of a few thousand multiply-adds costs more in call overhead than in
// arithmetic). Writes
//   out [N, D*H] = in [N, I_l] · W_ih[d]ᵀ + b_ih[d] + b_hh[d]   for each direction d
// and returns true, or returns false and writes nothing when it does not apply.
//   params: the layer's nn.RNN weights, per direction w_ih [H, I_l], w_hh [H, H], then b_ih, b_hh
//   when has_biases.
using SmallProjectionFn = bool (*)(const at::Tensor& out, const at::Tensor& in, at::TensorList params, int64_t D,
                                   bool has_biases);

// Optional, the backward's counterpart: one layer's weight and input gradients for sizes too small
// for library GEMM calls to pay off (five of them, plus a sum, narrows and clones: on the CPU far
// more call overhead than the few thousand multiply-adds they wrap). With δ = dpre [N, D*H] (after BPTT),
// the layer input in [N, I_l], its output y [N, D*H] and h0 [D, B, H], allocates and writes, per
// direction d (grads[d*per + k], per = 4 with biases, else 2, nn.RNN's order):
//   dW_ih[d] = δ_dᵀ · in  [H, I_l]      dW_hh[d] = Σ_t δ_d,tᵀ · h_prev_t  [H, H]
//   db_ih[d] = db_hh[d] = Σ_n δ_d  [H]
// and dx = Σ_d δ_d · W_ih[d]  [N, I_l]; returns true. Returns false, writing nothing, when it does
// not apply. h_prev_t is the state step t read: h0 or the previous step of the direction's order.
using SmallLayerGradsFn = bool (*)(const at::Tensor& dpre, const at::Tensor& in, const at::Tensor& y,
                                   const at::Tensor& h0, const StepLayout& lay, at::TensorList params, int64_t D,
                                   bool has_biases, at::Tensor* grads, at::Tensor& dx);

// Optional: host int64 values to a new tensor [values.size()] on device, without a host
// synchronisation and safe to capture in a CUDA graph (the packed step table, StepLayout::table).
// Without it the table is a CPU tensor.
using UploadFn = at::Tensor (*)(const std::vector<int64_t>& values, at::Device device);

// Optional: the device's own matrix product for a call, c = addend + a·b (addend undefined: c = a·b;
// c itself: c += a·b; else broadcast to c), returning true; or false, writing nothing, to leave it
// to ATen (matmul.h). The CUDA one runs float32 on TF32 under nn.RNN's rule where a switch asks.
using GemmFn = bool (*)(const at::Tensor& c, const at::Tensor& a, const at::Tensor& b, const at::Tensor& addend);

struct RecurrenceKernels {
  RecurrenceForwardFn forward;
  RecurrenceBackwardFn backward;
  SmallProjectionFn small_projection = nullptr;
  SmallLayerGradsFn small_layer_grads = nullptr;
  UploadFn upload = nullptr;
  GemmFn gemm = nullptr;
};

}  // namespace fused_rnn
