// CUDA kernel of the view ops: narrow/slice backward, the one view op that computes anything
// (reshape, view, permute, transpose and contiguous are metadata, or Tensor::contiguous, which
// runs on CUDA tensors by itself).
//
//   dx [outer, N, inner] (x's shape around the sliced dim, N = x.size(dim)):
//     dx[o, c, i] = dy[o, (c - start) / step, i]  if start <= c < end and (c - start) % step == 0
//                 = 0                              otherwise
//   dy [outer, M, inner], M = ceil((end - start) / step), made contiguous first (usually is).
//
// One pass writes every element of dx, so no zero-fill and no scatter: each dx element has one
// writer, and consecutive threads write consecutive elements. The kernel moves bit patterns of
// the element's size (every dtype; a zero bit pattern is 0 in each of them).
//
// Launch: 1-D grid of blocks_for(|dx|, 256) x 256 threads, grid-stride loop, no shared memory.
#include "lib/cuda/kernel.h"

#include "autograd/ops/view/view.h"

namespace attnlab {

namespace {

constexpr unsigned kThreads = 256;

template <typename W>
__global__ void slice_backward_kernel(const W* __restrict__ dy, W* __restrict__ dx, int64_t total, int64_t n,
                                      int64_t inner, int64_t m, int64_t start, int64_t end, int64_t step) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const int64_t i = e % inner, c = (e / inner) % n, o = e / (inner * n);
    const int64_t k = c - start;
    const bool hit = c >= start && c < end && k % step == 0;
    dx[e] = hit ? dy[(o * m + k / step) * inner + i] : W(0);
  }
}

}  // namespace

Tensor ViewOp::backward(CudaTag, const Shape& x_shape, const SliceArgs& s, const Tensor& dy) {
  Tensor dx = Tensor::empty(x_shape, dy.dtype(), dy.device());
  const int64_t total = dx.numel();
  if (total == 0) return dx;
  int64_t inner = 1;
  for (int64_t d = s.dim + 1; d < x_shape.ndim(); ++d) inner *= x_shape[d];
  const int64_t n = x_shape[s.dim], m = dy.size(s.dim);
  const Tensor dyc = dy.contiguous();
  const dim3 grid(cuda::blocks_for(total, kThreads)), block(kThreads);
  auto launch = [&](auto word) {
    using W = decltype(word);
    AL_CUDA_LAUNCH(slice_backward_kernel<W>, grid, block, 0, static_cast<const W*>(dyc.raw_data()),
                   static_cast<W*>(dx.raw_data()), total, n, inner, m, s.start, s.end, s.step);
  };
  switch (dtype_size(dy.dtype())) {
    case 1: launch(uint8_t{}); break;
    case 2: launch(uint16_t{}); break;
    case 4: launch(uint32_t{}); break;
    case 8: launch(uint64_t{}); break;
    default: AL_ASSERT(false, "slice: unexpected element size for ", dy);
  }
  return dx;
}

}  // namespace attnlab
