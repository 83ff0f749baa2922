// The global gradient norm's CUDA side (optim/optim_cuda.h): sums of squares of many tensors,
// and the in-place scaling that clipping applies.
//
// Sum of squares of tensor k, x_k [n_k] (any shape, contiguous, f32 or f64), in double:
//   pass 1  sum_squares_blocks  grid G_k = min(ceil(n_k / 256), 512), block 256, smem 8 doubles
//           (carved). Thread t of block b adds x[i]^2 for i = b * 256 + t + j * G_k * 256 in order;
//           the block then adds its 256 sums in a fixed tree: a warp's 32 by __shfl_down_sync
//           (16, 8, 4, 2, 1), then warp 0 the 8 warp sums the same way -> partial[b].
//   pass 2  sum_blocks  grid 1, block 256: the G_k partials the same way -> sums[k].
// G_k depends on n_k alone, so the result is the same on every run, device and schedule. All
// tensors' sums land in one device array, brought back by a single copy.
//
// Scaling: grad_scale_kernel, grid min(ceil(n / 256), 65535) grid-stride, block 256, one thread
// per element: x = T(double(x) * scale), as clip_grad_norm does on the CPU.
#include "lib/cuda/kernel.h"

#include <algorithm>

#include "lib/cuda/runtime.h"
#include "optim/optim_cuda.h"

namespace attnlab::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxBlocks = 512;

// The sum of s over the block, valid in thread 0; every thread of the block must call it (it has
// a barrier and full-warp shuffles).
__device__ inline double block_sum(double s, double* warp_sums) {
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  for (int offset = 16; offset > 0; offset /= 2) s += __shfl_down_sync(0xffffffffu, s, offset);
  if (lane == 0) warp_sums[warp] = s;
  __syncthreads();  // all warp sums are written before warp 0 reads them
  double total = 0.0;
  if (warp == 0) {
    total = lane < kWarps ? warp_sums[lane] : 0.0;
    for (int offset = 16; offset > 0; offset /= 2) total += __shfl_down_sync(0xffffffffu, total, offset);
  }
  return total;
}

template <typename T>
__global__ void sum_squares_blocks(const T* x, int64_t n, double* partial) {
  simt::SmemCarver carve;
  double* warp_sums = carve.take<double>(kWarps);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  double s = 0.0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    const double v = static_cast<double>(x[i]);
    s += v * v;
  }
  s = block_sum(s, warp_sums);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void sum_blocks(const double* partial, int64_t count, double* out) {
  simt::SmemCarver carve;
  double* warp_sums = carve.take<double>(kWarps);
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += kThreads) s += partial[i];
  s = block_sum(s, warp_sums);
  if (threadIdx.x == 0) *out = s;
}

template <typename T>
__global__ void grad_scale_kernel(T* x, int64_t n, double scale) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    x[i] = static_cast<T>(static_cast<double>(x[i]) * scale);
}

int64_t blocks_of(int64_t n) { return std::min<int64_t>(kMaxBlocks, std::max<int64_t>(1, (n + kThreads - 1) / kThreads)); }

}  // namespace

std::vector<double> grad_sum_squares(const std::vector<Tensor>& xs) {
  std::vector<double> sums(xs.size(), 0.0);
  if (xs.empty()) return sums;
  const Device device = xs[0].device();
  int64_t scratch = 0;
  for (const Tensor& x : xs) {
    AL_CHECK_DEVICE(x.device().is_cuda() && x.device() == device,
                    "grad_norm (cuda): gradients must share one CUDA device; got ", xs[0], " and ", x);
    AL_CHECK(x.is_contiguous(), "grad_norm (cuda): gradient ", x, " must be contiguous");
    AL_CHECK_DTYPE(x.dtype() == DType::f32 || x.dtype() == DType::f64, "grad_norm (cuda): expected f32 or f64; got ",
                   x);
    scratch += blocks_of(x.numel());
  }
  const int64_t count = static_cast<int64_t>(xs.size());
  // [count] sums first, then every tensor's block partials.
  Tensor buffer = Tensor::empty(Shape{count + scratch}, DType::f64, device);
  double* out = buffer.data<double>();
  double* partial = out + count;
  const size_t smem = sizeof(double) * kWarps;
  for (int64_t k = 0; k < count; ++k) {
    const Tensor& x = xs[static_cast<size_t>(k)];
    const int64_t blocks = blocks_of(x.numel());
    dispatch_float(x.dtype(), "grad_norm (cuda)", [&](auto tag) {
      using T = decltype(tag);
      void (*pass1)(const T*, int64_t, double*) = &sum_squares_blocks<T>;
      AL_CUDA_LAUNCH(pass1, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), smem, x.data<T>(), x.numel(),
                     partial);
    });
    AL_CUDA_LAUNCH(sum_blocks, dim3(1), dim3(kThreads), smem, static_cast<const double*>(partial), blocks, out + k);
    partial += blocks;
  }
  copy_d2h(sums.data(), out, sizeof(double) * sums.size());
  return sums;
}

void grad_scale(Tensor& x, double scale) {
  AL_CHECK_DEVICE(x.device().is_cuda(), "clip_grad_norm (cuda): expected a CUDA gradient; got ", x);
  AL_CHECK(x.is_contiguous(), "clip_grad_norm (cuda): gradient ", x, " must be contiguous");
  const int64_t n = x.numel();
  if (n == 0) return;
  dispatch_float(x.dtype(), "clip_grad_norm (cuda)", [&](auto tag) {
    using T = decltype(tag);
    void (*kernel)(T*, int64_t, double) = &grad_scale_kernel<T>;
    AL_CUDA_LAUNCH(kernel, dim3(blocks_for(n, kThreads)), dim3(kThreads), 0, x.data<T>(), n, scale);
  });
}

}  // namespace attnlab::cuda
