// Rotary position embedding (RoPE, Su et al. 2021), half-split convention (GPT-NeoX, Llama in
// Hugging Face transformers): for each head vector x of length D, pair i in [0, D/2) is
// (x[i], x[i + D/2]), rotated by the angle theta = pos * base^(-2i / D):
//   y[i]       = x[i] cos(theta) - x[i + D/2] sin(theta)
//   y[i + D/2] = x[i] sin(theta) + x[i + D/2] cos(theta)
// with pos = position_offset + t for the row at time step t. A rotation is orthogonal, so
// dx = the inverse rotation (angle -theta) of dy.
//
// Shapes: x [B, H, T, D] with D even -> y [B, H, T, D]. position_offset >= 0 (a KV cache passes
// its length: the new rows sit after the cached ones). base > 0.
// dtypes: f32, f64 (CPU); CUDA: f32. Angles, cos and sin are computed in double on both.
// Saved for backward: nothing but the arguments (the op is linear in x).
#pragma once

#include <cstdint>
#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "lib/device.h"

namespace attnlab {

struct RopeOp {
  static void check(const Tensor& x, int64_t position_offset, double base);
  // x contiguous [B, H, T, D]; `inverse` rotates by -theta (the backward).
  static Tensor forward(CpuTag, const Tensor& x, int64_t position_offset, double base, bool inverse = false);
  static Tensor backward(CpuTag, const Tensor& dy, int64_t position_offset, double base);
  static Tensor forward(CudaTag, const Tensor& x, int64_t position_offset, double base, bool inverse = false);
  static Tensor backward(CudaTag, const Tensor& dy, int64_t position_offset, double base);
  static std::vector<OpSample> samples();
  // Larger shapes for the CUDA parity test: several blocks, ragged edges.
  static std::vector<OpSample> parity_samples();
  static std::vector<OpMisuse> misuses();
};

Variable rope(const Variable& x, int64_t position_offset, double base = 10000.0);

}  // namespace attnlab
