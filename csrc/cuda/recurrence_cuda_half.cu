// float16 / bfloat16 instantiations of the recurrence kernels (fp32 accumulation and fp32 state on
// chip); a translation unit of its own so that it compiles in parallel with recurrence_cuda.cu.
#include "cuda/recurrence_launch.cuh"

namespace fused_rnn {
namespace cuda {

template void launch_recurrence<c10::Half>(const RecParams&, at::Device, cudaStream_t);
template void launch_recurrence<c10::BFloat16>(const RecParams&, at::Device, cudaStream_t);

}  // namespace cuda
}  // namespace fused_rnn
