// CPU kernels of the unary ops: one contiguous pass each, parallel over elements.
#include <Eigen/Core>
#include <cmath>

#include "autograd/ops/unary/unary.h"
#include "autograd/ops/unary/unary_math.h"
#include "lib/cpu/loops.h"

namespace attnlab {

namespace {

// Calls fn(f, df) with f(x) and df(x, y) = f'(x) for `kind` as lambdas over T (the maths of
// unary_math.h, shared with the CUDA kernels), so each kind gets its own tight loop.
template <typename T, typename Fn>
void with_kind(UnaryKind kind, T p, Fn&& fn) {
  unary_math::with_unary_kind(kind, [&](auto k) {
    constexpr UnaryKind K = decltype(k)::value;
    fn([p](T x) { return unary_math::unary_f<K>(x, p); },
       [p](T x, T y) { return unary_math::unary_df<K>(x, y, p); });
  });
}

// GELU in f32 is a large share of a transformer step (glibc's scalar tanhf was about a quarter
// of a GPT training step): Eigen's vectorised tanh, a rational approximation within a few ulp,
// replaces it there. f64 keeps std::tanh, so gradcheck sees the exact function.
using ArrayF = Eigen::Array<float, Eigen::Dynamic, 1>;
using MapF = Eigen::Map<ArrayF>;
using CMapF = Eigen::Map<const ArrayF>;

// Fixed blocks, so the split between Eigen's vector body and scalar tail (and with it every
// bit of the result) does not depend on the thread count.
constexpr int64_t kGeluBlock = 8192;

template <typename Fn>
void for_gelu_blocks(int64_t n, Fn&& fn) {
  cpu::parallel_for(0, (n + kGeluBlock - 1) / kGeluBlock, cpu::kElementwiseGrain / kGeluBlock, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) fn(k * kGeluBlock, std::min(n, (k + 1) * kGeluBlock));
  });
}

void gelu_forward_f32(const float* x, float* y, int64_t n) {
  for_gelu_blocks(n, [&](int64_t b, int64_t e) {
    const CMapF xa(x + b, e - b);
    const ArrayF t = (float(unary_math::kGeluC) * (xa + float(unary_math::kGeluA) * xa.cube())).tanh();
    MapF(y + b, e - b) = 0.5f * xa * (1.0f + t);
  });
}

void gelu_backward_f32(const float* x, const float* dy, float* dx, int64_t n) {
  constexpr float c = float(unary_math::kGeluC), a = float(unary_math::kGeluA);
  for_gelu_blocks(n, [&](int64_t b, int64_t e) {
    const CMapF xa(x + b, e - b);
    const ArrayF t = (c * (xa + a * xa.cube())).tanh();
    MapF(dx + b, e - b) =
        CMapF(dy + b, e - b) * (0.5f * (1.0f + t) + 0.5f * xa * (1.0f - t * t) * c * (1.0f + 3.0f * a * xa.square()));
  });
}

}  // namespace

Tensor UnaryOp::forward(CpuTag, UnaryKind kind, double param, const Tensor& x) {
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  if (kind == UnaryKind::gelu && x.dtype() == DType::f32) {
    gelu_forward_f32(x.data<float>(), y.data<float>(), x.numel());
    return y;
  }
  dispatch_float(x.dtype(), unary_name(kind), [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    with_kind<T>(kind, static_cast<T>(param), [&](auto f, auto) {
      cpu::parallel_for(0, x.numel(), cpu::kElementwiseGrain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) py[i] = f(px[i]);
      });
    });
  });
  return y;
}

Tensor UnaryOp::backward(CpuTag, UnaryKind kind, double param, const Tensor& x, const Tensor& y, const Tensor& dy) {
  Tensor dx = Tensor::empty(x.shape(), x.dtype());
  if (kind == UnaryKind::gelu && x.dtype() == DType::f32) {
    gelu_backward_f32(x.data<float>(), dy.data<float>(), dx.data<float>(), x.numel());
    return dx;
  }
  dispatch_float(x.dtype(), unary_name(kind), [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    const T* py = y.data<T>();
    const T* pdy = dy.data<T>();
    T* pdx = dx.data<T>();
    with_kind<T>(kind, static_cast<T>(param), [&](auto, auto df) {
      cpu::parallel_for(0, x.numel(), cpu::kElementwiseGrain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) pdx[i] = df(px[i], py[i]) * pdy[i];
      });
    });
  });
  return dx;
}

}  // namespace attnlab
