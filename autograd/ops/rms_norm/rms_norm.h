// RMS normalisation over the last dim:
//   y = x * rstd * weight,   rstd = 1 / sqrt(mean(x^2) + eps),   per row of C elements.
//
// Shapes: x [*, C] (at least 1-D), weight [C] -> y [*, C]. The R = numel / C leading elements
// are "rows". dtypes: f32, f64 (CPU), x and weight the same dtype. CUDA: f32 (f32 accumulation).
// Saved for backward: x, weight, and rstd [R] per row (in x's dtype).
// Backward (g = dy * weight, xhat = x * rstd, mean over the row):
//   dx = rstd * (g - xhat * mean(g * xhat)),  dweight = sum_rows dy * xhat.
//   (d rstd / d x_i = -rstd^3 x_i / C, so dx_i = rstd g_i - rstd^3 x_i / C * sum_j g_j x_j.)
//   The row sums are taken over fixed row blocks combined in order, so they do not depend on the
//   thread count (CPU) and need no atomics (CUDA: two passes).
#pragma once

#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "lib/device.h"

namespace attnlab {

struct RmsNormOp {
  struct Forward {
    Tensor y, rstd;
  };
  struct Grads {
    Tensor dx, dweight;  // undefined where not asked for
  };

  static void check(const Tensor& x, const Tensor& weight);
  // Contiguous inputs.
  static Forward forward(CpuTag, const Tensor& x, const Tensor& weight, double eps);
  static Grads backward(CpuTag, const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                        bool need_dx, bool need_dweight);
  static Forward forward(CudaTag, const Tensor& x, const Tensor& weight, double eps);
  static Grads backward(CudaTag, const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                        bool need_dx, bool need_dweight);
  static std::vector<OpSample> samples();
  // Larger shapes for the CUDA parity test: every launch shape, ragged edges.
  static std::vector<OpSample> parity_samples();
  static std::vector<OpMisuse> misuses();
};

Variable rms_norm(const Variable& x, const Variable& weight, double eps = 1e-6);

}  // namespace attnlab
