#include "lib/cpu/arith.h"

#include <numeric>

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

Tensor sum_dims(const Tensor& x, const std::vector<bool>& reduce) {
  AL_ASSERT(static_cast<int64_t>(reduce.size()) == x.ndim());
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
