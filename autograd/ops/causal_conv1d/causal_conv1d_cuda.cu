// CUDA kernels of causal_conv1d (causal depthwise convolution over time), f32 with f32
// accumulation, on contiguous tensors. Rows are the R = B * T (b, t) pairs, row r at time
// t = r mod T, and row r - k holds time t - k of the same batch when k <= t.
//
//   forward:  x [B, T, C], weight [C, W], bias [C] or none -> y [B, T, C]
//             y[r, c] = bias[c] + sum_{j >= W-1-t} weight[c, j] * x[r - (W-1) + j, c]
//   backward: dy [B, T, C] -> dx [B, T, C], dweight [C, W], dbias [C]
//             dx[r, c]      = sum_{j >= t+W-T} weight[c, j] * dy[r + (W-1) - j, c]
//             dweight[c, j] = sum_{r : t >= W-1-j} dy[r, c] * x[r - (W-1) + j, c]
//             dbias[c]      = sum_r dy[r, c]
// Taps are added in increasing j, as on the CPU.
//
// Launches:
//   conv_forward_kernel, conv_dx_kernel: elementwise, one thread per (r, c), c fastest
//     (coalesced); block 256, grid ceil(R C / 256) capped at 65535 and grid-strided. Each
//     thread sums its at most W taps (W is a short kernel: KDA uses 4).
//   dweight and dbias: cuda::column_sums (lib/cuda/block_reduce.h), the shared two-pass column
//     sum: pass 1 block (32, 8), grid (ceil(C / 32), P, Z), each block summing K = max(64,
//     ceil(R / 256)) rows of 32 columns into partial[z, p, c]; pass 2 block 256 over c, grid
//     (ceil(C / 256), Z), adding partial[z, 0..P-1, c] in order. Sum z < W is tap z of dweight,
//     z = W is dbias; only the asked-for ones are launched (ConvColumnTerm / ConvColumnStore).
// No atomics: every sum has a fixed order given the shapes, so gradients are deterministic.
#include <cstdint>

#include "autograd/ops/causal_conv1d/causal_conv1d.h"
#include "lib/cuda/kernel.h"
#include "lib/cuda/block_reduce.h"
#include "lib/error.h"

namespace attnlab {

namespace {

constexpr const char* kName = "causal_conv1d";
constexpr unsigned kThreads = 256;

__global__ void conv_forward_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                    const float* __restrict__ b, float* __restrict__ y, int64_t n, int64_t T, int64_t C,
                                    int64_t W) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / C, c = i - r * C, t = r % T;
    float acc = b ? b[c] : 0.f;
    for (int64_t j = W - 1 - t > 0 ? W - 1 - t : 0; j < W; ++j) acc += w[c * W + j] * x[i + (j - (W - 1)) * C];
    y[i] = acc;
  }
}

__global__ void conv_dx_kernel(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,
                               int64_t n, int64_t T, int64_t C, int64_t W) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / C, c = i - r * C, t = r % T;
    float acc = 0.f;
    // Tap j carries time t to the output at t + (W-1) - j, which must be before T.
    for (int64_t j = t + W - T > 0 ? t + W - T : 0; j < W; ++j) acc += w[c * W + j] * dy[i + ((W - 1) - j) * C];
    dx[i] = acc;
  }
}

// The column sums: sum z0 + z is tap z0 + z of dweight when below W, dbias when W.
struct ConvColumnTerm {
  const float *x, *dy;
  int64_t T, C, W, z0;
  __device__ void operator()(float& acc, int64_t slice, int64_t r, int64_t c) const {
    const int64_t z = z0 + slice;
    const float d = dy[r * C + c];
    if (z == W) {
      acc += d;
    } else if (r % T >= W - 1 - z) {
      acc += d * x[(r - (W - 1) + z) * C + c];
    }
  }
};
struct ConvColumnStore {
  float *dweight, *dbias;
  int64_t W, z0;
  __device__ void operator()(int64_t slice, int64_t c, float s) const {
    const int64_t z = z0 + slice;
    if (z == W) {
      dbias[c] = s;
    } else {
      dweight[c * W + z] = s;
    }
  }
};

void check_f32(const Tensor& t, const char* what) {
  AL_CHECK_DTYPE(t.dtype() == DType::f32, kName, ": the CUDA kernels take f32 only; got ", what, "=", t);
}

}  // namespace

Tensor CausalConv1dOp::forward(CudaTag, const Tensor& x, const Tensor& weight, const Tensor& bias) {
  check_f32(x, "x");
  const Tensor xc = x.contiguous();
  const Tensor wc = weight.contiguous();
  const Tensor bc = bias.defined() ? bias.contiguous() : Tensor();
  const int64_t T = xc.size(1), C = xc.size(2), W = wc.size(1);
  const int64_t n = xc.numel();
  Tensor y = Tensor::empty(xc.shape(), DType::f32, xc.device());
  if (n == 0) return y;
  AL_CUDA_LAUNCH(conv_forward_kernel, dim3(cuda::blocks_for(n, kThreads)), dim3(kThreads), 0, xc.data<float>(),
                 wc.data<float>(), bc.defined() ? bc.data<float>() : static_cast<const float*>(nullptr),
                 y.data<float>(), n, T, C, W);
  return y;
}

CausalConv1dOp::Grads CausalConv1dOp::backward(CudaTag, const Tensor& x, const Tensor& weight, const Tensor& dy,
                                               bool need_dx, bool need_dweight, bool need_dbias) {
  check_f32(x, "x");
  check_f32(dy, "dy");
  const Tensor xc = x.contiguous();
  const Tensor wc = weight.contiguous();
  const Tensor dyc = dy.contiguous();
  const int64_t T = xc.size(1), C = xc.size(2), W = wc.size(1);
  const int64_t R = xc.size(0) * T;
  const int64_t n = xc.numel();
  const Device dev = xc.device();
  Grads g;
  if (need_dx) {
    g.dx = Tensor::empty(xc.shape(), DType::f32, dev);
    if (n > 0) {
      AL_CUDA_LAUNCH(conv_dx_kernel, dim3(cuda::blocks_for(n, kThreads)), dim3(kThreads), 0, dyc.data<float>(),
                     wc.data<float>(), g.dx.data<float>(), n, T, C, W);
    }
  }
  if (!need_dweight && !need_dbias) return g;
  if (n == 0) {
    if (need_dweight) g.dweight = Tensor::zeros(wc.shape(), DType::f32, dev);
    if (need_dbias) g.dbias = Tensor::zeros(Shape{C}, DType::f32, dev);
    return g;
  }
  // One grid z-slice per sum (W taps, then the bias).
  AL_CHECK_SHAPE(W < 65535, kName, ": the CUDA backward takes kernel sizes W < 65535; got weight=", weight);
  if (need_dweight) g.dweight = Tensor::empty(wc.shape(), DType::f32, dev);
  if (need_dbias) g.dbias = Tensor::empty(Shape{C}, DType::f32, dev);
  const int64_t z0 = need_dweight ? 0 : W;
  const int64_t nz = (need_dweight ? W : 0) + (need_dbias ? 1 : 0);
  cuda::column_sums(ConvColumnTerm{xc.data<float>(), dyc.data<float>(), T, C, W, z0},
                    ConvColumnStore{need_dweight ? g.dweight.data<float>() : nullptr,
                                    need_dbias ? g.dbias.data<float>() : nullptr, W, z0},
                    R, C, nz, dev);
  return g;
}

}  // namespace attnlab
