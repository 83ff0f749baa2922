#include "lib/cpu/arith.h"

#include <algorithm>
#include <numeric>
#include <type_traits>

#include "lib/cpu/loops.h"
#include "lib/error.h"

namespace attnlab::cpu {

void add_inplace(Tensor& dst, const Tensor& src, double alpha) {
  const Shape b = broadcast_shapes(src.shape(), dst.shape(), "add_inplace");
  AL_CHECK_SHAPE(b == dst.shape(), "add_inplace: source ", src, " does not broadcast to destination ", dst);
  AL_CHECK_DTYPE(src.dtype() == dst.dtype(), "add_inplace: dtypes must match; got dst=", dst, ", src=", src);
  std::array<std::vector<int64_t>, 2> st{dst.strides(), broadcast_strides(src.shape(), src.strides(), dst.shape())};
  dispatch_float(dst.dtype(), "add_inplace", [&](auto tag) {
    using T = decltype(tag);
    T* d = dst.data<T>();
    const T* s = src.data<T>();
    const T a = static_cast<T>(alpha);
    for_each_row(dst.shape(), st, [&](int64_t n, const auto& off, const auto& inc) {
      T* pd = d + off[0];
      const T* ps = s + off[1];
      if (inc[0] == 1 && inc[1] == 1) {
        for (int64_t i = 0; i < n; ++i) pd[i] += a * ps[i];
      } else {
        for (int64_t i = 0; i < n; ++i) pd[i * inc[0]] += a * ps[i * inc[1]];
      }
    });
  });
}

template <typename T>
void column_sums(const T* x, int64_t rows, int64_t cols, T* out) {
  using Acc = std::conditional_t<std::is_same_v<T, float>, double, T>;
  // 64 columns per task: the accumulators stay in registers or L1, and each row is read in
  // whole cache lines.
  constexpr int64_t kCols = 64;
  const int64_t blocks = (cols + kCols - 1) / kCols;
  const int64_t grain = std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(1, rows * kCols));
  parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t c0 = b * kCols, n = std::min(kCols, cols - c0);
      Acc acc[kCols] = {};
      for (int64_t r = 0; r < rows; ++r) {
        const T* row = x + r * cols + c0;
#pragma omp simd
        for (int64_t c = 0; c < n; ++c) acc[c] += static_cast<Acc>(row[c]);
      }
      for (int64_t c = 0; c < n; ++c) out[c0 + c] = static_cast<T>(acc[c]);
    }
  });
}
template void column_sums<float>(const float*, int64_t, int64_t, float*);
template void column_sums<double>(const double*, int64_t, int64_t, double*);

Tensor sum_dims(const Tensor& x, const std::vector<bool>& reduce) {
  AL_ASSERT(static_cast<int64_t>(reduce.size()) == x.ndim());
  // Leading dims summed and trailing dims kept (a bias gradient), on a contiguous x: column
  // sums, without the transposed copy below. Same order of additions, so the same bits.
  int64_t lead = 0;
  while (lead < x.ndim() && (reduce[static_cast<size_t>(lead)] || x.size(lead) == 1)) ++lead;
  bool trailing_kept = true;
  for (int64_t d = lead; d < x.ndim(); ++d) trailing_kept = trailing_kept && !reduce[static_cast<size_t>(d)];
  if (trailing_kept && x.is_contiguous() && (x.dtype() == DType::f32 || x.dtype() == DType::f64)) {
    std::vector<int64_t> out_dims = x.shape().dims();
    int64_t rows = 1;
    for (int64_t d = 0; d < lead; ++d) rows *= x.size(d), out_dims[static_cast<size_t>(d)] = 1;
    Tensor out = Tensor::empty(Shape(out_dims), x.dtype());
    const int64_t cols = out.numel();
    dispatch_float(x.dtype(), "sum", [&](auto tag) {
      using T = decltype(tag);
      column_sums<T>(x.data<T>(), rows, cols, out.data<T>());
    });
    return out;
  }
  // Kept dims first, reduced dims last, then each output element sums one contiguous row.
  std::vector<int64_t> order, out_dims = x.shape().dims();
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < x.ndim(); ++d)
    if (!reduce[static_cast<size_t>(d)]) order.push_back(d), outer *= x.size(d);
  for (int64_t d = 0; d < x.ndim(); ++d)
    if (reduce[static_cast<size_t>(d)]) order.push_back(d), inner *= x.size(d), out_dims[static_cast<size_t>(d)] = 1;
  const Tensor rows = x.permute(order).contiguous();
  Tensor out = Tensor::empty(Shape(out_dims), x.dtype());
  dispatch_float(x.dtype(), "sum", [&](auto tag) {
    using T = decltype(tag);
    using Acc = std::conditional_t<std::is_same_v<T, float>, double, T>;
    const T* p = rows.data<T>();
    T* o = out.data<T>();
    parallel_for(0, outer, std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(inner, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* row = p + r * inner;
        Acc acc = 0;
        for (int64_t i = 0; i < inner; ++i) acc += row[i];
        o[r] = static_cast<T>(acc);
      }
    });
  });
  return out;
}

Tensor sum_to(const Tensor& g, const Shape& target) {
  if (g.shape() == target) return g;
  const int64_t lead = g.ndim() - target.ndim();
  AL_ASSERT(lead >= 0, "sum_to: ", g, " -> ", target);
  std::vector<bool> reduce(static_cast<size_t>(g.ndim()));
  for (int64_t d = 0; d < g.ndim(); ++d) reduce[static_cast<size_t>(d)] = d < lead || (target[d - lead] == 1 && g.size(d) != 1);
  return sum_dims(g, reduce).view(target);
}

}  // namespace attnlab::cpu
