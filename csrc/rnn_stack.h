// The device-agnostic part of the RNN: layers, directions, dropout and the large GEMMs, written
// once in ATen ops. Only the sequential recurrence (recurrence.h) is a per-device kernel.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>
#include <vector>

#include "recurrence.h"

namespace fused_rnn {

// Arguments shared by the forward and backward ops, exactly as the op schemas name them.
//   input    [T, B, I] (time-major) or [N, I] packed, with batch_sizes [T] (CPU int64)
//   hx       [L*D, B, H]
//   weights  nn.RNN's _flat_weights: per (layer, direction) w_ih [H, I_l], w_hh [H, H], then
//            b_ih [H], b_hh [H] when has_biases.   I_0 = I, I_l = D*H for l > 0.
//   dropout_mask  [L-1, *input.shape[:-1], D*H] already scaled by 1/(1-p), or none
struct RnnArgs {
  const at::Tensor& input;
  const at::Tensor& hx;
  at::TensorList weights;
  const std::optional<at::Tensor>& batch_sizes;
  const std::optional<at::Tensor>& dropout_mask;
  int64_t num_layers;
  bool bidirectional;
  bool relu;
  bool has_biases;
};

// PackedSequence.batch_sizes as the kernels read it, through a raw int64 pointer: a contiguous CPU
// int64 [T] (a strided view is copied; reading its data_ptr() would walk the wrong memory) without
// trailing zeros (steps no sequence reaches, which nn.RNN accepts), keeping at least one step.
// Validates type, device and rank; check_rnn_args validates the values.
std::optional<at::Tensor> canonical_batch_sizes(const std::optional<at::Tensor>& batch_sizes);

// Validates shapes, dtypes and devices with messages that name the offending argument. batch_sizes
// must have been through canonical_batch_sizes.
void check_rnn_args(const RnnArgs& a);
// check_rnn_args plus the gradients' shapes, dtypes and devices and the shapes of output and
// reserve, for rnn_backward.
void check_rnn_backward_args(const RnnArgs& a, const at::Tensor& grad_output, const at::Tensor& grad_hy,
                             const at::Tensor& output, const at::Tensor& reserve);

// Returns (output [*input.shape[:-1], D*H], hy [L*D, B, H], reserve [L-1, *input.shape[:-1], D*H]).
// reserve holds the outputs of layers 0..L-2 before dropout; the backward needs them.
std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_forward_stack(const RnnArgs& a, const RecurrenceKernels& k);

// Returns (grad_input, grad_hx, grad_weights) for the forward that produced output and reserve.
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> rnn_backward_stack(
    const RnnArgs& a, const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& output,
    const at::Tensor& reserve, const RecurrenceKernels& k);

}  // namespace fused_rnn
