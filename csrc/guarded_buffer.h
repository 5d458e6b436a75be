// A flat CPU tensor between guard bands, for the CUDA kernels' CPU execution in tests
// (*_kernel_on_cpu.cpp): the kernel gets inner()'s pointer, and check() fails if it wrote to either
// band.
#pragma once

#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace fused_rnn {

class GuardedBuffer {
 public:
  // numel elements of dtype, filled with fill, between bands of kGuard elements.
  GuardedBuffer(int64_t numel, at::ScalarType dtype, double fill) : n_(numel) {
    all_ = at::full({numel + 2 * kGuard}, kGuardValue, at::TensorOptions().dtype(dtype));
    inner().fill_(fill);
  }
  at::Tensor inner() const { return all_.narrow(0, kGuard, n_); }
  void* data() const { return inner().data_ptr(); }
  void check(const char* kernel, const char* name) const {
    const at::Tensor bands = at::cat({all_.narrow(0, 0, kGuard), all_.narrow(0, kGuard + n_, kGuard)});
    TORCH_CHECK(bands.eq(kGuardValue).all().item<bool>(), kernel, " on the CPU: wrote outside ", name);
  }

 private:
  static constexpr int64_t kGuard = 64;
  static constexpr double kGuardValue = -7.25;  // exact in every floating dtype
  at::Tensor all_;
  int64_t n_;
};

}  // namespace fused_rnn
