// linear_infsa_reference and linear_infsa_prefix_reference: the exact quadratic forms of
// linear-InfSA, forms (B) and (A), every step an autograd primitive with its own gradcheck:
//   q~ = c q, n = ||q~|| (a zero row: n = 0 with zero gradient), P = p0 + cumsum(n q~),
//   N = n0 + cumsum(n), qbar = P / N (0 where N <= 0);
//   (B) A = relu(qbar) relu(c k)^T,  (A) A = relu(qbar (c k)^T), each [T, S] times the causal 0/1 mask;
//   out = sigmoid(theta) (A v) / (rowsum A + eps).
// The guards use constant 0/1 tensors read off the values (no gradient flows through a mask).
#include <cmath>
#include <string_view>

#include "autograd/ops.h"
#include "layers/attention/linear_infsa/linear_infsa_attention.h"
#include "lib/error.h"

namespace attnlab {

namespace {

// A constant tensor shaped like x: 1 where pred(x) holds, else 0.
template <typename Pred>
Variable indicator(const Tensor& x, Pred pred) {
  const Tensor xc = x.contiguous();
  Tensor out = Tensor::empty(xc.shape(), xc.dtype());
  dispatch_float(xc.dtype(), "linear_infsa_reference", [&](auto tag) {
    using F = decltype(tag);
    const F* p = xc.data<F>();
    F* o = out.data<F>();
    for (int64_t i = 0; i < xc.numel(); ++i) o[i] = pred(static_cast<double>(p[i])) ? F(1) : F(0);
  });
  return Variable(out);
}

struct PrefixMean {
  Variable qbar;  // [B, H, T, Dk]
  Tensor p, n;    // the final P [B, H, Dk], N [B, H]
};

// Checks what the references need beyond the op's checks.
void check_defined(std::string_view what, const Variable& q, const Variable& k, const Variable& v,
                   const Variable& theta) {
  AL_CHECK(q.defined() && k.defined() && v.defined() && theta.defined(), what,
           ": q, k, v and theta must be defined");
  AL_CHECK_DEVICE(q.device().is_cpu(), what, ": runs on the CPU; got q=", q.data());
  AL_CHECK_SHAPE(q.size(2) >= 1, what, ": needs T >= 1; got q=", q.data());
}

PrefixMean prefix_mean(const Variable& q, const Tensor& p0, const Tensor& n0, double c) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), Dk = q.size(3);
  const Variable qt = mul_scalar(q, c);
  const Variable ss = sum(mul(qt, qt), {3}, true);  // [B, H, T, 1]
  const Variable zero_row = indicator(ss.data(), [](double x) { return x == 0.0; });
  const Variable n = mul(sqrt(add(ss, zero_row)), sub(Variable(Tensor::ones(Shape{1}, q.dtype())), zero_row));
  Variable P = cumsum(mul(qt, n), 2);  // [B, H, T, Dk]
  Variable N = cumsum(n, 2);           // [B, H, T, 1]
  if (p0.defined()) P = add(P, Variable(p0.reshape(Shape{B, H, 1, Dk})));
  if (n0.defined()) N = add(N, Variable(n0.reshape(Shape{B, H, 1, 1})));
  const Variable positive = indicator(N.data(), [](double x) { return x > 0.0; });
  const Variable not_positive = indicator(N.data(), [](double x) { return !(x > 0.0); });
  PrefixMean r;
  r.qbar = mul(div(P, add(N, not_positive)), positive);
  r.p = P.data().narrow(2, T - 1, 1).reshape(Shape{B, H, Dk}).contiguous();
  r.n = N.data().narrow(2, T - 1, 1).reshape(Shape{B, H}).contiguous();
  return r;
}

// The [T, S] 0/1 mask of the visible (query, key) pairs.
Variable visible(const AttentionMask& mask, int64_t T, int64_t S, DType dt) {
  Tensor m = Tensor::zeros(Shape{T, S}, dt);
  dispatch_float(dt, "linear_infsa_reference", [&](auto tag) {
    using F = decltype(tag);
    F* p = m.data<F>();
    for (int64_t i = 0; i < T; ++i)
      for (int64_t j = 0; j < S; ++j) p[i * S + j] = mask.visible(S - T + i, j) ? F(1) : F(0);
  });
  return Variable(m);
}

// out = sigmoid(theta) (A v) / (rowsum A + eps).
Variable normalised_output(const Variable& A, const Variable& v, const Variable& theta) {
  const Variable num = matmul(A, v);
  const Variable den = sum(A, {3}, true);
  const Variable gamma = reshape(sigmoid(theta), Shape{1, theta.size(0), 1, 1});
  return mul(div(num, add_scalar(den, LinearInfsaAttentionOp::kEps)), gamma);
}

}  // namespace

LinearInfsaResult linear_infsa_reference(const Variable& q, const Variable& k, const Variable& v,
                                         const Variable& theta, const AttentionMask& mask, double scale,
                                         const Tensor& p0, const Tensor& n0) {
  check_defined("linear_infsa_reference", q, k, v, theta);
  LinearInfsaAttentionOp::check(q.data(), k.data(), v.data(), theta.data(), mask, p0, n0);
  const double c = attention_scale(scale, q.size(3));
  const PrefixMean pm = prefix_mean(q, p0, n0, c);
  const Variable A = mul(matmul(relu(pm.qbar), relu(mul_scalar(k, c)), false, true),
                         visible(mask, q.size(2), k.size(2), q.dtype()));
  return {normalised_output(A, v, theta), pm.p, pm.n};
}

LinearInfsaResult linear_infsa_prefix_reference(const Variable& q, const Variable& k, const Variable& v,
                                                const Variable& theta, const AttentionMask& mask, double scale,
                                                const Tensor& p0, const Tensor& n0) {
  check_defined("linear_infsa_prefix_reference", q, k, v, theta);
  LinearInfsaPrefixOp::check(q.data(), k.data(), v.data(), theta.data(), mask, p0, n0);
  const double c = attention_scale(scale, q.size(3));
  const PrefixMean pm = prefix_mean(q, p0, n0, c);
  const Variable A = mul(relu(matmul(pm.qbar, mul_scalar(k, c), false, true)),
                         visible(mask, q.size(2), k.size(2), q.dtype()));
  return {normalised_output(A, v, theta), pm.p, pm.n};
}

}  // namespace attnlab
