// Tensor maths on CUDA tensors that the runtime, the engine and many backward passes share:
// the CUDA counterparts of Tensor::copy_/fill_ and of lib/cpu/arith.h. No CUDA types here.
// dtypes: f32, f64, bf16 and i32 for copies and fills (copies convert between them); f32 and f64
// for the arithmetic. All tensors on the same CUDA device.
#pragma once

#include <vector>

#include "lib/tensor.h"

namespace attnlab::cuda {

// dst[i] = convert(src[i]) elementwise over dst's shape; any strides on both sides; src must
// have dst's shape or broadcast to it (Tensor::copy_ on CUDA).
void copy_strided(Tensor& dst, const Tensor& src);
// Every element of dst (any strides) = value.
void fill(Tensor& dst, double value);
// dst += alpha * src, src broadcastable to dst's shape, any strides on both sides.
void add_inplace(Tensor& dst, const Tensor& src, double alpha = 1.0);
// Sums x over every dim d with reduce[d] true, keeping them as size-1 dims; contiguous result.
Tensor sum_dims(const Tensor& x, const std::vector<bool>& reduce);
// Sums a gradient of broadcast shape back to `target` (cpu::sum_to's contract).
Tensor sum_to(const Tensor& g, const Shape& target);

}  // namespace attnlab::cuda
