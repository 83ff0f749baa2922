// CUDA kernels of the unary ops, f32 and f64:
//
//   forward   y[i]  = f(x[i])                 x, y [n] contiguous (n = numel)
//   backward  dx[i] = f'(x[i], y[i]) * dy[i]  x, y, dy, dx [n] contiguous
//
// f and f' are unary_math.h's unary_f<K> / unary_df<K>, the very expressions the CPU kernels
// use, so the two backends differ only by the device's libm (and the CPU's f32 GELU, which uses
// Eigen's vectorised tanh).
//
// Launch: 1-D grid of blocks_for(n, 256) blocks (at most 65535) x 256 threads, no shared memory.
// Each thread handles elements i, i + stride, ... (grid-stride loop, stride = grid x block), so
// any n is covered and consecutive threads touch consecutive elements (coalesced). One kernel
// per (dtype, kind): the kind is a template argument, so the loop body has no switch.
#include "lib/cuda/kernel.h"

#include "autograd/ops/unary/unary.h"
#include "autograd/ops/unary/unary_math.h"

namespace attnlab {

namespace {

constexpr unsigned kThreads = 256;

template <typename T, UnaryKind K>
__global__ void unary_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, T p) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = unary_math::unary_f<K>(x[i], p);
}

template <typename T, UnaryKind K>
__global__ void unary_backward_kernel(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ dy,
                                      T* __restrict__ dx, int64_t n, T p) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dx[i] = unary_math::unary_df<K>(x[i], y[i], p) * dy[i];
}

void check_contiguous(UnaryKind kind, const char* arg, const Tensor& t) {
  AL_ASSERT(t.is_contiguous(), unary_name(kind), ": the CUDA kernel takes a contiguous ", arg, "; got ", t);
}

}  // namespace

Tensor UnaryOp::forward(CudaTag, UnaryKind kind, double param, const Tensor& x) {
  check_contiguous(kind, "x", x);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  const int64_t n = x.numel();
  if (n == 0) return y;
  dispatch_float(x.dtype(), unary_name(kind), [&](auto tag) {
    using T = decltype(tag);
    unary_math::with_unary_kind(kind, [&](auto k) {
      AL_CUDA_LAUNCH((unary_forward_kernel<T, decltype(k)::value>), dim3(cuda::blocks_for(n, kThreads)),
                     dim3(kThreads), 0, x.data<T>(), y.data<T>(), n, static_cast<T>(param));
    });
  });
  return y;
}

Tensor UnaryOp::backward(CudaTag, UnaryKind kind, double param, const Tensor& x, const Tensor& y,
                         const Tensor& dy) {
  check_contiguous(kind, "x", x);
  check_contiguous(kind, "y", y);
  check_contiguous(kind, "dy", dy);
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  const int64_t n = x.numel();
  if (n == 0) return dx;
  dispatch_float(x.dtype(), unary_name(kind), [&](auto tag) {
    using T = decltype(tag);
    unary_math::with_unary_kind(kind, [&](auto k) {
      AL_CUDA_LAUNCH((unary_backward_kernel<T, decltype(k)::value>), dim3(cuda::blocks_for(n, kThreads)),
                     dim3(kThreads), 0, x.data<T>(), y.data<T>(), dy.data<T>(), dx.data<T>(), n,
                     static_cast<T>(param));
    });
  });
  return dx;
}

}  // namespace attnlab
