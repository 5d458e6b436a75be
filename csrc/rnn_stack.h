// The device-agnostic part of the RNN: layers, directions, dropout and the large GEMMs, written
// once in ATen ops. Only the sequential recurrence (recurrence.h) is a per-device kernel.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>
#include <vector>

#include "checks.h"
#include "recurrence.h"

namespace fused_rnn {

// Returns (output [*input.shape[:-1], D*H], hy [L*D, B, H], reserve [L-1, *input.shape[:-1], D*H]).
// reserve holds the outputs of layers 0..L-2 before dropout; the backward needs them.
std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_forward_stack(const RnnArgs& a, const RecurrenceKernels& k);

// Returns (grad_input, grad_hx, grad_weights) for the forward that produced output and reserve.
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> rnn_backward_stack(
    const RnnArgs& a, const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& output,
    const at::Tensor& reserve, const RecurrenceKernels& k);

}  // namespace fused_rnn
