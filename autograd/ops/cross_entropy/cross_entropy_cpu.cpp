// CPU kernels of cross_entropy. logits is contiguous [N, V] (leading dims flattened), targets
// contiguous i32 [N]. One row per task, rows spread over threads; the per-row losses are summed
// afterwards on one thread in row order, so the loss does not depend on the thread count.
#include <algorithm>
#include <cmath>

#include "autograd/ops/cross_entropy/cross_entropy.h"
#include "lib/cpu/loops.h"

namespace attnlab {

namespace {
constexpr const char* kName = "cross_entropy";

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
      const T m = *std::max_element(xr, xr + v);
      double s = 0;
      for (int64_t j = 0; j < v; ++j) s += static_cast<double>(std::exp(xr[j] - m));
      const double lse = static_cast<double>(m) + std::log(s);
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
  Tensor dx = Tensor::zeros(logits.shape(), logits.dtype());
  if (count == 0) return dx;
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
      if (pt[r] == ignore_index) return;  // the row stays zero
      const T* xr = px + r * v;
      T* dxr = pdx + r * v;
      for (int64_t j = 0; j < v; ++j) dxr[j] = std::exp(xr[j] - plse[r]) * gt;
      dxr[pt[r]] -= gt;
    });
  });
  return dx;
}

}  // namespace attnlab
