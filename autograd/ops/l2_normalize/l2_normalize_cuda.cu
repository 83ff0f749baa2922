// CUDA kernels of l2_normalize, f32 with f32 accumulation, on contiguous tensors seen as R rows
// of C elements.
//
//   forward:  x [R, C] -> rinv [R] = 1 / sqrt(sum_c x^2 + eps),  y [R, C] = x * rinv
//   backward: y [R, C], rinv [R], dy [R, C] -> dx [R, C] = rinv * (dy - y * sum_c dy * y)
//
// Launch shape (both kernels): one row per group of G threads, G a multiple of 32, about 4
// elements per thread, at most 512. G = 32: block (32, 8), one warp per row, grid ceil(R / 8).
// G > 32: block (G, 1), one block per row, grid R. Thread j takes elements j, j + G, ...
// (coalesced); the row sum by warp shuffles, then (G > 32) the per-warp partials through 32
// floats of static shared memory. The row is re-read for the second pass (L1/L2 holds it).
// Idle rows of a ragged last block run with zero length, so every thread reaches every shuffle
// and barrier, and store nothing. Fixed reduction order given (R, C): deterministic.
#include <cmath>
#include <cstdint>

#include "autograd/ops/l2_normalize/l2_normalize.h"
#include "lib/cuda/kernel.h"
#include "lib/cuda/block_reduce.h"
#include "lib/error.h"

namespace attnlab {

namespace {

constexpr const char* kName = "l2_normalize";
using cuda::group_sum;

__global__ void l2_forward_kernel(const float* __restrict__ x, float* __restrict__ y, float* __restrict__ rinv,
                                  int64_t rows, int64_t C, float eps) {
  __shared__ float red[32];
  const auto [row, live, len, base] = cuda::group_row(rows, C);
  const float* xr = x + base;
  float* yr = y + base;

  float ss = 0.f;
  for (int64_t c = threadIdx.x; c < len; c += blockDim.x) ss += xr[c] * xr[c];
  const float ri = 1.f / sqrtf(group_sum(ss, red) + eps);
  if (live && threadIdx.x == 0) rinv[row] = ri;
  for (int64_t c = threadIdx.x; c < len; c += blockDim.x) yr[c] = xr[c] * ri;
}

__global__ void l2_backward_kernel(const float* __restrict__ y, const float* __restrict__ rinv,
                                   const float* __restrict__ dy, float* __restrict__ dx, int64_t rows, int64_t C) {
  __shared__ float red[32];
  const auto [row, live, len, base] = cuda::group_row(rows, C);
  const float* yr = y + base;
  const float* dyr = dy + base;
  float* dxr = dx + base;
  const float ri = live ? rinv[row] : 0.f;

  float s = 0.f;
  for (int64_t c = threadIdx.x; c < len; c += blockDim.x) s += dyr[c] * yr[c];
  s = group_sum(s, red);
  for (int64_t c = threadIdx.x; c < len; c += blockDim.x) dxr[c] = ri * (dyr[c] - yr[c] * s);
}

void check_f32(const Tensor& t, const char* what) {
  AL_CHECK_DTYPE(t.dtype() == DType::f32, kName, ": the CUDA kernels take f32 only; got ", what, "=", t);
}

}  // namespace

L2NormalizeOp::Forward L2NormalizeOp::forward(CudaTag, const Tensor& x, double eps) {
  check_f32(x, "x");
  const Tensor xc = x.contiguous();
  const int64_t C = xc.size(-1);
  const int64_t R = Shape(std::vector<int64_t>(xc.shape().begin(), xc.shape().end() - 1)).numel();
  const Device dev = xc.device();
  Forward f{Tensor::empty(xc.shape(), DType::f32, dev), Tensor::empty(Shape{R}, DType::f32, dev)};
  if (R == 0) return f;
  const cuda::RowShape s = cuda::row_shape(R, C);
  AL_CUDA_LAUNCH(l2_forward_kernel, s.grid, s.block, 0, xc.data<float>(), f.y.data<float>(), f.rinv.data<float>(), R, C,
                 static_cast<float>(eps));
  return f;
}

Tensor L2NormalizeOp::backward(CudaTag, const Tensor& y, const Tensor& rinv, const Tensor& dy) {
  check_f32(y, "y");
  check_f32(dy, "dy");
  const Tensor yc = y.contiguous();
  const Tensor rc = rinv.contiguous();
  const Tensor dyc = dy.contiguous();
  const int64_t C = yc.size(-1);
  const int64_t R = rc.numel();
  Tensor dx = Tensor::empty(yc.shape(), DType::f32, yc.device());
  if (R == 0 || C == 0) return dx;
  const cuda::RowShape s = cuda::row_shape(R, C);
  AL_CUDA_LAUNCH(l2_backward_kernel, s.grid, s.block, 0, yc.data<float>(), rc.data<float>(), dyc.data<float>(),
                 dx.data<float>(), R, C);
  return dx;
}

}  // namespace attnlab
