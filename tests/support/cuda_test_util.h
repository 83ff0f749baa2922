// What the CUDA tests share: a fixture that skips where the backend has no device (the nvcc build
// on a machine without a GPU), and tensor copies between the host and CUDA device 0 through the
// runtime's blocking copies (independent of Tensor::to, which some tests check).
#pragma once

#include <gtest/gtest.h>

#include <cstddef>

#include "lib/cuda/runtime.h"
#include "lib/tensor.h"

namespace attnlab::cuda_test {

class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device on this machine";
  }
};

// A contiguous copy of host on CUDA device 0.
inline Tensor to_cuda(const Tensor& host) {
  const Tensor c = host.contiguous();
  Tensor d = Tensor::empty(c.shape(), c.dtype(), Device::cuda(0));
  if (c.numel() > 0) cuda::copy_h2d(d.raw_data(), c.raw_data(), static_cast<size_t>(c.numel()) * dtype_size(c.dtype()));
  return d;
}

// A contiguous host copy of dev (a CUDA tensor).
inline Tensor to_host(const Tensor& dev) {
  const Tensor c = dev.contiguous();
  Tensor h = Tensor::empty(c.shape(), c.dtype());
  if (h.numel() > 0) cuda::copy_d2h(h.raw_data(), c.raw_data(), static_cast<size_t>(h.numel()) * dtype_size(c.dtype()));
  return h;
}

}  // namespace attnlab::cuda_test
