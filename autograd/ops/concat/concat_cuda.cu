// CUDA kernel of concat and stack (stack's inputs arrive with their size-1 dim inserted):
//
//   y [outer, L, inner] <- xs[j] [outer, n_j, inner], L = n_0 + n_1 + ..; input j fills
//   y[o, a_j : a_j + n_j, :], a_j = n_0 + .. + n_(j-1). Each input is contiguous, so its
//   elements for one o are one run of n_j * inner, landing at y's row o, offset a_j * inner.
//
// The backward is views of dy (concat.cpp) and needs no kernel.
//
// Launch: up to kBatch inputs per launch, passed by value in one struct; grid (gx, inputs in
// the batch), blockIdx.y picks the input, and the gx x 256 threads of that row of blocks walk
// its outer * n_j * inner elements in a grid-stride loop (gx = blocks_for(largest input, 256)).
// Pure copies of bit patterns of the element's size, so every dtype is served; each y element
// is written by exactly one thread.
#include "lib/cuda/kernel.h"

#include <algorithm>

#include "autograd/ops/concat/concat.h"

namespace attnlab {

namespace {

constexpr unsigned kThreads = 256;
constexpr int kBatch = 8;

template <typename W>
struct Batch {
  const W* src[kBatch];
  int64_t run[kBatch];  // n_j * inner: elements per outer index
  int64_t at[kBatch];   // a_j * inner: where they start in y's row
};

template <typename W>
__global__ void concat_kernel(Batch<W> batch, W* __restrict__ y, int64_t outer, int64_t row) {
  const int j = static_cast<int>(blockIdx.y);
  const W* __restrict__ src = batch.src[j];
  const int64_t run = batch.run[j], at = batch.at[j];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < outer * run; e += stride) {
    const int64_t o = e / run, r = e % run;
    y[o * row + at + r] = src[e];
  }
}

template <typename W>
void concat_words(const std::vector<Tensor>& xs, int64_t dim, int64_t outer, int64_t inner, Tensor& y) {
  const int64_t row = y.size(dim) * inner;
  W* py = static_cast<W*>(y.raw_data());
  int64_t at = 0;
  for (size_t first = 0; first < xs.size(); first += kBatch) {
    const size_t count = std::min(xs.size() - first, static_cast<size_t>(kBatch));
    Batch<W> batch{};
    int64_t largest = 0;
    for (size_t j = 0; j < count; ++j) {
      const Tensor& x = xs[first + j];
      batch.src[j] = static_cast<const W*>(x.raw_data());
      batch.run[j] = x.size(dim) * inner;
      batch.at[j] = at;
      at += batch.run[j];
      largest = std::max(largest, outer * batch.run[j]);
    }
    if (largest == 0) continue;
    const dim3 grid(cuda::blocks_for(largest, kThreads), static_cast<unsigned>(count));
    AL_CUDA_LAUNCH(concat_kernel<W>, grid, dim3(kThreads), 0, batch, py, outer, row);
  }
}

}  // namespace

Tensor ConcatOp::forward(CudaTag, const std::vector<Tensor>& xs, int64_t dim, const Shape& y_shape) {
  for (const Tensor& x : xs) AL_ASSERT(x.is_contiguous(), "concat: the CUDA kernel takes contiguous inputs; got ", x);
  Tensor y = Tensor::empty(y_shape, xs[0].dtype(), xs[0].device());
  if (y.numel() == 0) return y;
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= y_shape[d];
  for (int64_t d = dim + 1; d < y_shape.ndim(); ++d) inner *= y_shape[d];
  switch (dtype_size(y.dtype())) {
    case 1: concat_words<uint8_t>(xs, dim, outer, inner, y); break;
    case 2: concat_words<uint16_t>(xs, dim, outer, inner, y); break;
    case 4: concat_words<uint32_t>(xs, dim, outer, inner, y); break;
    case 8: concat_words<uint64_t>(xs, dim, outer, inner, y); break;
    default: AL_ASSERT(false, "concat: unexpected element size for ", y);
  }
  return y;
}

}  // namespace attnlab
