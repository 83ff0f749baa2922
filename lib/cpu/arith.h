// Tensor maths without autograd that the engine and backward passes need everywhere:
// accumulation into a gradient, and summing a broadcast gradient back to an input's shape.
// f32 and f64; f32 sums accumulate in double.
#pragma once

#include <vector>

#include "lib/tensor.h"

namespace attnlab::cpu {

// dst += alpha * src, with src broadcastable to dst's shape. Any strides on both sides.
void add_inplace(Tensor& dst, const Tensor& src, double alpha = 1.0);

// Sums x over every dim d with reduce[d] true, keeping them as size-1 dims. Returns a
// contiguous tensor; each output element is summed by one thread in a fixed order.
Tensor sum_dims(const Tensor& x, const std::vector<bool>& reduce);

// Sums a gradient of broadcast shape back to `target` (which broadcasts to g's shape):
// leading extra dims and dims where target has size 1 are summed. Returns g itself if equal.
Tensor sum_to(const Tensor& g, const Shape& target);

// out[c] = sum over r of x[r * cols + c] (a bias gradient: dy [rows, cols] summed over rows).
// Columns go to threads in blocks; each is summed by one thread, rows in order, in double for
// f32 (the same bits on any thread count, and as sum_dims's).
template <typename T>
void column_sums(const T* x, int64_t rows, int64_t cols, T* out);

}  // namespace attnlab::cpu
