// Comparing tensors in tests: the largest magnitude, the largest elementwise difference (which
// fails loudly, as infinity, on a NaN, a shape mismatch or one side missing, so a tolerance check
// cannot pass by accident), and bit-for-bit equality.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "lib/tensor.h"

namespace attnlab::test {

inline double max_abs(const Tensor& t) {
  double m = 0;
  for (double x : t.to_vector<double>()) m = std::max(m, std::abs(x));
  return m;
}

// max |a - b| over all elements; infinity when a NaN appears, the shapes differ or only one side
// is defined (both undefined: 0, e.g. a gradient neither side produced).
inline double max_diff(const Tensor& a, const Tensor& b) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  if (!a.defined() || !b.defined()) return a.defined() == b.defined() ? 0.0 : kInf;
  EXPECT_EQ(a.shape(), b.shape());
  if (a.shape() != b.shape()) return kInf;
  const std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i]) || std::isnan(y[i])) return kInf;
    m = std::max(m, std::abs(x[i] - y[i]));
  }
  return m;
}

inline bool bit_equal(const Tensor& a, const Tensor& b) {
  const Tensor x = a.contiguous(), y = b.contiguous();
  return x.shape() == y.shape() && x.dtype() == y.dtype() &&
         std::memcmp(x.raw_data(), y.raw_data(), static_cast<size_t>(x.numel()) * dtype_size(x.dtype())) == 0;
}

}  // namespace attnlab::test
