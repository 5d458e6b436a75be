// Input checks of the ops (checks.h), shared by every device's kernels.
#include "checks.h"

#include <ATen/ATen.h>

#include <vector>

namespace fused_rnn {

std::optional<at::Tensor> canonical_batch_sizes(const std::optional<at::Tensor>& batch_sizes) {
  if (!batch_sizes) return std::nullopt;
  const at::Tensor& bs = *batch_sizes;
  TORCH_CHECK(bs.device().is_cpu() && bs.scalar_type() == at::kLong && bs.dim() == 1,
              "batch_sizes must be a 1-D CPU int64 tensor (PackedSequence.batch_sizes)");
  TORCH_CHECK(bs.numel() > 0, "Expected sequence length to be larger than 0 in RNN");
  at::Tensor c;
  if (bs.key_set().has(c10::DispatchKey::FuncTorchGradWrapper)) {
    // Under a functorch transform every argument arrives wrapped, with no storage of its own to
    // read: copy the values out through the dispatcher.
    std::vector<int64_t> values(bs.numel());
    for (int64_t t = 0; t < bs.numel(); ++t) values[t] = bs[t].item<int64_t>();
    // A plain tensor: inside a transform a factory's result would be wrapped too.
    const c10::impl::ExcludeDispatchKeyGuard plain(c10::DispatchKeySet(
        {c10::DispatchKey::FuncTorchDynamicLayerFrontMode, c10::DispatchKey::FuncTorchDynamicLayerBackMode}));
    c = at::tensor(values, at::TensorOptions().dtype(at::kLong));
  } else {
    c = bs.contiguous();
  }
  const int64_t* p = c.const_data_ptr<int64_t>();
  int64_t T = c.numel();
  while (T > 1 && p[T - 1] == 0) --T;
  return T == c.numel() ? c : c.narrow(0, 0, T);
}

void check_rnn_args(const RnnArgs& a) {
  const int64_t L = a.num_layers, D = a.bidirectional ? 2 : 1;
  TORCH_CHECK(L > 0, "num_layers must be greater than zero, got ", L);
  const at::Tensor& x = a.input;
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "input must be a floating point tensor, got ", x.scalar_type());
  if (a.batch_sizes) {
    const at::Tensor& bs = *a.batch_sizes;
    TORCH_CHECK(x.dim() == 2, "packed input must have 2 dimensions [N, I], got ", x.dim());
    TORCH_CHECK(bs.device().is_cpu() && bs.scalar_type() == at::kLong && bs.dim() == 1 && bs.is_contiguous() &&
                    bs.numel() > 0,
                "fused_rnn: batch_sizes must have been through canonical_batch_sizes");
    const int64_t* p = bs.const_data_ptr<int64_t>();
    int64_t total = 0;
    for (int64_t t = 0; t < bs.numel(); ++t) {
      // Only a single all-empty step may be 0 here: canonical_batch_sizes dropped trailing zeros.
      TORCH_CHECK((p[t] > 0 || (p[t] == 0 && bs.numel() == 1)) && (t == 0 || p[t] <= p[t - 1]),
                  "batch_sizes must be non-negative and non-increasing, got ", bs);
      total += p[t];
    }
    // nn.RNN runs with extra rows, but its reverse direction then starts from the wrong rows (it
    // walks the data from its end): an error is the only answer that is never silently wrong.
    TORCH_CHECK(total == x.size(0), "packed input has ", x.size(0), " rows but batch_sizes sum to ", total);
    TORCH_CHECK(a.hx.dim() == 3 && a.hx.size(1) == p[0], "hx must have batch size ", p[0],
                " (batch_sizes[0]), got shape ", a.hx.sizes());
  } else {
    TORCH_CHECK(x.dim() == 3, "input must have 3 dimensions [T, B, I], got ", x.dim());
    TORCH_CHECK(x.size(0) > 0, "Expected sequence length to be larger than 0 in RNN");
  }
  TORCH_CHECK(a.hx.dim() == 3, "hx must have 3 dimensions [L*D, B, H], got ", a.hx.dim());
  const int64_t H = a.hx.size(2);
  const int64_t B = a.batch_sizes ? a.hx.size(1) : x.size(1);
  const std::vector<int64_t> hx_shape{L * D, B, H};
  TORCH_CHECK(a.hx.sizes() == at::IntArrayRef(hx_shape), "Expected hidden size ", at::IntArrayRef(hx_shape),
              ", got ", a.hx.sizes());
  const int64_t per = weights_per_direction(a.has_biases);
  TORCH_CHECK(static_cast<int64_t>(a.weights.size()) == L * D * per, "expected ", L * D * per,
              " weight tensors for num_layers=", L, ", bidirectional=", a.bidirectional, ", bias=", a.has_biases,
              ", got ", a.weights.size());
  auto same = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device() == x.device(), "Input and parameter tensors are not at the same device, found input tensor at ",
                x.device(), " and ", name, " at ", t.device());
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), name, " has dtype ", t.scalar_type(),
                " but input has dtype ", x.scalar_type());
  };
  same(a.hx, "hx");
  for (int64_t l = 0; l < L; ++l) {
    const int64_t in_l = l == 0 ? x.size(-1) : D * H;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t base = (l * D + d) * per;
      const std::vector<std::vector<int64_t>> shapes{{H, in_l}, {H, H}, {H}, {H}};
      for (int64_t w = 0; w < per; ++w) {
        const at::Tensor& t = a.weights[base + w];
        same(t, "a parameter tensor");
        TORCH_CHECK(t.sizes() == at::IntArrayRef(shapes[w]), "weight ", base + w, " (layer ", l, ", direction ", d,
                    ") must have shape ", at::IntArrayRef(shapes[w]), ", got ", t.sizes());
      }
    }
  }
  if (a.dropout_mask) {
    std::vector<int64_t> m_shape(x.sizes().begin(), x.sizes().end());
    m_shape.back() = D * H;
    m_shape.insert(m_shape.begin(), L - 1);
    same(*a.dropout_mask, "dropout_mask");
    TORCH_CHECK(a.dropout_mask->sizes() == at::IntArrayRef(m_shape), "dropout_mask must have shape ",
                at::IntArrayRef(m_shape), ", got ", a.dropout_mask->sizes());
  }
}

void check_rnn_backward_args(const RnnArgs& a, const at::Tensor& grad_output, const at::Tensor& grad_hy,
                             const at::Tensor& output, const at::Tensor& reserve) {
  const int64_t D = a.bidirectional ? 2 : 1;
  std::vector<int64_t> out_shape(a.input.sizes().begin(), a.input.sizes().end());
  out_shape.back() = D * a.hx.size(2);
  TORCH_CHECK(output.sizes() == at::IntArrayRef(out_shape), "output must have shape ", at::IntArrayRef(out_shape),
              ", got ", output.sizes());
  out_shape.insert(out_shape.begin(), a.num_layers - 1);
  TORCH_CHECK(reserve.sizes() == at::IntArrayRef(out_shape), "reserve must have shape ", at::IntArrayRef(out_shape),
              ", got ", reserve.sizes());
  TORCH_CHECK(grad_output.sizes() == output.sizes(), "grad_output must have shape ", output.sizes(), ", got ",
              grad_output.sizes());
  TORCH_CHECK(grad_hy.sizes() == a.hx.sizes(), "grad_hy must have shape ", a.hx.sizes(), ", got ",
              grad_hy.sizes());
  for (const at::Tensor* t : {&grad_output, &grad_hy, &output, &reserve}) {
    TORCH_CHECK(t->device() == a.input.device() && t->scalar_type() == a.input.scalar_type(),
                "rnn_backward: gradients, output and reserve must have input's device and dtype (",
                a.input.device(), ", ", a.input.scalar_type(), "), got ", t->device(), ", ", t->scalar_type());
  }
}

}  // namespace fused_rnn
