// CUDA kernels of index_select and embedding, x viewed as [outer, N, inner] (x contiguous),
// idx [K] i32 contiguous (embedding: x = weight [V, C], outer = 1, inner = C, K = number of ids):
//
//   find_bad_index  the first k with idx[k] outside [0, N)
//     One 256-thread block: each thread scans k = t, t + 256, .. and keeps its first bad k;
//     a min tree (shuffles, then the 8 warp minima) gives the first overall. Its position and
//     value come back to the host in one 16-byte copy (the host must know before it gathers).
//   forward   y[o, k, :] = x[o, idx[k], :]
//     One thread per y element, grid-stride; moves bit patterns of the element's size, so
//     every dtype is served. 1-D grid of blocks_for(|y|, 256) x 256.
//   backward  dx[o, n, :] = sum over k with idx[k] = n, in increasing k, of dy[o, k, :]
//     Deterministic without float atomics and without sorting: a block of b threads (b = 128,
//     or inner rounded up to whole warps when smaller) owns one (o, n, chunk of b columns) of
//     dx, each thread one column, and scans idx in tiles of b: every thread tests one index,
//     __ballot_sync packs the hits of each warp, and all threads walk the warp masks in order
//     (lowest bit first), adding dy[o, k, col] in double for every hit k. So each dx element
//     is summed by one thread in increasing k, exactly the CPU's order: the same bits as the
//     CPU kernel. A first pass counts each row's hits (integer atomicAdd, exact whatever the
//     order); a block stops scanning once it has seen them all, and rows nobody selected are
//     written as zeros without a scan. Cost is O(rows selected x K / b) tile tests; fine for
//     vocabularies and batches of our size.
//     Grid: min(outer * N * column chunks, 65535) blocks, work items in a block-uniform loop.
#include "lib/cuda/kernel.h"

#include <algorithm>

#include "autograd/ops/index_select/index_select.h"
#include "lib/cuda/runtime.h"

namespace attnlab {

namespace {

constexpr unsigned kThreads = 256;
constexpr unsigned kScanThreads = 128;  // largest backward block = one idx tile = one column chunk
constexpr unsigned kScanWarps = kScanThreads / 32;
constexpr unsigned kFull = 0xffffffffu;

__device__ inline int64_t global_thread() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ inline int64_t grid_threads() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

struct BadSlot {
  int64_t pos;
  int32_t value;
  int32_t pad;
};

__global__ void find_bad_kernel(const int32_t* __restrict__ idx, int64_t count, int64_t n, BadSlot* out) {
  __shared__ int64_t warp_min[kThreads / 32];
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int64_t first = INT64_MAX;
  for (int64_t k = threadIdx.x; k < count; k += blockDim.x) {
    if (idx[k] < 0 || idx[k] >= n) {
      first = k;  // k only grows: this thread's first bad index
      break;
    }
  }
  for (int d = 16; d > 0; d /= 2) {
    const int64_t o = __shfl_down_sync(kFull, first, d);
    first = o < first ? o : first;
  }
  if (lane == 0) warp_min[warp] = first;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (unsigned w = 1; w < blockDim.x / 32; ++w) first = warp_min[w] < first ? warp_min[w] : first;
    out->pos = first == INT64_MAX ? -1 : first;
    out->value = first == INT64_MAX ? 0 : idx[first];
  }
}

template <typename W>
__global__ void gather_kernel(const W* __restrict__ x, const int32_t* __restrict__ idx, W* __restrict__ y,
                              int64_t total, int64_t n, int64_t k_count, int64_t inner) {
  for (int64_t e = global_thread(); e < total; e += grid_threads()) {
    const int64_t i = e % inner, k = (e / inner) % k_count, o = e / (inner * k_count);
    y[e] = x[(o * n + idx[k]) * inner + i];
  }
}

__global__ void count_kernel(const int32_t* __restrict__ idx, int64_t k_count, int32_t* __restrict__ hits) {
  for (int64_t k = global_thread(); k < k_count; k += grid_threads()) atomicAdd(&hits[idx[k]], 1);
}

template <typename T>
__global__ void scatter_add_kernel(const T* __restrict__ dy, const int32_t* __restrict__ idx,
                                   const int32_t* __restrict__ hits, T* __restrict__ dx, int64_t outer, int64_t n,
                                   int64_t k_count, int64_t inner, int64_t chunks) {
  __shared__ unsigned warp_mask[kScanWarps];
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int64_t w = blockIdx.x; w < outer * n * chunks; w += gridDim.x) {  // block-uniform
    const int64_t chunk = w % chunks, row = (w / chunks) % n, o = w / (chunks * n);
    const int64_t col = chunk * blockDim.x + threadIdx.x;
    const bool active = col < inner;
    const int need = hits[row];  // the same for the whole block
    int found = 0;
    double acc = 0.0;
    for (int64_t tile = 0; tile < k_count && found < need; tile += blockDim.x) {  // block-uniform
      const int64_t k = tile + threadIdx.x;
      const unsigned mask = __ballot_sync(kFull, k < k_count && idx[k] == row);
      if (lane == 0) warp_mask[warp] = mask;
      __syncthreads();
      for (unsigned v = 0; v < blockDim.x / 32; ++v) {
        unsigned m = warp_mask[v];
        found += __popc(m);
        while (m != 0) {
          const int64_t hit = tile + v * 32 + (__ffs(static_cast<int>(m)) - 1);  // lowest bit: smallest k left
          m &= m - 1u;
          if (active) acc += static_cast<double>(dy[(o * k_count + hit) * inner + col]);
        }
      }
      // warp_mask is rewritten by the next tile: every thread must have read it.
      __syncthreads();
    }
    if (active) dx[(o * n + row) * inner + col] = static_cast<T>(acc);
  }
}

}  // namespace

BadIndex IndexSelectOp::find_bad_index(CudaTag, const Tensor& idx, int64_t n) {
  AL_ASSERT(idx.is_contiguous() && idx.dtype() == DType::i32, "index_select: bad index tensor ", idx);
  if (idx.numel() == 0) return {};
  // 16 bytes of device memory for the answer (an i32 tensor as raw storage).
  Tensor slot = Tensor::empty(Shape{4}, DType::i32, idx.device());
  AL_CUDA_LAUNCH(find_bad_kernel, dim3(1), dim3(kThreads), 0, idx.data<int32_t>(), idx.numel(), n,
                 static_cast<BadSlot*>(slot.raw_data()));
  BadSlot host{};
  cuda::copy_d2h(&host, slot.raw_data(), sizeof(BadSlot));
  if (host.pos < 0) return {};
  return {host.pos, host.value};
}

Tensor IndexSelectOp::forward(CudaTag, const Tensor& x, int64_t dim, const Tensor& idx) {
  AL_ASSERT(x.is_contiguous() && idx.is_contiguous(), "index_select: the CUDA kernel takes contiguous x and idx; got ",
            x, ", ", idx);
  const Split s = split_at(x.shape(), dim);
  const int64_t K = idx.numel();
  Shape y_shape = x.shape();
  y_shape[dim] = K;
  Tensor y = Tensor::empty(y_shape, x.dtype(), x.device());
  if (y.numel() == 0) return y;
  const dim3 grid(cuda::blocks_for(y.numel(), kThreads)), block(kThreads);
  auto launch = [&](auto word) {
    using W = decltype(word);
    AL_CUDA_LAUNCH(gather_kernel<W>, grid, block, 0, static_cast<const W*>(x.raw_data()), idx.data<int32_t>(),
                   static_cast<W*>(y.raw_data()), y.numel(), s.n, K, s.inner);
  };
  switch (dtype_size(x.dtype())) {
    case 1: launch(uint8_t{}); break;
    case 2: launch(uint16_t{}); break;
    case 4: launch(uint32_t{}); break;
    case 8: launch(uint64_t{}); break;
    default: AL_ASSERT(false, "index_select: unexpected element size for ", x);
  }
  return y;
}

Tensor IndexSelectOp::backward(CudaTag, std::string_view name, const Shape& x_shape, int64_t dim, const Tensor& idx,
                               const Tensor& dy) {
  AL_ASSERT(dy.is_contiguous() && idx.is_contiguous(), name, ": the CUDA backward takes contiguous dy and idx; got ",
            dy, ", ", idx);
  Tensor dx = Tensor::empty(x_shape, dy.dtype(), dy.device());
  if (dx.numel() == 0) return dx;
  const Split s = split_at(x_shape, dim);
  const int64_t K = idx.numel();
  Tensor hits = Tensor::zeros(Shape{s.n}, DType::i32, dy.device());
  if (K > 0) {
    AL_CUDA_LAUNCH(count_kernel, dim3(cuda::blocks_for(K, kThreads)), dim3(kThreads), 0, idx.data<int32_t>(), K,
                   hits.data<int32_t>());
  }
  // Narrow rows get narrower blocks (whole warps): the columns beyond `inner` only help scan.
  const unsigned threads = static_cast<unsigned>(std::clamp<int64_t>((s.inner + 31) / 32 * 32, 32, kScanThreads));
  const int64_t chunks = (s.inner + threads - 1) / threads;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(s.outer * s.n * chunks, 65535));
  dispatch_float(dy.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    AL_CUDA_LAUNCH(scatter_add_kernel<T>, dim3(grid), dim3(threads), 0, dy.data<T>(), idx.data<int32_t>(),
                   hits.data<int32_t>(), dx.data<T>(), s.outer, s.n, K, s.inner, chunks);
  });
  return dx;
}

}  // namespace attnlab
