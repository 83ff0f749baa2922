// sigmoid_attention_reference: scale * q k^T, plus the row bias (b[h] broadcast over [1, H, 1, 1],
// or a constant -log(n_i) column), sigmoid, times a constant 0/1 mask (so a masked entry is
// sigmoid(finite) * 0 = 0 and its gradient is 0), times v; every step an autograd primitive with
// its own gradcheck. n_i is counted straight from AttentionMask::visible.
#include <cmath>

#include "autograd/ops.h"
#include "layers/attention/sigmoid/sigmoid_attention.h"

namespace attnlab {

Variable sigmoid_attention_reference(const Variable& q, const Variable& k, const Variable& v, SigmoidBias mode,
                                     const Variable& bias, const AttentionMask& mask, double scale) {
  SigmoidAttentionOp::check(q.data(), k.data(), v.data(), mode, bias.defined() ? bias.data() : Tensor(), mask);
  const int64_t H = q.size(1), T = q.size(2), S = k.size(2);
  const double c = attention_scale(scale, q.size(3));
  Tensor keep = Tensor::zeros(Shape{T, S}, q.dtype());
  Tensor row_bias = Tensor::zeros(Shape{T, 1}, q.dtype());
  dispatch_float(q.dtype(), "sigmoid_attention_reference", [&](auto tag) {
    using F = decltype(tag);
    F* m = keep.data<F>();
    F* rb = row_bias.data<F>();
    for (int64_t i = 0; i < T; ++i) {
      int64_t n = 0;
      for (int64_t j = 0; j < S; ++j)
        if (mask.visible(S - T + i, j)) m[i * S + j] = F(1), ++n;
      rb[i] = static_cast<F>(-std::log(static_cast<double>(n)));
    }
  });
  Variable scores = mul_scalar(matmul(q, k, false, true), c);
  if (mode == SigmoidBias::per_head) scores = add(scores, reshape(bias, Shape{1, H, 1, 1}));
  if (mode == SigmoidBias::neglog_visible) scores = add(scores, Variable(row_bias.to(q.device())));
  const Variable p = mul(sigmoid(scores), Variable(keep.to(q.device())));
  return matmul(p, v);
}

}  // namespace attnlab
