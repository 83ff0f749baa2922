// Special cases of the affine-scaled attention (layers/attention/affine/, spec section 1): the
// generic suite (generic_test.cpp) covers fused vs reference, causality, offsets and threads.
//   - w_a = 0, c_a = 5 (alpha = 1), abar = 1 (beta = 0): exactly softmax_attention;
//   - w_a = 0, c_a = 0 (alpha = 0.5), abar = 0.5 (beta = 0): 0.5 * softmax_attention;
//   - bias_norm visible: every row's weights sum to abar (v = ones gives out = abar);
//     bias_norm full: alpha + n_i (abar - alpha) / S;
//   - abar gets no gradient, the op never writes it; alpha is phi(x w_a^T + c_a);
//   - affine_abar_update is the EMA of spec 1.3, and the "training" option returns it;
//   - c_a left out equals c_a = 0 (and gets no gradient slot);
//   - dz is 0 beyond the clip's kinks (w_a, c_a gradients only from rows inside);
//   - the registered samples keep z away from the kinks (finite differences across a kink fail);
//   - option and shape misuse errors; no queries (T = 0).
// Timings are bench/attention_bench's.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "autograd/ops.h"
#include "layers/all_ops.h"
#include "layers/attention/affine/affine_attention.h"
#include "layers/attention/softmax/softmax_attention.h"
#include "lib/error.h"
#include "tests/support/tensor_compare.h"

namespace attnlab {
namespace {

using test::max_diff;
using test::bit_equal;

struct Inputs {
  Variable q, k, v, x, w, c;
  Tensor abar;
};

// q, k, v ~ N(0, 1), x uniform [-1, 1], w_a [-3, 3], c_a [-1, 1], abar [0.2, 0.8]; every input
// but abar requires a gradient.
Inputs make_inputs(int64_t B, int64_t H, int64_t T, int64_t S, int64_t D, int64_t Dm, uint64_t seed,
                   DType dt = DType::f64) {
  Inputs in;
  in.q = Variable(sample_randn(Shape{B, H, T, D}, seed).to(dt), true);
  in.k = Variable(sample_randn(Shape{B, H, S, D}, seed + 1).to(dt), true);
  in.v = Variable(sample_randn(Shape{B, H, S, D}, seed + 2).to(dt), true);
  in.x = Variable(sample_uniform(Shape{B, T, Dm}, seed + 3, -1, 1).to(dt), true);
  in.w = Variable(sample_uniform(Shape{H, Dm}, seed + 4, -3, 3).to(dt), true);
  in.c = Variable(sample_uniform(Shape{H}, seed + 5, -1, 1).to(dt), true);
  in.abar = sample_uniform(Shape{H}, seed + 6, 0.2, 0.8).to(dt);
  return in;
}

TEST(AffineAttention, AlphaOneBetaZeroIsSoftmaxExactly) {
  for (DType dt : {DType::f64, DType::f32}) {
    for (const AttentionMask mask : {AttentionMask{true, 0}, AttentionMask{true, 5}, AttentionMask{false, 0}}) {
      Inputs in = make_inputs(2, 3, 37, 45, 16, 10, 100, dt);
      const Variable w(Tensor::zeros(Shape{3, 10}, dt), true), c(Tensor::full(Shape{3}, 5.0, dt), true);
      const Tensor abar = Tensor::ones(Shape{3}, dt);
      // z = 5 is the upper kink: the linear clip gives exactly 1 there.
      const AffineAttentionResult r = affine_attention(in.q, in.k, in.v, in.x, w, c, abar, mask);
      const Variable sm = softmax_attention(in.q, in.k, in.v, mask);
      EXPECT_TRUE(bit_equal(r.out.data(), sm.data())) << dtype_name(dt) << " prefix=" << mask.prefix;
      for (double a : r.alpha.to_vector<double>()) EXPECT_EQ(a, 1.0);
    }
  }
}

TEST(AffineAttention, AlphaHalfBetaZeroIsHalfSoftmax) {
  for (AffinePhi phi : {AffinePhi::linear_clip, AffinePhi::sigmoid}) {  // phi(0) = 0.5 for both
    Inputs in = make_inputs(2, 2, 40, 40, 8, 6, 200);
    const Variable w(Tensor::zeros(Shape{2, 6}, DType::f64), true), c(Tensor::zeros(Shape{2}, DType::f64), true);
    const AffineAttentionResult r =
        affine_attention(in.q, in.k, in.v, in.x, w, c, Tensor::full(Shape{2}, 0.5, DType::f64), {},
                         AffineOptions{phi, AffineBiasNorm::visible});
    const Tensor half = mul_scalar(softmax_attention(in.q, in.k, in.v), 0.5).data();
    EXPECT_TRUE(bit_equal(r.out.data().contiguous(), half.contiguous()));  // alpha * O^sm + 0 * C
  }
}

// v = ones: out_i = alpha_i + beta_i n_i, which is abar under "visible" for every row (the row mass),
// and alpha_i + n_i (abar - alpha_i) / S under "full".
TEST(AffineAttention, RowMass) {
  const int64_t B = 2, H = 3, T = 30, S = 50;
  for (const AttentionMask mask : {AttentionMask{true, 0}, AttentionMask{true, 35}, AttentionMask{false, 0}}) {
    for (AffineBiasNorm norm : {AffineBiasNorm::visible, AffineBiasNorm::full}) {
      Inputs in = make_inputs(B, H, T, S, 8, 7, 300);
      const Variable ones(Tensor::ones(Shape{B, H, S, 8}, DType::f64));
      const AffineAttentionResult r = affine_attention(in.q, in.k, ones, in.x, in.w, in.c, in.abar, mask,
                                                       AffineOptions{AffinePhi::linear_clip, norm});
      const std::vector<double> out = r.out.data().contiguous().to_vector<double>();
      const std::vector<double> alpha = r.alpha.to_vector<double>(), abar = in.abar.to_vector<double>();
      double worst = 0;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t i = 0; i < T; ++i) {
            int64_t n = 0;
            for (int64_t j = 0; j < S; ++j) n += mask.visible(S - T + i, j) ? 1 : 0;
            const double a = alpha[static_cast<size_t>((b * H + h) * T + i)], ab = abar[static_cast<size_t>(h)];
            const double want = norm == AffineBiasNorm::visible ? ab : a + n * (ab - a) / S;
            for (int64_t d = 0; d < 8; ++d)
              worst = std::max(worst, std::abs(out[static_cast<size_t>(((b * H + h) * T + i) * 8 + d)] - want));
          }
      EXPECT_LT(worst, 1e-12) << "prefix=" << mask.prefix << (mask.causal ? " causal" : " full")
                              << (norm == AffineBiasNorm::full ? " bias_norm=full" : " bias_norm=visible");
    }
  }
}

TEST(AffineAttention, AbarIsReadOnlyAndGetsNoGradient) {
  Inputs in = make_inputs(2, 2, 20, 20, 8, 6, 400);
  const Tensor before = in.abar.clone();
  // Through the registered spec too, where abar is an extra input like the others.
  const AttentionOpSpec& spec = attention_ops().get("affine");
  AttnOpArgs a;
  a.q = in.q, a.k = in.k, a.v = in.v;
  const Variable abar_var(in.abar, true);
  a.extras = {in.x, in.w, in.c, abar_var};
  a.options = {{"training", "1"}};
  const AttnOpResult r = spec.fused(a);
  sum(r.out).backward();
  EXPECT_FALSE(abar_var.grad().defined()) << "abar got a gradient";
  EXPECT_TRUE(bit_equal(in.abar, before)) << "the op wrote its abar input";
  for (const Variable* p : {&in.q, &in.k, &in.v, &in.x, &in.w, &in.c})
    EXPECT_TRUE(p->grad().defined()) << "an input that needs a gradient got none";
  ASSERT_TRUE(r.aux.count("abar_next"));
  EXPECT_TRUE(bit_equal(in.abar, before)) << "the EMA update wrote its abar input";
}

TEST(AffineAttention, AlphaIsPhiOfTheGate) {
  const int64_t B = 2, H = 3, T = 25, Dm = 9;
  for (AffinePhi phi : {AffinePhi::linear_clip, AffinePhi::sigmoid}) {
    for (bool bias : {true, false}) {
      Inputs in = make_inputs(B, H, T, T, 8, Dm, 500);
      const AffineAttentionResult r = affine_attention(in.q, in.k, in.v, in.x, in.w, bias ? in.c : Variable(), in.abar,
                                                       {}, AffineOptions{phi, AffineBiasNorm::visible});
      ASSERT_EQ(r.alpha.shape(), Shape({B, H, T}));
      const std::vector<double> x = in.x.data().to_vector<double>(), w = in.w.data().to_vector<double>(),
                                c = in.c.data().to_vector<double>(), alpha = r.alpha.to_vector<double>();
      int clipped = 0, interior = 0;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t i = 0; i < T; ++i) {
            double z = bias ? c[static_cast<size_t>(h)] : 0.0;
            for (int64_t m = 0; m < Dm; ++m)
              z += x[static_cast<size_t>((b * T + i) * Dm + m)] * w[static_cast<size_t>(h * Dm + m)];
            const double want =
                phi == AffinePhi::sigmoid ? 1 / (1 + std::exp(-z)) : std::clamp(0.1 * z + 0.5, 0.0, 1.0);
            EXPECT_NEAR(alpha[static_cast<size_t>((b * H + h) * T + i)], want, 1e-14);
            (std::abs(z) >= 5 ? clipped : interior) += 1;
          }
      EXPECT_GT(clipped, 0) << "the inputs never reach the clip's kinks";
      EXPECT_GT(interior, 0);
    }
  }
}

// Beyond the kinks alpha is constant: with every z past +-5, x, w_a and c_a get zero gradients
// while q, k, v still get theirs.
TEST(AffineAttention, NoGateGradientBeyondTheKinks) {
  Inputs in = make_inputs(1, 2, 12, 12, 8, 4, 600);
  // |x w_a| <= 4 * 0.9 = 3.6 (Dm = 4, |w_a| <= 0.9), so |z| >= 5.4 with c_a = +-9.
  const Variable c(Tensor::from_vector<double>(Shape{2}, {9.0, -9.0}), true);
  const Variable w(mul_scalar(in.w, 0.3).data(), true);
  const AffineAttentionResult r = affine_attention(in.q, in.k, in.v, in.x, w, c, in.abar);
  sum(mul(r.out, r.out)).backward();
  for (double a : r.alpha.to_vector<double>()) EXPECT_TRUE(a == 0.0 || a == 1.0);
  EXPECT_EQ(max_diff(in.x.grad(), Tensor::zeros(in.x.shape(), DType::f64)), 0.0);
  EXPECT_EQ(max_diff(w.grad(), Tensor::zeros(w.shape(), DType::f64)), 0.0);
  EXPECT_EQ(max_diff(c.grad(), Tensor::zeros(c.shape(), DType::f64)), 0.0);
  EXPECT_GT(max_diff(in.q.grad(), Tensor::zeros(in.q.shape(), DType::f64)), 0.0);
}

TEST(AffineAttention, NoBiasEqualsZeroBias) {
  Inputs in = make_inputs(2, 2, 20, 26, 8, 6, 700);
  const Variable zero(Tensor::zeros(Shape{2}, DType::f64), true);
  const Tensor dout = sample_randn(Shape{2, 2, 20, 8}, 701);
  const AffineAttentionResult a = affine_attention(in.q, in.k, in.v, in.x, in.w, Variable(), in.abar);
  a.out.backward(dout);
  const Tensor dx = in.x.grad().clone(), dw = in.w.grad().clone();
  in.x.zero_grad(), in.w.zero_grad();
  const AffineAttentionResult b = affine_attention(in.q, in.k, in.v, in.x, in.w, zero, in.abar);
  b.out.backward(dout);
  EXPECT_TRUE(bit_equal(a.out.data(), b.out.data()));
  EXPECT_TRUE(bit_equal(dx, in.x.grad()));
  EXPECT_TRUE(bit_equal(dw, in.w.grad()));
}

TEST(AffineAttention, AbarUpdateIsTheEma) {
  const int64_t B = 3, H = 4, T = 11;
  const Tensor alpha = sample_uniform(Shape{B, H, T}, 800, 0, 1), abar = sample_uniform(Shape{H}, 801, 0, 1);
  const Tensor before = abar.clone();
  for (double rho : {0.9, 0.0, 1.0, 0.37}) {
    const Tensor next = affine_abar_update(abar, alpha, rho);
    ASSERT_EQ(next.shape(), Shape({H}));
    const std::vector<double> a = alpha.to_vector<double>(), ab = abar.to_vector<double>(),
                              got = next.to_vector<double>();
    for (int64_t h = 0; h < H; ++h) {
      double m = 0;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < T; ++t) m += a[static_cast<size_t>((b * H + h) * T + t)];
      m /= static_cast<double>(B * T);
      EXPECT_NEAR(got[static_cast<size_t>(h)], rho * ab[static_cast<size_t>(h)] + (1 - rho) * m, 1e-15);
    }
  }
  EXPECT_TRUE(bit_equal(abar, before));
  // The spec's "training" option returns the update of the alpha the call computed.
  Inputs in = make_inputs(2, 2, 9, 9, 4, 5, 802);
  AttnOpArgs args;
  args.q = in.q, args.k = in.k, args.v = in.v;
  args.extras = {in.x, in.w, in.c, Variable(in.abar)};
  args.options = {{"training", "1"}, {"rho", "0.8"}};
  const AttnOpResult r = attention_ops().get("affine").fused(args);
  const AffineAttentionResult direct = affine_attention(in.q, in.k, in.v, in.x, in.w, in.c, in.abar);
  EXPECT_TRUE(bit_equal(r.aux.at("abar_next"), affine_abar_update(in.abar, direct.alpha, 0.8)));
  args.options = {};
  EXPECT_TRUE(attention_ops().get("affine").fused(args).aux.empty()) << "abar_next returned outside training";
  // Misuse.
  EXPECT_THROW(affine_abar_update(Tensor::zeros(Shape{3}, DType::f64), alpha), ShapeError);
  EXPECT_THROW(affine_abar_update(abar, alpha.to(DType::f32)), DTypeError);
  EXPECT_THROW(affine_abar_update(abar, alpha, 1.5), ConfigError);
}

TEST(AffineAttention, OptionsAreChecked) {
  const AttentionOpSpec& spec = attention_ops().get("affine");
  AttnDims d;
  d.B = 1, d.H = 2, d.T = d.S = 4, d.Dk = d.Dv = 4, d.Dm = 5;
  for (const std::map<std::string, std::string>& bad : std::vector<std::map<std::string, std::string>>{
           {{"phi", "relu"}}, {{"bias_norm", "half"}}, {{"training", "yes"}}, {{"training", "2"}}}) {
    const AttnOpArgs a = random_attention_args(spec, d, AttentionMask{true, 0}, 900, bad);
    EXPECT_THROW(spec.fused(a), ConfigError) << bad.begin()->first << "=" << bad.begin()->second;
  }
  AttnOpArgs no_abar = random_attention_args(spec, d, AttentionMask{true, 0}, 901);
  no_abar.extras.pop_back();
  EXPECT_THROW(spec.fused(no_abar), ConfigError);
  // c_a left out is allowed.
  AttnOpArgs no_c = random_attention_args(spec, d, AttentionMask{true, 0}, 902);
  no_c.extras[2] = Variable();
  EXPECT_NO_THROW(spec.fused(no_c));
}

// The gradcheck samples must keep z = x w_a^T + c_a away from the clip's kinks by a margin that
// central differences (step 1e-6) cannot cross; and they must reach both sides of the kinks.
TEST(AffineAttention, SamplesAvoidTheKinks) {
  const OpInfo& info = all_ops().get("affine_attention");
  std::vector<OpSample> all = info.samples();
  for (OpSample& s : info.parity_samples()) all.push_back(std::move(s));
  int inside = 0, outside = 0;
  for (const OpSample& s : all) {
    const Tensor& x = s.inputs[3];
    const Tensor& w = s.inputs[4];
    const bool bias = s.inputs.size() == 7;
    const std::vector<double> xs = x.to_vector<double>(), ws = w.to_vector<double>(),
                              cs = bias ? s.inputs[5].to_vector<double>() : std::vector<double>(w.size(0), 0.0);
    const int64_t rows = x.size(0) * x.size(1), Dm = x.size(2), H = w.size(0);
    double closest = 1e9;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t h = 0; h < H; ++h) {
        double z = cs[static_cast<size_t>(h)];
        for (int64_t m = 0; m < Dm; ++m) z += xs[static_cast<size_t>(r * Dm + m)] * ws[static_cast<size_t>(h * Dm + m)];
        closest = std::min(closest, std::abs(std::abs(z) - 5.0));
        (std::abs(z) < 5 ? inside : outside) += 1;
      }
    EXPECT_GT(closest, 1e-4) << s.label;
  }
  EXPECT_GT(inside, 0);
  EXPECT_GT(outside, 0);
}

// No queries (T = 0, S = 3): an empty output, zero gradients for k, v and the gate's parameters.
TEST(AffineAttention, NoQueries) {
  Inputs in = make_inputs(1, 2, 0, 3, 4, 5, 1050);
  const AffineAttentionResult r = affine_attention(in.q, in.k, in.v, in.x, in.w, in.c, in.abar);
  EXPECT_EQ(r.out.shape(), Shape({1, 2, 0, 4}));
  EXPECT_EQ(r.alpha.shape(), Shape({1, 2, 0}));
  sum(r.out).backward();
  for (const Variable* p : {&in.k, &in.v, &in.w, &in.c}) {
    ASSERT_TRUE(p->grad().defined());
    EXPECT_EQ(max_diff(p->grad(), Tensor::zeros(p->shape(), DType::f64)), 0.0);
  }
  EXPECT_TRUE(bit_equal(affine_abar_update(in.abar, r.alpha), in.abar));
}

TEST(AffineAttention, MisuseIsRefused) {
  Inputs in = make_inputs(1, 2, 4, 4, 4, 5, 1000);
  EXPECT_THROW(affine_attention(in.q, in.k, in.v, in.x, in.w, in.c, Tensor::ones(Shape{3}, DType::f64)), ShapeError);
  EXPECT_THROW(affine_attention(in.q, in.k, in.v, Variable(), in.w, in.c, in.abar), Error);
  EXPECT_THROW(affine_attention(in.q, in.k, in.v, in.x, in.w, in.c, in.abar.to(DType::f32)), DTypeError);
}

}  // namespace
}  // namespace attnlab
