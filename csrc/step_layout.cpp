#include "step_layout.h"

#include <c10/util/Exception.h>
#include <c10/util/irange.h>

namespace fused_rnn {

StepLayout::StepLayout(const at::Tensor& batch_sizes, int64_t n_rows, int64_t b) : B(b) {
  uniform_ = !batch_sizes.defined();
  if (uniform_) {
    T = b > 0 ? n_rows / b : 0;
    batch.assign(T + 1, b);
    batch[T] = 0;
  } else {
    TORCH_CHECK(batch_sizes.device().is_cpu() && batch_sizes.dim() == 1,
                "fused_rnn: batch_sizes must be a 1-D CPU tensor");
    const at::Tensor contiguous = batch_sizes.contiguous();  // the pointer below walks T elements
    T = contiguous.numel();
    const int64_t* bs = contiguous.const_data_ptr<int64_t>();  // checks the dtype
    batch.assign(bs, bs + T);
    batch.push_back(0);
  }
  offset.assign(T + 1, 0);
  for (const auto t : c10::irange(T)) offset[t + 1] = offset[t] + batch[t];
}

std::vector<int64_t> StepLayout::host_table() const {
  std::vector<int64_t> v(batch);
  v.insert(v.end(), offset.begin(), offset.end());
  return v;
}

}  // namespace fused_rnn
