// CPU kernels of index_select and embedding, x viewed as [outer, N, inner], idx [K]:
//   forward   y[o, k, :] = x[o, idx[k], :]          one memcpy per (o, k) row, rows over threads
//   backward  dx[o, n, :] = sum_{k: idx[k] = n} dy[o, k, :]
// The backward groups the k by their row n first (a counting sort that keeps k ascending), so
// each dx row is written by exactly one thread, summed in double in a fixed order: no races, no
// atomics, and the same bits on any thread count. Rows nobody selected are written as zeros.
#include <algorithm>
#include <cstring>

#include "autograd/ops/index_select/index_select.h"
#include "lib/cpu/loops.h"

namespace attnlab {

BadIndex IndexSelectOp::find_bad_index(CpuTag, const Tensor& idx, int64_t n) {
  const int32_t* p = idx.data<int32_t>();
  for (int64_t k = 0; k < idx.numel(); ++k)
    if (p[k] < 0 || p[k] >= n) return {k, p[k]};
  return {};
}

Tensor IndexSelectOp::forward(CpuTag, const Tensor& x, int64_t dim, const Tensor& idx) {
  const Split s = split_at(x.shape(), dim);
  const int64_t K = idx.numel();
  Shape y_shape = x.shape();
  y_shape[dim] = K;
  Tensor y = Tensor::empty(y_shape, x.dtype());
  if (y.numel() == 0) return y;
  const size_t row_bytes = static_cast<size_t>(s.inner) * dtype_size(x.dtype());
  const char* px = static_cast<const char*>(x.raw_data());
  char* py = static_cast<char*>(y.raw_data());
  const int32_t* pi = idx.data<int32_t>();
  const int64_t grain = std::max<int64_t>(1, cpu::kElementwiseGrain / s.inner);
  cpu::parallel_for(0, s.outer * K, grain, [&](int64_t b, int64_t e) {
    for (int64_t u = b; u < e; ++u) {
      const int64_t o = u / K, k = u % K;
      std::memcpy(py + static_cast<size_t>(u) * row_bytes,
                  px + static_cast<size_t>(o * s.n + pi[k]) * row_bytes, row_bytes);
    }
  });
  return y;
}

Tensor IndexSelectOp::backward(CpuTag, std::string_view name, const Shape& x_shape, int64_t dim, const Tensor& idx,
                               const Tensor& dy) {
  Tensor dx = Tensor::empty(x_shape, dy.dtype());
  if (dx.numel() == 0) return dx;
  const Split s = split_at(x_shape, dim);
  const int64_t K = idx.numel();
  const int32_t* pi = idx.data<int32_t>();
  // by_row[first[n] .. first[n + 1]) lists the k with idx[k] = n, ascending.
  std::vector<int64_t> first(static_cast<size_t>(s.n) + 1, 0), by_row(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) ++first[static_cast<size_t>(pi[k]) + 1];
  for (size_t n = 0; n < static_cast<size_t>(s.n); ++n) first[n + 1] += first[n];
  std::vector<int64_t> next(first.begin(), first.end() - 1);
  for (int64_t k = 0; k < K; ++k) by_row[static_cast<size_t>(next[static_cast<size_t>(pi[k])]++)] = k;

  dispatch_float(dy.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    const T* pdy = dy.data<T>();
    T* pdx = dx.data<T>();
    const int64_t grain = std::max<int64_t>(1, cpu::kElementwiseGrain / std::max<int64_t>(1, s.inner));
    cpu::parallel_for(0, s.outer * s.n, grain, [&](int64_t b, int64_t e) {
      std::vector<double> acc(static_cast<size_t>(s.inner));
      for (int64_t u = b; u < e; ++u) {
        const int64_t o = u / s.n;
        const size_t n = static_cast<size_t>(u % s.n);
        T* out = pdx + u * s.inner;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j = first[n]; j < first[n + 1]; ++j) {
          const T* g = pdy + (o * K + by_row[static_cast<size_t>(j)]) * s.inner;
          for (int64_t c = 0; c < s.inner; ++c) acc[static_cast<size_t>(c)] += static_cast<double>(g[c]);
        }
        for (int64_t c = 0; c < s.inner; ++c) out[c] = static_cast<T>(acc[static_cast<size_t>(c)]);
      }
    });
  });
  return dx;
}

}  // namespace attnlab
