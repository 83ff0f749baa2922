// Layer normalisation over the last dim, with biased variance:
//   y = (x - mean) * rstd * weight + bias,   rstd = 1 / sqrt(var + eps),   per row of C elements.
//
// Shapes: x [*, C] (at least 1-D), weight [C], bias [C] or an undefined Variable (no bias, and
// then no bias input in the graph) -> y [*, C]. The R = numel / C leading elements are "rows".
// dtypes: f32, f64 (CPU), all inputs the same dtype. CUDA: f32 (f32 accumulation).
// Saved for backward: x, weight, and per row mean [R] and rstd [R] (in x's dtype).
// Backward (g = dy * weight, xhat = (x - mean) * rstd, means over the row):
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  dweight = sum_rows dy * xhat,
//   dbias = sum_rows dy. The row sums are taken over fixed row blocks combined in order, so they
//   do not depend on the thread count (CPU) and need no atomics (CUDA: two passes).
#pragma once

#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "lib/device.h"

namespace attnlab {

struct LayerNormOp {
  struct Forward {
    Tensor y, mean, rstd;
  };
  struct Grads {
    Tensor dx, dweight, dbias;  // undefined where not asked for
  };

  // bias may be undefined.
  static void check(const Tensor& x, const Tensor& weight, const Tensor& bias);
  // Contiguous inputs.
  static Forward forward(CpuTag, const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);
  static Grads backward(CpuTag, const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                        const Tensor& dy, bool need_dx, bool need_dweight, bool need_dbias);
  static Forward forward(CudaTag, const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);
  static Grads backward(CudaTag, const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                        const Tensor& dy, bool need_dx, bool need_dweight, bool need_dbias);
  static std::vector<OpSample> samples();
  // Larger shapes for the CUDA parity test: every launch shape, ragged edges.
  static std::vector<OpSample> parity_samples();
  static std::vector<OpMisuse> misuses();
};

Variable layer_norm(const Variable& x, const Variable& weight, const Variable& bias, double eps = 1e-5);

}  // namespace attnlab
