// Strided elementwise kernels on CUDA tensors: copy with dtype conversion and broadcasting,
// fill, dst += alpha * src, and sums over dims (lib/cuda/tensor_kernels.h).
//
// Layout: up to kMaxDims dims. Each thread takes flat indices i of the destination (row-major
// over its shape) in a grid-stride loop, splits i into a multi-index, and dots it with each
// operand's element strides (a broadcast operand has stride 0 on broadcast dims). Launch:
// 256 threads a block, blocks_for(numel). No shared memory, no barriers.
// sum_dims: one thread per output element, looping over the reduced elements in row-major order
// and accumulating in double: the same result on every run and every launch shape.
// bf16 is stored as its 16 bits; conversion from f32 rounds to nearest even (as lib/dtype.h).
#include "lib/cuda/tensor_kernels.h"

#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "lib/cuda/kernel.h"
#include "lib/cuda/runtime.h"
#include "lib/error.h"

namespace attnlab::cuda {

namespace {

constexpr int kMaxDims = 8;
constexpr unsigned kThreads = 256;

struct Bf16Bits {
  uint16_t bits;
};

// ---- element conversion, on the device -----------------------------------------------------

__host__ __device__ inline float bf16_to_float(Bf16Bits b) {
  const uint32_t u = static_cast<uint32_t>(b.bits) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

__host__ __device__ inline Bf16Bits float_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return Bf16Bits{static_cast<uint16_t>((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return Bf16Bits{static_cast<uint16_t>(u >> 16)};
}

template <typename T>
__host__ __device__ inline double to_double(T x) {
  return static_cast<double>(x);
}
template <>
__host__ __device__ inline double to_double(Bf16Bits x) {
  return static_cast<double>(bf16_to_float(x));
}

template <typename D, typename S>
__host__ __device__ inline D convert(S x) {
  if constexpr (std::is_same_v<D, S>) {
    return x;
  } else if constexpr (std::is_same_v<D, Bf16Bits>) {
    return float_to_bf16(static_cast<float>(to_double(x)));
  } else {
    return static_cast<D>(to_double(x));
  }
}

// ---- layouts -------------------------------------------------------------------------------

template <int N>
struct Layout {
  int ndim;
  int64_t numel;
  int64_t size[kMaxDims];
  int64_t stride[N][kMaxDims];  // element strides of each operand over the iteration shape

  __host__ __device__ void offsets(int64_t i, int64_t (&off)[N]) const {
    for (int k = 0; k < N; ++k) off[k] = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      const int64_t idx = i % size[d];
      i /= size[d];
      for (int k = 0; k < N; ++k) off[k] += idx * stride[k][d];
    }
  }
};

std::vector<int64_t> broadcast_strides(const Tensor& t, const Shape& to) {
  const int64_t lead = to.ndim() - t.ndim();
  std::vector<int64_t> s(static_cast<size_t>(to.ndim()), 0);
  for (int64_t d = 0; d < t.ndim(); ++d)
    s[static_cast<size_t>(d + lead)] = t.size(d) == 1 ? 0 : t.stride(d);
  return s;
}

template <int N>
Layout<N> make_layout(const char* op, const Shape& shape, const std::array<std::vector<int64_t>, N>& strides) {
  AL_CHECK_SHAPE(shape.ndim() <= kMaxDims, "cuda ", op, ": at most ", kMaxDims, " dims; got ", shape);
  Layout<N> l{};
  l.ndim = static_cast<int>(shape.ndim());
  l.numel = shape.numel();
  for (int d = 0; d < l.ndim; ++d) {
    l.size[d] = shape[d];
    for (int k = 0; k < N; ++k) l.stride[k][d] = strides[static_cast<size_t>(k)][static_cast<size_t>(d)];
  }
  return l;
}

void check_cuda(const char* op, const Tensor& t) {
  AL_CHECK_DEVICE(t.defined() && t.device().is_cuda(), "cuda ", op, ": expected a CUDA tensor; got ", t);
}

// Calls fn(T{}) with T the element type the kernels use for `dtype`.
template <typename Fn>
void dispatch_storage(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::f32: fn(float{}); return;
    case DType::f64: fn(double{}); return;
    case DType::bf16: fn(Bf16Bits{}); return;
    case DType::i32: fn(int32_t{}); return;
  }
}

// ---- kernels -------------------------------------------------------------------------------

template <typename D, typename S>
__global__ void copy_kernel(D* dst, const S* src, Layout<2> l) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < l.numel; i += int64_t{gridDim.x} * blockDim.x) {
    int64_t off[2];
    l.offsets(i, off);
    dst[off[0]] = convert<D>(src[off[1]]);
  }
}

template <typename T>
__global__ void fill_kernel(T* dst, T value, Layout<1> l) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < l.numel; i += int64_t{gridDim.x} * blockDim.x) {
    int64_t off[1];
    l.offsets(i, off);
    dst[off[0]] = value;
  }
}

template <typename T>
__global__ void axpy_kernel(T* dst, const T* src, T alpha, Layout<2> l) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < l.numel; i += int64_t{gridDim.x} * blockDim.x) {
    int64_t off[2];
    l.offsets(i, off);
    dst[off[0]] += alpha * src[off[1]];
  }
}

// out (contiguous, `outer` layout over the kept dims) = sum over the `inner` layout of x.
template <typename T>
__global__ void sum_kernel(T* out, const T* x, Layout<1> outer, Layout<1> inner) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < outer.numel;
       i += int64_t{gridDim.x} * blockDim.x) {
    int64_t base[1];
    outer.offsets(i, base);
    double acc = 0.0;
    for (int64_t j = 0; j < inner.numel; ++j) {
      int64_t off[1];
      inner.offsets(j, off);
      acc += static_cast<double>(x[base[0] + off[0]]);
    }
    out[i] = static_cast<T>(acc);
  }
}

}  // namespace

void copy_strided(Tensor& dst, const Tensor& src) {
  check_cuda("copy", dst);
  check_cuda("copy", src);
  AL_CHECK_DEVICE(dst.device() == src.device(), "cuda copy: tensors on different devices; got dst=", dst, ", src=",
                  src);
  if (dst.numel() == 0) return;
  if (dst.dtype() == src.dtype() && dst.shape() == src.shape() && dst.is_contiguous() && src.is_contiguous()) {
    copy_d2d(dst.raw_data(), src.raw_data(), static_cast<size_t>(dst.numel()) * dtype_size(dst.dtype()));
    return;
  }
  const Layout<2> l = make_layout<2>("copy", dst.shape(), {dst.strides(), broadcast_strides(src, dst.shape())});
  dispatch_storage(dst.dtype(), [&](auto dtag) {
    using D = decltype(dtag);
    dispatch_storage(src.dtype(), [&](auto stag) {
      using S = decltype(stag);
      AL_CUDA_LAUNCH((copy_kernel<D, S>), blocks_for(l.numel, kThreads), kThreads, 0, static_cast<D*>(dst.raw_data()),
                     static_cast<const S*>(src.raw_data()), l);
    });
  });
}

void fill(Tensor& dst, double value) {
  check_cuda("fill", dst);
  if (dst.numel() == 0) return;
  if (value == 0.0 && dst.is_contiguous()) {
    memset_zero(dst.raw_data(), static_cast<size_t>(dst.numel()) * dtype_size(dst.dtype()));
    return;
  }
  const Layout<1> l = make_layout<1>("fill", dst.shape(), {dst.strides()});
  dispatch_storage(dst.dtype(), [&](auto tag) {
    using T = decltype(tag);
    AL_CUDA_LAUNCH(fill_kernel<T>, blocks_for(l.numel, kThreads), kThreads, 0, static_cast<T*>(dst.raw_data()),
                   convert<T>(value), l);
  });
}

void add_inplace(Tensor& dst, const Tensor& src, double alpha) {
  check_cuda("add_inplace", dst);
  check_cuda("add_inplace", src);
  AL_CHECK_DTYPE(dst.dtype() == src.dtype() && (dst.dtype() == DType::f32 || dst.dtype() == DType::f64),
                 "cuda add_inplace: dst and src must both be f32 or both f64; got dst=", dst, ", src=", src);
  if (dst.numel() == 0) return;
  const Layout<2> l = make_layout<2>("add_inplace", dst.shape(), {dst.strides(), broadcast_strides(src, dst.shape())});
  if (dst.dtype() == DType::f32) {
    AL_CUDA_LAUNCH(axpy_kernel<float>, blocks_for(l.numel, kThreads), kThreads, 0, dst.data<float>(),
                   src.data<float>(), static_cast<float>(alpha), l);
  } else {
    AL_CUDA_LAUNCH(axpy_kernel<double>, blocks_for(l.numel, kThreads), kThreads, 0, dst.data<double>(),
                   src.data<double>(), alpha, l);
  }
}

Tensor sum_dims(const Tensor& x, const std::vector<bool>& reduce) {
  check_cuda("sum_dims", x);
  AL_CHECK_DTYPE(x.dtype() == DType::f32 || x.dtype() == DType::f64, "cuda sum_dims: x must be f32 or f64; got ", x);
  AL_CHECK_SHAPE(static_cast<int64_t>(reduce.size()) == x.ndim(), "cuda sum_dims: one flag per dim of x; got ",
                 reduce.size(), " flags for x=", x);
  // The kept dims form the outer layout (one output each), the reduced dims the inner one.
  std::vector<int64_t> out_sizes, outer_sizes, outer_strides, inner_sizes, inner_strides;
  for (int64_t d = 0; d < x.ndim(); ++d) {
    const bool r = reduce[static_cast<size_t>(d)];
    out_sizes.push_back(r ? 1 : x.size(d));
    (r ? inner_sizes : outer_sizes).push_back(x.size(d));
    (r ? inner_strides : outer_strides).push_back(x.stride(d));
  }
  Tensor out = Tensor::empty(Shape(out_sizes), x.dtype(), x.device());
  const Layout<1> outer = make_layout<1>("sum_dims", Shape(outer_sizes), {outer_strides});
  const Layout<1> inner = make_layout<1>("sum_dims", Shape(inner_sizes), {inner_strides});
  if (out.numel() == 0) return out;
  if (x.dtype() == DType::f32) {
    AL_CUDA_LAUNCH(sum_kernel<float>, blocks_for(outer.numel, kThreads), kThreads, 0, out.data<float>(),
                   x.data<float>(), outer, inner);
  } else {
    AL_CUDA_LAUNCH(sum_kernel<double>, blocks_for(outer.numel, kThreads), kThreads, 0, out.data<double>(),
                   x.data<double>(), outer, inner);
  }
  return out;
}

Tensor sum_to(const Tensor& g, const Shape& target) {
  if (g.shape() == target) return g;
  const int64_t lead = g.ndim() - target.ndim();
  AL_CHECK_SHAPE(lead >= 0, "cuda sum_to: target ", target, " has more dims than the gradient ", g);
  std::vector<bool> reduce(static_cast<size_t>(g.ndim()), false);
  for (int64_t d = 0; d < g.ndim(); ++d)
    reduce[static_cast<size_t>(d)] = d < lead || (target[d - lead] == 1 && g.size(d) != 1);
  return sum_dims(g, reduce).reshape(target);
}

}  // namespace attnlab::cuda
