// CPU kernel of rope: one pass over the rows of x [B, H, T, D] (row r is at time t = r mod T),
// rotating the pairs (x[i], x[i + D/2]) by a cos/sin table [T, D/2] built once per call in
// double. The backward is the same pass with the sines negated. Rows are independent, so the
// result does not depend on the thread count.
#include <cmath>
#include <vector>

#include "autograd/ops/rope/rope.h"
#include "lib/cpu/parallel.h"

namespace attnlab {

namespace {

template <typename T>
Tensor rotate(const Tensor& x, int64_t position_offset, double base, bool inverse) {
  const int64_t T_len = x.size(2), D = x.size(3), half = D / 2;
  const int64_t rows = x.numel() / D;
  // cos and sin of pos * base^(-2i/D), angles in double: positions reach the thousands, where a
  // float angle would lose the low frequencies' precision.
  std::vector<T> cs(static_cast<size_t>(T_len * half)), sn(static_cast<size_t>(T_len * half));
  for (int64_t i = 0; i < half; ++i) {
    const double inv_freq = std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(D));
    for (int64_t t = 0; t < T_len; ++t) {
      const double theta = static_cast<double>(position_offset + t) * inv_freq;
      cs[static_cast<size_t>(t * half + i)] = static_cast<T>(std::cos(theta));
      sn[static_cast<size_t>(t * half + i)] = static_cast<T>(inverse ? -std::sin(theta) : std::sin(theta));
    }
  }
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  const T* px = x.data<T>();
  T* py = y.data<T>();
  cpu::parallel_for(0, rows, cpu::row_grain(D), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = r % T_len;
      const T* c = cs.data() + t * half;
      const T* s = sn.data() + t * half;
      const T* a = px + r * D;
      T* b = py + r * D;
      for (int64_t i = 0; i < half; ++i) {
        const T x1 = a[i], x2 = a[i + half];
        b[i] = x1 * c[i] - x2 * s[i];
        b[i + half] = x1 * s[i] + x2 * c[i];
      }
    }
  });
  return y;
}

}  // namespace

Tensor RopeOp::forward(CpuTag, const Tensor& x, int64_t position_offset, double base, bool inverse) {
  return dispatch_float(x.dtype(), "rope", [&](auto tag) {
    return rotate<decltype(tag)>(x, position_offset, base, inverse);
  });
}

Tensor RopeOp::backward(CpuTag, const Tensor& dy, int64_t position_offset, double base) {
  return forward(CpuTag{}, dy, position_offset, base, /*inverse=*/true);
}

}  // namespace attnlab
