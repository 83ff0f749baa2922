// CPU forward and backward of linear, on x seen as [R, K] rows, through cpu::gemm (OpenBLAS for
// large products, Eigen for small ones), f32 and f64.
//
//   forward:  y [R, N] = b (each row), then y += x w^T by one GEMM with beta = 1
//   backward: dx [R, K] = dy w;  dw [N, K] = dy^T x;  db [N] = cpu::column_sums(dy)
#include <algorithm>

#include "autograd/ops/linear/linear.h"
#include "lib/cpu/arith.h"
#include "lib/cpu/gemm.h"
#include "lib/cpu/parallel.h"

namespace attnlab {

namespace {
int64_t rows_of(const Tensor& x) { return x.numel() / std::max<int64_t>(1, x.size(-1)); }
}  // namespace

Tensor LinearOp::forward(CpuTag, const Tensor& x, const Tensor& w, const Tensor& b) {
  const int64_t R = rows_of(x), K = x.size(-1), N = w.size(0);
  std::vector<int64_t> dims = x.shape().dims();
  dims.back() = N;
  Tensor y = Tensor::empty(Shape(std::move(dims)), x.dtype());
  dispatch_float(x.dtype(), "linear", [&](auto tag) {
    using T = decltype(tag);
    T* py = y.data<T>();
    if (b.defined()) {
      const T* pb = b.data<T>();
      cpu::parallel_for(0, R, cpu::row_grain(N), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) std::copy_n(pb, N, py + r * N);
      });
    }
    cpu::gemm<T>(false, true, R, N, K, T(1), x.data<T>(), std::max<int64_t>(K, 1), w.data<T>(), std::max<int64_t>(K, 1),
                 b.defined() ? T(1) : T(0), py, std::max<int64_t>(N, 1));
  });
  return y;
}

LinearOp::Grads LinearOp::backward(CpuTag, const Tensor& x, const Tensor& w, const Tensor& dy, bool need_dx,
                                   bool need_dw, bool need_db) {
  const int64_t R = rows_of(x), K = x.size(-1), N = w.size(0);
  Grads g;
  dispatch_float(x.dtype(), "linear", [&](auto tag) {
    using T = decltype(tag);
    const T* pdy = dy.data<T>();
    const int64_t ldy = std::max<int64_t>(N, 1), ldx = std::max<int64_t>(K, 1);
    if (need_dx) {
      g.dx = Tensor::empty(x.shape(), x.dtype());
      cpu::gemm<T>(false, false, R, K, N, T(1), pdy, ldy, w.data<T>(), ldx, T(0), g.dx.data<T>(), ldx);
    }
    if (need_dw) {
      g.dw = Tensor::empty(w.shape(), w.dtype());
      cpu::gemm<T>(true, false, N, K, R, T(1), pdy, ldy, x.data<T>(), ldx, T(0), g.dw.data<T>(), ldx);
    }
    if (need_db) {
      g.db = Tensor::empty(Shape{N}, x.dtype());
      cpu::column_sums<T>(pdy, R, N, g.db.data<T>());
    }
  });
  return g;
}

}  // namespace attnlab
