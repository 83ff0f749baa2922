// CUDA kernels of sum, mean and max, f32 and f64.
//
// The dims of x are first merged into groups: size-1 dims dropped, neighbours that are both
// reduced or both kept merged (x is made contiguous first, so any merge is a plain reshape).
//
//   sum, mean forward (s = 1 or 1/n, n the elements summed into each y):
//     one reduced group: x [outer, N, inner] -> y [outer, inner]
//       "rows" (inner = 1, N >= 256): each row of N is cut into G chunks; a 256-thread block
//         sums one (row, chunk): each thread a strided part in double, then a warp shuffle
//         tree and a tree over the 8 warp sums.
//       "columns" (otherwise): one thread per (o, i, chunk g of N) walks its chunk of n in
//         order, in double; consecutive threads take consecutive i.
//     several reduced groups: x is permuted to [kept..., reduced...] and copied contiguous,
//       then summed as [outer, N, 1].
//     G > 1 (few outputs, long sums): the chunks write double partials and a second kernel adds
//     each output's G partials in g order. G depends on the shape only, never on the device,
//     so every result is the same on every run: no atomics anywhere.
//   sum, mean backward: dx [x] = s dy, dy [x with the reduced dims at 1] read with stride 0
//     along the reduced groups; one thread per dx element.
//   max forward: x [outer, N, inner] (contiguous) -> y, argmax [outer, inner]: the first index
//     of the maximum, or of the first NaN.
//       inner = 1, N >= 256: a block per row; each thread keeps the first maximum of its
//         strided part, then (value, index) pairs are combined by a shuffle tree and a tree
//         over the warps. The rule "NaN beats numbers, a larger value beats a smaller, and of
//         two equal values (or two NaNs) the lower index wins" is associative and commutative,
//         so the tree finds exactly the CPU's sequential answer.
//       otherwise: one thread per (o, i) walks n in order, as the CPU does.
//   max backward: dx [outer, N, inner] = dy[o, i] where n = argmax[o, i], else 0; one thread
//     per dx element, so dx needs no zero-fill first.
//
// Launch shapes: elementwise kernels 1-D grids of blocks_for(work, 256) x 256 threads with
// grid-stride loops; the row kernels 256-thread blocks over min(rows x chunks, 65535) blocks,
// each block looping over work items in a block-uniform loop (every barrier is reached by the
// whole block), with 8 doubles (or 8 value/index pairs) of static shared memory.
#include "lib/cuda/kernel.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "autograd/ops/reduce/reduce.h"
#include "lib/cuda/tensor_kernels.h"

namespace attnlab {

namespace {

constexpr unsigned kThreads = 256;
constexpr unsigned kWarps = kThreads / 32;
constexpr int kMaxGroups = 8;
constexpr unsigned kFull = 0xffffffffu;
// Rows shorter than this are reduced one thread per row (the columns kernels with inner = 1):
// a 256-thread block would be mostly idle.
constexpr int64_t kMinBlockRow = 256;

// ---- device code ----------------------------------------------------------------------------

__device__ inline int64_t global_thread() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ inline int64_t grid_threads() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// The block's total of `v` (every thread must call it; the result is valid in every thread).
// Fixed shape: shuffle tree in each warp, then warp 0 adds the 8 warp sums; so the order of
// additions depends only on blockDim.
__device__ inline double block_sum(double v, double* warp_sums) {
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int d = 16; d > 0; d /= 2) v += __shfl_down_sync(kFull, v, d);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  double t = lane < kWarps ? warp_sums[lane] : 0.0;
  for (int d = 16; d > 0; d /= 2) t += __shfl_down_sync(kFull, t, d);
  t = __shfl_sync(kFull, t, 0);
  // warp_sums is rewritten by the next call: every warp must have read it first.
  __syncthreads();
  return t;
}

// Sums rows of x [rows, n] (contiguous), each cut into `chunks` pieces of `chunk` elements.
// Work item w = row * chunks + c. chunks == 1: y[row] = s * sum; else part[w] = sum.
template <typename T>
__global__ void sum_rows_kernel(const T* __restrict__ x, int64_t rows, int64_t n, int64_t chunks, int64_t chunk,
                                double scale, T* __restrict__ y, double* __restrict__ part) {
  __shared__ double warp_sums[kWarps];
  for (int64_t w = blockIdx.x; w < rows * chunks; w += gridDim.x) {  // block-uniform
    const int64_t row = w / chunks, c = w % chunks;
    const int64_t begin = c * chunk, end = begin + chunk < n ? begin + chunk : n;
    const T* xr = x + row * n;
    double acc = 0.0;
    for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) acc += static_cast<double>(xr[j]);
    const double total = block_sum(acc, warp_sums);
    if (threadIdx.x == 0) {
      if (chunks == 1) y[row] = static_cast<T>(total * scale);
      else part[w] = total;
    }
  }
}

// Sums x [outer, n, inner] over n, inner > 1: work item w = c * (outer * inner) + p, p = o *
// inner + i, sums chunk c of n in order. chunks == 1: y[p] = s * sum; else part[w] = sum.
template <typename T>
__global__ void sum_columns_kernel(const T* __restrict__ x, int64_t outer, int64_t n, int64_t inner, int64_t chunks,
                                   int64_t chunk, double scale, T* __restrict__ y, double* __restrict__ part) {
  const int64_t outputs = outer * inner;
  for (int64_t w = global_thread(); w < outputs * chunks; w += grid_threads()) {
    const int64_t c = w / outputs, p = w % outputs;
    const int64_t o = p / inner, i = p % inner;
    const int64_t begin = c * chunk, end = begin + chunk < n ? begin + chunk : n;
    const T* xc = x + o * n * inner + i;
    double acc = 0.0;
    for (int64_t j = begin; j < end; ++j) acc += static_cast<double>(xc[j * inner]);
    if (chunks == 1) y[p] = static_cast<T>(acc * scale);
    else part[w] = acc;
  }
}

// y[p] = s * sum over c of part[p * item_stride + c * chunk_stride], c in order.
template <typename T>
__global__ void sum_partials_kernel(const double* __restrict__ part, int64_t outputs, int64_t chunks,
                                    int64_t item_stride, int64_t chunk_stride, double scale, T* __restrict__ y) {
  for (int64_t p = global_thread(); p < outputs; p += grid_threads()) {
    double acc = 0.0;
    for (int64_t c = 0; c < chunks; ++c) acc += part[p * item_stride + c * chunk_stride];
    y[p] = static_cast<T>(acc * scale);
  }
}

// dx's merged groups: sizes, and the stride of dy along each (0 for reduced groups).
struct Groups {
  int n = 0;
  int64_t size[kMaxGroups] = {};
  int64_t dy_stride[kMaxGroups] = {};
};

template <typename T>
__global__ void broadcast_scaled_kernel(const T* __restrict__ dy, Groups g, int64_t total, T scale,
                                        T* __restrict__ dx) {
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    int64_t rest = i, off = 0;
    for (int d = g.n - 1; d >= 0; --d) {
      off += (rest % g.size[d]) * g.dy_stride[d];
      rest /= g.size[d];
    }
    dx[i] = scale * dy[off];
  }
}

// True when (v, i) should replace (best, bi) as the maximum: see the header comment.
template <typename T>
__device__ inline bool max_beats(T v, int32_t i, T best, int32_t bi) {
  const bool vn = v != v, bn = best != best;  // NaN tests that need no libm
  if (vn != bn) return vn;
  if (vn || v == best) return i < bi;
  return v > best;
}

// Folds the warp's (best, bi) pairs down by shuffles: lane 0 ends with the warp's maximum.
template <typename T>
__device__ inline void warp_argmax(T& best, int32_t& bi) {
  for (int d = 16; d > 0; d /= 2) {
    const T ov = __shfl_down_sync(kFull, best, d);
    const int32_t oi = __shfl_down_sync(kFull, bi, d);
    if (max_beats(ov, oi, best, bi)) best = ov, bi = oi;
  }
}

// Max over rows of x [rows, n] (contiguous): a block per row.
template <typename T>
__global__ void max_rows_kernel(const T* __restrict__ x, int64_t rows, int64_t n, T* __restrict__ y,
                                int32_t* __restrict__ arg) {
  __shared__ T warp_best[kWarps];
  __shared__ int32_t warp_arg[kWarps];
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {  // block-uniform
    const T* xr = x + row * n;
    // A thread without elements offers (-inf, INT32_MAX), which any real element beats.
    T best = T(-INFINITY);
    int32_t bi = INT32_MAX;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      if (max_beats(xr[j], static_cast<int32_t>(j), best, bi)) best = xr[j], bi = static_cast<int32_t>(j);
    }
    warp_argmax(best, bi);
    if (lane == 0) warp_best[warp] = best, warp_arg[warp] = bi;
    __syncthreads();
    if (warp == 0) {
      best = lane < kWarps ? warp_best[lane] : T(-INFINITY);
      bi = lane < kWarps ? warp_arg[lane] : INT32_MAX;
      warp_argmax(best, bi);
      if (lane == 0) y[row] = best, arg[row] = bi;
    }
    // warp_best is rewritten for the next row: warp 0 must have read it first.
    __syncthreads();
  }
}

// Max of x [outer, n, inner] over n, one thread per (o, i) walking n in order like the CPU.
template <typename T>
__global__ void max_columns_kernel(const T* __restrict__ x, int64_t outer, int64_t n, int64_t inner,
                                   T* __restrict__ y, int32_t* __restrict__ arg) {
  for (int64_t p = global_thread(); p < outer * inner; p += grid_threads()) {
    const int64_t o = p / inner, i = p % inner;
    const T* xc = x + o * n * inner + i;
    T best = xc[0];
    int32_t bi = 0;
    for (int64_t j = 1; j < n; ++j) {
      const T v = xc[j * inner];
      // Strictly greater keeps the first maximum; the first NaN takes over and stays.
      if (v > best || (v != v && best == best)) best = v, bi = static_cast<int32_t>(j);
    }
    y[p] = best;
    arg[p] = bi;
  }
}

template <typename T>
__global__ void max_backward_kernel(const T* __restrict__ dy, const int32_t* __restrict__ arg, int64_t outer,
                                    int64_t n, int64_t inner, T* __restrict__ dx) {
  for (int64_t e = global_thread(); e < outer * n * inner; e += grid_threads()) {
    const int64_t i = e % inner, j = (e / inner) % n, o = e / (inner * n);
    const int64_t p = o * inner + i;
    dx[e] = arg[p] == j ? dy[p] : T(0);
  }
}

// ---- host side --------------------------------------------------------------------------------

struct Group {
  int64_t size;
  bool reduced;
};

// x's dims as alternating runs of reduced and kept dims (size-1 dims dropped).
std::vector<Group> merge_groups(const Shape& shape, const std::vector<bool>& reduce) {
  std::vector<Group> g;
  for (int64_t d = 0; d < shape.ndim(); ++d) {
    if (shape[d] == 1) continue;
    const bool r = reduce[static_cast<size_t>(d)];
    if (!g.empty() && g.back().reduced == r) g.back().size *= shape[d];
    else g.push_back({shape[d], r});
  }
  return g;
}

Shape kept_shape(const Shape& shape, const std::vector<bool>& reduce) {
  Shape kept = shape;
  for (int64_t d = 0; d < kept.ndim(); ++d)
    if (reduce[static_cast<size_t>(d)]) kept[d] = 1;
  return kept;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Chunk counts: enough work items to fill a GPU when there are few outputs, never chunks so
// short that the second pass dominates. Functions of the shape only (determinism).
int64_t row_chunks(int64_t rows, int64_t n) { return std::clamp<int64_t>(ceil_div(512, rows), 1, ceil_div(n, 2048)); }
int64_t column_chunks(int64_t outputs, int64_t n) {
  return std::clamp<int64_t>(ceil_div(65536, outputs), 1, ceil_div(n, 64));
}

template <typename T>
void sum_rows(const T* x, int64_t rows, int64_t n, double scale, T* y, Device device) {
  const int64_t chunks = row_chunks(rows, n), chunk = ceil_div(n, chunks);
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(rows * chunks, 65535));
  if (chunks == 1) {
    AL_CUDA_LAUNCH(sum_rows_kernel<T>, dim3(grid), dim3(kThreads), 0, x, rows, n, chunks, chunk, scale, y,
                   static_cast<double*>(nullptr));
    return;
  }
  Tensor part = Tensor::empty(Shape{rows * chunks}, DType::f64, device);
  AL_CUDA_LAUNCH(sum_rows_kernel<T>, dim3(grid), dim3(kThreads), 0, x, rows, n, chunks, chunk, scale, y,
                 part.data<double>());
  AL_CUDA_LAUNCH(sum_partials_kernel<T>, dim3(cuda::blocks_for(rows, kThreads)), dim3(kThreads), 0,
                 part.data<double>(), rows, chunks, chunks, int64_t{1}, scale, y);
}

template <typename T>
void sum_columns(const T* x, int64_t outer, int64_t n, int64_t inner, double scale, T* y, Device device) {
  const int64_t outputs = outer * inner;
  const int64_t chunks = column_chunks(outputs, n), chunk = ceil_div(n, chunks);
  const dim3 grid(cuda::blocks_for(outputs * chunks, kThreads));
  if (chunks == 1) {
    AL_CUDA_LAUNCH(sum_columns_kernel<T>, grid, dim3(kThreads), 0, x, outer, n, inner, chunks, chunk, scale, y,
                   static_cast<double*>(nullptr));
    return;
  }
  Tensor part = Tensor::empty(Shape{outputs * chunks}, DType::f64, device);
  AL_CUDA_LAUNCH(sum_columns_kernel<T>, grid, dim3(kThreads), 0, x, outer, n, inner, chunks, chunk, scale, y,
                 part.data<double>());
  AL_CUDA_LAUNCH(sum_partials_kernel<T>, dim3(cuda::blocks_for(outputs, kThreads)), dim3(kThreads), 0,
                 part.data<double>(), outputs, chunks, int64_t{1}, outputs, scale, y);
}

}  // namespace

std::vector<Tensor> ReduceOp::forward(CudaTag, ReduceKind kind, const Tensor& x, const std::vector<bool>& reduce) {
  const std::string_view name = reduce_name(kind);
  const Shape kept = kept_shape(x.shape(), reduce);
  if (kind == ReduceKind::max) {
    AL_ASSERT(x.is_contiguous(), "max: the CUDA kernel takes a contiguous x; got ", x);
    const Split s = split(x.shape(), reduce);
    Tensor y = Tensor::empty(kept, x.dtype(), x.device());
    Tensor arg = Tensor::empty(kept, DType::i32, x.device());
    if (y.numel() == 0) return {y, arg};
    dispatch_float(x.dtype(), name, [&](auto tag) {
      using T = decltype(tag);
      if (s.inner == 1 && s.n >= kMinBlockRow) {
        const unsigned grid = static_cast<unsigned>(std::min<int64_t>(s.outer, 65535));
        AL_CUDA_LAUNCH(max_rows_kernel<T>, dim3(grid), dim3(kThreads), 0, x.data<T>(), s.outer, s.n, y.data<T>(),
                       arg.data<int32_t>());
      } else {
        AL_CUDA_LAUNCH(max_columns_kernel<T>, dim3(cuda::blocks_for(s.outer * s.inner, kThreads)), dim3(kThreads), 0,
                       x.data<T>(), s.outer, s.n, s.inner, y.data<T>(), arg.data<int32_t>());
      }
    });
    return {y, arg};
  }

  Tensor y = Tensor::empty(kept, x.dtype(), x.device());
  if (y.numel() == 0) return {y};
  int64_t count = 1;  // elements summed into each y
  for (int64_t d = 0; d < x.ndim(); ++d)
    if (reduce[static_cast<size_t>(d)]) count *= x.size(d);
  if (count == 0) {  // empty sums: 0, and mean 0 / 0 as the CPU computes it
    cuda::fill(y, kind == ReduceKind::mean ? std::numeric_limits<double>::quiet_NaN() : 0.0);
    return {y};
  }
  const double scale = kind == ReduceKind::mean ? 1.0 / static_cast<double>(count) : 1.0;
  const std::vector<Group> groups = merge_groups(x.shape(), reduce);
  const auto reduced_groups = std::count_if(groups.begin(), groups.end(), [](const Group& g) { return g.reduced; });
  dispatch_float(x.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    if (reduced_groups <= 1) {
      // [outer, N, inner] around the reduced group (N = 1 when nothing is reduced).
      int64_t outer = 1, n = 1, inner = 1;
      bool after = false;
      for (const Group& g : groups) {
        if (g.reduced) n = g.size, after = true;
        else (after ? inner : outer) *= g.size;
      }
      const Tensor xc = x.contiguous();
      if (inner == 1 && n >= kMinBlockRow) sum_rows<T>(xc.data<T>(), outer, n, scale, y.data<T>(), x.device());
      else sum_columns<T>(xc.data<T>(), outer, n, inner, scale, y.data<T>(), x.device());
      return;
    }
    // Several reduced runs: bring the kept dims to the front, then sum rows.
    std::vector<int64_t> perm;
    for (int64_t d = 0; d < x.ndim(); ++d)
      if (!reduce[static_cast<size_t>(d)]) perm.push_back(d);
    for (int64_t d = 0; d < x.ndim(); ++d)
      if (reduce[static_cast<size_t>(d)]) perm.push_back(d);
    const Tensor xp = x.permute(perm).contiguous();
    if (count >= kMinBlockRow) sum_rows<T>(xp.data<T>(), y.numel(), count, scale, y.data<T>(), x.device());
    else sum_columns<T>(xp.data<T>(), y.numel(), count, 1, scale, y.data<T>(), x.device());
  });
  return {y};
}

Tensor ReduceOp::backward(CudaTag, ReduceKind kind, const Shape& x_shape, const std::vector<bool>& reduce,
                          const Tensor& argmax, const Tensor& dy) {
  const std::string_view name = reduce_name(kind);
  AL_ASSERT(dy.is_contiguous(), name, ": the CUDA backward takes a contiguous dy; got ", dy);
  Tensor dx = Tensor::empty(x_shape, dy.dtype(), dy.device());
  if (dx.numel() == 0) return dx;
  const dim3 grid(cuda::blocks_for(dx.numel(), kThreads)), block(kThreads);
  if (kind == ReduceKind::max) {
    const Split s = split(x_shape, reduce);
    dispatch_float(dy.dtype(), name, [&](auto tag) {
      using T = decltype(tag);
      AL_CUDA_LAUNCH(max_backward_kernel<T>, grid, block, 0, dy.data<T>(), argmax.data<int32_t>(), s.outer, s.n,
                     s.inner, dx.data<T>());
    });
    return dx;
  }
  int64_t count = 1;
  for (int64_t d = 0; d < x_shape.ndim(); ++d)
    if (reduce[static_cast<size_t>(d)]) count *= x_shape[d];
  const double scale = kind == ReduceKind::mean ? 1.0 / static_cast<double>(count) : 1.0;
  // dy is contiguous with the kept groups' sizes, so a kept group's stride is the product of
  // the kept groups after it.
  const std::vector<Group> groups = merge_groups(x_shape, reduce);
  AL_CHECK_SHAPE(groups.size() <= static_cast<size_t>(kMaxGroups), name, ": the CUDA backward handles at most ",
                 kMaxGroups, " alternating runs of reduced and kept dims; got x=", x_shape);
  Groups g;
  g.n = static_cast<int>(groups.size());
  int64_t stride = 1;
  for (int d = g.n - 1; d >= 0; --d) {
    g.size[d] = groups[static_cast<size_t>(d)].size;
    g.dy_stride[d] = groups[static_cast<size_t>(d)].reduced ? 0 : stride;
    if (!groups[static_cast<size_t>(d)].reduced) stride *= g.size[d];
  }
  dispatch_float(dy.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    AL_CUDA_LAUNCH(broadcast_scaled_kernel<T>, grid, block, 0, dy.data<T>(), g, dx.numel(), static_cast<T>(scale),
                   dx.data<T>());
  });
  return dx;
}

}  // namespace attnlab
