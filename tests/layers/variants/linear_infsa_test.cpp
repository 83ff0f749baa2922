// Special cases of the linear-InfSA attention (layers/attention/linear_infsa/), form B
// ("linear_infsa", chunked) and form A ("linear_infsa_prefix", tiled): the result does not depend on
// where the chunk or tile boundaries fall, the first row's closed form (with eps), form A's last row
// equals the paper's non-causal pooled vector, theta's gradient against finite differences, the
// zero-query guard, and token-by-token decoding with the carried prefix (form B's linear cost in T
// is measured by bench/attention_bench, not here). The generic suite (generic_test.cpp) covers fused vs
// reference, causality, carried state and threads for both.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "autograd/ops.h"
#include "layers/attention/linear_infsa/linear_infsa_attention.h"
#include "lib/error.h"
#include "tests/support/tensor_compare.h"

namespace attnlab {
namespace {

using test::max_abs;
using test::max_diff;

struct Inputs {
  Tensor q, k, v, theta, p0, n0;
};

Inputs random_inputs(int64_t B, int64_t H, int64_t T, int64_t S, int64_t Dk, int64_t Dv, uint64_t seed,
                     bool carried) {
  Inputs in;
  in.q = sample_randn(Shape{B, H, T, Dk}, seed);
  in.k = sample_randn(Shape{B, H, S, Dk}, seed + 1);
  in.v = sample_randn(Shape{B, H, S, Dv}, seed + 2);
  in.theta = sample_uniform(Shape{H}, seed + 3, 0.5, 3.0);
  if (carried) {
    in.p0 = sample_uniform(Shape{B, H, Dk}, seed + 4, -1.0, 1.0);
    in.n0 = sample_uniform(Shape{B, H}, seed + 5, 0.5, 3.0);
  }
  return in;
}

enum class Form { linear, prefix };  // B (chunked linear attention), A (exact prefix)
const char* form_name(Form f) { return f == Form::linear ? "linear_infsa" : "linear_infsa_prefix"; }

LinearInfsaResult call(Form form, bool fused, const Variable& q, const Variable& k, const Variable& v,
                       const Variable& theta, const Tensor& p0 = {}, const Tensor& n0 = {}) {
  if (form == Form::linear)
    return fused ? linear_infsa_attention(q, k, v, theta, {}, 0.0, p0, n0)
                 : linear_infsa_reference(q, k, v, theta, {}, 0.0, p0, n0);
  return fused ? linear_infsa_prefix_attention(q, k, v, theta, {}, 0.0, p0, n0)
               : linear_infsa_prefix_reference(q, k, v, theta, {}, 0.0, p0, n0);
}

// out, p, n, then dq, dk, dv, dtheta for the upstream gradient dout.
std::vector<Tensor> run(const Inputs& in, bool fused, const Tensor& dout, Form form = Form::linear) {
  Variable q(in.q, true), k(in.k, true), v(in.v, true), theta(in.theta, true);
  const LinearInfsaResult r = call(form, fused, q, k, v, theta, in.p0, in.n0);
  r.out.backward(dout);
  return {r.out.data(), r.p, r.n, q.grad(), k.grad(), v.grad(), theta.grad()};
}

void expect_fused_matches_reference(const Inputs& in, const std::string& what, Form form = Form::linear,
                                    double rel = 1e-10) {
  const Tensor dout = sample_randn(Shape{in.q.size(0), in.q.size(1), in.q.size(2), in.v.size(3)}, 77);
  const std::vector<Tensor> f = run(in, true, dout, form), r = run(in, false, dout, form);
  const char* names[] = {"out", "p", "n", "dq", "dk", "dv", "dtheta"};
  for (size_t i = 0; i < f.size(); ++i)
    EXPECT_LE(max_diff(f[i], r[i]), rel * std::max(1.0, max_abs(r[i])))
        << form_name(form) << " " << what << ": " << names[i];
}

// Chunks (form B) and query / key tiles (form A) hold 64 rows: T on either side of one and two
// boundaries, with and without keys before the first query (S > T) and a carried prefix.
TEST(LinearInfsa, ChunkBoundariesDoNotChangeTheResult) {
  for (Form form : {Form::linear, Form::prefix}) {
    for (int64_t T : {63, 64, 65, 129}) {
      const Inputs a = random_inputs(1, 2, T, T, 16, 12, 100 + static_cast<uint64_t>(T), false);
      expect_fused_matches_reference(a, "T=S=" + std::to_string(T), form);
      const Inputs b = random_inputs(2, 1, T, T + 37, 8, 8, 200 + static_cast<uint64_t>(T), true);
      expect_fused_matches_reference(b, "T=" + std::to_string(T) + " S=T+37 with p0, n0", form);
    }
  }
}

// One call over T rows equals the same rows computed in pieces that cut the chunks elsewhere:
// the first rows alone (their p, n carried), then the rest against all keys.
TEST(LinearInfsa, SplitAcrossChunkBoundaryMatchesOneCall) {
  const int64_t T = 150;
  const Inputs all = random_inputs(1, 2, T, T, 16, 16, 300, false);
  Variable theta(all.theta);
  for (Form form : {Form::linear, Form::prefix}) {
    const LinearInfsaResult whole = call(form, true, Variable(all.q), Variable(all.k), Variable(all.v), theta);
    for (int64_t split : {1, 37, 64, 100}) {
      const LinearInfsaResult head = call(form, true, Variable(all.q.narrow(2, 0, split)),
                                          Variable(all.k.narrow(2, 0, split)), Variable(all.v.narrow(2, 0, split)), theta);
      const LinearInfsaResult tail = call(form, true, Variable(all.q.narrow(2, split, T - split)), Variable(all.k),
                                          Variable(all.v), theta, head.p, head.n);
      EXPECT_LE(max_diff(tail.out.data(), whole.out.data().narrow(2, split, T - split)), 1e-12)
          << form_name(form) << " split " << split;
      EXPECT_LE(max_diff(tail.p, whole.p), 1e-12) << form_name(form);
      EXPECT_LE(max_diff(tail.n, whole.n), 1e-12) << form_name(form);
    }
  }
}

// Decoding token by token (T = 1, S growing, p and n carried) gives the rows of one call.
TEST(LinearInfsa, TokenByTokenDecodingMatchesOneCall) {
  const int64_t T = 20;
  const Inputs all = random_inputs(2, 2, T, T, 8, 6, 400, false);
  for (Form form : {Form::linear, Form::prefix}) {
    for (DType dt : {DType::f64, DType::f32}) {
      Variable theta(all.theta.to(dt));
      const Tensor q = all.q.to(dt), k = all.k.to(dt), v = all.v.to(dt);
      const LinearInfsaResult whole = call(form, true, Variable(q), Variable(k), Variable(v), theta);
      const double tol = dt == DType::f64 ? 1e-12 : 1e-5;
      Tensor p, n;
      for (int64_t t = 0; t < T; ++t) {
        const LinearInfsaResult step = call(form, true, Variable(q.narrow(2, t, 1)), Variable(k.narrow(2, 0, t + 1)),
                                            Variable(v.narrow(2, 0, t + 1)), theta, p, n);
        EXPECT_LE(max_diff(step.out.data(), whole.out.data().narrow(2, t, 1)), tol)
            << form_name(form) << " " << dtype_name(dt) << " row " << t;
        p = step.p, n = step.n;
      }
      EXPECT_LE(max_diff(p, whole.p), tol) << form_name(form);
    }
  }
}

// At t = 0 (no carried prefix) qbar_0 = n_0 q~_0 / n_0 = q~_0, so the row is gamma v_0 a / (a + eps)
// with a = <relu(q~_0), relu(k~_0)> (form B) or relu(<q~_0, k~_0>) (form A). q_0 and k_0 are chosen so
// that both are c^2 q00 k00 (the only pair of non-zero components shares a sign; q_0 has negative
// components where k_0 is 0), and k00 so that a is about eps, where the eps guard matters, or far
// from it.
TEST(LinearInfsa, FirstRowIsGammaV0TimesAOverAPlusEps) {
  const int64_t Dk = 4, Dv = 3;
  const double c = 1.0 / std::sqrt(static_cast<double>(Dk));
  for (Form form : {Form::linear, Form::prefix}) {
    for (double a_target : {1e-6, 3e-7, 0.8}) {
      for (DType dt : {DType::f64, DType::f32}) {
        const double q00 = 0.7, k00 = a_target / (c * c * q00);
        const std::vector<double> qv = {q00, -1.3, 0.0, 0.4, /* row 1 */ 0.3, 0.2, -0.5, 1.0};
        const std::vector<double> kv = {k00, 0.0, 1.5, 0.0, /* row 1 */ 1.0, -1.0, 0.5, 0.25};
        const Tensor q = Tensor::from_vector(Shape{1, 1, 2, Dk}, qv).to(dt);
        const Tensor k = Tensor::from_vector(Shape{1, 1, 2, Dk}, kv).to(dt);
        const Tensor v = sample_randn(Shape{1, 1, 2, Dv}, 500).to(dt);
        const Tensor theta = Tensor::from_vector(Shape{1}, std::vector<double>{1.3}).to(dt);
        const LinearInfsaResult r = call(form, true, Variable(q), Variable(k), Variable(v), Variable(theta));
        const double gamma = 1.0 / (1.0 + std::exp(-1.3));
        const double a = c * c * q00 * k00;
        const std::vector<double> out = r.out.data().to_vector<double>(), vv = v.to_vector<double>();
        const double tol = dt == DType::f64 ? 1e-12 : 2e-6;
        for (int64_t d = 0; d < Dv; ++d)
          EXPECT_NEAR(out[d], gamma * vv[d] * a / (a + 1e-6), tol)
              << form_name(form) << " a=" << a << " " << dtype_name(dt) << " d=" << d;
        // The carried prefix after row 0 alone: p / n is q~_0 (the mean of one query).
        const LinearInfsaResult r0 = call(form, true, Variable(q.narrow(2, 0, 1)), Variable(k.narrow(2, 0, 1)),
                                          Variable(v.narrow(2, 0, 1)), Variable(theta));
        const std::vector<double> p = r0.p.to_vector<double>();
        const double n = r0.n.item<double>();
        for (int64_t d = 0; d < Dk; ++d)
          EXPECT_NEAR(p[d] / n, c * qv[static_cast<size_t>(d)], dt == DType::f64 ? 1e-15 : 1e-7) << d;
      }
    }
  }
}

// Form A's last row sees every key with the mean query of the whole sequence: it equals the
// released code's non-causal linear_infsa output (spec 3.7), pooled = gamma sum_j a_j v_j with
// qbar = sum_t (n_t / N) q~_t, a_j = relu(<qbar, k~_j>) / (sum_l relu(<qbar, k~_l>) + eps).
TEST(LinearInfsa, PrefixFormLastRowIsTheNonCausalPooledVector) {
  const int64_t T = 90, Dk = 8, Dv = 5;
  const Inputs in = random_inputs(1, 1, T, T, Dk, Dv, 1000, false);
  const LinearInfsaResult r = linear_infsa_prefix_attention(Variable(in.q), Variable(in.k), Variable(in.v),
                                                            Variable(in.theta));
  const std::vector<double> q = in.q.to_vector<double>(), k = in.k.to_vector<double>(), v = in.v.to_vector<double>();
  const double c = 1.0 / std::sqrt(static_cast<double>(Dk));
  std::vector<double> qbar(Dk, 0.0);
  double N = 0;
  for (int64_t t = 0; t < T; ++t) {
    double ss = 0;
    for (int64_t d = 0; d < Dk; ++d) ss += c * q[t * Dk + d] * c * q[t * Dk + d];
    const double n = std::sqrt(ss);
    N += n;
    for (int64_t d = 0; d < Dk; ++d) qbar[d] += n * c * q[t * Dk + d];
  }
  for (double& x : qbar) x /= N;
  std::vector<double> a(T);
  double E = 0;
  for (int64_t j = 0; j < T; ++j) {
    double pre = 0;
    for (int64_t d = 0; d < Dk; ++d) pre += qbar[d] * c * k[j * Dk + d];
    a[j] = std::max(pre, 0.0);
    E += a[j];
  }
  const double gamma = 1.0 / (1.0 + std::exp(-in.theta.item<double>()));
  const std::vector<double> out = r.out.data().narrow(2, T - 1, 1).to_vector<double>();
  for (int64_t d = 0; d < Dv; ++d) {
    double y = 0;
    for (int64_t j = 0; j < T; ++j) y += a[j] / (E + 1e-6) * v[j * Dv + d];
    EXPECT_NEAR(out[d], gamma * y, 1e-12) << d;
  }
}

// theta gets a real gradient (the released code detaches it): non-zero, and equal to central
// differences of a fixed linear functional of the output.
TEST(LinearInfsa, ThetaGradientMatchesFiniteDifferences) {
  const Inputs in = random_inputs(2, 3, 70, 80, 8, 8, 600, true);
  const Tensor w = sample_randn(Shape{2, 3, 70, 8}, 601);
  for (Form form : {Form::linear, Form::prefix}) {
    auto loss = [&](const Tensor& theta) {
      const LinearInfsaResult r =
          call(form, true, Variable(in.q), Variable(in.k), Variable(in.v), Variable(theta), in.p0, in.n0);
      return sum(mul(r.out, Variable(w))).data().item<double>();
    };
    Variable theta(in.theta, true);
    const LinearInfsaResult r = call(form, true, Variable(in.q), Variable(in.k), Variable(in.v), theta, in.p0, in.n0);
    sum(mul(r.out, Variable(w))).backward();
    const std::vector<double> g = theta.grad().to_vector<double>();
    const double h = 1e-6;
    for (int64_t i = 0; i < 3; ++i) {
      Tensor plus = in.theta.clone(), minus = in.theta.clone();
      plus.data<double>()[i] += h;
      minus.data<double>()[i] -= h;
      const double fd = (loss(plus) - loss(minus)) / (2 * h);
      EXPECT_GT(std::abs(g[static_cast<size_t>(i)]), 1e-3) << form_name(form) << " theta[" << i << "] gets no gradient";
      EXPECT_NEAR(g[static_cast<size_t>(i)], fd, 1e-7 * std::max(1.0, std::abs(fd)))
          << form_name(form) << " theta[" << i << "]";
    }
  }
}

// A zero query has no energy (n = 0) and a zero first query with no carried prefix makes N_0 = 0:
// both are guarded (qbar_0 = 0, so row 0 is 0), and the gradients stay finite and equal the
// reference's.
TEST(LinearInfsa, ZeroQueriesAreGuarded) {
  Inputs in = random_inputs(1, 2, 70, 70, 8, 8, 700, false);
  for (int64_t t : {0, 1, 5, 64, 69}) in.q.narrow(2, t, 1).fill_(0.0);
  const Tensor dout = sample_randn(Shape{1, 2, 70, 8}, 78);
  for (Form form : {Form::linear, Form::prefix}) {
    expect_fused_matches_reference(in, "zero queries at 0, 1, 5, 64, 69", form);
    const std::vector<Tensor> f = run(in, true, dout, form);
    for (const Tensor& t : f)
      for (double x : t.to_vector<double>()) ASSERT_TRUE(std::isfinite(x)) << form_name(form);
    EXPECT_EQ(max_abs(f[0].narrow(2, 0, 2)), 0.0) << form_name(form) << ": rows 0 and 1 have N = 0, qbar = 0, out = 0";
    EXPECT_EQ(max_abs(f[3].narrow(2, 5, 1)), 0.0) << form_name(form) << ": a zero query gets the subgradient 0";
  }
}

// Negative and zero n0 are outside the model's range but must not give NaN: N <= 0 means qbar = 0.
TEST(LinearInfsa, NonPositiveRunningEnergyGivesZeroMean) {
  Inputs in = random_inputs(1, 1, 5, 5, 4, 4, 800, true);
  in.n0.fill_(-100.0);  // N_t < 0 for every row
  const Tensor dout = sample_randn(Shape{1, 1, 5, 4}, 79);
  for (Form form : {Form::linear, Form::prefix}) {
    expect_fused_matches_reference(in, "n0 = -100", form);
    EXPECT_EQ(max_abs(run(in, true, dout, form)[0]), 0.0) << form_name(form);
  }
}

// Strided (token-major) views of q, k, v: the same as contiguous copies.
TEST(LinearInfsa, TokenMajorViewsMatchContiguous) {
  const Tensor qt = sample_randn(Shape{2, 70, 3, 16}, 900), kt = sample_randn(Shape{2, 90, 3, 16}, 901),
               vt = sample_randn(Shape{2, 90, 3, 16}, 902);
  const Tensor theta = sample_uniform(Shape{3}, 903, 0.5, 3.0);
  const std::vector<int64_t> bhtd{0, 2, 1, 3};
  for (Form form : {Form::linear, Form::prefix}) {
    const LinearInfsaResult a = call(form, true, Variable(qt.permute(bhtd)), Variable(kt.permute(bhtd)),
                                     Variable(vt.permute(bhtd)), Variable(theta));
    const LinearInfsaResult b =
        call(form, true, Variable(qt.permute(bhtd).contiguous()), Variable(kt.permute(bhtd).contiguous()),
             Variable(vt.permute(bhtd).contiguous()), Variable(theta));
    EXPECT_EQ(max_diff(a.out.data(), b.out.data()), 0.0) << form_name(form);
  }
}

TEST(LinearInfsa, RefusesOtherMasksNamingTheOp) {
  const Variable x(Tensor::ones(Shape{1, 2, 4, 4})), theta(Tensor::ones(Shape{2}));
  for (const AttentionMask& m : {AttentionMask{true, 2}, AttentionMask{false, 0}}) {
    for (Form form : {Form::linear, Form::prefix}) {
      try {
        if (form == Form::linear)
          linear_infsa_attention(x, x, x, theta, m);
        else
          linear_infsa_prefix_attention(x, x, x, theta, m);
        ADD_FAILURE() << form_name(form) << ": mask accepted";
      } catch (const ConfigError& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find(std::string(form_name(form)) + "_attention"), std::string::npos) << msg;
        EXPECT_NE(msg.find("causal"), std::string::npos) << msg;
      }
    }
  }
}

}  // namespace
}  // namespace attnlab
