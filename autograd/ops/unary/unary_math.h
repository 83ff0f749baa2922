// The scalar maths of the unary ops, shared by the CPU and (later) CUDA kernels.
// unary_f<K>(x, p) is f(x); unary_df<K>(x, y, p) is f'(x) given y = f(x).
#pragma once

#include <cmath>

#include "lib/host_device.h"

namespace attnlab {

enum class UnaryKind;

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

}  // namespace unary_math
}  // namespace attnlab
