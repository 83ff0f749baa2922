#include <gtest/gtest.h>

#include <cmath>

#include "autograd/ops.h"
#include "optim/adamw.h"
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

TEST(Optimizers, RejectBadHyperparameters) {
  Variable p = param({1.0});
  EXPECT_THROW(AdamW({p}, {.lr = -1.0}), ConfigError);
  EXPECT_THROW(AdamW({p}, {.beta1 = 1.0}), ConfigError);
  EXPECT_THROW(Sgd({p}, {.lr = 0.1, .momentum = 1.5}), ConfigError);
}

}  // namespace
}  // namespace attnlab
