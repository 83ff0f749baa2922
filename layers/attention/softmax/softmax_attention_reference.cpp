// softmax_attention_reference: scale * q k^T, plus an additive mask of 0 / -inf, softmax over
// keys, times v; every step an autograd primitive with its own gradcheck.
#include <limits>

#include "autograd/ops.h"
#include "layers/attention/softmax/softmax_attention.h"

namespace attnlab {

Variable softmax_attention_reference(const Variable& q, const Variable& k, const Variable& v,
                                     const AttentionMask& mask, double scale) {
  check_attention_inputs("softmax_attention_reference", q.data(), k.data(), v.data());
  const int64_t T = q.size(2), S = k.size(2);
  const double c = attention_scale(scale, q.size(3));
  Tensor bias = Tensor::zeros(Shape{T, S}, q.dtype());
  dispatch_float(q.dtype(), "softmax_attention_reference", [&](auto tag) {
    using F = decltype(tag);
    F* p = bias.data<F>();
    for (int64_t i = 0; i < T; ++i)
      for (int64_t j = 0; j < S; ++j)
        if (!mask.visible(S - T + i, j)) p[i * S + j] = -std::numeric_limits<F>::infinity();
  });
  const Variable scores = add(mul_scalar(matmul(q, k, false, true), c), Variable(bias));
  return matmul(softmax(scores), v);
}

}  // namespace attnlab
