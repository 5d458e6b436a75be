// The backward's gather index for packed input (rnn_stack.cpp's dW_hh = Σ_t δ_tᵀ h_prev_t): for each
// row of a direction's [N, H] buffers, its row in [y; h0] (rows N.. are h0) holding the state the
// step read: the previous step's output for a continued row, else h0 (StepRule's continued_rows and
// prev_step).
#pragma once

#include <ATen/core/Tensor.h>

#include "step_layout.h"

namespace fused_rnn {

// [N] int64 where the call computes: from the device's step table with tensor ops
// (h_prev_index_from_table: no host loop, no copy, no synchronisation; graph-capturable) where the
// layout has one (StepLayout::table), else a host loop over the rows (the CPU, which has no table).
at::Tensor h_prev_index(const StepLayout& lay, bool reverse);

// The two forms, for the check that they agree (torch.ops.fused_rnn_emulation.h_prev_index).
at::Tensor h_prev_index_on_host(const StepLayout& lay, bool reverse);
// table: StepLayout::table's layout, batch[0..T] then offset[0..T], int64 on any device.
at::Tensor h_prev_index_from_table(const at::Tensor& table, int64_t T, int64_t N, bool reverse);

}  // namespace fused_rnn
