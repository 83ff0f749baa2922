// Shared argument checks and device dispatch for the ops in autograd/ops/ and layers/attention/.
// Messages follow DESIGN.md section 5: the op's name, what it expected, and what it got with
// shapes, e.g. "exp: x must be f32 or f64; got x=[2, 3] i32 cpu".
#pragma once

#include <string_view>
#include <type_traits>
#include <vector>

#include "autograd/variable.h"
#include "lib/error.h"

namespace attnlab::op {

inline void check_defined(std::string_view op, std::string_view arg, const Variable& v) {
  AL_CHECK(v.defined(), op, ": ", arg, " is an undefined Variable");
}

// t must be f32 or f64 (the compute dtypes of differentiable CPU ops).
inline void check_float(std::string_view op, std::string_view arg, const Tensor& t) {
  AL_CHECK_DTYPE(t.dtype() == DType::f32 || t.dtype() == DType::f64, op, ": ", arg, " must be f32 or f64; got ", arg,
                 "=", t);
}

inline void check_same_dtype(std::string_view op, std::string_view an, const Tensor& a, std::string_view bn,
                             const Tensor& b) {
  AL_CHECK_DTYPE(a.dtype() == b.dtype(), op, ": ", an, " and ", bn, " must have the same dtype; got ", an, "=", a, ", ",
                 bn, "=", b);
}

inline void check_same_device(std::string_view op, std::string_view an, const Tensor& a, std::string_view bn,
                              const Tensor& b) {
  AL_CHECK_DEVICE(a.device() == b.device(), op, ": ", an, " and ", bn, " must be on the same device; got ", an, "=", a,
                  ", ", bn, "=", b);
}

// A dim of x in [-ndim, ndim) (ndim defaults to x's), returned in [0, ndim); the message prints x:
// "sum: dim 2 is out of range [-2, 2) for x=[2, 3] f32 cpu".
inline int64_t check_dim(std::string_view op, int64_t dim, const Tensor& x, int64_t ndim = -1) {
  const int64_t n = ndim < 0 ? x.ndim() : ndim;
  AL_CHECK_SHAPE(dim >= -n && dim < n, op, ": dim ", dim, " is out of range [", -n, ", ", n, ") for x=", x);
  return dim < 0 ? dim + n : dim;
}

// A per-channel vector (a norm's weight or bias): [C] with C the last dim of x, x's dtype and
// device.
inline void check_channel_vector(std::string_view op, std::string_view arg, const Tensor& v, const Tensor& x) {
  AL_CHECK_SHAPE(v.ndim() == 1 && x.ndim() >= 1 && v.size(0) == x.size(-1), op, ": ", arg,
                 " must be [C] with C the last dim of x; got x=", x, ", ", arg, "=", v);
  check_same_dtype(op, "x", x, arg, v);
  check_same_device(op, "x", x, arg, v);
}

// Runs `fn(CpuTag{})` for a CPU tensor and `fn(CudaTag{})` for a CUDA one. An op states that it
// has CUDA kernels by passing a generic lambda, `[&](auto dev) { return Op::forward(dev, ...); }`;
// one without passes `[&](CpuTag dev) {...}` and a CUDA tensor gets a DeviceError naming the op.
template <typename Fn>
decltype(auto) on_device(std::string_view op, const Tensor& t, Fn&& fn) {
  if (t.device().is_cpu()) return fn(CpuTag{});
#if ATTNLAB_WITH_CUDA
  if constexpr (std::is_invocable_v<Fn, CudaTag>) {
    return fn(CudaTag{});
  } else {
    ::attnlab::detail::throw_error<DeviceError>(op, ": no CUDA kernel for this op yet (it runs on the CPU only); got ", t);
  }
#else
  ::attnlab::detail::throw_error<DeviceError>(op, ": this build of attnlab has no CUDA backend (configured without the CUDA toolkit); got ", t);
#endif
}

}  // namespace attnlab::op
