// linear_infsa_reference: the exact quadratic form of linear-InfSA (form B), every step an autograd
// primitive with its own gradcheck:
//   q~ = c q, n = ||q~|| (a zero row: n = 0 with zero gradient), P = p0 + cumsum(n q~),
//   N = n0 + cumsum(n), qbar = P / N (0 where N <= 0), A = relu(qbar) relu(c k)^T [T, S] times the
//   causal 0/1 mask, out = sigmoid(theta) (A v) / (rowsum A + eps).
// The guards use constant 0/1 tensors read off the values (no gradient flows through a mask).
#include <cmath>

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

}  // namespace

LinearInfsaResult linear_infsa_reference(const Variable& q, const Variable& k, const Variable& v,
                                         const Variable& theta, const AttentionMask& mask, double scale,
                                         const Tensor& p0, const Tensor& n0) {
  AL_CHECK(q.defined() && k.defined() && v.defined() && theta.defined(),
           "linear_infsa_reference: q, k, v and theta must be defined");
  LinearInfsaAttentionOp::check(q.data(), k.data(), v.data(), theta.data(), mask, p0, n0);
  AL_CHECK_DEVICE(q.device().is_cpu(), "linear_infsa_reference: runs on the CPU; got q=", q.data());
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), S = k.size(2), Dk = q.size(3);
  AL_CHECK_SHAPE(T >= 1, "linear_infsa_reference: needs T >= 1; got q=", q.data());
  const double c = attention_scale(scale, Dk);
  const DType dt = q.dtype();

  // The running energy-weighted mean query.
  const Variable qt = mul_scalar(q, c);
  const Variable ss = sum(mul(qt, qt), {3}, true);  // [B, H, T, 1]
  const Variable zero_row = indicator(ss.data(), [](double x) { return x == 0.0; });
  const Variable n = mul(sqrt(add(ss, zero_row)), sub(Variable(Tensor::ones(Shape{1}, dt)), zero_row));
  Variable P = cumsum(mul(qt, n), 2);  // [B, H, T, Dk]
  Variable N = cumsum(n, 2);           // [B, H, T, 1]
  if (p0.defined()) P = add(P, Variable(p0.reshape(Shape{B, H, 1, Dk})));
  if (n0.defined()) N = add(N, Variable(n0.reshape(Shape{B, H, 1, 1})));
  const Variable positive = indicator(N.data(), [](double x) { return x > 0.0; });
  const Variable not_positive = indicator(N.data(), [](double x) { return !(x > 0.0); });
  const Variable qbar = mul(div(P, add(N, not_positive)), positive);

  // The quadratic form: scores of every visible (query, key) pair.
  Tensor causal = Tensor::zeros(Shape{T, S}, dt);
  dispatch_float(dt, "linear_infsa_reference", [&](auto tag) {
    using F = decltype(tag);
    F* m = causal.data<F>();
    for (int64_t i = 0; i < T; ++i)
      for (int64_t j = 0; j < S; ++j) m[i * S + j] = mask.visible(S - T + i, j) ? F(1) : F(0);
  });
  const Variable A = mul(matmul(relu(qbar), relu(mul_scalar(k, c)), false, true), Variable(causal));
  const Variable num = matmul(A, v);
  const Variable den = sum(A, {3}, true);
  const Variable gamma = reshape(sigmoid(theta), Shape{1, H, 1, 1});
  const Variable out = mul(div(num, add_scalar(den, LinearInfsaAttentionOp::kEps)), gamma);

  LinearInfsaResult r;
  r.out = out;
  r.p = P.data().narrow(2, T - 1, 1).reshape(Shape{B, H, Dk}).contiguous();
  r.n = N.data().narrow(2, T - 1, 1).reshape(Shape{B, H}).contiguous();
  return r;
}

}  // namespace attnlab
