// Typed dispatcher handles of the two ops, for C++ callers (the autograd kernels, the Python entry
// point): calling through them costs a table lookup, not a schema match by name.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>
#include <vector>

namespace fused_rnn {

using RnnForwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, at::TensorList, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, int64_t, bool, bool, bool);
using RnnBackwardSig = std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, at::TensorList,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, int64_t,
    bool, bool, bool);

inline const c10::TypedOperatorHandle<RnnForwardSig>& rnn_forward_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("fused_rnn::rnn_forward", "").typed<RnnForwardSig>();
  return op;
}

inline const c10::TypedOperatorHandle<RnnBackwardSig>& rnn_backward_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("fused_rnn::rnn_backward", "").typed<RnnBackwardSig>();
  return op;
}

}  // namespace fused_rnn
