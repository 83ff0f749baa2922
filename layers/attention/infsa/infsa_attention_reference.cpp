// infsa_attention_reference: the maths of infsa_attention.h written out with autograd
// primitives (matmul, relu, mul, sum, sqrt, sigmoid), each with its own gradcheck. Masks are
// constant 0/1 tensors: keys [T, S] (A is relu(c q k^T) times it) and rows [T, T] (R = r0 +
// rows r, the visibility rule applied to the query rows' energies).
#include "autograd/ops.h"
#include "layers/attention/infsa/infsa_attention.h"
#include "lib/error.h"

namespace attnlab {

InfsaResult infsa_attention_reference(const Variable& q, const Variable& k, const Variable& v,
                                      const Variable& theta, const AttentionMask& mask, double scale,
                                      const Tensor& r0) {
  AL_CHECK(q.defined() && k.defined() && v.defined() && theta.defined(),
           "infsa_attention_reference: q, k, v and theta must be defined");
  InfsaAttentionOp::check(q.data(), k.data(), v.data(), theta.data(), mask, r0);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), S = k.size(2);
  const double c = attention_scale(scale, q.size(3));
  Tensor keys = Tensor::zeros(Shape{T, S}, q.dtype()), rows = Tensor::zeros(Shape{T, T}, q.dtype());
  dispatch_float(q.dtype(), "infsa_attention_reference", [&](auto tag) {
    using F = decltype(tag);
    F* pk = keys.data<F>();
    F* pr = rows.data<F>();
    for (int64_t i = 0; i < T; ++i) {
      for (int64_t j = 0; j < S; ++j) pk[i * S + j] = mask.visible(S - T + i, j) ? F(1) : F(0);
      for (int64_t j = 0; j < T; ++j) pr[i * T + j] = mask.visible(S - T + i, S - T + j) ? F(1) : F(0);
    }
  });
  const Variable A = mul(relu(mul_scalar(matmul(q, k, false, true), c)), Variable(keys));  // [B, H, T, S]
  const Variable r = sum(mul(A, A), {3}, true);                                              // [B, H, T, 1]
  Variable R = matmul(Variable(rows), r);                                                    // [B, H, T, 1]
  if (r0.defined()) R = add(R, Variable(r0.reshape(Shape{B, H, 1, 1})));
  const double eps = InfsaAttentionOp::kEps;
  const Variable F = sqrt(add_scalar(R, eps * eps));
  const Variable gamma = reshape(sigmoid(theta), Shape{1, H, 1, 1});
  const Variable out = div(mul(gamma, matmul(A, v)), F);
  // The energy after the last query row: every row's, plus what came before.
  Tensor r_final = sum(r.detach(), {2, 3}, false).data();
  if (r0.defined()) r_final = add(Variable(r_final), Variable(r0)).data();
  return {out, r_final.contiguous()};
}

}  // namespace attnlab
