// CUDA recurrence entry points (recurrence.h contract) and the CUDA registration of the ops.
// The kernels and the regime choice live in recurrence_kernel.cuh; this file fills the params
// struct once per call, dispatches on dtype and instantiates the float/double launchers.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

#include "cuda/recurrence_cuda.h"
#include "cuda/recurrence_kernel.cuh"
#include "column_major_gemm.h"
#include "cuda/resident_layout.h"
#include "cuda/cublas_gemm.h"
#include "cuda/gemm_steps_half.h"
#include "cuda/upload_by_value.h"
#include "recurrence_gemm.h"
#include "rnn_stack.h"
#include "switches.h"

namespace fused_rnn {
namespace cuda {
template void launch_recurrence<float>(const RecParams&, at::Device, cudaStream_t);
template void launch_recurrence<double>(const RecParams&, at::Device, cudaStream_t);
// Instantiated in recurrence_cuda_half.cu: not again here, where the dtype dispatch below calls them.
extern template void launch_recurrence<c10::Half>(const RecParams&, at::Device, cudaStream_t);
extern template void launch_recurrence<c10::BFloat16>(const RecParams&, at::Device, cudaStream_t);
}  // namespace cuda

namespace {

// nn.RNN's TF32 rule for float32 on CUDA: cuDNN's RNN flag (torch.backends.cudnn.rnn.fp32_precision,
// which the legacy torch.backends.cudnn.allow_tf32 sets together with the convolution flag). Asked
// per operator: the operator-less query throws once a user sets the RNN and convolution flags apart,
// where nn.RNN runs on.
bool rnn_allows_tf32() { return at::globalContext().allowTF32CuDNN(at::Float32Op::RNN); }

void check_buffers(std::initializer_list<const at::Tensor*> ts, const at::Tensor& ref) {
  for (const at::Tensor* t : ts) {
    if (!t->defined()) continue;
    TORCH_CHECK(t->is_contiguous(), "fused_rnn: internal buffers must be contiguous");
    TORCH_CHECK(t->device() == ref.device() && t->scalar_type() == ref.scalar_type(),
                "fused_rnn: recurrence buffers must share device and dtype");
  }
}

// The SM-resident regimes (opt-in, FUSED_RNN_CUDA_REGIME=resident, until a GPU run validates them):
// the tensor-core kernel for float16 and bfloat16, and for float32 where TF32 is allowed
// (torch.backends.cudnn.allow_tf32, nn.RNN's rule); the FFMA kernel for float32 otherwise. False
// (nothing launched) where they do not apply.
bool launch_resident_regime(const cuda::RecParams& p, at::ScalarType st, cudaStream_t stream) {
  const cuda::DeviceInfo dev = cuda::device_info();
  const bool clusters = dev.major >= 9;
  const bool tf32 = st == at::kFloat && rnn_allows_tf32();
  if ((st == at::kHalf || st == at::kBFloat16 || tf32) && cuda::launch_resident_mma(p, st, clusters, stream)) {
    return true;
  }
  // float32 beyond the TF32 kernel's sizes, or with TF32 off: the FFMA kernel (IEEE fp32 is
  // allowed wherever TF32 is), in clusters on sm_90.
  return st == at::kFloat && cuda::launch_resident(p, dev.sms, clusters, stream);
}

// One layer's recurrence through the persistent kernels (recurrence_kernel.cuh).
// buf [N, D*H] (out or dpre), y [N, D*H] or undefined, h_in/h_out [D, B, H], w_hh [D, H, H].
void launch_layer(const at::Tensor& buf, const at::Tensor& y, const at::Tensor& h_in, const at::Tensor& w_hh,
                  const StepLayout& lay, bool relu, const at::Tensor& h_out, bool backward) {
  check_buffers({&buf, &y, &h_in, &w_hh, &h_out}, buf);
  const int64_t D = w_hh.size(0), H = w_hh.size(2), B = h_in.size(1), N = buf.size(0);
  if (B == 0 || H == 0 || N == 0) return;
  const c10::cuda::CUDAGuard guard(buf.device());
  const int64_t T = lay.T;
  TORCH_CHECK(lay.uniform() || (lay.table.defined() && lay.table.device() == buf.device()),
              "fused_rnn: internal error: a packed layout must carry its step table on the buffers' device");
  cuda::RecParams p{buf.data_ptr(), y.defined() ? y.data_ptr() : nullptr, h_in.data_ptr(), h_out.data_ptr(),
                    w_hh.data_ptr(), lay.uniform() ? nullptr : lay.table.const_data_ptr<int64_t>(), nullptr,
                    T, B, H, D, relu, backward};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  if (switches::cuda_regime() == switches::CudaRegime::Resident && launch_resident_regime(p, buf.scalar_type(), stream)) {
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, buf.scalar_type(), "fused_rnn_recurrence_cuda", [&] {
    cuda::launch_recurrence<scalar_t>(p, buf.device(), stream);
  });
}

// RecurrenceKernels::gemm: float32 on TF32 through cuBLAS directly (cublas_gemm.cu) where
// FUSED_RNN_CUDA_GEMM_TF32=rnn asks for nn.RNN's rule, cuDNN's RNN flag allows TF32 and
// torch.backends.cuda.matmul does not (where it does, ATen's own GEMM is TF32 already). Every other
// product is left to ATen.
bool gemm_cuda(const at::Tensor& c, const at::Tensor& a, const at::Tensor& b, const at::Tensor& addend) {
  if (c.scalar_type() != at::kFloat || switches::cuda_gemm_tf32() != switches::CudaGemmTf32::Rnn ||
      !rnn_allows_tf32() || at::globalContext().allowTF32CuBLAS() || !column_major_gemm(c, a, b)) {
    return false;
  }
  // A bias goes into c first, for β = 1. Should cuBLAS's entry point be missing after all (false),
  // ATen's addmm_out still writes all of c = bias + a·b, whatever c holds.
  if (addend.defined() && !addend.is_same(c)) c.copy_(addend.expand_as(c));
  return cuda::cublas_gemm(c, a, b, addend.defined() ? 1.0f : 0.0f);
}

// The per-step GEMM recurrence instead of the persistent kernel: float32 and float64 steps of at
// least kGemmRecurrenceMinWork multiply-adds (B·H²), where cuBLAS's tiled GEMM is faster than the
// kernel's per-CTA mat-vec (recurrence_gemm.cpp). The FUSED_RNN_CUDA_REGIME switch: gemm forces it
// for every dtype, grid or step rule it out, resident rules it out where a resident kernel applies.
// float16/bfloat16 take it only when forced (opt-in until a GPU run measures where it wins), in
// gemm_steps_half.cu: fp32 products and activations, each value rounded to the half type once.
bool use_gemm_recurrence(const at::Tensor& buf, int64_t B, int64_t H) {
  const at::ScalarType st = buf.scalar_type();
  const bool half = st == at::kHalf || st == at::kBFloat16;
  if (st != at::kFloat && st != at::kDouble && !half) return false;
  switch (switches::cuda_regime()) {
    case switches::CudaRegime::Gemm: return true;
    case switches::CudaRegime::Grid:
    case switches::CudaRegime::Step: return false;
    case switches::CudaRegime::Resident:
      if (half || (st == at::kFloat && H <= resident::kMaxHidden)) return false;
      return B * H * H >= kGemmRecurrenceMinWork;
    default: return !half && B * H * H >= kGemmRecurrenceMinWork;
  }
}

}  // namespace

void recurrence_forward_cuda(const at::Tensor& out, const at::Tensor& h0, const at::Tensor& w_hh,
                             const StepLayout& lay, bool relu, const at::Tensor& hy) {
  if (use_gemm_recurrence(out, h0.size(1), w_hh.size(2))) {
    const c10::cuda::CUDAGuard guard(out.device());
    if (!cuda::gemm_steps_half_forward(out, h0, w_hh, lay, relu, hy)) {
      recurrence_forward_gemm(out, h0, w_hh, lay, relu, hy, gemm_cuda);
    }
    switches::record_cuda_regime("gemm");
    return;
  }
  launch_layer(out, at::Tensor(), h0, w_hh, lay, relu, hy, /*backward=*/false);
}

void recurrence_backward_cuda(const at::Tensor& dpre, const at::Tensor& y, const at::Tensor& ghy,
                              const at::Tensor& w_hh, const StepLayout& lay, bool relu, const at::Tensor& dh0) {
  if (use_gemm_recurrence(dpre, ghy.size(1), w_hh.size(2))) {
    const c10::cuda::CUDAGuard guard(dpre.device());
    if (!cuda::gemm_steps_half_backward(dpre, y, ghy, w_hh, lay, relu, dh0)) {
      recurrence_backward_gemm(dpre, y, ghy, w_hh, lay, relu, dh0, gemm_cuda);
    }
    switches::record_cuda_regime("gemm");
    return;
  }
  launch_layer(dpre, y, ghy, w_hh, lay, relu, dh0, /*backward=*/true);
}

namespace {

const RecurrenceKernels kCudaKernels{recurrence_forward_cuda, recurrence_backward_cuda, nullptr, nullptr,
                                     cuda::upload_by_value, gemm_cuda};

// float32 follows cuDNN's RNN TF32 flag (rnn_allows_tf32), the switch nn.RNN obeys: where it forbids TF32,
// the stack's cuBLAS GEMMs are held to IEEE fp32 as well (a thread-local guard; no global state is
// touched). The recurrence kernels always use fp32 FMA.
struct CudnnTf32Rule {
  std::optional<at::NoTF32Guard> no_tf32;
  CudnnTf32Rule() {
    if (!rnn_allows_tf32()) no_tf32.emplace();
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_forward_cuda(
    const at::Tensor& input, const at::Tensor& hx, at::TensorList weights, const std::optional<at::Tensor>& batch_sizes,
    const std::optional<at::Tensor>& dropout_mask, int64_t num_layers, bool bidirectional, bool relu, bool has_biases) {
  const CheckedRnnArgs checked(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional, relu,
                                has_biases);
  const RnnArgs& a = checked.args;
  const c10::cuda::CUDAGuard guard(input.device());
  const CudnnTf32Rule tf32;
  return rnn_forward_stack(a, kCudaKernels);
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> rnn_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input, const at::Tensor& hx,
    at::TensorList weights, const std::optional<at::Tensor>& batch_sizes, const std::optional<at::Tensor>& dropout_mask,
    const at::Tensor& output, const at::Tensor& reserve, int64_t num_layers, bool bidirectional, bool relu,
    bool has_biases) {
  const CheckedRnnArgs checked(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional, relu,
                                has_biases);
  const RnnArgs& a = checked.args;
  check_rnn_backward_args(a, grad_output, grad_hy, output, reserve);
  const c10::cuda::CUDAGuard guard(input.device());
  const CudnnTf32Rule tf32;
  return rnn_backward_stack(a, grad_output, grad_hy, output, reserve, kCudaKernels);
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CUDA, m) {
  m.impl("rnn_forward", &rnn_forward_cuda);
  m.impl("rnn_backward", &rnn_backward_cuda);
}

}  // namespace fused_rnn
