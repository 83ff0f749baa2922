// lla_attention_reference: the maths of lla_attention.h written out with autograd primitives
// (matmul, mul, sub, div, exp, sum, narrow, concat, reshape), each with its own gradcheck, so its
// gradient is autograd's, not a hand derivation. Every row's Sigma_i is formed ([B, H, T, Dk, Dk])
// and the systems Sigma_i rho_i = mu_i are solved together by recursive block elimination (Schur
// complements; Sigma_i is SPD, so every block pivot is too) written with narrow, matmul, sub,
// div and concat over all rows at once: T Dk^3 work and the [T, S] weights, slow and obviously
// right.
//
// The row shift m_i is a constant computed from the data (the visible scores' max): the output
// does not depend on it, so no gradient needs to flow through it. Masked entries are exactly 0:
// w = exp((s - m) * mask) * mask.
// flashlla_grad: the ridge lam * omega_i enters through a stop-gradient (FlashLLA's backward): its
// value is lam * omega_i, its gradient 0 with respect to both lam and omega.
#include <algorithm>
#include <limits>

#include "autograd/ops.h"
#include "layers/attention/lla/lla_attention.h"
#include "lib/error.h"

namespace attnlab {

namespace {

// X = M^-1 R for symmetric positive definite M [..., n, n] and R [..., n, r], by block
// elimination: with M = [[A, Bm], [Bm^T, C]] (A the leading n1 = n / 2 rows and columns),
//   Z = A^-1 [Bm | R1],  S = C - Bm^T A^-1 Bm (the Schur complement, SPD),
//   X2 = S^-1 (R2 - Bm^T A^-1 R1),  X1 = A^-1 R1 - A^-1 Bm X2,
// recursing down to 1 x 1 blocks (a division). Batched matmuls over every row at once.
Variable spd_solve(const Variable& m, const Variable& r) {
  const int64_t d = m.shape().ndim(), n = m.size(d - 1), nr = r.size(d - 1);
  if (n == 1) return div(r, m);
  const int64_t n1 = n / 2, n2 = n - n1;
  const Variable top = narrow(m, d - 2, 0, n1), bottom = narrow(m, d - 2, n1, n2);
  const Variable a = narrow(top, d - 1, 0, n1), bm = narrow(top, d - 1, n1, n2), c = narrow(bottom, d - 1, n1, n2);
  const Variable z = spd_solve(a, concat({bm, narrow(r, d - 2, 0, n1)}, d - 1));  // [..., n1, n2 + nr]
  const Variable zb = narrow(z, d - 1, 0, n2), zr = narrow(z, d - 1, n2, nr);
  const Variable schur = sub(c, matmul(bm, zb, true, false));
  const Variable x2 = spd_solve(schur, sub(narrow(r, d - 2, n1, n2), matmul(bm, zr, true, false)));
  const Variable x1 = sub(zr, matmul(zb, x2));
  return concat({x1, x2}, d - 2);
}

// The value of x with a zero gradient (a defined one, so that lam still receives 0, as from the
// fused op, rather than no gradient at all).
Variable stop_gradient(const Variable& x) { return add(x.detach(), mul_scalar(x, 0.0)); }

}  // namespace

Variable lla_attention_reference(const Variable& q, const Variable& k, const Variable& v, const Variable& lam,
                                 const AttentionMask& mask, double scale, bool flashlla_grad) {
  AL_CHECK(q.defined() && k.defined() && v.defined() && lam.defined(),
           "lla_attention_reference: q, k, v and lam must be defined");
  LlaAttentionOp::check(q.data(), k.data(), v.data(), lam.data(), mask);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), S = k.size(2), Dk = q.size(3);
  const double c = attention_scale(scale, Dk);
  const DType dt = q.dtype();

  // Constants: the visibility mask [T, S] and the identity [Dk, Dk].
  Tensor keys = Tensor::zeros(Shape{T, S}, dt), eye = Tensor::zeros(Shape{Dk, Dk}, dt);
  dispatch_float(dt, "lla_attention_reference", [&](auto tag) {
    using F = decltype(tag);
    for (int64_t i = 0; i < T; ++i)
      for (int64_t j = 0; j < S; ++j) keys.data<F>()[i * S + j] = mask.visible(S - T + i, j) ? F(1) : F(0);
    for (int64_t d = 0; d < Dk; ++d) eye.data<F>()[d * Dk + d] = F(1);
  });
  const Variable maskv(keys);

  const Variable scores = mul_scalar(matmul(q, k, false, true), c);  // [B, H, T, S]
  // m_i: the largest visible score of each row, as a constant.
  const Tensor sc = scores.data().contiguous().to(DType::f64);
  std::vector<double> mrow(static_cast<size_t>(B * H * T));
  const std::vector<double> sv = sc.to_vector<double>();
  for (int64_t r = 0; r < B * H * T; ++r) {
    const int64_t i = r % T;
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < S; ++j)
      if (mask.visible(S - T + i, j)) m = std::max(m, sv[static_cast<size_t>(r * S + j)]);
    mrow[static_cast<size_t>(r)] = m;
  }
  const Variable mconst(Tensor::from_vector<double>(Shape{B, H, T, 1}, mrow).to(dt));

  const Variable w = mul(exp(mul(sub(scores, mconst), maskv)), maskv);  // [B, H, T, S]
  const Variable omega = sum(w, {3}, true);                               // [B, H, T, 1]
  const Variable mut = matmul(w, k);                                      // [B, H, T, Dk]: sum_j w k_j
  const Variable mu = sub(mut, mul(omega, q));                            // sum_j w (k_j - q_i)

  // Sigma_i = sum_j w k_j k_j^T - mut q^T - q mut^T + omega q q^T + lam omega I.
  const Variable kk = reshape(mul(reshape(k, Shape{B, H, S, Dk, 1}), reshape(k, Shape{B, H, S, 1, Dk})),
                              Shape{B, H, S, Dk * Dk});
  const Variable sig_t = reshape(matmul(w, kk), Shape{B, H, T, Dk, Dk});
  const Variable qc = reshape(q, Shape{B, H, T, Dk, 1}), qr = reshape(q, Shape{B, H, T, 1, Dk});
  const Variable mc = reshape(mut, Shape{B, H, T, Dk, 1}), mr = reshape(mut, Shape{B, H, T, 1, Dk});
  const Variable omega5 = reshape(omega, Shape{B, H, T, 1, 1});
  Variable ridge = mul(reshape(lam, Shape{1, 1, 1, 1, 1}), omega5);
  if (flashlla_grad) ridge = stop_gradient(ridge);
  const Variable sigma = add(add(sub(sub(sig_t, mul(mc, qr)), mul(qc, mr)), mul(omega5, mul(qc, qr))),
                             mul(ridge, Variable(eye)));

  const Variable rho = reshape(spd_solve(sigma, reshape(mu, Shape{B, H, T, Dk, 1})), Shape{B, H, T, Dk});

  const Variable delta = sub(omega, sum(mul(mu, rho), {3}, true));  // omega - mu.rho  [B, H, T, 1]
  // rho_i.(k_j - q_i) for every pair, then c_ij = w_ij (1 - rho_i.x_ij) / delta_i.
  const Variable rx = sub(matmul(rho, k, false, true), sum(mul(rho, q), {3}, true));
  const Variable cw = div(mul(w, add_scalar(neg(rx), 1.0)), delta);
  return matmul(cw, v);
}

}  // namespace attnlab
