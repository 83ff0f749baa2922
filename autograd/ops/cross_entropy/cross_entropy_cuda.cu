// CUDA kernels of cross_entropy (log-softmax fused with the NLL), f32 logits with f32
// accumulation. logits x is contiguous [N, V] (leading dims flattened), targets t contiguous i32
// [N]; C counts the targets that are not ignore_index.
//
//   forward:  lse_n = m_n + log sum_v exp(x[n, v] - m_n),  m_n = max_v x[n, v]
//             loss_n = lse_n - x[n, t_n]   (0, and lse_n = 0, where t_n == ignore_index)
//             loss = sum_n loss_n / C      (0 when C = 0)
//   backward: dx[n, v] = (exp(x[n, v] - lse_n) - [v == t_n]) * dloss / C, zero rows where ignored
//
// The targets are copied to the host first: C must be known there (Forward::count) and an
// out-of-range target must throw before any kernel runs, exactly as on the CPU. [N] i32 is small.
//
// Launches:
//   ce_rows_kernel    one row per group of G threads (G a multiple of 32, about 4 logits per
//                     thread, at most 512): G = 32 gives block (32, 8), one warp per row, grid
//                     ceil(N / 8); G > 32 gives block (G, 1), one block per row, grid N. Thread j
//                     reads logits j, j + G, ...; max and sum by warp shuffles, then (G > 32) the
//                     per-warp partials through 32 floats of static shared memory. Writes lse_n
//                     and loss_n.
//   ce_total_kernel   one block of 512 threads adds loss_n in a fixed order (thread i takes rows
//                     i, i + 512, ...; then a block reduction) and divides by C: deterministic,
//                     no atomics.
//   ce_backward_kernel  elementwise: block 256 over v, grid (ceil(V / 256), min(N, 65535)),
//                     both grid-strided; dloss is read on the device (no host sync).
#include <cmath>
#include <cstdint>
#include <vector>

#include "autograd/ops/cross_entropy/cross_entropy.h"
#include "lib/cuda/kernel.h"
#include "lib/cuda/block_reduce.h"
#include "lib/cuda/runtime.h"
#include "lib/error.h"

namespace attnlab {

namespace {

constexpr const char* kName = "cross_entropy";
constexpr unsigned kTotalThreads = 512;

using cuda::group_sum;

// Rows whose target is ignored (and the idle rows of a ragged last block) run with zero length,
// so every thread still reaches every shuffle and barrier; they store lse = loss = 0.
__global__ void ce_rows_kernel(const float* __restrict__ x, const int32_t* __restrict__ targets,
                               float* __restrict__ lse, float* __restrict__ row_loss, int64_t rows, int64_t v,
                               int32_t ignore_index) {
  __shared__ float red[32];
  const auto [row, live, live_len, base] = cuda::group_row(rows, v);
  const int32_t t = live ? targets[row] : ignore_index;
  const bool counted = live && t != ignore_index;
  const int64_t len = counted ? live_len : 0;
  const float* xr = x + base;

  float m, s;
  cuda::group_max_sumexp(xr, len, red, m, s);
  if (live && threadIdx.x == 0) {
    const float l = counted ? m + logf(s) : 0.f;
    lse[row] = l;
    row_loss[row] = counted ? l - xr[t] : 0.f;
  }
}

__global__ void ce_total_kernel(const float* __restrict__ row_loss, float* __restrict__ loss, int64_t rows,
                                int64_t count) {
  __shared__ float red[32];
  float s = 0.f;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) s += row_loss[r];
  s = group_sum(s, red);
  if (threadIdx.x == 0) *loss = count > 0 ? s / static_cast<float>(count) : 0.f;
}

__global__ void ce_backward_kernel(const float* __restrict__ x, const int32_t* __restrict__ targets,
                                   const float* __restrict__ lse, const float* __restrict__ dloss,
                                   float* __restrict__ dx, int64_t rows, int64_t v, int64_t count,
                                   int32_t ignore_index) {
  // dloss / C in double, rounded once, as the CPU kernel does.
  const float g = static_cast<float>(static_cast<double>(*dloss) / static_cast<double>(count));
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const int32_t t = targets[r];
    const float l = lse[r];
    const float* xr = x + r * v;
    float* dxr = dx + r * v;
    for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < v;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      if (t == ignore_index) {
        dxr[j] = 0.f;
      } else {
        const float p = expf(xr[j] - l) * g;
        dxr[j] = j == t ? p - g : p;
      }
    }
  }
}

void check_f32(const Tensor& t, const char* what) {
  AL_CHECK_DTYPE(t.dtype() == DType::f32, kName, ": the CUDA kernels take f32 only; got ", what, "=", t);
}

}  // namespace

CrossEntropyOp::Forward CrossEntropyOp::forward(CudaTag, const Tensor& logits, const Tensor& targets,
                                                int32_t ignore_index) {
  check_f32(logits, "logits");
  const Tensor xc = logits.contiguous();
  const Tensor tc = targets.contiguous();
  const int64_t v = xc.size(-1);
  const int64_t rows = tc.numel();

  std::vector<int32_t> host_t(static_cast<size_t>(rows));
  // A blocking copy (cudaMemcpy): the host vector is ready when it returns.
  cuda::copy_d2h(host_t.data(), tc.data<int32_t>(), static_cast<size_t>(rows) * sizeof(int32_t));
  int64_t count = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t t = host_t[static_cast<size_t>(r)];
    if (t == ignore_index) continue;
    AL_CHECK_SHAPE(t >= 0 && t < v, kName, ": target ", t, " at index ", r, " is out of range [0, V) for V=", v,
                   " (and is not ignore_index=", ignore_index, "); got logits=", logits, ", targets=", targets);
    ++count;
  }

  const Device dev = xc.device();
  Forward f{Tensor::empty(Shape{}, DType::f32, dev), Tensor::empty(Shape{rows}, DType::f32, dev), count};
  Tensor row_loss = Tensor::empty(Shape{rows}, DType::f32, dev);
  if (rows > 0) {
    const cuda::RowShape s = cuda::row_shape(rows, v);
    AL_CUDA_LAUNCH(ce_rows_kernel, s.grid, s.block, 0, xc.data<float>(), tc.data<int32_t>(), f.lse.data<float>(),
                   row_loss.data<float>(), rows, v, ignore_index);
  }
  AL_CUDA_LAUNCH(ce_total_kernel, dim3(1), dim3(kTotalThreads), 0, row_loss.data<float>(), f.loss.data<float>(), rows,
                 count);
  return f;
}

Tensor CrossEntropyOp::backward(CudaTag, const Tensor& logits, const Tensor& targets, const Tensor& lse, int64_t count,
                                int32_t ignore_index, const Tensor& dloss) {
  check_f32(logits, "logits");
  check_f32(dloss, "dloss");
  if (count == 0) return Tensor::zeros(logits.shape(), DType::f32, logits.device());
  const Tensor xc = logits.contiguous();
  const Tensor tc = targets.contiguous();
  const Tensor lc = lse.contiguous();
  const Tensor dlc = dloss.contiguous();
  Tensor dx = Tensor::empty(xc.shape(), DType::f32, xc.device());
  const int64_t v = xc.size(-1);
  const int64_t rows = tc.numel();
  if (rows == 0 || v == 0) return dx;
  const unsigned threads = 256;
  const dim3 grid(cuda::blocks_for(v, threads), static_cast<unsigned>(rows < 65535 ? rows : 65535));
  AL_CUDA_LAUNCH(ce_backward_kernel, grid, dim3(threads), 0, xc.data<float>(), tc.data<int32_t>(), lc.data<float>(),
                 dlc.data<float>(), dx.data<float>(), rows, v, count, ignore_index);
  return dx;
}

}  // namespace attnlab
