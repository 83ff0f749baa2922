// Shape ops: y is x's elements seen through another shape or order, sharing x's storage
// (reshape and contiguous copy only when no view exists). The gradient goes back through the
// inverse view.
//
//   reshape     x [*] -> y [shape], same numel, one dim may be -1     dx = dy reshaped to x's shape
//   view        the same, but throws instead of copying               dx = dy reshaped to x's shape
//   permute     y[i_p0, ..., i_pn-1] = x[i_0, ..., i_n-1]             dx = dy permuted by p^-1
//   transpose   permute swapping dims d0 and d1                       dx = dy with d0, d1 swapped
//   contiguous  y = x, packed row-major                               dx = dy
//   narrow      y = x[.., start : start + length, ..] along dim       dx = 0, dx[that range] = dy
//   slice       y = x[.., start : end : step, ..] along dim           dx = 0, dx[that slice] = dy
//
// Dims may be negative (counted from the end). narrow's start may be negative too; slice's
// start/end follow Python (negative from the end, then clamped to [0, size]); step >= 1.
// dtypes: any (views move no numbers; a gradient has x's dtype). Devices: the views are
// metadata on any device (reshape's and contiguous's copies are Tensor::contiguous, on any
// device); the one kernel, narrow/slice's scatter backward, exists for CPU and CUDA (any dtype).
// Saved for backward: shapes and arguments only, no tensors.
#pragma once

#include <string_view>
#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "lib/device.h"

namespace attnlab {

enum class ViewKind { reshape, view, permute, transpose, contiguous, narrow, slice };

std::string_view view_name(ViewKind kind);

// A narrow or slice after normalisation: y = x.slice(dim, start, end, step), 0 <= start <= end.
struct SliceArgs {
  int64_t dim, start, end, step;
};

struct ViewOp {
  // Each check throws ShapeError naming `op` and printing x, and returns the normalised
  // arguments (reshape: the shape with -1 resolved; permute: dims in [0, ndim)).
  static Shape check_reshape(std::string_view op, const Tensor& x, const Shape& shape);
  static void check_view(const Tensor& x, const Shape& shape);
  static std::vector<int64_t> check_permute(std::string_view op, const Tensor& x, const std::vector<int64_t>& dims);
  static SliceArgs check_narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length);
  static SliceArgs check_slice(const Tensor& x, int64_t dim, int64_t start, int64_t end, int64_t step);
  // dx [x_shape] = 0 except dx.slice(s) = dy; dy [the slice's shape], any strides.
  static Tensor backward(CpuTag, const Shape& x_shape, const SliceArgs& s, const Tensor& dy);
  static Tensor backward(CudaTag, const Shape& x_shape, const SliceArgs& s, const Tensor& dy);
  static std::vector<OpSample> samples(ViewKind kind);
  // Larger shapes for the CUDA parity test (the copying and scattering cases).
  static std::vector<OpSample> parity_samples(ViewKind kind);
  static std::vector<OpMisuse> misuses(ViewKind kind);
};

Variable reshape(const Variable& x, const Shape& shape);
Variable view(const Variable& x, const Shape& shape);
Variable permute(const Variable& x, const std::vector<int64_t>& dims);
Variable transpose(const Variable& x, int64_t d0, int64_t d1);
Variable contiguous(const Variable& x);
Variable narrow(const Variable& x, int64_t dim, int64_t start, int64_t length);
Variable slice(const Variable& x, int64_t dim, int64_t start, int64_t end, int64_t step = 1);

}  // namespace attnlab
