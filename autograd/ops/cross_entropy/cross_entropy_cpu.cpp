// CPU kernels of cross_entropy. logits is contiguous [N, V] (leading dims flattened), targets
// contiguous i32 [N]. One row per task, rows spread over threads; the per-row losses are summed
// afterwards on one thread in row order, so the loss does not depend on the thread count.
// Forward reads each row twice (max, then the sum of exponentials), backward once (writing
// softmax - one-hot): nothing [N, V] is saved but the logits. f32 rows go through Eigen's
// vectorised max and exp (glibc's scalar expf was most of the op at V = 50257); f64 keeps
// std::exp, so gradcheck sees the exact function.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>

#include "autograd/ops/cross_entropy/cross_entropy.h"
#include "lib/cpu/loops.h"

namespace attnlab {

namespace {
constexpr const char* kName = "cross_entropy";

using ArrayF = Eigen::Array<float, Eigen::Dynamic, 1>;
using MapF = Eigen::Map<ArrayF>;
using CMapF = Eigen::Map<const ArrayF>;

// log sum_j exp(x_j) of one row, and its max m.
double row_lse(const float* x, int64_t v) {
  const float m = CMapF(x, v).maxCoeff();
  // exp and its sum vectorised over chunks of a fixed size (bounds depend on v only), the chunk
  // sums added in double, so a 50K-wide row loses little to f32 accumulation. (A cast to double
  // inside the Eigen expression would make Eigen fall back to scalar expf.)
  constexpr int64_t kChunk = 1024;
  double s = 0;
  for (int64_t j = 0; j < v; j += kChunk) {
    const int64_t n = std::min(kChunk, v - j);
    s += static_cast<double>((CMapF(x + j, n) - m).exp().sum());
  }
  return static_cast<double>(m) + std::log(s);
}
double row_lse(const double* x, int64_t v) {
  const double m = *std::max_element(x, x + v);
  double s = 0;
  for (int64_t j = 0; j < v; ++j) s += std::exp(x[j] - m);
  return m + std::log(s);
}

// dx[j] = exp(x[j] - lse) * g.
void row_grad(const float* x, float lse, float g, float* dx, int64_t v) {
  MapF(dx, v) = (CMapF(x, v) - lse).exp() * g;
}
void row_grad(const double* x, double lse, double g, double* dx, int64_t v) {
  for (int64_t j = 0; j < v; ++j) dx[j] = std::exp(x[j] - lse) * g;
}

template <typename Fn>
void for_rows(int64_t rows, int64_t v, Fn&& fn) {
  cpu::parallel_for(0, rows, std::max<int64_t>(1, cpu::kElementwiseGrain / std::max<int64_t>(v, 1)),
                    [&](int64_t r0, int64_t r1) {
                      for (int64_t r = r0; r < r1; ++r) fn(r);
                    });
}
}  // namespace

CrossEntropyOp::Forward CrossEntropyOp::forward(CpuTag, const Tensor& logits, const Tensor& targets,
                                                int32_t ignore_index) {
  const int64_t v = logits.shape()[logits.ndim() - 1];
  const int64_t rows = targets.numel();
  const int32_t* pt = targets.data<int32_t>();
  // Validated up front on one thread: an exception must not leave an OpenMP region.
  int64_t count = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (pt[r] == ignore_index) continue;
    AL_CHECK_SHAPE(pt[r] >= 0 && pt[r] < v, kName, ": target ", pt[r], " at index ", r, " is out of range [0, V) for V=",
                   v, " (and is not ignore_index=", ignore_index, "); got logits=", logits, ", targets=", targets);
    ++count;
  }
  Forward f{Tensor(), Tensor::empty(Shape{rows}, logits.dtype()), count};
  std::vector<double> row_loss(static_cast<size_t>(rows), 0.0);
  dispatch_float(logits.dtype(), kName, [&](auto tag) {
    using T = decltype(tag);
    const T* px = logits.data<T>();
    T* plse = f.lse.data<T>();
    for_rows(rows, v, [&](int64_t r) {
      if (pt[r] == ignore_index) {
        plse[r] = T(0);
        return;
      }
      const T* xr = px + r * v;
      const double lse = row_lse(xr, v);
      plse[r] = static_cast<T>(lse);
      row_loss[static_cast<size_t>(r)] = lse - static_cast<double>(xr[pt[r]]);
    });
  });
  double total = 0;
  for (double l : row_loss) total += l;
  f.loss = Tensor::scalar(count > 0 ? total / static_cast<double>(count) : 0.0, logits.dtype());
  return f;
}

Tensor CrossEntropyOp::backward(CpuTag, const Tensor& logits, const Tensor& targets, const Tensor& lse, int64_t count,
                                int32_t ignore_index, const Tensor& dloss) {
  if (count == 0) return Tensor::zeros(logits.shape(), logits.dtype());
  // Every row is written below (ignored ones as zeros), so no zero fill first.
  Tensor dx = Tensor::empty(logits.shape(), logits.dtype());
  const int64_t v = logits.shape()[logits.ndim() - 1];
  const int64_t rows = targets.numel();
  const int32_t* pt = targets.data<int32_t>();
  const double g = dloss.item<double>() / static_cast<double>(count);
  dispatch_float(logits.dtype(), kName, [&](auto tag) {
    using T = decltype(tag);
    const T* px = logits.data<T>();
    const T* plse = lse.data<T>();
    T* pdx = dx.data<T>();
    const T gt = static_cast<T>(g);
    for_rows(rows, v, [&](int64_t r) {
      T* dxr = pdx + r * v;
      if (pt[r] == ignore_index) {
        std::fill(dxr, dxr + v, T(0));
        return;
      }
      row_grad(px + r * v, plse[r], gt, dxr, v);
      dxr[pt[r]] -= gt;
    });
  });
  return dx;
}

}  // namespace attnlab
