// Elementwise binary ops with NumPy broadcasting, y = f(a, b):
//
//   add  a + b     da = dy            db = dy
//   sub  a - b     da = dy            db = -dy
//   mul  a * b     da = dy b          db = dy a
//   div  a / b     da = dy / b        db = -dy a / b^2
//
// then each gradient is summed back to its input's shape (cpu::sum_to) over broadcast dims.
// Shapes: a [*a], b [*b] -> y [broadcast(*a, *b)]; any strides (read through broadcast strides,
// nothing is expanded in memory). dtypes: f32, f64, a and b the same. CUDA: f32, f64 (at most 8
// dims once contiguous dims are merged).
// Saved for backward: a and b (held by the graph anyway; add and sub only read their shapes).
#pragma once

#include <string_view>
#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "lib/device.h"

namespace attnlab {

enum class BinaryKind { add, sub, mul, div };

std::string_view binary_name(BinaryKind kind);

struct BinaryOp {
  static void check(BinaryKind kind, const Tensor& a, const Tensor& b);
  // y, contiguous, of the broadcast shape.
  static Tensor forward(CpuTag, BinaryKind kind, const Tensor& a, const Tensor& b);
  // {da, db} shaped like a and b; undefined where `needs` says no.
  static std::vector<Tensor> backward(CpuTag, BinaryKind kind, const Tensor& a, const Tensor& b, const Tensor& dy,
                                      const GradMask& needs);
  static Tensor forward(CudaTag, BinaryKind kind, const Tensor& a, const Tensor& b);
  static std::vector<Tensor> backward(CudaTag, BinaryKind kind, const Tensor& a, const Tensor& b, const Tensor& dy,
                                      const GradMask& needs);
  static std::vector<OpSample> samples(BinaryKind kind);
  // Larger shapes for the CUDA parity test: several blocks, ragged edges, every broadcast form.
  static std::vector<OpSample> parity_samples(BinaryKind kind);
  static std::vector<OpMisuse> misuses(BinaryKind kind);
};

Variable binary(BinaryKind kind, const Variable& a, const Variable& b);

Variable add(const Variable& a, const Variable& b);
Variable sub(const Variable& a, const Variable& b);
Variable mul(const Variable& a, const Variable& b);
Variable div(const Variable& a, const Variable& b);

// Variable x double forms are in unary.h (add_scalar, mul_scalar).
Variable operator+(const Variable& a, const Variable& b);
Variable operator-(const Variable& a, const Variable& b);
Variable operator*(const Variable& a, const Variable& b);
Variable operator/(const Variable& a, const Variable& b);

}  // namespace attnlab
