// A linear layer's maths as one op: y = x w^T + b.
//   dx = dy w,   dw = dy^T x,   db = sum over rows of dy
// with the leading dims of x folded into rows (one GEMM each, never a batch of small ones).
//
// Shapes: x [*, K] (at least 1-D), w [N, K], b [N] or an undefined Variable (no bias, and then no
// bias input in the graph) -> y [*, N]. R = numel(x) / K rows.
// dtypes: f32, f64 (CPU), all inputs the same dtype. CUDA: not yet.
// Forward writes b into y and lets the GEMM add x w^T to it (beta = 1): the bias costs no pass
// of its own. db is a column sum of dy, each column summed by one thread in row order.
// Saved for backward: x and w (held by the graph anyway).
#pragma once

#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "lib/device.h"

namespace attnlab {

struct LinearOp {
  struct Grads {
    Tensor dx, dw, db;  // undefined where not asked for
  };
  // b may be undefined.
  static void check(const Tensor& x, const Tensor& w, const Tensor& b);
  // x, w and b (or undefined) contiguous; dy contiguous like y.
  static Tensor forward(CpuTag, const Tensor& x, const Tensor& w, const Tensor& b);
  static Grads backward(CpuTag, const Tensor& x, const Tensor& w, const Tensor& dy, bool need_dx, bool need_dw,
                        bool need_db);
  static std::vector<OpSample> samples();
  static std::vector<OpMisuse> misuses();
};

Variable linear(const Variable& x, const Variable& w, const Variable& b);

}  // namespace attnlab
