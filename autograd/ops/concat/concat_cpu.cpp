// CPU kernel of concat and stack: y [outer, sum n_i, inner] <- xs[i] [outer, n_i, inner].
// Each (row of outer, input) pair is one memcpy of n_i * inner elements; the pairs are spread
// over threads. Pure copies, so the kernel moves bytes and serves every dtype.
#include <cstring>

#include "autograd/ops/concat/concat.h"
#include "lib/cpu/parallel.h"

namespace attnlab {

namespace {
constexpr int64_t kCopyGrainBytes = int64_t{1} << 17;
}

Tensor ConcatOp::forward(CpuTag, const std::vector<Tensor>& xs, int64_t dim, const Shape& y_shape) {
  Tensor y = Tensor::empty(y_shape, xs[0].dtype());
  if (y.numel() == 0) return y;
  const int64_t es = static_cast<int64_t>(dtype_size(y.dtype()));
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= y_shape[d];
  for (int64_t d = dim + 1; d < y_shape.ndim(); ++d) inner *= y_shape[d];
  const int64_t row_bytes = y_shape[dim] * inner * es;

  // Per input: its first byte, its bytes per outer row, and where they go in y's row.
  const int64_t nx = static_cast<int64_t>(xs.size());
  std::vector<const char*> src(xs.size());
  std::vector<int64_t> bytes(xs.size()), at(xs.size());
  int64_t offset = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    src[i] = static_cast<const char*>(xs[i].raw_data());
    bytes[i] = xs[i].size(dim) * inner * es;
    at[i] = offset;
    offset += bytes[i];
  }
  char* dst = static_cast<char*>(y.raw_data());
  const int64_t grain = std::max<int64_t>(1, kCopyGrainBytes * nx / row_bytes);
  cpu::parallel_for(0, outer * nx, grain, [&](int64_t b, int64_t e) {
    for (int64_t u = b; u < e; ++u) {
      const int64_t o = u / nx;
      const size_t i = static_cast<size_t>(u % nx);
      if (bytes[i] > 0) std::memcpy(dst + o * row_bytes + at[i], src[i] + o * bytes[i], static_cast<size_t>(bytes[i]));
    }
  });
  return y;
}

}  // namespace attnlab
