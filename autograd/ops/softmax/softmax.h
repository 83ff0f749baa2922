// Softmax over the last dim, plain and in log space. The row max m is subtracted before
// exponentiating, so large logits never overflow:
//   softmax      y_i = exp(x_i - m) / sum_j exp(x_j - m)       dx = y * (dy - sum(dy * y))
//   log_softmax  y_i = x_i - m - log sum_j exp(x_j - m)        dx = dy - exp(y) * sum(dy)
// Shapes: x [*, N] (at least 1-d) -> y [*, N]; every row of N is independent.
// dtypes: f32, f64 (CPU; row sums accumulate in double); CUDA: f32 (f32 accumulation).
// Saved for backward: y only (both derivatives are functions of the output).
#pragma once

#include <string_view>
#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "lib/device.h"

namespace attnlab {

// `log` picks log_softmax over softmax throughout.
struct SoftmaxOp {
  static std::string_view name(bool log);
  static void check(bool log, const Tensor& x);
  static Tensor forward(CpuTag, bool log, const Tensor& x);
  static Tensor backward(CpuTag, bool log, const Tensor& y, const Tensor& dy);
  static Tensor forward(CudaTag, bool log, const Tensor& x);
  static Tensor backward(CudaTag, bool log, const Tensor& y, const Tensor& dy);
  static std::vector<OpSample> samples(bool log);
  // Larger shapes for the CUDA parity test: every launch shape, ragged edges.
  static std::vector<OpSample> parity_samples(bool log);
  static std::vector<OpMisuse> misuses(bool log);
};

Variable softmax(const Variable& x);
Variable log_softmax(const Variable& x);

}  // namespace attnlab
