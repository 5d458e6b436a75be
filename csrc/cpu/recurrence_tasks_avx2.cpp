// The CPU recurrence's task loops (recurrence_task_body.h) compiled for AVX2+FMA, chosen at run
// time where the CPU has both (recurrence_cpu.cpp). Every function defined in this file is
// compiled for that target, the inline helpers of simd.h included: a target attribute on the
// task functions alone leaves the helpers lowered for the baseline ISA before they are inlined
// (the broadcast in the GEMM tile then became a scalar load + vinsertps chain, a third slower:
// benchmarks/cpu_notes.md). Every header with code outside the
// FUSED_RNN_CPU_ISA namespace (the standard library, ATen, blas.h, the shared task and layout
// headers) comes first, outside the target region, so the inline code it defines stays baseline
// and identical to the other files' copies.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/blas.h"
#include "cpu/panel_layout.h"
#include "cpu/recurrence_task.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#define FUSED_RNN_CPU_ISA avx2
#include "cpu/recurrence_task_body.h"

namespace fused_rnn::cpu::avx2 {
bool compiled() { return true; }
}  // namespace fused_rnn::cpu::avx2

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else  // no AVX2 build here: the dispatcher in recurrence_cpu.cpp sees compiled() == false

namespace fused_rnn::cpu::avx2 {
bool compiled() { return false; }
template <typename T>
void forward_task(const Task<T>&) {}
template <typename T>
void backward_task(const Task<T>&) {}
template void forward_task<float>(const Task<float>&);
template void forward_task<double>(const Task<double>&);
template void backward_task<float>(const Task<float>&);
template void backward_task<double>(const Task<double>&);
}  // namespace fused_rnn::cpu::avx2

#endif
