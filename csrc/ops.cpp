// The op schemas, defined once. Each device registers its kernels beside its own code:
// csrc/cpu/ops_cpu.cpp, csrc/cuda/recurrence_cuda.cu; the autograd and vmap kernels are in
// csrc/autograd.cpp, the fake (meta) kernels in fused_rnn/ops.py.
#include <torch/library.h>

namespace fused_rnn {

TORCH_LIBRARY(fused_rnn, m) {
  // input [T, B, I] or packed [N, I] with batch_sizes [T]; hx [L*D, B, H]; weights in nn.RNN order;
  // dropout_mask [L-1, *input.shape[:-1], D*H], pre-scaled. Returns output, hy and the reserve
  // (outputs of layers 0..L-2) that rnn_backward needs.
  m.def("rnn_forward(Tensor input, Tensor hx, Tensor[] weights, Tensor? batch_sizes, Tensor? dropout_mask, "
        "int num_layers, bool bidirectional, bool relu, bool has_biases) -> (Tensor output, Tensor hy, Tensor reserve)");
  m.def("rnn_backward(Tensor grad_output, Tensor grad_hy, Tensor input, Tensor hx, Tensor[] weights, "
        "Tensor? batch_sizes, Tensor? dropout_mask, Tensor output, Tensor reserve, int num_layers, "
        "bool bidirectional, bool relu, bool has_biases) -> (Tensor grad_input, Tensor grad_hx, Tensor[] grad_weights)");
}

}  // namespace fused_rnn
