// CUDA kernels of softmax and log_softmax over the last dim. x is contiguous [R, N] (leading
// dims flattened to R rows), f32 only; sums and maxima accumulate in f32.
//
//   forward:  m = max_j x_j,  s = sum_j exp(x_j - m)
//             softmax y_j = exp(x_j - m) / s        log_softmax y_j = (x_j - m) - log s
//   backward: softmax     dx_j = y_j (dy_j - sum_k dy_k y_k)
//             log_softmax dx_j = dy_j - exp(y_j) sum_k dy_k
//
// Launch shape (cuda::row_shape and the group reductions of lib/cuda/block_reduce.h): a row
// belongs to a group of G threads, G a multiple of 32, about 4 elements per thread, at most 512.
//   G = 32  (N <= 128): block (32, 8), one warp per row, grid ceil(R / 8); warp shuffles only.
//   G > 32:            block (G, 1), one block per row, grid R; warp shuffles, then the
//                      per-warp partials through 32 floats of static shared memory.
// Thread j of a group handles elements j, j + G, j + 2G, ... of its row (coalesced). Rows past
// R (the ragged last block of the warp-per-row shape) run with zero length and store nothing,
// so every thread reaches every shuffle and barrier. The row is read again per pass rather than
// kept in shared memory: rows of 50K logits do not fit, and a re-read row hits L1/L2.
// Every reduction has a fixed shape given (R, N), so results are deterministic.
#include <cmath>
#include <cstdint>

#include "autograd/ops/softmax/softmax.h"
#include "lib/cuda/kernel.h"
#include "lib/cuda/block_reduce.h"
#include "lib/error.h"

namespace attnlab {

namespace {

using cuda::group_sum;

__global__ void softmax_forward_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t rows, int64_t n,
                                       bool log) {
  __shared__ float red[32];
  const auto [row, live, len, base] = cuda::group_row(rows, n);
  const float* xr = x + base;
  float* yr = y + base;

  float m, s;
  cuda::group_max_sumexp(xr, len, red, m, s);
  if (log) {
    const float log_s = logf(s);
    for (int64_t j = threadIdx.x; j < len; j += blockDim.x) yr[j] = (xr[j] - m) - log_s;
  } else {
    const float inv_s = 1.f / s;
    for (int64_t j = threadIdx.x; j < len; j += blockDim.x) yr[j] = expf(xr[j] - m) * inv_s;
  }
}

__global__ void softmax_backward_kernel(const float* __restrict__ y, const float* __restrict__ dy,
                                        float* __restrict__ dx, int64_t rows, int64_t n, bool log) {
  __shared__ float red[32];
  const auto [row, live, len, base] = cuda::group_row(rows, n);
  const float* yr = y + base;
  const float* dyr = dy + base;
  float* dxr = dx + base;

  float s = 0.f;
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x) s += log ? dyr[j] : dyr[j] * yr[j];
  s = group_sum(s, red);
  if (log) {
    for (int64_t j = threadIdx.x; j < len; j += blockDim.x) dxr[j] = dyr[j] - expf(yr[j]) * s;
  } else {
    for (int64_t j = threadIdx.x; j < len; j += blockDim.x) dxr[j] = yr[j] * (dyr[j] - s);
  }
}

void check_f32(bool log, const Tensor& t, const char* what) {
  AL_CHECK_DTYPE(t.dtype() == DType::f32, SoftmaxOp::name(log), ": the CUDA kernels take f32 only; got ", what, "=", t);
}

}  // namespace

Tensor SoftmaxOp::forward(CudaTag, bool log, const Tensor& x) {
  check_f32(log, x, "x");
  const Tensor xc = x.contiguous();
  Tensor y = Tensor::empty(xc.shape(), xc.dtype(), xc.device());
  const int64_t n = xc.size(-1);
  const int64_t rows = n > 0 ? xc.numel() / n : 0;
  if (rows == 0) return y;
  const cuda::RowShape s = cuda::row_shape(rows, n);
  AL_CUDA_LAUNCH(softmax_forward_kernel, s.grid, s.block, 0, xc.data<float>(), y.data<float>(), rows, n, log);
  return y;
}

Tensor SoftmaxOp::backward(CudaTag, bool log, const Tensor& y, const Tensor& dy) {
  check_f32(log, y, "y");
  check_f32(log, dy, "dy");
  const Tensor yc = y.contiguous();
  const Tensor dyc = dy.contiguous();
  Tensor dx = Tensor::empty(yc.shape(), yc.dtype(), yc.device());
  const int64_t n = yc.size(-1);
  const int64_t rows = n > 0 ? yc.numel() / n : 0;
  if (rows == 0) return dx;
  const cuda::RowShape s = cuda::row_shape(rows, n);
  AL_CUDA_LAUNCH(softmax_backward_kernel, s.grid, s.block, 0, yc.data<float>(), dyc.data<float>(), dx.data<float>(),
                 rows, n, log);
  return dx;
}

}  // namespace attnlab
