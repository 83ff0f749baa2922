// The tensor maths of lib/cpu/arith.h on whichever device the tensors live: the engine and
// device-generic code call these; CPU-only kernels keep calling cpu:: directly.
#pragma once

#include "lib/tensor.h"

namespace attnlab {

// dst += alpha * src, src broadcastable to dst's shape, both on one device.
void add_inplace(Tensor& dst, const Tensor& src, double alpha = 1.0);
// Sums a gradient of broadcast shape back to `target` (cpu::sum_to's contract).
Tensor sum_to(const Tensor& g, const Shape& target);

}  // namespace attnlab
