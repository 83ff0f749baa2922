#include <gtest/gtest.h>

#include <cmath>

#include "autograd/ops.h"
#include "optim/adamw.h"
#include "optim/schedule.h"
#include "optim/sgd.h"

namespace attnlab {
namespace {

Variable param(std::vector<double> v) {
  return Variable(Tensor::from_vector(Shape{static_cast<int64_t>(v.size())}, v), true);
}

TEST(AdamW, MatchesTheFormulaStepByStep) {
  Variable p = param({1.0, -2.0});
  const AdamWConfig cfg{.lr = 0.1, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.01};
  AdamW opt({p}, cfg);
  std::vector<double> w{1.0, -2.0}, m{0, 0}, v{0, 0};
  for (int t = 1; t <= 3; ++t) {
    opt.zero_grad();
    sum(mul(p, p)).backward();  // g = 2p
    for (size_t i = 0; i < 2; ++i) {
      const double g = 2 * w[i];
      m[i] = 0.9 * m[i] + 0.1 * g;
      v[i] = 0.99 * v[i] + 0.01 * g * g;
      const double mh = m[i] / (1 - std::pow(0.9, t)), vh = v[i] / (1 - std::pow(0.99, t));
      w[i] -= 0.1 * (mh / (std::sqrt(vh) + 1e-8) + 0.01 * w[i]);
    }
    opt.step();
    const std::vector<double> got = p.data().to_vector<double>();
    EXPECT_NEAR(got[0], w[0], 1e-12);
    EXPECT_NEAR(got[1], w[1], 1e-12);
  }
}

TEST(Sgd, MomentumAndFrozenParameters) {
  Variable p = param({1.0}), frozen = param({5.0});
  frozen.set_requires_grad(false);
  Sgd opt({p, frozen}, {.lr = 0.5, .momentum = 0.9});
  for (int t = 0; t < 2; ++t) {
    opt.zero_grad();
    sum(add(mul_scalar(p, 3.0), frozen)).backward();  // dp = 3
    opt.step();
  }
  // v1 = 3, p = 1 - 1.5 = -0.5; v2 = 0.9 * 3 + 3 = 5.7, p = -0.5 - 2.85 = -3.35
  EXPECT_NEAR(p.data().item<double>(), -3.35, 1e-12);
  EXPECT_EQ(frozen.data().item<double>(), 5.0);
}

TEST(ClipGradNorm, ScalesToTheLimitAndReportsTheNorm) {
  Variable a = param({0.0, 0.0}), b = param({0.0});
  a.set_grad(Tensor::from_vector(Shape{2}, std::vector<double>{3.0, 0.0}));
  b.set_grad(Tensor::from_vector(Shape{1}, std::vector<double>{4.0}));
  EXPECT_NEAR(clip_grad_norm({a, b}, 1.0), 5.0, 1e-12);
  EXPECT_NEAR(a.grad().to_vector<double>()[0], 0.6, 1e-12);
  EXPECT_NEAR(b.grad().to_vector<double>()[0], 0.8, 1e-12);
  EXPECT_NEAR(clip_grad_norm({a, b}, 10.0), 1.0, 1e-12);  // under the limit: unchanged
  EXPECT_NEAR(a.grad().to_vector<double>()[0], 0.6, 1e-12);
}

TEST(AdamW, DecayMaskLeavesUnmarkedParametersUndecayed) {
  // A zero gradient isolates the decay: p -= lr * weight_decay * p for decayed parameters only.
  Variable decayed = param({2.0}), kept = param({2.0});
  AdamW opt({decayed, kept}, {.lr = 0.5, .weight_decay = 0.1}, {true, false});
  decayed.set_grad(Tensor::zeros(Shape{1}, DType::f64));
  kept.set_grad(Tensor::zeros(Shape{1}, DType::f64));
  opt.step();
  EXPECT_NEAR(decayed.data().item<double>(), 2.0 - 0.5 * 0.1 * 2.0, 1e-12);
  EXPECT_EQ(kept.data().item<double>(), 2.0);
  EXPECT_THROW(AdamW({decayed}, {}, {true, false}), ConfigError);
}

TEST(AdamW, StateRoundTripContinuesIdentically) {
  // Two steps, save, then a fresh optimizer loaded with that state must take the same third step.
  auto run_steps = [](AdamW& opt, Variable& p, int n) {
    for (int i = 0; i < n; ++i) {
      opt.zero_grad();
      sum(mul(p, p)).backward();
      opt.step();
    }
  };
  Variable a = param({1.0, -3.0}), b = param({1.0, -3.0});
  AdamW oa({a}, {.lr = 0.1}), ob({b}, {.lr = 0.1});
  run_steps(oa, a, 2);
  run_steps(ob, b, 2);
  const std::map<std::string, Tensor> state = ob.state();
  EXPECT_EQ(state.at("t").item<double>(), 2.0);
  Variable c = param(b.data().to_vector<double>());
  AdamW oc({c}, {.lr = 0.1});
  oc.load_state(state);
  run_steps(oa, a, 1);
  run_steps(oc, c, 1);
  EXPECT_EQ(a.data().to_vector<double>(), c.data().to_vector<double>());
  // State for another shape is refused before anything changes.
  Variable d = param({1.0});
  AdamW od({d}, {.lr = 0.1});
  EXPECT_THROW(od.load_state(state), ShapeError);
  EXPECT_EQ(od.state().count("m.0"), 0u);
}

TEST(WarmupCosine, WarmsUpLinearlyThenDecaysToTheFloor) {
  const WarmupCosine s{.peak = 1.0, .min_lr = 0.1, .warmup = 10, .total = 110};
  EXPECT_NEAR(s(0), 0.1, 1e-12);    // (step + 1) / warmup
  EXPECT_NEAR(s(9), 1.0, 1e-12);
  EXPECT_NEAR(s(10), 1.0, 1e-12);   // the cosine starts at the peak
  EXPECT_NEAR(s(60), 0.55, 1e-12);  // halfway: (peak + floor) / 2
  EXPECT_NEAR(s(110), 0.1, 1e-12);
  EXPECT_NEAR(s(500), 0.1, 1e-12);
  for (int64_t t = 10; t < 110; ++t) EXPECT_GE(s(t), s(t + 1)) << t;
  EXPECT_THROW((WarmupCosine{.peak = 1.0, .min_lr = 2.0, .warmup = 0, .total = 10}.validate()), ConfigError);
  EXPECT_THROW((WarmupCosine{.peak = 1.0, .min_lr = 0.0, .warmup = 20, .total = 10}.validate()), ConfigError);
}

TEST(Optimizers, RejectBadHyperparameters) {
  Variable p = param({1.0});
  EXPECT_THROW(AdamW({p}, {.lr = -1.0}), ConfigError);
  EXPECT_THROW(AdamW({p}, {.beta1 = 1.0}), ConfigError);
  EXPECT_THROW(Sgd({p}, {.lr = 0.1, .momentum = 1.5}), ConfigError);
}

}  // namespace
}  // namespace attnlab
