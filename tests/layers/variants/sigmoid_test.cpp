// Special cases of sigmoid attention (layers/attention/sigmoid/), beyond the generic suite:
// values derived by hand, limits with exact answers, the per-head bias gradient against finite
// differences, masked keys that would blow up if they were ever read, and key splits that add up
// (no normalisation). Timings are bench/attention_bench's.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "autograd/ops.h"
#include "layers/attention/sigmoid/sigmoid_attention.h"
#include "layers/attention/softmax/softmax_attention.h"
#include "lib/cuda/runtime.h"
#include "tests/support/tensor_compare.h"

namespace attnlab {
namespace {

using test::max_diff;
using test::bit_equal;

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// n_i of query i of T against S keys (the brief's rule; common.h).
int64_t visible(const AttentionMask& m, int64_t T, int64_t S, int64_t i) {
  const int64_t p = S - T + i;
  if (!m.causal) return S;
  return std::min(S, p < m.prefix ? std::max(p + 1, m.prefix) : p + 1);
}

struct Grads {
  Tensor out, dq, dk, dv, db;
};

// Fused (or reference) sigmoid attention with gradients for upstream gradient `dout`.
Grads run(SigmoidBias mode, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& b, const AttentionMask& m,
          const Tensor& dout, bool reference = false, double scale = 0.0) {
  Variable vq(q, true), vk(k, true), vv(v, true), vb = b.defined() ? Variable(b, true) : Variable();
  const Variable out = reference ? sigmoid_attention_reference(vq, vk, vv, mode, vb, m, scale)
                                 : sigmoid_attention(vq, vk, vv, mode, vb, m, scale);
  out.backward(dout);
  return {out.data(), vq.grad(), vk.grad(), vv.grad(), vb.defined() ? vb.grad() : Tensor()};
}

bool all_finite(const Tensor& t) {
  for (double x : t.to_vector<double>())
    if (!std::isfinite(x)) return false;
  return true;
}

const AttentionMask kCausal{true, 0}, kFull{false, 0};

// The masks (with their T, S) the exact checks run over: plain causal, the causal offset (S > T),
// a bidirectional prefix with and without an offset, and not causal.
struct MaskCase {
  AttentionMask mask;
  int64_t T, S;
};
const std::vector<MaskCase> kMaskCases = {
    {kCausal, 40, 40}, {kCausal, 10, 40}, {{true, 17}, 40, 40}, {{true, 30}, 20, 45}, {kFull, 30, 50},
};

// ---- b -> +inf: every visible weight is 1, so out_i = sum_{j < n_i} v_j -------------------------

TEST(SigmoidAttention, LargePositiveBiasGivesPrefixSumOfValues) {
  for (DType dt : {DType::f64, DType::f32}) {
    for (const MaskCase& mc : kMaskCases) {
      const int64_t B = 2, H = 3, D = 8, Dv = 5;
      const Tensor q = sample_randn(Shape{B, H, mc.T, D}, 1).to(dt), k = sample_randn(Shape{B, H, mc.S, D}, 2).to(dt),
                   v = sample_randn(Shape{B, H, mc.S, Dv}, 3).to(dt);
      const Tensor b = Tensor::full(Shape{H}, 60.0, dt);  // sigmoid(60 + O(5)) rounds to 1 in f64
      const Tensor dout = sample_randn(Shape{B, H, mc.T, Dv}, 4).to(dt);
      const Grads g = run(SigmoidBias::per_head, q, k, v, b, mc.mask, dout);
      const std::vector<double> vv = v.to_vector<double>(), out = g.out.to_vector<double>();
      double worst = 0;
      for (int64_t bh = 0; bh < B * H; ++bh)
        for (int64_t i = 0; i < mc.T; ++i)
          for (int64_t d = 0; d < Dv; ++d) {
            double sum = 0;
            for (int64_t j = 0; j < visible(mc.mask, mc.T, mc.S, i); ++j)
              sum += vv[static_cast<size_t>((bh * mc.S + j) * Dv + d)];
            worst = std::max(worst, std::abs(out[static_cast<size_t>((bh * mc.T + i) * Dv + d)] - sum));
          }
      EXPECT_LE(worst, dt == DType::f64 ? 1e-12 : 1e-4) << dtype_name(dt) << " T=" << mc.T << " S=" << mc.S;
      // Saturated weights pass no gradient to the scores: dq, dk and db are exactly 0 (p - p^2 = 0).
      EXPECT_EQ(max_diff(g.dq, Tensor::zeros(g.dq.shape(), dt)), 0.0);
      EXPECT_EQ(max_diff(g.dk, Tensor::zeros(g.dk.shape(), dt)), 0.0);
      EXPECT_EQ(max_diff(g.db, Tensor::zeros(g.db.shape(), dt)), 0.0);
    }
  }
}

// ---- T = 1 by hand -----------------------------------------------------------------------------

TEST(SigmoidAttention, SingleQueryByHand) {
  // q = (1, 2), k = (0.5, -1), v = (3, -4), scale 1/sqrt(2): s = (0.5 - 2)/sqrt(2) + b.
  const Tensor q = Tensor::from_vector<double>(Shape{1, 1, 1, 2}, {1.0, 2.0});
  const Tensor k = Tensor::from_vector<double>(Shape{1, 1, 1, 2}, {0.5, -1.0});
  const Tensor v = Tensor::from_vector<double>(Shape{1, 1, 1, 2}, {3.0, -4.0});
  const Tensor dout = Tensor::from_vector<double>(Shape{1, 1, 1, 2}, {1.0, 0.5});
  const double c = 1.0 / std::sqrt(2.0);
  for (double bias : {0.0, 0.25, -3.0}) {
    const bool per_head = bias != 0.0;
    const Tensor b = per_head ? Tensor::full(Shape{1}, bias, DType::f64) : Tensor();
    const Grads g = run(per_head ? SigmoidBias::per_head : SigmoidBias::zero, q, k, v, b, kCausal, dout);
    const double p = sigmoid(c * (0.5 - 2.0) + bias);
    const double ds = (1.0 * 3.0 + 0.5 * -4.0) * p * (1 - p);  // <dout, v> p (1 - p)
    const std::vector<double> out = g.out.to_vector<double>(), dq = g.dq.to_vector<double>(),
                              dk = g.dk.to_vector<double>(), dv = g.dv.to_vector<double>();
    EXPECT_NEAR(out[0], 3.0 * p, 1e-15);
    EXPECT_NEAR(out[1], -4.0 * p, 1e-15);
    EXPECT_NEAR(dv[0], 1.0 * p, 1e-15);
    EXPECT_NEAR(dv[1], 0.5 * p, 1e-15);
    EXPECT_NEAR(dq[0], c * ds * 0.5, 1e-15);
    EXPECT_NEAR(dq[1], c * ds * -1.0, 1e-15);
    EXPECT_NEAR(dk[0], c * ds * 1.0, 1e-15);
    EXPECT_NEAR(dk[1], c * ds * 2.0, 1e-15);
    if (per_head) {
      EXPECT_NEAR(g.db.to_vector<double>()[0], ds, 1e-15);
    }
  }
  // n = 1: the neglog_visible bias is -log 1 = 0, the zero form exactly.
  const Grads z = run(SigmoidBias::zero, q, k, v, Tensor(), kCausal, dout);
  const Grads nl = run(SigmoidBias::neglog_visible, q, k, v, Tensor(), kCausal, dout);
  EXPECT_TRUE(bit_equal(z.out, nl.out));
  EXPECT_TRUE(bit_equal(z.dq, nl.dq));
}

// A decode step: one query at position 2 against 3 keys, the neglog_visible bias -log 3.
TEST(SigmoidAttention, DecodeStepByHand) {
  const Tensor q = Tensor::from_vector<double>(Shape{1, 1, 1, 1}, {2.0});
  const Tensor k = Tensor::from_vector<double>(Shape{1, 1, 3, 1}, {0.5, -1.0, 1.5});
  const Tensor v = Tensor::from_vector<double>(Shape{1, 1, 3, 1}, {1.0, 10.0, 100.0});
  const Tensor dout = Tensor::ones(Shape{1, 1, 1, 1}, DType::f64);
  const Grads g = run(SigmoidBias::neglog_visible, q, k, v, Tensor(), kCausal, dout, false, 0.5);
  double expect = 0, dq = 0;
  for (int j = 0; j < 3; ++j) {
    const double kj = std::vector<double>{0.5, -1.0, 1.5}[j], vj = std::vector<double>{1.0, 10.0, 100.0}[j];
    const double p = sigmoid(0.5 * 2.0 * kj - std::log(3.0));
    expect += p * vj;
    dq += 0.5 * vj * p * (1 - p) * kj;
  }
  EXPECT_NEAR(g.out.to_vector<double>()[0], expect, 1e-13);
  EXPECT_NEAR(g.dq.to_vector<double>()[0], dq, 1e-13);
}

// ---- q = k = 0: every visible weight is sigmoid(b_i), exactly -----------------------------------

// out_i = n_i sigmoid(b_i) (v = 1) and, for dout = 1, dS_ij = Dv p (1 - p), so
// db_h = B Dv sum_i n_i p_h (1 - p_h).
void check_zero_scores(Device device) {
  for (const MaskCase& mc : kMaskCases) {
    for (SigmoidBias mode : {SigmoidBias::zero, SigmoidBias::neglog_visible, SigmoidBias::per_head}) {
      const int64_t B = 2, H = 3, D = 4, Dv = 3;
      const DType dt = device.is_cpu() ? DType::f64 : DType::f32;
      const double tol = device.is_cpu() ? 1e-13 : 1e-5;
      const Tensor q = Tensor::zeros(Shape{B, H, mc.T, D}, dt, device),
                   k = Tensor::zeros(Shape{B, H, mc.S, D}, dt, device),
                   v = Tensor::ones(Shape{B, H, mc.S, Dv}, dt, device);
      const std::vector<double> bias{-1.0, -2.5, 0.75};
      const Tensor b =
          mode == SigmoidBias::per_head ? Tensor::from_vector<double>(Shape{H}, bias).to(dt).to(device) : Tensor();
      const Grads g = run(mode, q, k, v, b, mc.mask, Tensor::ones(Shape{B, H, mc.T, Dv}, dt, device));
      const std::vector<double> out = g.out.to(Device::cpu()).to_vector<double>();
      double worst = 0;
      for (int64_t bh = 0; bh < B * H; ++bh)
        for (int64_t i = 0; i < mc.T; ++i) {
          const double n = static_cast<double>(visible(mc.mask, mc.T, mc.S, i));
          // neglog_visible: sigmoid(-log n) = 1 / (n + 1), so the row mass is n / (n + 1).
          const double mass = mode == SigmoidBias::zero       ? n / 2
                              : mode == SigmoidBias::per_head ? n * sigmoid(bias[static_cast<size_t>(bh % H)])
                                                              : n / (n + 1);
          for (int64_t d = 0; d < Dv; ++d)
            worst = std::max(worst, std::abs(out[static_cast<size_t>((bh * mc.T + i) * Dv + d)] - mass) / mass);
        }
      EXPECT_LE(worst, tol) << "mode " << static_cast<int>(mode) << " T=" << mc.T << " S=" << mc.S
                            << " prefix=" << mc.mask.prefix;
      if (mode == SigmoidBias::per_head) {
        double n_sum = 0;
        for (int64_t i = 0; i < mc.T; ++i) n_sum += static_cast<double>(visible(mc.mask, mc.T, mc.S, i));
        const std::vector<double> db = g.db.to(Device::cpu()).to_vector<double>();
        for (int64_t h = 0; h < H; ++h) {
          const double p = sigmoid(bias[static_cast<size_t>(h)]);
          const double expect = static_cast<double>(B * Dv) * n_sum * p * (1 - p);
          EXPECT_NEAR(db[static_cast<size_t>(h)], expect, tol * expect) << "head " << h << " T=" << mc.T;
        }
      }
    }
  }
}

TEST(SigmoidAttention, ZeroScoresGiveExactRowMassAndBiasGradient) { check_zero_scores(Device::cpu()); }

TEST(SigmoidAttention, ZeroScoresOnCuda) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device (real or emulated)";
  check_zero_scores(Device::cuda(0));
}

// ---- the per-head bias gradient ---------------------------------------------------------------

TEST(SigmoidAttention, PerHeadBiasGradientMatchesFiniteDifferences) {
  for (const MaskCase& mc : kMaskCases) {
    const int64_t B = 2, H = 3, D = 8;
    const Tensor q = sample_randn(Shape{B, H, mc.T, D}, 11), k = sample_randn(Shape{B, H, mc.S, D}, 12),
                 v = sample_randn(Shape{B, H, mc.S, D}, 13);
    const Tensor b = sample_uniform(Shape{H}, 14, -4.0, -1.0);
    const Tensor w = sample_randn(Shape{B, H, mc.T, D}, 15);  // loss = sum(out * w)
    const Grads g = run(SigmoidBias::per_head, q, k, v, b, mc.mask, w);
    const std::vector<double> db = g.db.to_vector<double>();
    auto loss = [&](const Tensor& bb) {
      const Tensor out =
          sigmoid_attention(Variable(q), Variable(k), Variable(v), SigmoidBias::per_head, Variable(bb), mc.mask).data();
      const std::vector<double> o = out.to_vector<double>(), ww = w.to_vector<double>();
      double s = 0;
      for (size_t i = 0; i < o.size(); ++i) s += o[i] * ww[i];
      return s;
    };
    const double eps = 1e-5;
    for (int64_t h = 0; h < H; ++h) {
      Tensor up = b.clone(), down = b.clone();
      up.data<double>()[h] += eps;
      down.data<double>()[h] -= eps;
      const double fd = (loss(up) - loss(down)) / (2 * eps);
      EXPECT_GT(std::abs(db[static_cast<size_t>(h)]), 1e-3) << "head " << h << ": the bias gradient vanishes";
      EXPECT_NEAR(db[static_cast<size_t>(h)], fd, 1e-7 * std::max(1.0, std::abs(fd))) << "head " << h;
    }
    // And the composed reference agrees.
    const Grads r = run(SigmoidBias::per_head, q, k, v, b, mc.mask, w, true);
    EXPECT_LE(max_diff(g.db, r.db), 1e-10 * std::max(1.0, std::abs(db[0])));
  }
}

// ---- masked keys are never read into a result -------------------------------------------------

// Keys and values at positions >= t are set to 1e30 (f64) / 1e18 (f32): their scores are huge and
// any product of a masked weight with them other than exactly 0 would show. Rows < t of out and
// dq, and rows < t of dk and dv (their gradients come from q_i, k_j, v_j, dout_i only), must be
// bit-identical to a run with ordinary keys there, and everything must stay finite.
TEST(SigmoidAttention, MaskedEntriesContributeNothingEvenWhenScoresAreHuge) {
  const int64_t B = 1, H = 2, T = 150, D = 16, t = 61;
  for (DType dt : {DType::f64, DType::f32}) {
    const double huge = dt == DType::f64 ? 1e30 : 1e18;
    for (SigmoidBias mode : {SigmoidBias::zero, SigmoidBias::neglog_visible, SigmoidBias::per_head}) {
      const Tensor q = sample_randn(Shape{B, H, T, D}, 21).to(dt), k = sample_randn(Shape{B, H, T, D}, 22).to(dt),
                   v = sample_randn(Shape{B, H, T, D}, 23).to(dt), dout = sample_randn(Shape{B, H, T, D}, 24).to(dt);
      const Tensor b = mode == SigmoidBias::per_head ? Tensor::full(Shape{H}, -2.0, dt) : Tensor();
      Tensor kh = k.clone(), vh = v.clone();
      kh.narrow(2, t, T - t).fill_(huge);
      vh.narrow(2, t, T - t).fill_(-huge);
      const Grads base = run(mode, q, k, v, b, kCausal, dout), hit = run(mode, q, kh, vh, b, kCausal, dout);
      for (const Tensor* x : {&hit.out, &hit.dq, &hit.dk, &hit.dv}) EXPECT_TRUE(all_finite(*x)) << dtype_name(dt);
      EXPECT_TRUE(bit_equal(base.out.narrow(2, 0, t), hit.out.narrow(2, 0, t))) << dtype_name(dt);
      EXPECT_TRUE(bit_equal(base.dq.narrow(2, 0, t), hit.dq.narrow(2, 0, t))) << dtype_name(dt);
      EXPECT_TRUE(bit_equal(base.dk.narrow(2, 0, t), hit.dk.narrow(2, 0, t))) << dtype_name(dt);
      EXPECT_TRUE(bit_equal(base.dv.narrow(2, 0, t), hit.dv.narrow(2, 0, t))) << dtype_name(dt);
    }
  }
}

// ---- no normalisation: keys split into two calls add up ----------------------------------------

TEST(SigmoidAttention, KeySplitsAddUpWithoutNormalisation) {
  const int64_t B = 2, H = 2, T = 30, S = 200, S1 = 97, D = 16;
  const Tensor q = sample_randn(Shape{B, H, T, D}, 31), k = sample_randn(Shape{B, H, S, D}, 32),
               v = sample_randn(Shape{B, H, S, D}, 33);
  for (SigmoidBias mode : {SigmoidBias::zero, SigmoidBias::per_head}) {
    const Variable b = mode == SigmoidBias::per_head ? Variable(sample_uniform(Shape{H}, 34, -4.0, -1.0)) : Variable();
    auto out = [&](int64_t j0, int64_t n) {
      return sigmoid_attention(Variable(q), Variable(k.narrow(2, j0, n)), Variable(v.narrow(2, j0, n)), mode, b, kFull)
          .data();
    };
    const Tensor whole = out(0, S), first = out(0, S1), second = out(S1, S - S1);
    const std::vector<double> w = whole.to_vector<double>(), a = first.to_vector<double>(),
                              c = second.to_vector<double>();
    double worst = 0;
    for (size_t i = 0; i < w.size(); ++i) worst = std::max(worst, std::abs(w[i] - a[i] - c[i]));
    EXPECT_LE(worst, 1e-12);
  }
}

// The registered forms' misuse the generic suite does not see: a bias for a form without one.
TEST(SigmoidAttention, RefusesABiasItWouldIgnore) {
  const Variable q(sample_randn(Shape{1, 2, 4, 4}, 41)), b(Tensor::zeros(Shape{2}, DType::f64));
  for (SigmoidBias mode : {SigmoidBias::zero, SigmoidBias::neglog_visible})
    EXPECT_THROW(sigmoid_attention(q, q, q, mode, b), ConfigError);
  EXPECT_THROW(sigmoid_attention(q, q, q, SigmoidBias::per_head, Variable()), ConfigError);
}

}  // namespace
}  // namespace attnlab
