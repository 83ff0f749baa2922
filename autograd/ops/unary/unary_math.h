// The scalar maths of the unary ops, shared by the CPU kernels (unary_cpu.cpp) and the CUDA
// kernels (unary_cuda.cu), so both compute the same expressions:
//   unary_f<K>(x, p)      f(x)          (p is pow's exponent or the scalar of add/mul_scalar)
//   unary_df<K>(x, y, p)  f'(x), given y = f(x) (exp, sqrt, rsqrt, tanh, sigmoid read y)
// with_unary_kind(kind, fn) calls fn(std::integral_constant<UnaryKind, K>{}) for the runtime
// kind, so each kind gets its own compiled loop or kernel (host code only).
#pragma once

#include <cmath>
#include <type_traits>

#include "autograd/ops/unary/unary.h"
#include "lib/host_device.h"

namespace attnlab {

namespace unary_math {

template <typename T>
AL_HOST_DEVICE inline T sigmoid(T x) {
  // Never exponentiates a large positive number.
  if (x >= T(0)) return T(1) / (T(1) + std::exp(-x));
  const T e = std::exp(x);
  return e / (T(1) + e);
}

template <typename T>
AL_HOST_DEVICE inline T softplus(T x) {
  return x > T(0) ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x));
}

inline constexpr double kGeluC = 0.7978845608028654;  // sqrt(2 / pi)
inline constexpr double kGeluA = 0.044715;

template <typename T>
AL_HOST_DEVICE inline T gelu(T x) {
  const T u = T(kGeluC) * (x + T(kGeluA) * x * x * x);
  return T(0.5) * x * (T(1) + std::tanh(u));
}

template <typename T>
AL_HOST_DEVICE inline T gelu_grad(T x) {
  const T u = T(kGeluC) * (x + T(kGeluA) * x * x * x);
  const T t = std::tanh(u);
  return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * T(kGeluC) * (T(1) + T(3 * kGeluA) * x * x);
}

template <UnaryKind K, typename T>
AL_HOST_DEVICE inline T unary_f(T x, T p) {
  (void)p;
  if constexpr (K == UnaryKind::neg) return -x;
  else if constexpr (K == UnaryKind::exp) return std::exp(x);
  else if constexpr (K == UnaryKind::log) return std::log(x);
  else if constexpr (K == UnaryKind::sqrt) return std::sqrt(x);
  else if constexpr (K == UnaryKind::rsqrt) return T(1) / std::sqrt(x);
  else if constexpr (K == UnaryKind::pow) return std::pow(x, p);
  else if constexpr (K == UnaryKind::tanh) return std::tanh(x);
  else if constexpr (K == UnaryKind::sigmoid) return sigmoid(x);
  else if constexpr (K == UnaryKind::relu) return x > T(0) ? x : T(0);
  else if constexpr (K == UnaryKind::gelu) return gelu(x);
  else if constexpr (K == UnaryKind::silu) return x * sigmoid(x);
  else if constexpr (K == UnaryKind::softplus) return softplus(x);
  else if constexpr (K == UnaryKind::add_scalar) return x + p;
  else return p * x;  // mul_scalar
}

template <UnaryKind K, typename T>
AL_HOST_DEVICE inline T unary_df(T x, T y, T p) {
  (void)x, (void)y, (void)p;
  if constexpr (K == UnaryKind::neg) return T(-1);
  else if constexpr (K == UnaryKind::exp) return y;
  else if constexpr (K == UnaryKind::log) return T(1) / x;
  else if constexpr (K == UnaryKind::sqrt) return T(0.5) / y;
  else if constexpr (K == UnaryKind::rsqrt) return T(-0.5) * y * y * y;
  else if constexpr (K == UnaryKind::pow) return p * std::pow(x, p - T(1));
  else if constexpr (K == UnaryKind::tanh) return T(1) - y * y;
  else if constexpr (K == UnaryKind::sigmoid) return y * (T(1) - y);
  else if constexpr (K == UnaryKind::relu) return x > T(0) ? T(1) : T(0);  // relu'(0) = 0
  else if constexpr (K == UnaryKind::gelu) return gelu_grad(x);
  else if constexpr (K == UnaryKind::silu) {
    const T s = sigmoid(x);
    return s * (T(1) + x * (T(1) - s));
  } else if constexpr (K == UnaryKind::softplus) return sigmoid(x);
  else if constexpr (K == UnaryKind::add_scalar) return T(1);
  else return p;  // mul_scalar
}

// Host-side dispatch from the runtime kind to a compile-time one.
template <typename Fn>
void with_unary_kind(UnaryKind kind, Fn&& fn) {
  using K = UnaryKind;
  switch (kind) {
    case K::neg: return fn(std::integral_constant<K, K::neg>{});
    case K::exp: return fn(std::integral_constant<K, K::exp>{});
    case K::log: return fn(std::integral_constant<K, K::log>{});
    case K::sqrt: return fn(std::integral_constant<K, K::sqrt>{});
    case K::rsqrt: return fn(std::integral_constant<K, K::rsqrt>{});
    case K::pow: return fn(std::integral_constant<K, K::pow>{});
    case K::tanh: return fn(std::integral_constant<K, K::tanh>{});
    case K::sigmoid: return fn(std::integral_constant<K, K::sigmoid>{});
    case K::relu: return fn(std::integral_constant<K, K::relu>{});
    case K::gelu: return fn(std::integral_constant<K, K::gelu>{});
    case K::silu: return fn(std::integral_constant<K, K::silu>{});
    case K::softplus: return fn(std::integral_constant<K, K::softplus>{});
    case K::add_scalar: return fn(std::integral_constant<K, K::add_scalar>{});
    case K::mul_scalar: return fn(std::integral_constant<K, K::mul_scalar>{});
  }
}

}  // namespace unary_math
}  // namespace attnlab
