// CPU kernels of sum, mean and max, f32 and f64.
//
//   sum, mean forward:  cpu::sum_dims (each output element one contiguous row, summed by one
//                       thread in a fixed order, f32 in double); mean then scales by 1/n.
//   sum, mean backward: dx [*x] = s dy, dy read with stride 0 along the reduced dims (s = 1 or 1/n).
//   max forward:        x contiguous as [outer, n, inner] -> y, argmax [outer, inner], the first
//                       index of the maximum along n.
//   max backward:       dx = 0 [outer, n, inner]; dx[o, argmax[o, i], i] = dy[o, i].
#include <algorithm>
#include <array>
#include <cmath>

#include "autograd/ops/reduce/reduce.h"
#include "lib/cpu/arith.h"
#include "lib/cpu/loops.h"

namespace attnlab {

namespace {

using Split = ReduceOp::Split;

int64_t reduced_count(const Shape& shape, const std::vector<bool>& reduce) {
  int64_t n = 1;
  for (int64_t d = 0; d < shape.ndim(); ++d)
    if (reduce[static_cast<size_t>(d)]) n *= shape[d];
  return n;
}

// Walks blocks of up to kBlock columns of `inner` down the n rows, so the reduced dim is read
// row by row (unit stride) whatever its position; each output element has one owner.
template <typename T>
void max_forward(const T* x, T* y, int32_t* arg, const Split& s) {
  constexpr int64_t kBlock = 256;
  const int64_t nblk = (s.inner + kBlock - 1) / kBlock;
  const int64_t per_task = std::max<int64_t>(1, s.n * std::min(s.inner, kBlock));
  const int64_t grain = std::max<int64_t>(1, cpu::kElementwiseGrain / per_task);
  cpu::parallel_for(0, s.outer * nblk, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t o = t / nblk, i0 = (t % nblk) * kBlock, i1 = std::min(s.inner, i0 + kBlock);
      const T* xo = x + o * s.n * s.inner;
      T* yo = y + o * s.inner;
      int32_t* ao = arg + o * s.inner;
      for (int64_t i = i0; i < i1; ++i) {
        yo[i] = xo[i];
        ao[i] = 0;
      }
      for (int64_t j = 1; j < s.n; ++j) {
        const T* row = xo + j * s.inner;
        for (int64_t i = i0; i < i1; ++i) {
          // Strictly greater keeps the first maximum; the first NaN takes over and stays.
          if (row[i] > yo[i] || (std::isnan(row[i]) && !std::isnan(yo[i]))) {
            yo[i] = row[i];
            ao[i] = static_cast<int32_t>(j);
          }
        }
      }
    }
  });
}

template <typename T>
void max_backward(const T* dy, const int32_t* arg, T* dx, const Split& s) {
  cpu::parallel_for(0, s.outer * s.inner, cpu::kElementwiseGrain, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t o = t / s.inner, i = t % s.inner;
      dx[(o * s.n + arg[t]) * s.inner + i] = dy[t];
    }
  });
}

template <typename T>
void broadcast_scaled(Tensor& dx, const Tensor& dy, T scale) {
  const std::array<std::vector<int64_t>, 2> strides{dx.strides(),
                                                    broadcast_strides(dy.shape(), dy.strides(), dx.shape())};
  T* pdx = dx.data<T>();
  const T* pdy = dy.data<T>();
  cpu::for_each_row(dx.shape(), strides, [&](int64_t n, const auto& off, const auto& inc) {
    T* o = pdx + off[0];  // dx is contiguous: its rows are unit-stride
    const T* g = pdy + off[1];
    if (inc[1] == 0) {
      const T v = scale * g[0];
      for (int64_t i = 0; i < n; ++i) o[i] = v;
    } else {
      for (int64_t i = 0; i < n; ++i) o[i] = scale * g[i * inc[1]];
    }
  });
}

}  // namespace

std::vector<Tensor> ReduceOp::forward(CpuTag, ReduceKind kind, const Tensor& x, const std::vector<bool>& reduce) {
  const std::string_view name = reduce_name(kind);
  if (kind != ReduceKind::max) {
    Tensor y = cpu::sum_dims(x, reduce);
    if (kind == ReduceKind::mean) {
      const double inv = 1.0 / static_cast<double>(reduced_count(x.shape(), reduce));
      dispatch_float(y.dtype(), name, [&](auto tag) {
        using T = decltype(tag);
        T* p = y.data<T>();
        cpu::parallel_for(0, y.numel(), cpu::kElementwiseGrain, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) p[i] = static_cast<T>(p[i] * inv);
        });
      });
    }
    return {y};
  }
  Shape kept = x.shape();
  const Split s = split(x.shape(), reduce);
  for (int64_t d = 0; d < kept.ndim(); ++d)
    if (reduce[static_cast<size_t>(d)]) kept[d] = 1;
  Tensor y = Tensor::empty(kept, x.dtype());
  Tensor arg = Tensor::empty(kept, DType::i32);
  dispatch_float(x.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    max_forward<T>(x.data<T>(), y.data<T>(), arg.data<int32_t>(), s);
  });
  return {y, arg};
}

Tensor ReduceOp::backward(CpuTag, ReduceKind kind, const Shape& x_shape, const std::vector<bool>& reduce,
                          const Tensor& argmax, const Tensor& dy) {
  const std::string_view name = reduce_name(kind);
  if (kind == ReduceKind::max) {
    Tensor dx = Tensor::zeros(x_shape, dy.dtype());
    dispatch_float(dy.dtype(), name, [&](auto tag) {
      using T = decltype(tag);
      max_backward<T>(dy.data<T>(), argmax.data<int32_t>(), dx.data<T>(), split(x_shape, reduce));
    });
    return dx;
  }
  Tensor dx = Tensor::empty(x_shape, dy.dtype());
  const double scale = kind == ReduceKind::mean ? 1.0 / static_cast<double>(reduced_count(x_shape, reduce)) : 1.0;
  dispatch_float(dy.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    broadcast_scaled<T>(dx, dy, static_cast<T>(scale));
  });
  return dx;
}

}  // namespace attnlab
