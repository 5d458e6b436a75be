// The CPU registration of the ops: checks, then the device-agnostic stack (rnn_stack.h) over the CPU
// recurrence kernels (recurrence_cpu.h), or over the per-step GEMM path when the switch asks for it.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/recurrence_cpu.h"
#include "recurrence_gemm.h"
#include "rnn_stack.h"
#include "switches.h"

namespace fused_rnn {
namespace {

const RecurrenceKernels kCpuFusedKernels{recurrence_forward_cpu, recurrence_backward_cpu, small_projection_cpu,
                                         small_layer_grads_cpu};
// The per-step GEMM path with ATen's products (no device GEMM).
void forward_gemm_cpu(const at::Tensor& out, const at::Tensor& h0, const at::Tensor& w_hh, const StepLayout& lay,
                      bool relu, const at::Tensor& hy) {
  recurrence_forward_gemm(out, h0, w_hh, lay, relu, hy, /*gemm=*/nullptr);
}
void backward_gemm_cpu(const at::Tensor& dpre, const at::Tensor& y, const at::Tensor& ghy, const at::Tensor& w_hh,
                       const StepLayout& lay, bool relu, const at::Tensor& dh0) {
  recurrence_backward_gemm(dpre, y, ghy, w_hh, lay, relu, dh0, /*gemm=*/nullptr);
}

const RecurrenceKernels kCpuGemmKernels{forward_gemm_cpu, backward_gemm_cpu};

// FUSED_RNN_CPU_REGIME=gemm runs what the CUDA build runs for large steps on the CPU: the per-step
// GEMM recurrence (recurrence_gemm.cpp) and the stack's ATen projection and gradients at every size
// (no tiny-layer loops), so that the CPU test suite checks that device-agnostic path against nn.RNN.
// Unset or anything else: the fused CPU kernel and, for tiny layers, small_layer_cpu.cpp's loops.
const RecurrenceKernels& cpu_kernels() {
  return switches::cpu_regime() == switches::CpuRegime::Gemm ? kCpuGemmKernels : kCpuFusedKernels;
}

// The CPU kernels compute in float32 or float64; float16/bfloat16 run in float32 and are rounded
// back at the end (what nn.RNN's CPU path effectively does step by step).
bool needs_upcast(const at::Tensor& t) { return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16; }
at::Tensor to_float32(const at::Tensor& t) { return t.defined() ? t.to(at::kFloat) : t; }
std::optional<at::Tensor> to_float32(const std::optional<at::Tensor>& t) {
  return t ? std::optional<at::Tensor>(to_float32(*t)) : std::nullopt;
}
std::vector<at::Tensor> to_float32(at::TensorList ts) {
  std::vector<at::Tensor> v;
  for (const auto& t : ts) v.push_back(to_float32(t));
  return v;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_forward_cpu(
    const at::Tensor& input, const at::Tensor& hx, at::TensorList weights, const std::optional<at::Tensor>& batch_sizes,
    const std::optional<at::Tensor>& dropout_mask, int64_t num_layers, bool bidirectional, bool relu, bool has_biases) {
  const CheckedRnnArgs checked(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional, relu,
                                has_biases);
  const RnnArgs& a = checked.args;
  if (!needs_upcast(input)) return rnn_forward_stack(a, cpu_kernels());
  const auto x = to_float32(input), h = to_float32(hx);
  const auto w = to_float32(weights);
  const auto m = to_float32(dropout_mask);
  auto [out, hy, reserve] =
      rnn_forward_stack({x, h, w, checked.batch_sizes, m, num_layers, bidirectional, relu, has_biases}, cpu_kernels());
  const auto dt = input.scalar_type();
  return {out.to(dt), hy.to(dt), reserve.to(dt)};
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> rnn_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input, const at::Tensor& hx,
    at::TensorList weights, const std::optional<at::Tensor>& batch_sizes, const std::optional<at::Tensor>& dropout_mask,
    const at::Tensor& output, const at::Tensor& reserve, int64_t num_layers, bool bidirectional, bool relu,
    bool has_biases) {
  const CheckedRnnArgs checked(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional, relu,
                                has_biases);
  const RnnArgs& a = checked.args;
  check_rnn_backward_args(a, grad_output, grad_hy, output, reserve);
  if (!needs_upcast(input)) return rnn_backward_stack(a, grad_output, grad_hy, output, reserve, cpu_kernels());
  const auto x = to_float32(input), h = to_float32(hx);
  const auto w = to_float32(weights);
  const auto m = to_float32(dropout_mask);
  auto [gi, ghx, gw] = rnn_backward_stack({x, h, w, checked.batch_sizes, m, num_layers, bidirectional, relu, has_biases},
                                          to_float32(grad_output), to_float32(grad_hy), to_float32(output), to_float32(reserve), cpu_kernels());
  const auto dt = input.scalar_type();
  for (auto& g : gw) g = g.to(dt);
  return {gi.to(dt), ghx.to(dt), gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("rnn_forward", &rnn_forward_cpu);
  m.impl("rnn_backward", &rnn_backward_cpu);
}

}  // namespace fused_rnn
