// Elementwise unary ops, y = f(x), any shape; dx = f'(x) dy.
//
//   neg       -x                     exp       e^x              log       ln x
//   sqrt      x^(1/2)                rsqrt     x^(-1/2)         pow       x^p (scalar p)
//   tanh      tanh x                 sigmoid   1 / (1 + e^-x)   relu      max(x, 0)
//   gelu      x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))    (GPT-2's tanh form)
//   silu      x sigmoid(x)           softplus  ln(1 + e^x)      add_scalar x + s    mul_scalar s x
//
// Shapes: x [*] -> y [*], x contiguous. dtypes: f32, f64 (CPU). CUDA: f32, f64.
// Saved for backward: x, and y for the ops whose derivative reads it (exp, sqrt, rsqrt, tanh,
// sigmoid). Derivatives at kinks: relu'(0) = 0.
#pragma once

#include <string_view>
#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "lib/device.h"

namespace attnlab {

enum class UnaryKind { neg, exp, log, sqrt, rsqrt, pow, tanh, sigmoid, relu, gelu, silu, softplus, add_scalar, mul_scalar };

std::string_view unary_name(UnaryKind kind);

struct UnaryOp {
  static void check(UnaryKind kind, const Tensor& x);
  // `param` is p for pow and s for add_scalar/mul_scalar, unused otherwise.
  static Tensor forward(CpuTag, UnaryKind kind, double param, const Tensor& x);
  static Tensor backward(CpuTag, UnaryKind kind, double param, const Tensor& x, const Tensor& y, const Tensor& dy);
  static Tensor forward(CudaTag, UnaryKind kind, double param, const Tensor& x);
  static Tensor backward(CudaTag, UnaryKind kind, double param, const Tensor& x, const Tensor& y, const Tensor& dy);
  static std::vector<OpSample> samples(UnaryKind kind);
  static std::vector<OpMisuse> misuses(UnaryKind kind);
  // Larger shapes for the CUDA parity test: several blocks, ragged edges.
  static std::vector<OpSample> parity_samples(UnaryKind kind);
};

Variable unary(UnaryKind kind, const Variable& x, double param = 0.0);

Variable neg(const Variable& x);
Variable exp(const Variable& x);
Variable log(const Variable& x);
Variable sqrt(const Variable& x);
Variable rsqrt(const Variable& x);
Variable pow(const Variable& x, double p);
Variable tanh(const Variable& x);
Variable sigmoid(const Variable& x);
Variable relu(const Variable& x);
Variable gelu(const Variable& x);
Variable silu(const Variable& x);
Variable softplus(const Variable& x);
Variable add_scalar(const Variable& x, double s);
Variable mul_scalar(const Variable& x, double s);

Variable operator-(const Variable& x);
Variable operator+(const Variable& x, double s);
Variable operator+(double s, const Variable& x);
Variable operator-(const Variable& x, double s);
Variable operator-(double s, const Variable& x);
Variable operator*(const Variable& x, double s);
Variable operator*(double s, const Variable& x);
Variable operator/(const Variable& x, double s);

}  // namespace attnlab
