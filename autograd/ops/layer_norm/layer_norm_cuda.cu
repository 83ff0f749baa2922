// CUDA kernels of layer_norm, f32 with f32 accumulation, on contiguous tensors seen as R rows
// of C elements.
//
//   forward:  x [R, C], weight [C], bias [C] or none -> y [R, C], mean [R], rstd [R]
//             mean = sum_c x / C,  var = sum_c (x - mean)^2 / C (centred: no cancellation when
//             |mean| >> std),  rstd = 1 / sqrt(var + eps),  y = (x - mean) * rstd * w + b
//   backward: g = dy * w, xhat = (x - mean) * rstd
//             dx [R, C] = rstd * (g - sum_c g / C - xhat * sum_c (g * xhat) / C)
//             dweight [C] = sum_r dy * xhat,  dbias [C] = sum_r dy
//
// Launches:
//   ln_forward_kernel, ln_dx_kernel: one row per group of G threads (G a multiple of 32, about
//     4 elements per thread, at most 512). G = 32: block (32, 8), one warp per row, grid
//     ceil(R / 8). G > 32: block (G, 1), one block per row, grid R. Thread j takes elements j,
//     j + G, ... (coalesced); row sums by warp shuffles, then (G > 32) the per-warp partials
//     through 32 floats of static shared memory. The row is re-read per pass (L1/L2 holds it).
//   dweight, dbias: cuda::column_sums (lib/cuda/block_reduce.h), the shared two-pass column sum:
//     pass 1 block (32, 8), grid (ceil(C / 32), P, Z), each block summing K = max(64,
//     ceil(R / 256)) rows of 32 columns into partial[z, p, c]; pass 2 block 256 over c, grid
//     (ceil(C / 256), Z), adding partial[z, 0..P-1, c] in order. Sum 0 is dy * xhat (dweight),
//     sum 1 is dy (dbias); only the asked-for ones are launched (LnColumnTerm / LnColumnStore).
// No atomics: every sum has a fixed order given (R, C), so gradients are deterministic.
#include <cmath>
#include <cstdint>

#include "autograd/ops/layer_norm/layer_norm.h"
#include "lib/cuda/kernel.h"
#include "lib/cuda/block_reduce.h"
#include "lib/error.h"

namespace attnlab {

namespace {

constexpr const char* kName = "layer_norm";
using cuda::group_sum;

// Idle rows of a ragged last block run with zero length (every thread still reaches every
// shuffle and barrier) and store nothing.
__global__ void ln_forward_kernel(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                                  float* __restrict__ y, float* __restrict__ mean, float* __restrict__ rstd,
                                  int64_t rows, int64_t C, float eps) {
  __shared__ float red[32];
  const auto [row, live, len, base] = cuda::group_row(rows, C);
  const float* xr = x + base;
  float* yr = y + base;
  const float inv_c = 1.f / static_cast<float>(C);

  float s = 0.f;
  for (int64_t c = threadIdx.x; c < len; c += blockDim.x) s += xr[c];
  const float mu = group_sum(s, red) * inv_c;
  float ss = 0.f;
  for (int64_t c = threadIdx.x; c < len; c += blockDim.x) {
    const float d = xr[c] - mu;
    ss += d * d;
  }
  const float rs = 1.f / sqrtf(group_sum(ss, red) * inv_c + eps);
  if (live && threadIdx.x == 0) {
    mean[row] = mu;
    rstd[row] = rs;
  }
  for (int64_t c = threadIdx.x; c < len; c += blockDim.x) yr[c] = (xr[c] - mu) * rs * w[c] + (b ? b[c] : 0.f);
}

__global__ void ln_dx_kernel(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ mean,
                             const float* __restrict__ rstd, const float* __restrict__ dy, float* __restrict__ dx,
                             int64_t rows, int64_t C) {
  __shared__ float red[32];
  const auto [row, live, len, base] = cuda::group_row(rows, C);
  const float* xr = x + base;
  const float* dyr = dy + base;
  float* dxr = dx + base;
  const float m = live ? mean[row] : 0.f, rs = live ? rstd[row] : 0.f;
  const float inv_c = 1.f / static_cast<float>(C);

  float sg = 0.f, sgx = 0.f;
  for (int64_t c = threadIdx.x; c < len; c += blockDim.x) {
    const float g = dyr[c] * w[c];
    sg += g;
    sgx += g * ((xr[c] - m) * rs);
  }
  const float a = group_sum(sg, red) * inv_c;
  const float bb = group_sum(sgx, red) * inv_c;
  for (int64_t c = threadIdx.x; c < len; c += blockDim.x) dxr[c] = rs * (dyr[c] * w[c] - a - (xr[c] - m) * rs * bb);
}

// The column sums' terms: sum z0 + z is 0 for dy * xhat (dweight), 1 for dy (dbias).
struct LnColumnTerm {
  const float *x, *mean, *rstd, *dy;
  int64_t C;
  int z0;
  __device__ void operator()(float& acc, int64_t z, int64_t r, int64_t c) const {
    const float d = dy[r * C + c];
    acc += z0 + z == 0 ? d * ((x[r * C + c] - mean[r]) * rstd[r]) : d;
  }
};
struct LnColumnStore {
  float *dweight, *dbias;
  int z0;
  __device__ void operator()(int64_t z, int64_t c, float s) const { (z0 + z == 0 ? dweight : dbias)[c] = s; }
};

void check_f32(const Tensor& t, const char* what) {
  AL_CHECK_DTYPE(t.dtype() == DType::f32, kName, ": the CUDA kernels take f32 only; got ", what, "=", t);
}

}  // namespace

LayerNormOp::Forward LayerNormOp::forward(CudaTag, const Tensor& x, const Tensor& weight, const Tensor& bias,
                                          double eps) {
  check_f32(x, "x");
  const Tensor xc = x.contiguous();
  const Tensor wc = weight.contiguous();
  const Tensor bc = bias.defined() ? bias.contiguous() : Tensor();
  const int64_t C = xc.size(-1);
  const int64_t R = Shape(std::vector<int64_t>(xc.shape().begin(), xc.shape().end() - 1)).numel();
  const Device dev = xc.device();
  Forward f{Tensor::empty(xc.shape(), DType::f32, dev), Tensor::empty(Shape{R}, DType::f32, dev),
            Tensor::empty(Shape{R}, DType::f32, dev)};
  if (R == 0) return f;
  const cuda::RowShape s = cuda::row_shape(R, C);
  AL_CUDA_LAUNCH(ln_forward_kernel, s.grid, s.block, 0, xc.data<float>(), wc.data<float>(),
                 bc.defined() ? bc.data<float>() : static_cast<const float*>(nullptr), f.y.data<float>(),
                 f.mean.data<float>(), f.rstd.data<float>(), R, C, static_cast<float>(eps));
  return f;
}

LayerNormOp::Grads LayerNormOp::backward(CudaTag, const Tensor& x, const Tensor& weight, const Tensor& mean,
                                         const Tensor& rstd, const Tensor& dy, bool need_dx, bool need_dweight,
                                         bool need_dbias) {
  check_f32(x, "x");
  check_f32(dy, "dy");
  const Tensor xc = x.contiguous();
  const Tensor wc = weight.contiguous();
  const Tensor mc = mean.contiguous();
  const Tensor rc = rstd.contiguous();
  const Tensor dyc = dy.contiguous();
  const int64_t C = xc.size(-1);
  const int64_t R = mc.numel();
  const Device dev = xc.device();
  Grads g;
  if (need_dx) {
    g.dx = Tensor::empty(xc.shape(), DType::f32, dev);
    if (R > 0 && C > 0) {
      const cuda::RowShape s = cuda::row_shape(R, C);
      AL_CUDA_LAUNCH(ln_dx_kernel, s.grid, s.block, 0, xc.data<float>(), wc.data<float>(), mc.data<float>(),
                     rc.data<float>(), dyc.data<float>(), g.dx.data<float>(), R, C);
    }
  }
  if (!need_dweight && !need_dbias) return g;
  if (R == 0 || C == 0) {
    if (need_dweight) g.dweight = Tensor::zeros(Shape{C}, DType::f32, dev);
    if (need_dbias) g.dbias = Tensor::zeros(Shape{C}, DType::f32, dev);
    return g;
  }
  if (need_dweight) g.dweight = Tensor::empty(Shape{C}, DType::f32, dev);
  if (need_dbias) g.dbias = Tensor::empty(Shape{C}, DType::f32, dev);
  const int z0 = need_dweight ? 0 : 1;
  const int64_t nz = (need_dweight ? 1 : 0) + (need_dbias ? 1 : 0);
  cuda::column_sums(LnColumnTerm{xc.data<float>(), mc.data<float>(), rc.data<float>(), dyc.data<float>(), C, z0},
                    LnColumnStore{need_dweight ? g.dweight.data<float>() : nullptr,
                                  need_dbias ? g.dbias.data<float>() : nullptr, z0},
                    R, C, nz, dev);
  return g;
}

}  // namespace attnlab
