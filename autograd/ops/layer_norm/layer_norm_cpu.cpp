// CPU kernels of layer_norm, on contiguous tensors seen as R rows of C elements.
//
//   forward:  x [R, C], weight [C], bias [C] or none -> y [R, C], mean [R], rstd [R]
//             each row by one thread: sum, centred sum of squares (the row is in cache, and
//             the centred form does not cancel when |mean| >> std), then y.
//   backward: dy [R, C] -> dx [R, C] = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * weight;
//             dweight [C] = sum_r dy * xhat, dbias [C] = sum_r dy, summed in the same pass per
//             fixed block of rows, the blocks then added in order.
// Row sums accumulate in double (f32 and f64).
#include <algorithm>
#include <cmath>

#include "autograd/ops/layer_norm/layer_norm.h"
#include "lib/cpu/parallel.h"

namespace attnlab {

using cpu::for_rows_summing_columns;
using cpu::row_grain;

namespace {
// Each row: mean, then the centred sum of squares, both in double while the row is in cache;
// y uses the rounded mean and rstd that are saved, so backward sees exactly the forward's xhat.
template <typename T>
void forward_rows(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, int64_t R, int64_t C, double eps) {
  cpu::parallel_for(0, R, row_grain(C), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * C;
      // simd reductions: lane-wise partial sums, a fixed order per row (any thread count).
      double s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t c = 0; c < C; ++c) s += static_cast<double>(xr[c]);
      const double mu = s / static_cast<double>(C);
      double ss = 0;
#pragma omp simd reduction(+ : ss)
      for (int64_t c = 0; c < C; ++c) {
        const double d = static_cast<double>(xr[c]) - mu;
        ss += d * d;
      }
      const T m = static_cast<T>(mu), rs = static_cast<T>(1.0 / std::sqrt(ss / static_cast<double>(C) + eps));
      mean[r] = m;
      rstd[r] = rs;
      T* yr = y + r * C;
      for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] - m) * rs * w[c] + (b ? b[c] : T(0));
    }
  });
}
}  // namespace

LayerNormOp::Forward LayerNormOp::forward(CpuTag, const Tensor& x, const Tensor& weight, const Tensor& bias,
                                          double eps) {
  const int64_t C = x.size(-1);
  const Shape rows_shape(std::vector<int64_t>(x.shape().begin(), x.shape().end() - 1));
  const int64_t R = rows_shape.numel();
  Forward f{Tensor::empty(x.shape(), x.dtype()), Tensor::empty(Shape{R}, x.dtype()),
            Tensor::empty(Shape{R}, x.dtype())};
  dispatch_float(x.dtype(), "layer_norm", [&](auto tag) {
    using T = decltype(tag);
    forward_rows<T>(x.data<T>(), weight.data<T>(), bias.defined() ? bias.data<T>() : nullptr, f.y.data<T>(),
                    f.mean.data<T>(), f.rstd.data<T>(), R, C, eps);
  });
  return f;
}

LayerNormOp::Grads LayerNormOp::backward(CpuTag, const Tensor& x, const Tensor& weight, const Tensor& mean,
                                         const Tensor& rstd, const Tensor& dy, bool need_dx, bool need_dweight,
                                         bool need_dbias) {
  const int64_t C = x.size(-1);
  const int64_t R = mean.numel();
  Grads g;
  if (need_dx) g.dx = Tensor::empty(x.shape(), x.dtype());
  const bool need_sums = need_dweight || need_dbias;
  dispatch_float(x.dtype(), "layer_norm", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    const T* pw = weight.data<T>();
    const T* pm = mean.data<T>();
    const T* prs = rstd.data<T>();
    const T* pdy = dy.data<T>();
    T* pdx = need_dx ? g.dx.data<T>() : nullptr;
    const double inv_c = 1.0 / static_cast<double>(std::max<int64_t>(C, 1));
    // Partial sums per block: [sum dy * xhat (C) | sum dy (C)].
    const std::vector<double> sums = for_rows_summing_columns(R, row_grain(C), need_sums ? 2 * C : 0, [&](int64_t r, double* acc) {
      const T* xr = px + r * C;
      const T* dyr = pdy + r * C;
      const T m = pm[r], rs = prs[r];
      if (pdx) {
        double sg = 0, sgx = 0;
#pragma omp simd reduction(+ : sg, sgx)
        for (int64_t c = 0; c < C; ++c) {
          const T gc = dyr[c] * pw[c];
          sg += gc;
          sgx += gc * ((xr[c] - m) * rs);
        }
        const T a = static_cast<T>(sg * inv_c), b = static_cast<T>(sgx * inv_c);
        T* dxr = pdx + r * C;
        for (int64_t c = 0; c < C; ++c) dxr[c] = rs * (dyr[c] * pw[c] - a - (xr[c] - m) * rs * b);
      }
      if (acc) {
        for (int64_t c = 0; c < C; ++c) {
          acc[c] += static_cast<double>(dyr[c] * ((xr[c] - m) * rs));
          acc[C + c] += static_cast<double>(dyr[c]);
        }
      }
    });
    auto column = [&](int64_t from) {
      Tensor t = Tensor::empty(Shape{C}, x.dtype());
      T* p = t.data<T>();
      for (int64_t c = 0; c < C; ++c) p[c] = static_cast<T>(sums[static_cast<size_t>(from + c)]);
      return t;
    };
    if (need_dweight) g.dweight = column(0);
    if (need_dbias) g.dbias = column(C);
  });
  return g;
}

}  // namespace attnlab
