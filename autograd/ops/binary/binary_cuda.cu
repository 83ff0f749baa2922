// CUDA kernels of the broadcasting binary ops, f32 and f64:
//
//   forward   y [S] = f(a [*a], b [*b]), S = broadcast(*a, *b); f = a + b, a - b, a * b, a / b
//   backward  the gradient at [S] (dy, dy b, dy / b, -dy a / b^2) formed elementwise, then
//             summed back to each input's shape by cuda::sum_to; sub negates db after the sum
//             (a pass over b's elements, not S's)
//
// One elementwise kernel serves all of these: out [S] contiguous = f(in_0, .., in_(N-1)), each
// input read through broadcast strides (0 along broadcast dims), so nothing is expanded in
// memory and any input strides work. On the host the dims are first merged wherever every
// operand stays affine across the pair (and size-1 dims dropped), so a contiguous input of
// shape S is one dim of stride 1 and takes the flat kernel: out[i] = f(in_0[i], ..).
// Otherwise each output index is unravelled over the (at most kMaxDims) merged dims.
//
// Launch: 1-D grid of blocks_for(|S|, 256) blocks (at most 65535) x 256 threads, no shared
// memory; a grid-stride loop over output elements, consecutive threads on consecutive outputs.
// Every output element is written by one thread: deterministic.
#include "lib/cuda/kernel.h"

#include <array>
#include <utility>

#include "autograd/ops/binary/binary.h"
#include "autograd/ops/binary/binary_math.h"
#include "lib/cuda/tensor_kernels.h"

namespace attnlab {

namespace {

constexpr unsigned kThreads = 256;
constexpr int kMaxDims = 8;

// The merged iteration space: sizes of the dims, outermost first, and each input's strides.
template <int N>
struct Layout {
  int ndim = 0;
  int64_t size[kMaxDims] = {};
  int64_t stride[N][kMaxDims] = {};
};

template <typename T, int N>
struct Inputs {
  const T* p[N];
};

template <typename T, typename F, int N>
__device__ inline T apply(const F& f, const Inputs<T, N>& in, const int64_t* off) {
  if constexpr (N == 1) return f(in.p[0][off[0]]);
  else if constexpr (N == 2) return f(in.p[0][off[0]], in.p[1][off[1]]);
  else return f(in.p[0][off[0]], in.p[1][off[1]], in.p[2][off[2]]);
}

// Every input contiguous with the output's shape: no index arithmetic.
template <typename T, typename F, int N>
__global__ void map_flat_kernel(T* __restrict__ out, Inputs<T, N> in, int64_t n, F f) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    int64_t off[N];
    for (int k = 0; k < N; ++k) off[k] = i;
    out[i] = apply<T, F, N>(f, in, off);
  }
}

// General case: unravel i over the merged dims (innermost first) into each input's offset.
template <typename T, typename F, int N>
__global__ void map_strided_kernel(T* __restrict__ out, Inputs<T, N> in, Layout<N> layout, int64_t n, F f) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    int64_t off[N] = {};
    int64_t rest = i;
    for (int d = layout.ndim - 1; d >= 0; --d) {
      const int64_t c = rest % layout.size[d];
      rest /= layout.size[d];
      for (int k = 0; k < N; ++k) off[k] += c * layout.stride[k][d];
    }
    out[i] = apply<T, F, N>(f, in, off);
  }
}

// Merges the dims of `shape` for inputs with the given (broadcast) strides: size-1 dims go, and
// neighbours d-1, d merge when every input has stride[d-1] == stride[d] * size[d] (the output
// is contiguous, so it always allows the merge).
template <int N>
Layout<N> merge_dims(std::string_view name, const Shape& shape, const std::array<std::vector<int64_t>, N>& strides) {
  std::vector<int64_t> sizes;
  std::array<std::vector<int64_t>, N> st;
  for (int64_t d = 0; d < shape.ndim(); ++d) {
    if (shape[d] == 1) continue;
    const bool merge = !sizes.empty() && [&] {
      for (int k = 0; k < N; ++k)
        if (st[k].back() != strides[k][static_cast<size_t>(d)] * shape[d]) return false;
      return true;
    }();
    if (merge) {
      sizes.back() *= shape[d];
      for (int k = 0; k < N; ++k) st[k].back() = strides[k][static_cast<size_t>(d)];
    } else {
      sizes.push_back(shape[d]);
      for (int k = 0; k < N; ++k) st[k].push_back(strides[k][static_cast<size_t>(d)]);
    }
  }
  AL_CHECK_SHAPE(sizes.size() <= static_cast<size_t>(kMaxDims), name, ": the CUDA kernel handles at most ", kMaxDims,
                 " dims after merging contiguous ones; got y=", shape, " (", sizes.size(), " dims)");
  Layout<N> layout;
  layout.ndim = static_cast<int>(sizes.size());
  for (size_t d = 0; d < sizes.size(); ++d) {
    layout.size[d] = sizes[d];
    for (int k = 0; k < N; ++k) layout.stride[k][d] = st[k][d];
  }
  return layout;
}

// A new contiguous tensor of `shape` on `device` with out[i] = f(in[i]...), each input read
// broadcast to `shape`.
template <typename T, typename F, typename... In>
Tensor map(std::string_view name, const Shape& shape, Device device, F f, const In&... in) {
  constexpr int N = static_cast<int>(sizeof...(In));
  Tensor out = Tensor::empty(shape, dtype_v<T>, device);
  const int64_t n = out.numel();
  if (n == 0) return out;
  const Layout<N> layout =
      merge_dims<N>(name, shape, {broadcast_strides(in.shape(), in.strides(), shape)...});
  const Inputs<T, N> ptrs{{in.template data<T>()...}};
  bool flat = layout.ndim <= 1;
  for (int k = 0; k < N && layout.ndim == 1; ++k) flat = flat && layout.stride[k][0] == 1;
  const dim3 grid(cuda::blocks_for(n, kThreads)), block(kThreads);
  if (flat)
    AL_CUDA_LAUNCH((map_flat_kernel<T, F, N>), grid, block, 0, out.data<T>(), ptrs, n, f);
  else
    AL_CUDA_LAUNCH((map_strided_kernel<T, F, N>), grid, block, 0, out.data<T>(), ptrs, layout, n, f);
  return out;
}

}  // namespace

Tensor BinaryOp::forward(CudaTag, BinaryKind kind, const Tensor& a, const Tensor& b) {
  const std::string_view name = binary_name(kind);
  const Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  return dispatch_float(a.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    return binary_math::forward(kind, a, b, [&](auto f, const auto&... in) {
      return map<T>(name, shape, a.device(), f, in...);
    });
  });
}

std::vector<Tensor> BinaryOp::backward(CudaTag, BinaryKind kind, const Tensor& a, const Tensor& b, const Tensor& dy,
                                       const GradMask& needs) {
  const std::string_view name = binary_name(kind);
  const Device dev = dy.device();
  return dispatch_float(dy.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    return binary_math::backward(
        kind, a, b, dy, needs, [&](auto f, const auto&... in) { return map<T>(name, dy.shape(), dev, f, in...); },
        [&](auto f, const Tensor& x) { return map<T>(name, b.shape(), dev, f, x); },
        [](const Tensor& g, const Shape& to) { return cuda::sum_to(g, to); });
  });
}

}  // namespace attnlab
