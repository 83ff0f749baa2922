// Shared argument checks and device dispatch for the ops in autograd/ops/ and layers/attention/.
// Messages follow DESIGN.md section 5: the op's name, what it expected, and what it got with
// shapes, e.g. "exp: x must be f32 or f64; got x=[2, 3] i32 cpu".
#pragma once

#include <string_view>
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

// Runs the CPU implementation, or reports that this build has no kernel for the device.
template <typename CpuFn>
decltype(auto) on_device(std::string_view op, const Tensor& t, CpuFn&& cpu) {
  AL_CHECK_DEVICE(t.device().is_cpu(), op, ": no kernel for ", t.device(), " in this build (CUDA support is off); got ",
                  t);
  return cpu(CpuTag{});
}

}  // namespace attnlab::op
