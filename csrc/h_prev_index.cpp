#include "h_prev_index.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <vector>

namespace fused_rnn {

at::Tensor h_prev_index_on_host(const StepLayout& lay, bool reverse) {
  const int64_t N = lay.rows();
  const StepRule rule = lay.rule();
  std::vector<int64_t> idx(N);
  for (const auto t : c10::irange(lay.T)) {
    const int64_t carried = rule.continued_rows(t, reverse);
    for (const auto b : c10::irange(lay.batch[t]))
      idx[lay.offset[t] + b] = b < carried ? lay.offset[rule.prev_step(t, reverse)] + b : N + b;
  }
  return at::tensor(idx, at::TensorOptions().dtype(at::kLong));
}

at::Tensor h_prev_index_from_table(const at::Tensor& table, int64_t T, int64_t N, bool reverse) {
  const at::Tensor batch = table.narrow(0, 0, T + 1);       // [T + 1], batch[T] = 0
  const at::Tensor offset = table.narrow(0, T + 1, T + 1);  // [T + 1], offset[T] = N
  at::Tensor carried, prev_offset;                          // [T], per step
  if (reverse) {  // continued_rows = batch[t + 1], prev_step = t + 1
    carried = batch.narrow(0, 1, T);
    prev_offset = offset.narrow(0, 1, T);
  } else {  // continued_rows = batch[t] (0 at t = 0), prev_step = t - 1 (unused at t = 0)
    carried = batch.narrow(0, 0, T).clone();
    carried.narrow(0, 0, 1).zero_();
    prev_offset = at::roll(offset.narrow(0, 0, T), 1);
  }
  // [N]: each row's step, the number of later steps' starts at or before it (a binary search per
  // row: no synchronisation, where repeat_interleave's sync-freedom rests on its output_size path),
  // and the row within its step. offset[T] = N bounds the search and is never counted.
  const at::Tensor row = at::arange(N, table.options());
  const at::Tensor step = at::searchsorted(offset.narrow(0, 1, T), row, /*out_int32=*/false, /*right=*/true);
  const at::Tensor b = row - offset.index_select(0, step);
  return at::where(b < carried.index_select(0, step), prev_offset.index_select(0, step) + b, b + N);
}

at::Tensor h_prev_index(const StepLayout& lay, bool reverse) {
  return lay.table.defined() ? h_prev_index_from_table(lay.table, lay.T, lay.rows(), reverse)
                             : h_prev_index_on_host(lay, reverse);
}

namespace {

// torch.ops.fused_rnn_emulation.h_prev_index(batch_sizes, reverse) -> (on_host, from_table): both
// forms on the CPU for PackedSequence batch_sizes [T] (CPU int64), for tests: the table form is what
// CUDA runs, the host form what the CPU runs.
std::tuple<at::Tensor, at::Tensor> both_forms(const at::Tensor& batch_sizes, bool reverse) {
  const at::Tensor bs = batch_sizes.contiguous();
  TORCH_CHECK(bs.dim() == 1 && bs.scalar_type() == at::kLong && bs.numel() > 0,
              "h_prev_index: batch_sizes must be a non-empty 1-D int64 tensor");
  const StepLayout lay(bs, bs.sum().item<int64_t>(), bs[0].item<int64_t>());
  const at::Tensor table = at::tensor(lay.host_table(), at::TensorOptions().dtype(at::kLong));
  return {h_prev_index_on_host(lay, reverse), h_prev_index_from_table(table, lay.T, lay.rows(), reverse)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fused_rnn_emulation, m) {
  m.def("h_prev_index(Tensor batch_sizes, bool reverse) -> (Tensor, Tensor)");
  m.impl("h_prev_index", c10::DispatchKey::CPU, TORCH_FN(both_forms));
}

}  // namespace fused_rnn
