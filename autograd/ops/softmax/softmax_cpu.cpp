// CPU kernels of softmax and log_softmax: x is contiguous [R, N], one row per task, rows spread
// over threads. Each row is reduced by one thread in a fixed order, so results do not depend
// on the thread count.
#include <algorithm>
#include <cmath>

#include "autograd/ops/softmax/softmax.h"
#include "lib/cpu/loops.h"

namespace attnlab {

namespace {
// Calls fn(r, n) for every row r of a [rows, n] tensor.
template <typename Fn>
void for_rows(const Tensor& t, Fn&& fn) {
  const int64_t n = t.shape()[t.ndim() - 1];
  if (n == 0 || t.numel() == 0) return;
  const int64_t rows = t.numel() / n;
  cpu::parallel_for(0, rows, std::max<int64_t>(1, cpu::kElementwiseGrain / n), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) fn(r, n);
  });
}
}  // namespace

Tensor SoftmaxOp::forward(CpuTag, bool log, const Tensor& x) {
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  dispatch_float(x.dtype(), name(log), [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    for_rows(x, [&](int64_t r, int64_t n) {
      const T* xr = px + r * n;
      T* yr = py + r * n;
      const T m = *std::max_element(xr, xr + n);
      double s = 0;
      for (int64_t j = 0; j < n; ++j) {
        yr[j] = std::exp(xr[j] - m);
        s += static_cast<double>(yr[j]);
      }
      if (log) {
        const T log_s = static_cast<T>(std::log(s));
        for (int64_t j = 0; j < n; ++j) yr[j] = (xr[j] - m) - log_s;
      } else {
        const T inv_s = static_cast<T>(1.0 / s);
        for (int64_t j = 0; j < n; ++j) yr[j] *= inv_s;
      }
    });
  });
  return y;
}

Tensor SoftmaxOp::backward(CpuTag, bool log, const Tensor& y, const Tensor& dy) {
  Tensor dx = Tensor::empty(y.shape(), y.dtype());
  dispatch_float(y.dtype(), name(log), [&](auto tag) {
    using T = decltype(tag);
    const T* py = y.data<T>();
    const T* pdy = dy.data<T>();
    T* pdx = dx.data<T>();
    for_rows(y, [&](int64_t r, int64_t n) {
      const T* yr = py + r * n;
      const T* dyr = pdy + r * n;
      T* dxr = pdx + r * n;
      double s = 0;
      if (log) {
        for (int64_t j = 0; j < n; ++j) s += static_cast<double>(dyr[j]);
        const T st = static_cast<T>(s);
        for (int64_t j = 0; j < n; ++j) dxr[j] = dyr[j] - std::exp(yr[j]) * st;
      } else {
        for (int64_t j = 0; j < n; ++j) s += static_cast<double>(dyr[j]) * static_cast<double>(yr[j]);
        const T st = static_cast<T>(s);
        for (int64_t j = 0; j < n; ++j) dxr[j] = yr[j] * (dyr[j] - st);
      }
    });
  });
  return dx;
}

}  // namespace attnlab
