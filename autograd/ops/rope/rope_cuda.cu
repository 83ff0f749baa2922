// CUDA kernels of rope (half-split rotary embedding), f32, on x contiguous [B, H, T, D] seen as
// R = B H T rows of D, row r at time t = r mod T, pair i in [0, D/2) = (x[i], x[i + D/2]):
//
//   theta[t, i] = (position_offset + t) * base^(-2i / D)
//   y[i] = x[i] cos(theta) - x[i + D/2] sin(theta),  y[i + D/2] = x[i] sin(theta) + x[i + D/2] cos(theta)
//   backward: the same with sin negated (rotation by -theta).
//
// Launches:
//   rope_table_kernel: cos and sin of theta [T, D/2], computed in double and rounded to f32
//     exactly as the CPU table (positions reach the thousands, where an f32 angle would lose the
//     low frequencies); one thread per (t, i), block 256, grid-strided. Built once per call, so
//     the B H rows at one time step share it instead of each redoing the double maths.
//   rope_rotate_kernel: one thread per pair (r, i), i fastest (coalesced halves); block 256,
//     grid ceil(R D/2 / 256) capped at 65535 and grid-strided.
// Elementwise, no reductions: deterministic.
#include <cmath>
#include <cstdint>

#include "autograd/ops/rope/rope.h"
#include "lib/cuda/kernel.h"
#include "lib/error.h"

namespace attnlab {

namespace {

constexpr const char* kName = "rope";
constexpr unsigned kThreads = 256;

__global__ void rope_table_kernel(float* __restrict__ cs, float* __restrict__ sn, int64_t T, int64_t half, int64_t D,
                                  int64_t position_offset, double base, bool inverse) {
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < T * half;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = k / half, i = k - t * half;
    const double inv_freq = pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(D));
    const double theta = static_cast<double>(position_offset + t) * inv_freq;
    cs[k] = static_cast<float>(cos(theta));
    sn[k] = static_cast<float>(inverse ? -sin(theta) : sin(theta));
  }
}

__global__ void rope_rotate_kernel(const float* __restrict__ x, const float* __restrict__ cs,
                                   const float* __restrict__ sn, float* __restrict__ y, int64_t pairs, int64_t T,
                                   int64_t half) {
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < pairs;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = k / half, i = k - r * half;
    const int64_t ti = (r % T) * half + i;
    const float c = cs[ti], s = sn[ti];
    const float* a = x + r * 2 * half;
    float* b = y + r * 2 * half;
    const float x1 = a[i], x2 = a[i + half];
    b[i] = x1 * c - x2 * s;
    b[i + half] = x1 * s + x2 * c;
  }
}

}  // namespace

Tensor RopeOp::forward(CudaTag, const Tensor& x, int64_t position_offset, double base, bool inverse) {
  AL_CHECK_DTYPE(x.dtype() == DType::f32, kName, ": the CUDA kernel takes f32 only; got x=", x);
  const Tensor xc = x.contiguous();
  const int64_t T = xc.size(2), D = xc.size(3), half = D / 2;
  const Device dev = xc.device();
  Tensor y = Tensor::empty(xc.shape(), DType::f32, dev);
  const int64_t pairs = xc.numel() / 2;
  if (pairs == 0) return y;
  Tensor table = Tensor::empty(Shape{2, T, half}, DType::f32, dev);
  float* cs = table.data<float>();
  float* sn = cs + T * half;
  AL_CUDA_LAUNCH(rope_table_kernel, dim3(cuda::blocks_for(T * half, kThreads)), dim3(kThreads), 0, cs, sn, T, half, D,
                 position_offset, base, inverse);
  AL_CUDA_LAUNCH(rope_rotate_kernel, dim3(cuda::blocks_for(pairs, kThreads)), dim3(kThreads), 0, xc.data<float>(),
                 static_cast<const float*>(cs), static_cast<const float*>(sn), y.data<float>(), pairs, T, half);
  return y;
}

Tensor RopeOp::backward(CudaTag, const Tensor& dy, int64_t position_offset, double base) {
  return forward(CudaTag{}, dy, position_offset, base, /*inverse=*/true);
}

}  // namespace attnlab
