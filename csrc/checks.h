// The arguments of the ops and their checks, shared by every device's kernels and the composite
// formulation.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace fused_rnn {

// Tensors per (layer, direction) in nn.RNN's flat weight list: w_ih, w_hh, then b_ih, b_hh with biases.
inline int64_t weights_per_direction(bool has_biases) { return has_biases ? 4 : 2; }

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
// rnn_backward's own arguments, after check_rnn_args: the gradients' shapes, dtypes and devices and
// the shapes of output and reserve.
void check_rnn_backward_args(const RnnArgs& a, const at::Tensor& grad_output, const at::Tensor& grad_hy,
                             const at::Tensor& output, const at::Tensor& reserve);

// What every kernel entry starts with: the op's arguments with canonical batch_sizes, checked by
// check_rnn_args. Holds the canonical batch_sizes that `args` refers to, so it is neither copied
// nor moved.
struct CheckedRnnArgs {
  std::optional<at::Tensor> batch_sizes;
  RnnArgs args;

  CheckedRnnArgs(const at::Tensor& input, const at::Tensor& hx, at::TensorList weights,
                 const std::optional<at::Tensor>& raw_batch_sizes, const std::optional<at::Tensor>& dropout_mask,
                 int64_t num_layers, bool bidirectional, bool relu, bool has_biases)
      : batch_sizes(canonical_batch_sizes(raw_batch_sizes)),
        args{input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional, relu, has_biases} {
    check_rnn_args(args);
  }
  CheckedRnnArgs(const CheckedRnnArgs&) = delete;
  CheckedRnnArgs& operator=(const CheckedRnnArgs&) = delete;
};

}  // namespace fused_rnn
