// Reductions over dims:
//
//   sum   y = sum of x over the dims         dx = dy, broadcast back over them
//   mean  y = sum / n (n elements per y)     dx = dy / n, broadcast back
//   max   y = max of x over one dim          dx = dy at the first index of the maximum, 0 elsewhere
//
// Shapes: x [*] -> y [*] with each reduced dim removed, or kept as size 1 with keepdim. sum(x)
// and mean(x) reduce every dim to a 0-d tensor. Negative dims count from the end; naming a dim
// twice is an error; an empty dims list reduces nothing (NumPy's axis=()). max propagates NaN
// (the first NaN wins). Any strides.
// dtypes: f32, f64 (f32 sums accumulate in double). CPU: each output summed by one thread in a
// fixed order. CUDA: f32, f64; a fixed reduction tree per shape (no atomics), so results repeat
// bit for bit from run to run.
// Saved for backward: x's shape; for max also the argmax (i32, y's shape with the dim kept).
#pragma once

#include <string_view>
#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "lib/device.h"

namespace attnlab {

enum class ReduceKind { sum, mean, max };

std::string_view reduce_name(ReduceKind kind);

struct ReduceOp {
  // x's shape as [outer, n, inner] around the first reduced dim (max reduces exactly one).
  struct Split {
    int64_t outer = 1, n = 1, inner = 1;
  };
  static Split split(const Shape& shape, const std::vector<bool>& reduce);
  // Which dims of x are reduced (negative dims normalised). max takes exactly one dim.
  static std::vector<bool> check(ReduceKind kind, const Tensor& x, const std::vector<int64_t>& dims);
  // {y} for sum and mean, {y, argmax} for max; reduced dims kept as size 1. max needs x contiguous.
  static std::vector<Tensor> forward(CpuTag, ReduceKind kind, const Tensor& x, const std::vector<bool>& reduce);
  // dx [*x] from dy (reduced dims kept as size 1, contiguous); `argmax` is read by max only.
  static Tensor backward(CpuTag, ReduceKind kind, const Shape& x_shape, const std::vector<bool>& reduce,
                         const Tensor& argmax, const Tensor& dy);
  static std::vector<Tensor> forward(CudaTag, ReduceKind kind, const Tensor& x, const std::vector<bool>& reduce);
  static Tensor backward(CudaTag, ReduceKind kind, const Shape& x_shape, const std::vector<bool>& reduce,
                         const Tensor& argmax, const Tensor& dy);
  static std::vector<OpSample> samples(ReduceKind kind);
  // Larger shapes for the CUDA parity test: several blocks, ragged edges, both kernel forms.
  static std::vector<OpSample> parity_samples(ReduceKind kind);
  static std::vector<OpMisuse> misuses(ReduceKind kind);
};

Variable reduce(ReduceKind kind, const Variable& x, const std::vector<int64_t>& dims, bool keepdim);

Variable sum(const Variable& x);
Variable sum(const Variable& x, const std::vector<int64_t>& dims, bool keepdim = false);
Variable mean(const Variable& x);
Variable mean(const Variable& x, const std::vector<int64_t>& dims, bool keepdim = false);
// Values only.
Variable max(const Variable& x, int64_t dim, bool keepdim = false);

}  // namespace attnlab
