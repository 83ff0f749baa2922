// CPU forward and backward of linear, on x seen as [R, K] rows, through cpu::gemm (OpenBLAS for
// large products, Eigen for small ones), f32 and f64, and bf16 operands for mixed precision.
//
//   forward:  y [R, N] = b (each row), then y += x w^T by one GEMM with beta = 1
//   backward: dx [R, K] = dy w;  dw [N, K] = dy^T x;  db [N] = cpu::column_sums(dy)
//
// bf16 x and w (f32 b, dy and results): the operands are widened to f32, which is exact, and go
// through the f32 GEMM; dy is rounded to bf16 (and widened back) for the two backward GEMMs and
// summed unrounded for db. Each product of two bf16 values is exact in f32 (8 + 8 significant
// bits), so this differs from the CUDA bf16 GEMM (f32 accumulation of the same products) only in
// the order of the f32 sums.
#include <algorithm>

#include "autograd/ops/linear/linear.h"
#include "lib/cpu/arith.h"
#include "lib/cpu/gemm.h"
#include "lib/cpu/parallel.h"

namespace attnlab {

namespace {

int64_t rows_of(const Tensor& x) { return x.numel() / std::max<int64_t>(1, x.size(-1)); }

// bf16 operands come with f32 companions (the op's check allows nothing else; this guards the
// Tensor-level entry points).
void check_mixed(const Tensor& x, const Tensor& w, const Tensor& other, const char* other_name) {
  AL_CHECK_DTYPE(w.dtype() == DType::bf16 && (!other.defined() || other.dtype() == DType::f32),
                 "linear: bf16 x needs bf16 w and f32 ", other_name, "; got x=", x, ", w=", w, ", ", other_name, "=",
                 other.defined() ? other.str() : std::string("undefined"));
}

}  // namespace

Tensor LinearOp::forward(CpuTag, const Tensor& x, const Tensor& w, const Tensor& b) {
  if (x.dtype() == DType::bf16) {
    check_mixed(x, w, b, "b");
    return forward(CpuTag{}, x.to(DType::f32), w.to(DType::f32), b);
  }
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
  const bool half = x.dtype() == DType::bf16;
  if (half) check_mixed(x, w, dy, "dy");
  // The GEMMs' operands in the compute dtype T: themselves, or (bf16) widened to f32, dy after
  // its rounding to bf16. Only the ones a requested gradient reads are made.
  const DType compute = half ? DType::f32 : x.dtype();
  const Tensor dyg = half && (need_dx || need_dw) ? dy.to(DType::bf16).to(DType::f32) : dy;
  const Tensor wg = half && need_dx ? w.to(DType::f32) : w;
  const Tensor xg = half && need_dw ? x.to(DType::f32) : x;
  Grads g;
  dispatch_float(compute, "linear", [&](auto tag) {
    using T = decltype(tag);
    const int64_t ldy = std::max<int64_t>(N, 1), ldx = std::max<int64_t>(K, 1);
    if (need_dx) {
      g.dx = Tensor::empty(x.shape(), compute);
      cpu::gemm<T>(false, false, R, K, N, T(1), dyg.data<T>(), ldy, wg.data<T>(), ldx, T(0), g.dx.data<T>(), ldx);
    }
    if (need_dw) {
      g.dw = Tensor::empty(w.shape(), compute);
      cpu::gemm<T>(true, false, N, K, R, T(1), dyg.data<T>(), ldy, xg.data<T>(), ldx, T(0), g.dw.data<T>(), ldx);
    }
    if (need_db) {
      g.db = Tensor::empty(Shape{N}, compute);
      cpu::column_sums<T>(dy.data<T>(), R, N, g.db.data<T>());
    }
  });
  return g;
}

}  // namespace attnlab
