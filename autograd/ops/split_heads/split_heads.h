// The heads of a fused projection: x [B, T, n * H * D] seen as [B, T, n, H, D], and part p
// (p < n) returned as y_p [B, H, T, D] = x[:, :, p].permute(0, 2, 1, 3).
//   dx[:, :, p] = dy_p permuted back, for every p
//
// Forward makes no copy: each y_p is a strided view of x (unit-stride D), which attention reads
// as it is. Backward returns, without a copy, the buffer that the dy_p are themselves views of
// when they are laid out exactly as [B, T, n, H, D] (softmax_attention's dq, dk, dv are);
// otherwise it copies them into a fresh dx. Parts with no gradient count as zeros.
// Shapes: x [B, T, n * H * D] (n, H >= 1) -> n outputs [B, H, T, D]. dtypes: f32, f64, on the
// CPU and CUDA: forward is views on either; the CUDA backward (split_heads_cuda.cu) takes the
// same buffer or copies with cuda::copy_strided.
// Saved for backward: nothing but the shapes.
#pragma once

#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "lib/device.h"

namespace attnlab {

struct SplitHeadsOp {
  static void check(const Tensor& x, int64_t n, int64_t heads);
  // The n views of x.
  static std::vector<Tensor> forward(const Tensor& x, int64_t n, int64_t heads);
  // Part p of x [B, T, n * H * D] as [B, H, T, D]: a view, on any device.
  static Tensor part(const Tensor& x, int64_t n, int64_t heads, int64_t p);
  // The buffer the n gradients [B, H, T, D] are parts of, as dx [x_shape], when they tile it
  // exactly as [B, T, n, H, D] (no copy); otherwise an undefined Tensor. Any device.
  static Tensor joint_buffer(const Shape& x_shape, const std::vector<Tensor>& dys);
  // dx [B, T, n * H * D] from the n gradients [B, H, T, D] (any strides).
  static Tensor backward(CpuTag, const Shape& x_shape, const std::vector<Tensor>& dys);
  static Tensor backward(CudaTag, const Shape& x_shape, const std::vector<Tensor>& dys);
  // Larger ragged shapes for the CUDA parity test.
  static std::vector<OpSample> parity_samples();
  static std::vector<OpSample> samples();
  static std::vector<OpMisuse> misuses();
};

std::vector<Variable> split_heads(const Variable& x, int64_t n, int64_t heads);

}  // namespace attnlab
