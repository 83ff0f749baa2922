// CPU kernels of l2_normalize, on contiguous tensors seen as R rows of C elements, each row by
// one thread; row sums accumulate in double (f32 and f64).
//
//   forward:  x [R, C] -> y [R, C] = x * rinv, rinv [R] = 1 / sqrt(sum(x^2) + eps)
//   backward: y [R, C], rinv [R], dy [R, C] -> dx [R, C] = rinv * (dy - y * sum(dy * y))
#include <algorithm>
#include <cmath>

#include "autograd/ops/l2_normalize/l2_normalize.h"
#include "lib/cpu/parallel.h"

namespace attnlab {

using cpu::row_grain;

L2NormalizeOp::Forward L2NormalizeOp::forward(CpuTag, const Tensor& x, double eps) {
  const int64_t C = x.size(-1);
  const int64_t R = Shape(std::vector<int64_t>(x.shape().begin(), x.shape().end() - 1)).numel();
  Forward f{Tensor::empty(x.shape(), x.dtype()), Tensor::empty(Shape{R}, x.dtype())};
  dispatch_float(x.dtype(), "l2_normalize", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = f.y.data<T>();
    T* pr = f.rinv.data<T>();
    cpu::parallel_for(0, R, row_grain(C), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* xr = px + r * C;
        T* yr = py + r * C;
        double ss = 0;
#pragma omp simd reduction(+ : ss)
        for (int64_t c = 0; c < C; ++c) ss += static_cast<double>(xr[c]) * static_cast<double>(xr[c]);
        const T rinv = static_cast<T>(1.0 / std::sqrt(ss + eps));
        pr[r] = rinv;
        for (int64_t c = 0; c < C; ++c) yr[c] = xr[c] * rinv;
      }
    });
  });
  return f;
}

Tensor L2NormalizeOp::backward(CpuTag, const Tensor& y, const Tensor& rinv, const Tensor& dy) {
  const int64_t C = y.size(-1);
  const int64_t R = rinv.numel();
  Tensor dx = Tensor::empty(y.shape(), y.dtype());
  dispatch_float(y.dtype(), "l2_normalize", [&](auto tag) {
    using T = decltype(tag);
    const T* py = y.data<T>();
    const T* pr = rinv.data<T>();
    const T* pdy = dy.data<T>();
    T* pdx = dx.data<T>();
    cpu::parallel_for(0, R, row_grain(C), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* yr = py + r * C;
        const T* dyr = pdy + r * C;
        T* dxr = pdx + r * C;
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t c = 0; c < C; ++c) s += static_cast<double>(dyr[c]) * static_cast<double>(yr[c]);
        const T st = static_cast<T>(s), ri = pr[r];
        for (int64_t c = 0; c < C; ++c) dxr[c] = ri * (dyr[c] - yr[c] * st);
      }
    });
  });
  return dx;
}

}  // namespace attnlab
