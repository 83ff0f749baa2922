// CPU kernels of rms_norm, on contiguous tensors seen as R rows of C elements.
//
//   forward:  x [R, C], weight [C] -> y [R, C], rstd [R]; each row by one thread.
//   backward: dy [R, C] -> dx [R, C] = rstd * (g - xhat * mean(g * xhat)), g = dy * weight,
//             xhat = x * rstd; dweight [C] = sum_r dy * xhat, summed in the same pass per fixed
//             block of rows, the blocks then added in order.
// Row sums accumulate in double (f32 and f64).
#include <algorithm>
#include <cmath>

#include "autograd/ops/rms_norm/rms_norm.h"
#include "lib/cpu/parallel.h"

namespace attnlab {

using cpu::for_rows_summing_columns;
using cpu::row_grain;

RmsNormOp::Forward RmsNormOp::forward(CpuTag, const Tensor& x, const Tensor& weight, double eps) {
  const int64_t C = x.size(-1);
  const int64_t R = Shape(std::vector<int64_t>(x.shape().begin(), x.shape().end() - 1)).numel();
  Forward f{Tensor::empty(x.shape(), x.dtype()), Tensor::empty(Shape{R}, x.dtype())};
  dispatch_float(x.dtype(), "rms_norm", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    const T* pw = weight.data<T>();
    T* py = f.y.data<T>();
    T* prs = f.rstd.data<T>();
    cpu::parallel_for(0, R, row_grain(C), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* xr = px + r * C;
        T* yr = py + r * C;
        double ss = 0;
#pragma omp simd reduction(+ : ss)
        for (int64_t c = 0; c < C; ++c) ss += static_cast<double>(xr[c]) * static_cast<double>(xr[c]);
        // y uses the saved (rounded) rstd, so backward's xhat is exactly forward's.
        const T rs = static_cast<T>(1.0 / std::sqrt(ss / static_cast<double>(C) + eps));
        prs[r] = rs;
        for (int64_t c = 0; c < C; ++c) yr[c] = xr[c] * rs * pw[c];
      }
    });
  });
  return f;
}

RmsNormOp::Grads RmsNormOp::backward(CpuTag, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                                     const Tensor& dy, bool need_dx, bool need_dweight) {
  const int64_t C = x.size(-1);
  const int64_t R = rstd.numel();
  Grads g;
  if (need_dx) g.dx = Tensor::empty(x.shape(), x.dtype());
  dispatch_float(x.dtype(), "rms_norm", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    const T* pw = weight.data<T>();
    const T* prs = rstd.data<T>();
    const T* pdy = dy.data<T>();
    T* pdx = need_dx ? g.dx.data<T>() : nullptr;
    const double inv_c = 1.0 / static_cast<double>(std::max<int64_t>(C, 1));
    const std::vector<double> dw = for_rows_summing_columns(R, row_grain(C), need_dweight ? C : 0, [&](int64_t r, double* acc) {
      const T* xr = px + r * C;
      const T* dyr = pdy + r * C;
      const T rs = prs[r];
      if (pdx) {
        double sgx = 0;
#pragma omp simd reduction(+ : sgx)
        for (int64_t c = 0; c < C; ++c) sgx += dyr[c] * pw[c] * (xr[c] * rs);
        const T b = static_cast<T>(sgx * inv_c);
        T* dxr = pdx + r * C;
        for (int64_t c = 0; c < C; ++c) dxr[c] = rs * (dyr[c] * pw[c] - xr[c] * rs * b);
      }
      if (acc)
        for (int64_t c = 0; c < C; ++c) acc[c] += static_cast<double>(dyr[c] * (xr[c] * rs));
    });
    if (need_dweight) {
      g.dweight = Tensor::empty(Shape{C}, x.dtype());
      T* p = g.dweight.data<T>();
      for (int64_t c = 0; c < C; ++c) p[c] = static_cast<T>(dw[static_cast<size_t>(c)]);
    }
  });
  return g;
}

}  // namespace attnlab
