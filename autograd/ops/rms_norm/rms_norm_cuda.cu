// CUDA kernels of rms_norm, f32 with f32 accumulation, on contiguous tensors seen as R rows of C
// elements.
//
//   forward:  x [R, C], weight [C] -> y [R, C], rstd [R]
//             rstd = 1 / sqrt(sum_c x^2 / C + eps),  y = x * rstd * w
//   backward: g = dy * w, xhat = x * rstd
//             dx [R, C] = rstd * (g - xhat * sum_c (g * xhat) / C)
//             dweight [C] = sum_r dy * xhat
//
// Launches:
//   rms_forward_kernel, rms_dx_kernel: one row per group of G threads (G a multiple of 32, about
//     4 elements per thread, at most 512). G = 32: block (32, 8), one warp per row, grid
//     ceil(R / 8). G > 32: block (G, 1), one block per row, grid R. Thread j takes elements j,
//     j + G, ... (coalesced); the row sum by warp shuffles, then (G > 32) the per-warp partials
//     through 32 floats of static shared memory. The row is re-read per pass (L1/L2 holds it).
//   dweight: cuda::column_sums (lib/cuda/block_reduce.h), the shared two-pass column sum of
//     dy * xhat: pass 1 block (32, 8), grid (ceil(C / 32), P), each block summing K = max(64,
//     ceil(R / 256)) rows of 32 columns into partial[p, c]; pass 2 block 256 over c, grid
//     ceil(C / 256), adding partial[0..P-1, c] in order.
// No atomics: every sum has a fixed order given (R, C), so gradients are deterministic.
#include <cmath>
#include <cstdint>

#include "autograd/ops/rms_norm/rms_norm.h"
#include "lib/cuda/kernel.h"
#include "lib/cuda/block_reduce.h"
#include "lib/error.h"

namespace attnlab {

namespace {

constexpr const char* kName = "rms_norm";
using cuda::group_sum;

// Idle rows of a ragged last block run with zero length (every thread still reaches every
// shuffle and barrier) and store nothing.
__global__ void rms_forward_kernel(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
                                   float* __restrict__ rstd, int64_t rows, int64_t C, float eps) {
  __shared__ float red[32];
  const auto [row, live, len, base] = cuda::group_row(rows, C);
  const float* xr = x + base;
  float* yr = y + base;

  float ss = 0.f;
  for (int64_t c = threadIdx.x; c < len; c += blockDim.x) ss += xr[c] * xr[c];
  const float rs = 1.f / sqrtf(group_sum(ss, red) / static_cast<float>(C) + eps);
  if (live && threadIdx.x == 0) rstd[row] = rs;
  for (int64_t c = threadIdx.x; c < len; c += blockDim.x) yr[c] = xr[c] * rs * w[c];
}

__global__ void rms_dx_kernel(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ rstd,
                              const float* __restrict__ dy, float* __restrict__ dx, int64_t rows, int64_t C) {
  __shared__ float red[32];
  const auto [row, live, len, base] = cuda::group_row(rows, C);
  const float* xr = x + base;
  const float* dyr = dy + base;
  float* dxr = dx + base;
  const float rs = live ? rstd[row] : 0.f;

  float sgx = 0.f;
  for (int64_t c = threadIdx.x; c < len; c += blockDim.x) sgx += dyr[c] * w[c] * (xr[c] * rs);
  const float b = group_sum(sgx, red) / static_cast<float>(C);
  for (int64_t c = threadIdx.x; c < len; c += blockDim.x) dxr[c] = rs * (dyr[c] * w[c] - xr[c] * rs * b);
}

// The column sum's term (dweight: dy * xhat) and its store.
struct RmsColumnTerm {
  const float *x, *rstd, *dy;
  int64_t C;
  __device__ void operator()(float& acc, int64_t, int64_t r, int64_t c) const {
    acc += dy[r * C + c] * (x[r * C + c] * rstd[r]);
  }
};
struct RmsColumnStore {
  float* dweight;
  __device__ void operator()(int64_t, int64_t c, float s) const { dweight[c] = s; }
};

void check_f32(const Tensor& t, const char* what) {
  AL_CHECK_DTYPE(t.dtype() == DType::f32, kName, ": the CUDA kernels take f32 only; got ", what, "=", t);
}

}  // namespace

RmsNormOp::Forward RmsNormOp::forward(CudaTag, const Tensor& x, const Tensor& weight, double eps) {
  check_f32(x, "x");
  const Tensor xc = x.contiguous();
  const Tensor wc = weight.contiguous();
  const int64_t C = xc.size(-1);
  const int64_t R = Shape(std::vector<int64_t>(xc.shape().begin(), xc.shape().end() - 1)).numel();
  const Device dev = xc.device();
  Forward f{Tensor::empty(xc.shape(), DType::f32, dev), Tensor::empty(Shape{R}, DType::f32, dev)};
  if (R == 0) return f;
  const cuda::RowShape s = cuda::row_shape(R, C);
  AL_CUDA_LAUNCH(rms_forward_kernel, s.grid, s.block, 0, xc.data<float>(), wc.data<float>(), f.y.data<float>(),
                 f.rstd.data<float>(), R, C, static_cast<float>(eps));
  return f;
}

RmsNormOp::Grads RmsNormOp::backward(CudaTag, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                                     const Tensor& dy, bool need_dx, bool need_dweight) {
  check_f32(x, "x");
  check_f32(dy, "dy");
  const Tensor xc = x.contiguous();
  const Tensor wc = weight.contiguous();
  const Tensor rc = rstd.contiguous();
  const Tensor dyc = dy.contiguous();
  const int64_t C = xc.size(-1);
  const int64_t R = rc.numel();
  const Device dev = xc.device();
  Grads g;
  if (need_dx) {
    g.dx = Tensor::empty(xc.shape(), DType::f32, dev);
    if (R > 0 && C > 0) {
      const cuda::RowShape s = cuda::row_shape(R, C);
      AL_CUDA_LAUNCH(rms_dx_kernel, s.grid, s.block, 0, xc.data<float>(), wc.data<float>(), rc.data<float>(),
                     dyc.data<float>(), g.dx.data<float>(), R, C);
    }
  }
  if (!need_dweight) return g;
  if (R == 0 || C == 0) {
    g.dweight = Tensor::zeros(Shape{C}, DType::f32, dev);
    return g;
  }
  g.dweight = Tensor::empty(Shape{C}, DType::f32, dev);
  cuda::column_sums(RmsColumnTerm{xc.data<float>(), rc.data<float>(), dyc.data<float>(), C},
                    RmsColumnStore{g.dweight.data<float>()}, R, C, 1, dev);
  return g;
}

}  // namespace attnlab
