// L2 normalisation over the last dim (KDA applies it to q and k), in exactly this form:
//   y = x / sqrt(sum(x^2) + eps)        (eps inside the square root, added to the sum of squares)
// per row of C elements; a zero row gives y = 0.
//
// Shapes: x [*, C] (at least 1-D) -> y [*, C]. The R = numel / C leading elements are "rows".
// dtypes: f32, f64 (CPU). CUDA: f32 (f32 accumulation).
// Saved for backward: y and rinv = 1 / sqrt(sum(x^2) + eps) per row, [R] in x's dtype.
// Backward: dx = (dy - y * sum(dy * y)) / sqrt(sum(x^2) + eps) = rinv * (dy - y * sum(dy * y)),
// from dy_i/dx_j = rinv (delta_ij - y_i y_j).
#pragma once

#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "lib/device.h"

namespace attnlab {

struct L2NormalizeOp {
  struct Forward {
    Tensor y, rinv;
  };

  static void check(const Tensor& x);
  // Contiguous inputs.
  static Forward forward(CpuTag, const Tensor& x, double eps);
  static Tensor backward(CpuTag, const Tensor& y, const Tensor& rinv, const Tensor& dy);
  static Forward forward(CudaTag, const Tensor& x, double eps);
  static Tensor backward(CudaTag, const Tensor& y, const Tensor& rinv, const Tensor& dy);
  static std::vector<OpSample> samples();
  // Larger shapes for the CUDA parity test: every launch shape, ragged edges.
  static std::vector<OpSample> parity_samples();
  static std::vector<OpMisuse> misuses();
};

Variable l2_normalize(const Variable& x, double eps = 1e-6);

}  // namespace attnlab
