// The FocuSFT micro-batch step (train/focusft.h) on a tiny float64 model: the first-order outer
// gradient equals the plain gradient of a model whose weights hold the adapted W + s B A (and the
// fast weights get none), the fast weights are reset for every micro-batch (the first inner loss
// is the base model's; with K = 2, B moves twice and A once), the per-tensor inner clip bounds
// each update, and the steps train under the batch's prefix mask without seeing answer tokens.
#include "train/focusft.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "layers/gpt.h"
#include "layers/lora.h"
#include "lib/error.h"
#include "lib/rng.h"
#include "tests/support/gpt_configs.h"
#include "tests/support/tensor_compare.h"

namespace attnlab {
namespace {

using test::max_abs;
using test::max_diff;

constexpr int64_t kT = 10, kPrefix = 6, kVocab = 11;

// Two rows of random ids: context [0, 6), answer tokens [6, 10), targets y[t] = x[t + 1] at
// t in [first_target, 9) (from prefix - 1: every answer token is predicted).
SftBatch make_batch(uint64_t seed, int64_t first_target = kPrefix - 1) {
  Generator gen(seed);
  const Tensor x = randint(Shape{2, kT}, kVocab, gen);
  const std::vector<int32_t> xv = x.to_vector<int32_t>();
  std::vector<int32_t> y(xv.size(), kIgnoreTarget);
  std::vector<float> mask(xv.size(), 0.0f);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = first_target; t < kT - 1; ++t) {
      y[static_cast<size_t>(b * kT + t)] = xv[static_cast<size_t>(b * kT + t + 1)];
      mask[static_cast<size_t>(b * kT + t)] = 1.0f;
    }
  SftBatch s;
  s.batch.x = x;
  s.batch.y = Tensor::from_vector(Shape{2, kT}, y);
  s.batch.mask = Tensor::from_vector(Shape{2, kT}, mask);
  s.prefix = kPrefix;
  return s;
}

// The tiny model in float64 with order-one weights, so that gradients are far from rounding.
std::unique_ptr<Gpt> make_model(uint64_t seed) {
  Generator gen(seed);
  auto model = std::make_unique<Gpt>(test::tiny_variant_gpt("softmax"), gen, DType::f64);
  model->set_training(false);
  Generator big(seed + 100);
  for (auto& [name, p] : model->named_parameters()) {
    if (p.ndim() != 2) continue;
    Tensor w = Tensor::empty(p.shape(), DType::f64);
    fill_uniform(w, big, -0.5, 0.5);
    p.mutable_data().copy_(w);
  }
  return model;
}

LoraConfig lora_config() {
  LoraConfig c;
  c.rank = 2;
  c.alpha = 4;
  c.targets = {"mlp", "attn.c_proj"};
  c.top_fraction = 0.5;  // layer 1 of 2
  return c;
}

std::map<std::string, Tensor> snapshot(const LoraSet& lora) {
  std::map<std::string, Tensor> out;
  for (const auto& [name, p] : lora.named_parameters()) out[name] = p.data().clone();
  return out;
}

double base_loss(const Gpt& model, const SftBatch& b, int64_t prefix) {
  NoGradGuard no_grad;
  return answer_loss(model, b, prefix).data().item<double>();
}

TEST(Focusft, OuterGradientIsTheGradientOfTheMergedModelAndFastWeightsGetNone) {
  const auto owner = make_model(1);
  Gpt& model = *owner;
  LoraSet lora(model, lora_config());
  const SftBatch b = make_batch(2);
  FocusftSettings s;
  s.inner_lr = 0.5;
  Generator gen(3);
  const StepLosses losses = focusft_step(model, lora, b, kPrefix, s, gen);
  ASSERT_EQ(losses.inner.size(), 2u);
  EXPECT_EQ(losses.inner_skipped, 0);
  // The adaptation did something: the outer loss is below the base model's.
  EXPECT_LT(losses.outer, losses.inner[0]);
  for (const auto& [name, p] : lora.named_parameters()) EXPECT_FALSE(p.grad().defined()) << name << " got a gradient";

  // A separate model whose adapted weights hold W + s B A, computed as the overrides compute it.
  Generator other(9);
  Gpt merged(test::tiny_variant_gpt("softmax"), other, DType::f64);
  merged.set_training(false);
  merged.load_state_dict(model.state_dict());
  std::map<std::string, Variable> mp;
  for (auto& [name, p] : merged.named_parameters()) mp[name] = p;
  const std::vector<std::string> adapted = lora.adapted();
  ASSERT_EQ(adapted.size(), 3u);  // h.1.attn.c_proj, h.1.mlp.c_fc, h.1.mlp.c_proj
  {
    NoGradGuard no_grad;
    for (size_t i = 0; i < adapted.size(); ++i) {
      const Variable& A = lora.named_parameters()[2 * i].second;
      const Variable& B = lora.named_parameters()[2 * i + 1].second;
      Variable& w = mp.at(adapted[i]);
      const Tensor next = add(Variable(w.data()), mul_scalar(matmul(B, A), lora.scale())).data();
      w.mutable_data().copy_(next);
    }
  }
  const Variable loss = answer_loss(merged, b, kPrefix);
  EXPECT_NEAR(loss.data().item<double>(), losses.outer, 1e-12);
  loss.backward();
  int64_t compared = 0;
  for (const auto& [name, p] : model.named_parameters()) {
    const Tensor& g = p.grad();
    const Tensor& want = mp.at(name).grad();
    ASSERT_TRUE(g.defined()) << name;
    ASSERT_TRUE(want.defined()) << name;
    EXPECT_LE(max_diff(g, want), 1e-5 * std::max(1e-3, max_abs(want))) << name;
    ++compared;
  }
  EXPECT_GT(compared, 10);
  // And the adapted weights' gradients are not the base model's (the adaptation matters).
  const auto plain_owner = make_model(1);
  Gpt& plain = *plain_owner;
  answer_loss(plain, b, kPrefix).backward();
  const auto pp = plain.named_parameters();
  double moved = 0;
  for (size_t i = 0; i < pp.size(); ++i)
    if (pp[i].first == adapted[0]) moved = max_diff(pp[i].second.grad(), model.named_parameters()[i].second.grad());
  EXPECT_GT(moved, 1e-6);
}

TEST(Focusft, FastWeightsAreResetForEveryMicroBatch) {
  const auto owner = make_model(4);
  Gpt& model = *owner;
  LoraSet lora(model, lora_config());
  FocusftSettings s;
  Generator gen(5);
  const SftBatch b1 = make_batch(6), b2 = make_batch(7);
  focusft_step(model, lora, b1, kPrefix, s, gen);
  // The adapter left by the first micro-batch is not a no-op ...
  double left = 0;
  for (const auto& [name, p] : lora.named_parameters())
    if (name.find("lora_B") != std::string::npos) left = std::max(left, max_abs(p.data()));
  EXPECT_GT(left, 1e-6);
  // ... yet the second step starts from a fresh one: its first inner loss is the base model's.
  const StepLosses second = focusft_step(model, lora, b2, kPrefix, s, gen);
  EXPECT_NEAR(second.inner[0], base_loss(model, b2, kPrefix), 1e-12);

  // K = 1 vs K = 2 from the same draw: the first step moves B only (A's gradient is zero while
  // B = 0), the second moves both.
  auto adapted = [&](int64_t k) {
    Generator g(11);
    FocusftSettings ks;
    ks.inner_steps = k;
    adapt_fast_weights(model, lora, b1, kPrefix, ks, g);
    return snapshot(lora);
  };
  Generator g0(11);
  lora.reset(g0);
  const auto reset = snapshot(lora);
  const auto one = adapted(1), two = adapted(2);
  for (const auto& [name, a0] : reset) {
    const bool is_a = name.find("lora_A") != std::string::npos;
    if (is_a) {
      EXPECT_EQ(max_diff(one.at(name), a0), 0.0) << name << " moved at the first inner step";
      EXPECT_GT(max_diff(two.at(name), one.at(name)), 1e-8) << name << " did not move at the second step";
    } else {
      EXPECT_EQ(max_abs(a0), 0.0) << name << " is not zero after reset";
      EXPECT_GT(max_diff(one.at(name), a0), 1e-8) << name << " did not move at the first step";
      EXPECT_GT(max_diff(two.at(name), one.at(name)), 1e-8) << name << " did not move at the second step";
    }
  }
}

TEST(Focusft, PerTensorClipBoundsEachInnerUpdate) {
  const auto owner = make_model(8);
  Gpt& model = *owner;
  LoraSet lora(model, lora_config());
  const SftBatch b = make_batch(9);
  FocusftSettings s;
  s.inner_steps = 2;
  s.inner_lr = 0.7;
  s.inner_clip = 1e-3;  // far below the gradients' norms: every tensor is clipped
  Generator g0(12);
  lora.reset(g0);
  const auto reset = snapshot(lora);
  Generator g1(12);
  FocusftSettings one = s;
  one.inner_steps = 1;
  adapt_fast_weights(model, lora, b, kPrefix, one, g1);
  const auto after1 = snapshot(lora);
  Generator g2(12);
  adapt_fast_weights(model, lora, b, kPrefix, s, g2);
  const auto after2 = snapshot(lora);
  auto norm = [](const Tensor& a, const Tensor& b) {
    const std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
    double s = 0;
    for (size_t i = 0; i < x.size(); ++i) s += (x[i] - y[i]) * (x[i] - y[i]);
    return std::sqrt(s);
  };
  const double bound = s.inner_lr * s.inner_clip;
  for (const auto& [name, p0] : reset) {
    const double d1 = norm(after1.at(name), p0), d2 = norm(after2.at(name), after1.at(name));
    EXPECT_LE(d1, bound * (1 + 1e-9)) << name;
    EXPECT_LE(d2, bound * (1 + 1e-9)) << name;
    // Clipped, not vanishing: a tensor with a gradient moves by exactly lr * clip.
    if (name.find("lora_B") != std::string::npos) {
      EXPECT_NEAR(d1, bound, bound * 1e-6) << name;
    }
    EXPECT_NEAR(d2, bound, bound * 1e-6) << name;
  }
}

TEST(Focusft, StepsTrainUnderThePrefixMaskAndNeverSeeAnswerTokens) {
  const auto owner = make_model(13);
  Gpt& model = *owner;
  LoraSet lora(model, lora_config());
  FocusftSettings s;
  // Only the first answer token is a target (predicted from the last context position).
  const SftBatch b = make_batch(14, kPrefix - 1);
  SftBatch first_only = b;
  {
    std::vector<int32_t> y = b.batch.y.to_vector<int32_t>();
    for (int64_t r = 0; r < 2; ++r)
      for (int64_t t = kPrefix; t < kT; ++t) y[static_cast<size_t>(r * kT + t)] = kIgnoreTarget;
    first_only.batch.y = Tensor::from_vector(Shape{2, kT}, y);
  }
  // The prefix mask changes the loss (the context is read both ways) ...
  EXPECT_GT(std::abs(base_loss(model, b, kPrefix) - base_loss(model, b, 0)), 1e-6);
  Generator g1(15), g2(15);
  const StepLosses prefix = focusft_step(model, lora, b, kPrefix, s, g1);
  const StepLosses causal = focusft_step(model, lora, b, 0, s, g2);
  EXPECT_GT(std::abs(prefix.inner[0] - causal.inner[0]), 1e-6);
  EXPECT_GT(std::abs(prefix.outer - causal.outer), 1e-6);

  // ... and never lets the context see the answer: changing every answer input token (the
  // target stays) changes no loss of the whole bilevel step.
  SftBatch changed = first_only;
  {
    std::vector<int32_t> x = first_only.batch.x.to_vector<int32_t>();
    for (int64_t r = 0; r < 2; ++r)
      for (int64_t t = kPrefix; t < kT; ++t)
        x[static_cast<size_t>(r * kT + t)] = (x[static_cast<size_t>(r * kT + t)] + 3) % kVocab;
    changed.batch.x = Tensor::from_vector(Shape{2, kT}, x);
  }
  Generator g3(16), g4(16);
  const StepLosses a = focusft_step(model, lora, first_only, kPrefix, s, g3);
  const StepLosses c = focusft_step(model, lora, changed, kPrefix, s, g4);
  ASSERT_EQ(a.inner.size(), c.inner.size());
  for (size_t k = 0; k < a.inner.size(); ++k) EXPECT_EQ(a.inner[k], c.inner[k]) << "inner step " << k;
  EXPECT_EQ(a.outer, c.outer);
  // A context token, by contrast, does change it.
  SftBatch context_changed = first_only;
  {
    std::vector<int32_t> x = first_only.batch.x.to_vector<int32_t>();
    x[0] = (x[0] + 3) % kVocab;
    x[static_cast<size_t>(kT)] = (x[static_cast<size_t>(kT)] + 3) % kVocab;
    context_changed.batch.x = Tensor::from_vector(Shape{2, kT}, x);
  }
  Generator g5(16);
  EXPECT_NE(focusft_step(model, lora, context_changed, kPrefix, s, g5).outer, a.outer);
}

TEST(Focusft, SftStepIsTheOuterPassWithoutAdaptation) {
  const auto owner = make_model(17);
  Gpt& model = *owner;
  const SftBatch b = make_batch(18);
  const StepLosses s = sft_step(model, b, kPrefix, 0.5);
  EXPECT_TRUE(s.inner.empty());
  EXPECT_NEAR(s.outer, base_loss(model, b, kPrefix), 1e-12);
  // The gradient is scaled by outer_scale: twice the step doubles it.
  std::vector<Tensor> half;
  for (const Variable& p : model.parameters()) half.push_back(p.grad().clone());
  sft_step(model, b, kPrefix, 0.5);
  const std::vector<Variable> ps = model.parameters();
  for (size_t i = 0; i < ps.size(); ++i) {
    const std::vector<double> g = ps[i].grad().to_vector<double>(), h = half[i].to_vector<double>();
    for (size_t j = 0; j < g.size(); ++j) ASSERT_NEAR(g[j], 2 * h[j], 1e-12);
  }
}

TEST(Focusft, SettingsAreChecked) {
  FocusftSettings s;
  s.inner_steps = 0;
  EXPECT_THROW(s.validate(), ConfigError);
  s = FocusftSettings{};
  s.inner_clip = 0;
  EXPECT_THROW(s.validate(), ConfigError);
}

}  // namespace
}  // namespace attnlab
