// kda_attention_reference: the KDA recurrence (spec A3/A4) composed token by token from autograd
// primitives, each with its own gradcheck, so its gradients (including through the returned
// state and into s0) come from the chain rule alone. Per token t, batched over (B, H):
//   St  = exp(g_t)[:, None] * S                 [B, H, Dk, Dv]  (decay first)
//   e   = v_t - k_t St                          [B, H, 1, Dv]   (k_t as a [1, Dk] row)
//   S   = St + beta_t (k_t^T e)                 the delta-rule write
//   o_t = (s q_t) S                             [B, H, 1, Dv]   (reads the state after the write)
// Slow (T small graph nodes per primitive) and obviously right: the test oracle.
#include "autograd/ops.h"
#include "layers/attention/common.h"
#include "layers/attention/kda/kda_attention.h"
#include "lib/error.h"

namespace attnlab {

KdaResult kda_attention_reference(const Variable& q, const Variable& k, const Variable& v, const Variable& g,
                                  const Variable& beta, const Variable& s0, double scale) {
  constexpr std::string_view kName = "kda_attention_reference";
  AL_CHECK(q.defined() && k.defined() && v.defined() && g.defined() && beta.defined(), kName,
           ": q, k, v, g and beta must be defined");
  KdaAttentionOp::check(q.data(), k.data(), v.data(), g.data(), beta.data(), s0.defined() ? s0.data() : Tensor());
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), Dk = q.size(3), Dv = v.size(3);
  const double c = attention_scale(scale, Dk);
  Variable S = s0.defined() ? s0 : Variable(Tensor::zeros(Shape{B, H, Dk, Dv}, q.dtype(), q.device()));
  std::vector<Variable> rows;
  rows.reserve(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    const Variable qt = narrow(q, 2, t, 1), kt = narrow(k, 2, t, 1), vt = narrow(v, 2, t, 1);  // [B, H, 1, *]
    const Variable alpha = reshape(exp(narrow(g, 2, t, 1)), Shape{B, H, Dk, 1});
    const Variable bt = reshape(narrow(beta, 2, t, 1), Shape{B, H, 1, 1});
    const Variable St = mul(alpha, S);
    const Variable e = sub(vt, matmul(kt, St));
    S = add(St, mul(bt, matmul(kt, e, /*trans_a=*/true)));
    rows.push_back(matmul(mul_scalar(qt, c), S));
  }
  return {concat(rows, 2), S};
}

}  // namespace attnlab
