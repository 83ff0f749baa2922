// Inclusive cumulative sum along one dim, and its adjoint, the reverse cumulative sum:
//   y[.., i, ..] = sum_{k <= i} x[.., k, ..]        dx[.., i, ..] = sum_{k >= i} dy[.., k, ..]
// Shapes: x [*] -> y [*]; dim any, negative counts from the end (a 0-d x acts as [1]).
// dtypes: f32, f64; running sums are kept in double. CUDA: f32, f64 (deterministic, no atomics).
// Saved for backward: nothing but the dim.
#pragma once

#include <cstdint>
#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "lib/device.h"

namespace attnlab {

struct CumsumOp {
  // Returns dim mapped into [0, max(ndim, 1)).
  static int64_t check(const Tensor& x, int64_t dim);
  // x contiguous, dim already mapped by check.
  static Tensor forward(CpuTag, const Tensor& x, int64_t dim);
  static Tensor backward(CpuTag, const Tensor& dy, int64_t dim);
  static Tensor forward(CudaTag, const Tensor& x, int64_t dim);
  static Tensor backward(CudaTag, const Tensor& dy, int64_t dim);
  static std::vector<OpSample> samples();
  // Larger shapes for the CUDA parity test: both kernel forms, several tiles and blocks.
  static std::vector<OpSample> parity_samples();
  static std::vector<OpMisuse> misuses();
};

Variable cumsum(const Variable& x, int64_t dim);

}  // namespace attnlab
