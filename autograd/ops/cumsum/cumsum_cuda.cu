// CUDA kernels of cumsum, f32 and f64. x contiguous, seen as [outer, L, inner] around the
// scanned dim; the backward is the same scan run from the end:
//
//   forward   y[o, l, i]  = sum_{k <= l} x[o, k, i]
//   backward  dx[o, l, i] = sum_{k >= l} dy[o, k, i]
//
// Two kernels, running sums in double as on the CPU:
//   "columns" (inner > 1, or L < 256): one thread per (o, i) walks l in order, exactly the
//     CPU's loop (so the same bits); consecutive threads take consecutive i, so each step of
//     the walk is one coalesced row read. 1-D grid of blocks_for(outer * inner, 256) x 256.
//   "rows" (inner = 1, L >= 256): a 256-thread block per row (grid min(outer, 65535), rows in
//     a block-uniform loop) scans tiles of 256 in order: an inclusive shuffle scan in each
//     warp, the 8 warp totals through shared memory (each thread adds those of the warps
//     before it, in warp order), plus the carry of the tiles before. Every thread computes the
//     tile total the same way, so the carry needs no broadcast. The addition order depends on
//     blockDim only: the results repeat bit for bit.
#include "lib/cuda/kernel.h"

#include "autograd/ops/cumsum/cumsum.h"

namespace attnlab {

namespace {

constexpr unsigned kThreads = 256;
constexpr unsigned kWarps = kThreads / 32;
constexpr int64_t kMinBlockRow = 256;

template <typename T>
__global__ void scan_columns_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t outer, int64_t len,
                                    int64_t inner, bool reverse) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < outer * inner; p += stride) {
    const int64_t o = p / inner, i = p % inner;
    double acc = 0.0;
    for (int64_t step = 0; step < len; ++step) {
      const int64_t l = reverse ? len - 1 - step : step;
      const int64_t at = (o * len + l) * inner + i;
      acc += static_cast<double>(x[at]);
      y[at] = static_cast<T>(acc);
    }
  }
}

template <typename T>
__global__ void scan_rows_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t len,
                                 bool reverse) {
  __shared__ double warp_total[kWarps];
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {  // block-uniform
    const T* xr = x + row * len;
    T* yr = y + row * len;
    double carry = 0.0;
    for (int64_t tile = 0; tile < len; tile += blockDim.x) {  // block-uniform
      const int64_t pos = tile + threadIdx.x;
      const int64_t l = reverse ? len - 1 - pos : pos;
      double v = pos < len ? static_cast<double>(xr[l]) : 0.0;
      for (int d = 1; d < 32; d *= 2) {
        const double t = __shfl_up_sync(0xffffffffu, v, d);
        if (static_cast<int>(lane) >= d) v += t;
      }
      if (lane == 31) warp_total[warp] = v;
      __syncthreads();
      double before = 0.0, tile_total = 0.0;
      for (unsigned w = 0; w < kWarps; ++w) {
        if (w < warp) before += warp_total[w];
        tile_total += warp_total[w];
      }
      if (pos < len) yr[l] = static_cast<T>(carry + (before + v));
      carry += tile_total;
      // warp_total is rewritten by the next tile: every thread must have read it.
      __syncthreads();
    }
  }
}

Tensor scan(const Tensor& x, int64_t dim, bool reverse) {
  AL_ASSERT(x.is_contiguous(), "cumsum: the CUDA kernel takes a contiguous input; got ", x);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel() == 0) return y;
  int64_t outer = 1, len = 1, inner = 1;
  for (int64_t d = 0; d < x.ndim(); ++d) {
    if (d < dim) outer *= x.shape()[d];
    else if (d == dim) len = x.shape()[d];
    else inner *= x.shape()[d];
  }
  dispatch_float(x.dtype(), "cumsum", [&](auto tag) {
    using T = decltype(tag);
    if (inner == 1 && len >= kMinBlockRow) {
      const unsigned grid = static_cast<unsigned>(outer < 65535 ? outer : 65535);
      AL_CUDA_LAUNCH(scan_rows_kernel<T>, dim3(grid), dim3(kThreads), 0, x.data<T>(), y.data<T>(), outer, len,
                     reverse);
    } else {
      AL_CUDA_LAUNCH(scan_columns_kernel<T>, dim3(cuda::blocks_for(outer * inner, kThreads)), dim3(kThreads), 0,
                     x.data<T>(), y.data<T>(), outer, len, inner, reverse);
    }
  });
  return y;
}

}  // namespace

Tensor CumsumOp::forward(CudaTag, const Tensor& x, int64_t dim) { return scan(x, dim, false); }

Tensor CumsumOp::backward(CudaTag, const Tensor& dy, int64_t dim) { return scan(dy, dim, true); }

}  // namespace attnlab
