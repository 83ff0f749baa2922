#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "autograd/grad_hooks.h"
#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "lib/error.h"

namespace attnlab {
namespace {

Variable leaf(std::vector<double> v, bool requires_grad = true) {
  const int64_t n = static_cast<int64_t>(v.size());
  return Variable(Tensor::from_vector(Shape{n}, v), requires_grad);
}

std::vector<double> grad_of(const Variable& v) { return v.grad().to_vector<double>(); }

TEST(Engine, AccumulatesAcrossUses) {
  // y = sum(x * x + 3 x) -> dy/dx = 2x + 3; x is used three times.
  Variable x = leaf({1.0, -2.0});
  Variable y = sum(add(mul(x, x), mul_scalar(x, 3.0)));
  y.backward();
  EXPECT_EQ(grad_of(x), (std::vector<double>{5.0, -1.0}));
}

TEST(Engine, GradientsAccumulateAcrossBackwardCallsUntilZeroed) {
  Variable x = leaf({2.0});
  sum(mul_scalar(x, 4.0)).backward();
  sum(mul_scalar(x, 4.0)).backward();
  EXPECT_EQ(grad_of(x), (std::vector<double>{8.0}));
  x.zero_grad();
  EXPECT_FALSE(x.grad().defined());
}

TEST(Engine, DiamondGraphRunsEachNodeOnceAfterAllConsumers) {
  // h = exp(x); y = sum(h * h + h): dy/dx = (2h + 1) h.
  Variable x = leaf({0.5, -0.25});
  Variable h = exp(x);
  sum(add(mul(h, h), h)).backward();
  const std::vector<double> g = grad_of(x);
  for (size_t i = 0; i < 2; ++i) {
    const double hv = std::exp(std::vector<double>{0.5, -0.25}[i]);
    EXPECT_NEAR(g[i], (2 * hv + 1) * hv, 1e-12);
  }
}

TEST(Engine, NoGradGuardRecordsNothing) {
  Variable x = leaf({1.0});
  {
    NoGradGuard ng;
    Variable y = exp(x);
    EXPECT_FALSE(y.requires_grad());
    EXPECT_TRUE(y.is_leaf());
  }
  EXPECT_TRUE(exp(x).requires_grad());
}

TEST(Engine, GraphIsFreedUnlessRetained) {
  Variable x = leaf({1.0, 2.0});
  Variable y = sum(exp(x));
  y.backward(Tensor(), /*retain_graph=*/true);
  y.backward();  // allowed: the first call kept the graph
  EXPECT_NEAR(grad_of(x)[0], 2 * std::exp(1.0), 1e-12);
  try {
    y.backward();
    FAIL() << "a freed graph must not run again";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("retain_graph"), std::string::npos) << e.what();
  }
}

TEST(Engine, TrainsOnlyTheChosenParameters) {
  Variable w1 = leaf({1.0, 2.0}), w2 = leaf({3.0, 4.0});
  w2.set_requires_grad(false);  // frozen
  Variable y = sum(mul(w1, w2));
  y.backward();
  EXPECT_EQ(grad_of(w1), (std::vector<double>{3.0, 4.0}));
  EXPECT_FALSE(w2.grad().defined());
  // Nothing requires a gradient: no graph, and backward says why.
  Variable z = sum(mul(w2, w2));
  EXPECT_FALSE(z.requires_grad());
  EXPECT_THROW(z.backward(), Error);
}

TEST(Engine, NonScalarRootNeedsAGradient) {
  Variable x = leaf({1.0, 2.0});
  Variable y = mul_scalar(x, 2.0);
  EXPECT_THROW(y.backward(), ShapeError);
  y.backward(Tensor::from_vector(Shape{2}, std::vector<double>{1.0, 10.0}));
  EXPECT_EQ(grad_of(x), (std::vector<double>{2.0, 20.0}));
}

TEST(Engine, ComputedVariablesCannotChangeRequiresGrad) {
  Variable x = leaf({1.0});
  Variable y = exp(x);
  EXPECT_THROW(y.set_requires_grad(false), Error);
  EXPECT_THROW(Variable(Tensor::zeros(Shape{2}, DType::i32), true), DTypeError);
}

TEST(Engine, DetachCutsTheGraph) {
  Variable x = leaf({3.0});
  Variable y = mul(exp(x).detach(), x);  // d/dx = exp(3), the detached factor is a constant
  sum(y).backward();
  EXPECT_NEAR(grad_of(x)[0], std::exp(3.0), 1e-12);
}

TEST(Engine, LeafHookFiresOnceWhenTheLeafsGradientIsComplete) {
  // x feeds three uses at different depths, w one, c none (it does not require a gradient): the
  // hook sees x once, after its last use delivered, holding the full gradient 2x + 3.
  Variable x = leaf({1.0, -2.0}), w = leaf({0.5, 0.5}), c = leaf({4.0, 4.0}, false);
  std::vector<std::pair<const void*, std::vector<double>>> seen;
  {
    LeafGradHookScope scope([&](const Variable& v) { seen.emplace_back(v.id(), v.grad().to_vector<double>()); });
    sum(add(add(mul(x, x), mul_scalar(x, 3.0)), mul(w, c))).backward();
  }
  ASSERT_EQ(seen.size(), 2u);
  std::map<const void*, std::vector<double>> by_leaf(seen.begin(), seen.end());
  EXPECT_EQ(by_leaf.at(x.id()), (std::vector<double>{5.0, -1.0}));
  EXPECT_EQ(by_leaf.at(w.id()), (std::vector<double>{4.0, 4.0}));
  EXPECT_EQ(by_leaf.count(c.id()), 0u);
  // Out of the scope nothing is called.
  x.zero_grad();
  sum(mul(x, x)).backward();
  EXPECT_EQ(seen.size(), 2u);
}

TEST(Engine, LeafHookScopesNestAndTheInnerOneIsCalled) {
  Variable x = leaf({1.0});
  int outer = 0, inner = 0;
  LeafGradHookScope a([&](const Variable&) { ++outer; });
  {
    LeafGradHookScope b([&](const Variable&) { ++inner; });
    sum(mul_scalar(x, 2.0)).backward();
  }
  sum(mul_scalar(x, 2.0)).backward();
  EXPECT_EQ(inner, 1);
  EXPECT_EQ(outer, 1);
}

}  // namespace
}  // namespace attnlab
