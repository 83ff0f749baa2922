// CUDA kernels of dropout, f32 and f64; x, s, y, dy, dx [n] contiguous (n = numel):
//
//   forward   r = philox4x32_10(base + b, 0, seed) for block b = i / 4;
//             s[i] = uniform01(r.v[i % 4]) >= p ? 1 / (1 - p) : 0;   y[i] = s[i] x[i]
//   backward  dx[i] = s[i] dy[i]
//
// The counter scheme is dropout_cpu.cpp's (and fill_uniform's): element i depends only on
// (seed, base, i), so the CUDA mask equals the CPU mask bit for bit for the same Generator
// state, and the same p compared in double.
//
// Launch: forward, one thread per Philox block of 4 elements, a 1-D grid of
// blocks_for(ceil(n / 4), 256) x 256 threads with a grid-stride loop over blocks (one Philox
// evaluation serves 4 outputs, as on the CPU); backward, one thread per element, the same grid
// form over n. No shared memory; every output written by one thread.
#include "lib/cuda/kernel.h"

#include "autograd/ops/dropout/dropout.h"
#include "lib/rng.h"

namespace attnlab {

namespace {

constexpr unsigned kThreads = 256;

template <typename T>
__global__ void dropout_forward_kernel(const T* __restrict__ x, T* __restrict__ y, T* __restrict__ s, int64_t n,
                                       double p, T kept, uint64_t seed, uint64_t base) {
  const int64_t blocks = (n + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b < blocks; b += stride) {
    const Philox4x32 r = philox4x32_10(base + static_cast<uint64_t>(b), 0, seed);
    for (int j = 0; j < 4; ++j) {
      const int64_t i = 4 * b + j;
      if (i < n) {
        const T si = uniform01(r.v[j]) >= p ? kept : T(0);
        s[i] = si;
        y[i] = si * x[i];
      }
    }
  }
}

template <typename T>
__global__ void dropout_backward_kernel(const T* __restrict__ s, const T* __restrict__ dy, T* __restrict__ dx,
                                        int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dx[i] = s[i] * dy[i];
}

}  // namespace

std::pair<Tensor, Tensor> DropoutOp::forward(CudaTag, const Tensor& x, double p, uint64_t seed, uint64_t base) {
  AL_ASSERT(x.is_contiguous(), "dropout: the CUDA kernel takes a contiguous x; got ", x);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor s = Tensor::empty(x.shape(), x.dtype(), x.device());
  const int64_t n = x.numel();
  if (n == 0) return {y, s};
  dispatch_float(x.dtype(), "dropout", [&](auto tag) {
    using T = decltype(tag);
    const T kept = static_cast<T>(1.0 / (1.0 - p));  // as the CPU rounds it
    AL_CUDA_LAUNCH(dropout_forward_kernel<T>, dim3(cuda::blocks_for((n + 3) / 4, kThreads)), dim3(kThreads), 0,
                   x.data<T>(), y.data<T>(), s.data<T>(), n, p, kept, seed, base);
  });
  return {y, s};
}

Tensor DropoutOp::backward(CudaTag, const Tensor& s, const Tensor& dy) {
  AL_ASSERT(s.is_contiguous() && dy.is_contiguous(), "dropout: the CUDA backward takes contiguous s and dy; got s=",
            s, ", dy=", dy);
  Tensor dx = Tensor::empty(s.shape(), s.dtype(), s.device());
  const int64_t n = s.numel();
  if (n == 0) return dx;
  dispatch_float(s.dtype(), "dropout", [&](auto tag) {
    using T = decltype(tag);
    AL_CUDA_LAUNCH(dropout_backward_kernel<T>, dim3(cuda::blocks_for(n, kThreads)), dim3(kThreads), 0, s.data<T>(),
                   dy.data<T>(), dx.data<T>(), n);
  });
  return dx;
}

}  // namespace attnlab
