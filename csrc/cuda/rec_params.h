// The parameters every CUDA recurrence kernel reads, filled once per call by recurrence_cuda.cu
// (element pointers of the contiguous tensors of recurrence.h).
#pragma once

#include <cstdint>

namespace fused_rnn {
namespace cuda {

struct RecParams {
  void* buf;              // out (forward) or dpre (BPTT)   [N, D*H]  in place
  const void* y;          // BPTT: forward output            [N, D*H]  (null in the forward)
  const void* h_in;       // forward: h0, BPTT: ghy          [D, B, H]
  void* h_out;            // forward: hy, BPTT: dh0          [D, B, H]
  const void* w;          // w_hh                            [D, H, H]
  const int64_t* steps;   // packed: device [2(T+1)] = batch[0..T], offset[0..T]; null when uniform
  void* scratch;          // Grid/Step: acc_t [2 + backward][D][B][H] (set by the launcher)
  int64_t T, B, H, D;
  bool relu, backward;
};

}  // namespace cuda
}  // namespace fused_rnn
