// Layer / direction / dropout loop of the RNN in ATen ops (device agnostic). Per layer:
//   out_l = X_l · [W_ih_0; W_ih_1]ᵀ + [b_0; b_1]      one GEMM for all steps and both directions
//   recurrence (per-device kernel) turns out_l from pre-activations into h_t in place
// and backward, per layer from the top:
//   δ = BPTT kernel; dW_ih = δᵀ X_l, db = Σ δ, dW_hh = δᵀ H_prev, dX = δ W_ih   (single GEMMs)
#include "rnn_stack.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>

#include <array>

#include "h_prev_index.h"
#include "matmul.h"

namespace fused_rnn {

namespace {

const at::Tensor& weight(const RnnArgs& a, int64_t layer, int64_t dir, int64_t which) {
  const int64_t D = a.bidirectional ? 2 : 1;
  return a.weights[(layer * D + dir) * weights_per_direction(a.has_biases) + which];
}

// One layer's weights, concatenated over directions so one GEMM serves both.
struct LayerWeights {
  at::Tensor w_ih;  // [D*H, I_l]
  at::Tensor bias;  // [D*H] = b_ih + b_hh, undefined without biases
  at::Tensor w_hh;  // [D, H, H]
};

LayerWeights layer_weights(const RnnArgs& a, int64_t layer, bool with_bias = true) {
  const int64_t D = a.bidirectional ? 2 : 1;
  std::vector<at::Tensor> w_ih, bias, w_hh;
  for (const auto d : c10::irange(D)) {
    w_ih.push_back(weight(a, layer, d, 0));
    w_hh.push_back(weight(a, layer, d, 1));
    if (a.has_biases && with_bias) bias.push_back(weight(a, layer, d, 2) + weight(a, layer, d, 3));
  }
  LayerWeights lw;
  // One direction: views, no copies (this runs on every call, and tiny RNNs are overhead-bound).
  lw.w_ih = D == 1 ? w_ih[0].contiguous() : at::cat(w_ih, 0);
  lw.w_hh = D == 1 ? w_hh[0].contiguous().unsqueeze(0) : at::stack(w_hh, 0);
  if (!bias.empty()) lw.bias = D == 1 ? bias[0] : at::cat(bias, 0);
  return lw;
}

// Rows [layer*D, (layer+1)*D) of a [L*D, B, H] state; the tensor itself when there is one layer.
at::Tensor layer_state(const at::Tensor& t, int64_t layer, int64_t D) {
  return t.size(0) == D ? t : t.narrow(0, layer * D, D);
}

std::vector<int64_t> with_last(at::IntArrayRef sizes, int64_t last) {
  std::vector<int64_t> v(sizes.begin(), sizes.end());
  v.back() = last;
  return v;
}

// The input of layer l as a [N, I_l] matrix: the data for layer 0, else the layer below after dropout.
at::Tensor layer_input(const at::Tensor& x, const at::Tensor& reserve, const at::Tensor& mask,
                       int64_t layer, int64_t n, int64_t dh) {
  if (layer == 0) return x;
  at::Tensor below = reserve[layer - 1].view({n, dh});
  return mask.defined() ? below * mask[layer - 1].view({n, dh}) : below;
}

// Puts a packed call's step table on the device, once per call (StepLayout::table), where the
// kernels upload it (CUDA: without a host synchronisation, graph-capturable); the CPU kernels read
// the host vectors.
void attach_step_table(StepLayout& lay, const RecurrenceKernels& k, at::Device device) {
  if (!lay.uniform() && k.upload != nullptr) lay.table = k.upload(lay.host_table(), device);
}

// dW_hh of one direction = Σ_t δ_tᵀ h_prev_t, with h_prev_t the state the step read.
// delta, y: [N, H] (strided column slices); h0: [B, H]; packed: index = h_prev_index(lay, reverse).
at::Tensor grad_w_hh(const StepLayout& lay, const at::Tensor& delta, const at::Tensor& y, const at::Tensor& h0,
                     bool reverse, const at::Tensor& index, GemmFn gemm) {
  const int64_t N = lay.rows(), B = lay.B;
  if (lay.uniform()) {
    // Forward reads h0 at t = 0 and y_{t-1} after; reverse reads h0 at t = T-1 and y_{t+1} before.
    const at::Tensor d_first = reverse ? delta.narrow(0, N - B, B) : delta.narrow(0, 0, B);
    const at::Tensor d_rest = reverse ? delta.narrow(0, 0, N - B) : delta.narrow(0, B, N - B);
    const at::Tensor y_rest = reverse ? y.narrow(0, B, N - B) : y.narrow(0, 0, N - B);
    const at::Tensor g = matmul(gemm, d_first.t(), h0);
    matmul_into(gemm, g, d_rest.t(), y_rest, g);
    return g;
  }
  return matmul(gemm, delta.t(), at::cat({y, h0}, 0).index_select(0, index));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_forward_stack(const RnnArgs& a, const RecurrenceKernels& k) {
  const int64_t L = a.num_layers, D = a.bidirectional ? 2 : 1, H = a.hx.size(2), B = a.hx.size(1);
  const at::Tensor hx = a.hx.contiguous();
  const at::Tensor x = a.batch_sizes ? a.input.contiguous() : a.input.reshape({-1, a.input.size(-1)}).contiguous();
  const at::Tensor bs = a.batch_sizes ? *a.batch_sizes : at::Tensor();
  const at::Tensor mask = a.dropout_mask ? a.dropout_mask->contiguous() : at::Tensor();
  const int64_t N = x.size(0);
  StepLayout lay(bs, N, B);
  attach_step_table(lay, k, x.device());

  const auto out_shape = with_last(a.input.sizes(), D * H);
  auto reserve_shape = out_shape;
  reserve_shape.insert(reserve_shape.begin(), L - 1);
  at::Tensor output = at::empty(out_shape, a.input.options());
  at::Tensor reserve = at::empty(reserve_shape, a.input.options());
  at::Tensor hy = at::empty_like(hx);

  const int64_t per_layer = D * weights_per_direction(a.has_biases);
  for (const auto l : c10::irange(L)) {
    const at::Tensor in = layer_input(x, reserve, mask, l, N, D * H);
    at::Tensor out = (l == L - 1 ? output : reserve[l]).view({N, D * H});
    const bool projected = k.small_projection != nullptr &&
                           k.small_projection(out, in, a.weights.slice(l * per_layer, per_layer), D, a.has_biases);
    const LayerWeights lw = layer_weights(a, l, /*with_bias=*/!projected);
    if (!projected) matmul_into(k.gemm, out, in, lw.w_ih.t(), lw.bias);
    k.forward(out, layer_state(hx, l, D), lw.w_hh, lay, a.relu, layer_state(hy, l, D));
  }
  return {output, hy, reserve};
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> rnn_backward_stack(
    const RnnArgs& a, const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& output,
    const at::Tensor& reserve, const RecurrenceKernels& k) {
  const int64_t L = a.num_layers, D = a.bidirectional ? 2 : 1, H = a.hx.size(2), B = a.hx.size(1);
  const at::Tensor hx = a.hx.contiguous();
  const at::Tensor ghy = grad_hy.contiguous();
  const at::Tensor x = a.batch_sizes ? a.input.contiguous() : a.input.reshape({-1, a.input.size(-1)}).contiguous();
  const at::Tensor bs = a.batch_sizes ? *a.batch_sizes : at::Tensor();
  const at::Tensor mask = a.dropout_mask ? a.dropout_mask->contiguous() : at::Tensor();
  const int64_t N = x.size(0);
  StepLayout lay(bs, N, B);
  attach_step_table(lay, k, x.device());
  const int64_t per_layer = D * weights_per_direction(a.has_biases);
  std::array<at::Tensor, 2> h_prev;  // packed: h_prev_index per direction, built at first use

  at::Tensor grad_hx = at::empty_like(hx);
  std::vector<at::Tensor> grad_weights(a.weights.size());
  // δ of the current layer, [N, D*H]; starts as dL/d(output) and is overwritten in place by BPTT.
  at::Tensor dpre = grad_output.reshape({N, D * H}).clone(at::MemoryFormat::Contiguous);
  at::Tensor grad_input;

  for (int64_t l = L - 1; l >= 0; --l) {
    const LayerWeights lw = layer_weights(a, l, /*with_bias=*/false);
    const at::Tensor y = (l == L - 1 ? output : reserve[l]).reshape({N, D * H});
    const at::Tensor in = layer_input(x, reserve, mask, l, N, D * H);
    k.backward(dpre, y, layer_state(ghy, l, D), lw.w_hh, lay, a.relu, layer_state(grad_hx, l, D));

    at::Tensor dx;  // [N, I_l]
    at::Tensor* grads = grad_weights.data() + l * per_layer;
    if (k.small_layer_grads == nullptr ||
        !k.small_layer_grads(dpre, in, y, layer_state(hx, l, D), lay, a.weights.slice(l * per_layer, per_layer), D,
                             a.has_biases, grads, dx)) {
      const at::Tensor dw_ih = matmul(k.gemm, dpre.t(), in);              // [D*H, I_l]
      const at::Tensor db = a.has_biases ? dpre.sum(0) : at::Tensor();  // [D*H]
      for (const auto d : c10::irange(D)) {
        at::Tensor* g = grads + d * weights_per_direction(a.has_biases);
        const at::Tensor delta_d = dpre.narrow(1, d * H, H);
        // Gradients are returned as separate tensors (op outputs may not alias each other).
        g[0] = D == 1 ? dw_ih : dw_ih.narrow(0, d * H, H).clone();
        if (!lay.uniform() && !h_prev[d].defined()) h_prev[d] = h_prev_index(lay, d == 1);
        g[1] = grad_w_hh(lay, delta_d, y.narrow(1, d * H, H), hx[l * D + d], d == 1, h_prev[d], k.gemm);
        if (a.has_biases) {
          g[2] = D == 1 ? db : db.narrow(0, d * H, H).clone();
          g[3] = db.narrow(0, d * H, H).clone();
        }
      }
      dx = matmul(k.gemm, dpre, lw.w_ih);
    }
    if (l > 0) {
      dpre = mask.defined() ? dx.mul_(mask[l - 1].view({N, D * H})) : dx;
    } else {
      grad_input = dx.view(a.input.sizes());
    }
  }
  return {grad_input, grad_hx, grad_weights};
}

}  // namespace fused_rnn
