// CPU kernels of cumsum. x contiguous, viewed as [outer, L, inner] around the scanned dim (L).
// A task scans one outer index over a chunk of up to kChunk inner columns, walking L in order
// with a double running sum per column: contiguous inner loads, and each output element is
// produced by one thread in a fixed order whatever the thread count.
#include <algorithm>

#include "autograd/ops/cumsum/cumsum.h"
#include "lib/cpu/loops.h"

namespace attnlab {

namespace {
constexpr int64_t kChunk = 256;

// y = inclusive scan of x along dim, from the end when `reverse`.
Tensor scan(const Tensor& x, int64_t dim, bool reverse) {
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  int64_t outer = 1, len = 1, inner = 1;
  for (int64_t d = 0; d < x.ndim(); ++d) {
    if (d < dim) outer *= x.shape()[d];
    else if (d == dim) len = x.shape()[d];
    else inner *= x.shape()[d];
  }
  const int64_t chunks = (inner + kChunk - 1) / kChunk;
  const int64_t work = std::max<int64_t>(1, len * std::min(inner, kChunk));
  dispatch_float(x.dtype(), "cumsum", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    cpu::parallel_for(0, outer * chunks, std::max<int64_t>(1, cpu::kElementwiseGrain / work), [&](int64_t t0, int64_t t1) {
      double acc[kChunk];
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t o = t / chunks;
        const int64_t i0 = (t % chunks) * kChunk;
        const int64_t w = std::min(kChunk, inner - i0);
        std::fill(acc, acc + w, 0.0);
        for (int64_t step = 0; step < len; ++step) {
          const int64_t l = reverse ? len - 1 - step : step;
          const int64_t at = (o * len + l) * inner + i0;
          for (int64_t i = 0; i < w; ++i) {
            acc[i] += static_cast<double>(px[at + i]);
            py[at + i] = static_cast<T>(acc[i]);
          }
        }
      }
    });
  });
  return y;
}
}  // namespace

Tensor CumsumOp::forward(CpuTag, const Tensor& x, int64_t dim) { return scan(x, dim, false); }

Tensor CumsumOp::backward(CpuTag, const Tensor& dy, int64_t dim) { return scan(dy, dim, true); }

}  // namespace attnlab
