// Causal depthwise 1-D convolution over time (KDA's short convolution), no activation inside:
//   y[b, t, c] = bias[c] + sum_{j=0}^{W-1} weight[c, j] * x[b, t - (W-1) + j, c]
// with x = 0 at negative times (left zero padding): output t sees inputs t-W+1 .. t only, and
// weight[c, W-1] multiplies the current token x[b, t, c]. Any kernel size W >= 1 (KDA: 4),
// including W > T.
//
// Shapes: x [B, T, C], weight [C, W], bias [C] or an undefined Variable (no bias, and then no
// bias input in the graph) -> y [B, T, C]. dtypes: f32, f64 (CPU), all inputs the same dtype.
// CUDA: f32 (f32 accumulation).
// Saved for backward: x and weight.
// Backward (sums over valid times only):
//   dx[b, s, c]     = sum_j weight[c, j] * dy[b, s + (W-1) - j, c]
//   dweight[c, j]   = sum_{b,t} dy[b, t, c] * x[b, t - (W-1) + j, c]
//   dbias[c]        = sum_{b,t} dy[b, t, c]
// The (b, t) sums are taken over fixed blocks of rows combined in order, so they do not depend
// on the thread count (CPU) and need no atomics (CUDA: two passes).
#pragma once

#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "lib/device.h"

namespace attnlab {

struct CausalConv1dOp {
  struct Grads {
    Tensor dx, dweight, dbias;  // undefined where not asked for
  };

  // bias may be undefined.
  static void check(const Tensor& x, const Tensor& weight, const Tensor& bias);
  // Contiguous inputs.
  static Tensor forward(CpuTag, const Tensor& x, const Tensor& weight, const Tensor& bias);
  static Grads backward(CpuTag, const Tensor& x, const Tensor& weight, const Tensor& dy, bool need_dx,
                        bool need_dweight, bool need_dbias);
  static Tensor forward(CudaTag, const Tensor& x, const Tensor& weight, const Tensor& bias);
  static Grads backward(CudaTag, const Tensor& x, const Tensor& weight, const Tensor& dy, bool need_dx,
                        bool need_dweight, bool need_dbias);
  static std::vector<OpSample> samples();
  // Larger shapes for the CUDA parity test: several blocks, ragged edges.
  static std::vector<OpSample> parity_samples();
  static std::vector<OpMisuse> misuses();
};

Variable causal_conv1d(const Variable& x, const Variable& weight, const Variable& bias);

}  // namespace attnlab
