// affine_attention_reference: the spec's Eq. 6 written out with the weights made explicit,
//   a_ij = alpha_i P_ij + beta_i  on the keys j query i sees, 0 elsewhere;   out = a v,
// with z = linear(x, w_a, c_a), alpha = phi(z), beta = (abar - alpha) / N_i and P the masked
// softmax of scale q k^T; every step an autograd primitive with its own gradcheck. The linear
// clip is composed as (0.1 z + 0.5) * inside + above, with inside = 1[-5 < z < 5] and
// above = 1[z >= 5] constant masks, so its slope is 0.1 strictly inside the kinks and 0 at and
// beyond them. O(T S) memory: the oracle, not the kernel.
#include <limits>

#include "autograd/ops.h"
#include "layers/attention/affine/affine_attention.h"

namespace attnlab {

AffineAttentionResult affine_attention_reference(const Variable& q, const Variable& k, const Variable& v,
                                                 const Variable& x, const Variable& w_a, const Variable& c_a,
                                                 const Tensor& abar, const AttentionMask& mask,
                                                 const AffineOptions& options, double scale) {
  constexpr std::string_view op = "affine_attention_reference";
  AL_CHECK(q.defined() && k.defined() && v.defined() && x.defined() && w_a.defined(), op,
           ": q, k, v, x and w_a must be defined");
  AffineAttentionOp::check(q.data(), k.data(), v.data(), x.data(), w_a.data(), c_a.defined() ? c_a.data() : Tensor(),
                           abar, mask);
  const int64_t H = q.size(1), T = q.size(2), S = k.size(2);
  const DType dt = q.dtype();
  const Device dev = q.device();
  const double c = attention_scale(scale, q.size(3));

  // Constants of the mask: visibility [T, S] as 0/1 and as 0/-inf, and 1 / N_i [T].
  Tensor vis = Tensor::zeros(Shape{T, S}, dt), bias = Tensor::zeros(Shape{T, S}, dt),
         inv_n = Tensor::empty(Shape{T}, dt);
  dispatch_float(dt, op, [&](auto tag) {
    using F = decltype(tag);
    F* pv = vis.data<F>();
    F* pb = bias.data<F>();
    F* pn = inv_n.data<F>();
    for (int64_t i = 0; i < T; ++i) {
      int64_t n = 0;
      for (int64_t j = 0; j < S; ++j) {
        const bool seen = mask.visible(S - T + i, j);
        pv[i * S + j] = seen ? F(1) : F(0);
        pb[i * S + j] = seen ? F(0) : -std::numeric_limits<F>::infinity();
        n += seen ? 1 : 0;
      }
      pn[i] = F(1) / static_cast<F>(options.bias_norm == AffineBiasNorm::full ? S : n);
    }
  });

  // The gate: z [B, H, T], alpha = phi(z).
  const Variable z = permute(linear(x, w_a, c_a), {0, 2, 1});
  Variable alpha;
  if (options.phi == AffinePhi::sigmoid) {
    alpha = sigmoid(z);
  } else {
    const Tensor zc = z.data().to(Device::cpu()).contiguous();
    Tensor inside = Tensor::empty(zc.shape(), dt), above = Tensor::empty(zc.shape(), dt);
    dispatch_float(dt, op, [&](auto tag) {
      using F = decltype(tag);
      const F* pz = zc.data<F>();
      F* pi = inside.data<F>();
      F* pa = above.data<F>();
      for (int64_t e = 0; e < zc.numel(); ++e) {
        pi[e] = pz[e] > F(-5) && pz[e] < F(5) ? F(1) : F(0);
        pa[e] = pz[e] >= F(5) ? F(1) : F(0);
      }
    });
    alpha = add(mul(add_scalar(mul_scalar(z, 0.1), 0.5), Variable(inside.to(dev))), Variable(above.to(dev)));
  }
  const Variable beta =
      mul(sub(Variable(abar.reshape(Shape{1, H, 1})), alpha), Variable(inv_n.reshape(Shape{1, 1, T}).to(dev)));

  // a = alpha P + beta on the visible keys; out = a v.
  const Variable p = softmax(add(mul_scalar(matmul(q, k, false, true), c), Variable(bias.to(dev))));
  const Shape col{q.size(0), H, T, 1};
  const Variable a = add(mul(reshape(alpha, col), p), mul(reshape(beta, col), Variable(vis.to(dev))));
  AffineAttentionResult r;
  r.out = matmul(a, v);
  r.alpha = alpha.data().contiguous().clone();
  return r;
}

}  // namespace attnlab
