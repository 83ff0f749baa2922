// CPU kernels of dropout: x contiguous [n], one Philox block per 4 elements, blocks spread over
// threads (each element's keep decision depends only on seed, base and its index).
#include "autograd/ops/dropout/dropout.h"
#include "lib/cpu/loops.h"
#include "lib/rng.h"

namespace attnlab {

std::pair<Tensor, Tensor> DropoutOp::forward(CpuTag, const Tensor& x, double p, uint64_t seed, uint64_t base) {
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  Tensor s = Tensor::empty(x.shape(), x.dtype());
  const int64_t n = x.numel();
  dispatch_float(x.dtype(), "dropout", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    T* ps = s.data<T>();
    const T kept = static_cast<T>(1.0 / (1.0 - p));
    cpu::parallel_for(0, (n + 3) / 4, cpu::kElementwiseGrain / 4, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const Philox4x32 r = philox4x32_10(base + static_cast<uint64_t>(b), 0, seed);
        for (int64_t j = 0; j < 4 && 4 * b + j < n; ++j) {
          const int64_t i = 4 * b + j;
          ps[i] = uniform01(r.v[j]) >= p ? kept : T(0);
          py[i] = ps[i] * px[i];
        }
      }
    });
  });
  return {y, s};
}

Tensor DropoutOp::backward(CpuTag, const Tensor& s, const Tensor& dy) {
  Tensor dx = Tensor::empty(s.shape(), s.dtype());
  dispatch_float(s.dtype(), "dropout", [&](auto tag) {
    using T = decltype(tag);
    const T* ps = s.data<T>();
    const T* pdy = dy.data<T>();
    T* pdx = dx.data<T>();
    cpu::parallel_for(0, s.numel(), cpu::kElementwiseGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) pdx[i] = ps[i] * pdy[i];
    });
  });
  return dx;
}

}  // namespace attnlab
