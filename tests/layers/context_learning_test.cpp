// The model-side machinery of learning from the context (FocuSFT and query-only test-time
// training, ../shared/specs/residuals_focusft_qttt.md Parts 2-3): the bidirectional-prefix mask
// of the whole model (context tokens see each other, answers stay causal, no answer token leaks
// into the context's view), parameter overrides and the requires-grad guard, LoRA fast weights
// (an exact no-op at reset, a zero first gradient for A, which weights they adapt), the span pass
// over a frozen KV prefix against the full forward, and the attention-mass probe.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "layers/gpt.h"
#include "layers/lora.h"
#include "layers/param_override.h"
#include "lib/error.h"
#include "tests/support/gpt_configs.h"
#include "tests/support/tensor_compare.h"

namespace attnlab {
namespace {

using test::bit_equal;
using test::max_abs;
using test::max_diff;

constexpr int64_t kT = 10;

Tensor random_ids(int64_t batch, int64_t T, uint64_t seed) {
  Generator gen(seed);
  return randint(Shape{batch, T}, 11, gen);
}

// ids with the token at `pos` of every row changed to another id.
Tensor perturbed(const Tensor& ids, int64_t pos) {
  Tensor out = ids.clone();
  std::vector<int32_t> v = out.to_vector<int32_t>();
  const int64_t T = ids.size(1);
  for (int64_t b = 0; b < ids.size(0); ++b) {
    int32_t& x = v[static_cast<size_t>(b * T + pos)];
    x = (x + 5) % 11;
  }
  return Tensor::from_vector(ids.shape(), v);
}

// max |a - b| over positions [from, to) of logits [B, T, V].
double diff_at(const Tensor& a, const Tensor& b, int64_t from, int64_t to) {
  return max_diff(a.narrow(1, from, to - from).contiguous(), b.narrow(1, from, to - from).contiguous());
}

class PrefixMask : public ::testing::TestWithParam<std::string> {};

TEST_P(PrefixMask, ContextIsBidirectionalAnswersAreCausalAndNothingLeaks) {
  Generator gen(3);
  Gpt model(test::tiny_variant_gpt(GetParam()), gen);
  model.set_training(false);
  NoGradGuard no_grad;
  const int64_t P = 6;  // context [0, 6), answer [6, 10)
  const Tensor ids = random_ids(2, kT, 11);
  const Tensor base = model.forward(Variable(ids), nullptr, P).data();
  const Tensor causal = model.forward(Variable(ids)).data();

  // A later context token changes what the first context position computes (it sees the whole
  // context), but not under the causal mask.
  const Tensor late_context = perturbed(ids, P - 1);
  EXPECT_GT(diff_at(base, model.forward(Variable(late_context), nullptr, P).data(), 0, 1), 1e-6)
      << "context position 0 must see context position " << P - 1;
  EXPECT_EQ(diff_at(causal, model.forward(Variable(late_context)).data(), 0, P - 1), 0.0);

  // An answer token is invisible to every context position and to every earlier answer position.
  for (int64_t a = P; a < kT; ++a) {
    const Tensor changed = model.forward(Variable(perturbed(ids, a)), nullptr, P).data();
    EXPECT_EQ(diff_at(base, changed, 0, a), 0.0) << "answer token " << a << " leaked into earlier positions";
    EXPECT_GT(diff_at(base, changed, a, a + 1), 1e-6) << "position " << a << " must see its own token";
  }
  // Answer positions see the whole context, including its last token.
  EXPECT_GT(diff_at(base, model.forward(Variable(late_context), nullptr, P).data(), P, kT), 1e-6);
  // The mask differs from the causal one only inside the context: the first context position
  // differs, and a prefix of 1 is the causal mask itself.
  EXPECT_GT(diff_at(base, causal, 0, 1), 1e-6);
  EXPECT_TRUE(bit_equal(model.forward(Variable(ids), nullptr, 1).data(), causal));
}

INSTANTIATE_TEST_SUITE_P(Variants, PrefixMask, ::testing::Values("softmax", "sigmoid", "affine", "infsa", "lla"),
                         [](const auto& info) { return info.param; });

TEST(PrefixMask, RecurrentMixersAndBadPrefixesAreRefused) {
  Generator gen(3);
  for (const std::string a : {"kda", "linear_infsa"}) {
    Gpt model(test::tiny_variant_gpt(a), gen);
    EXPECT_FALSE(model.prefix_mask_unsupported().empty()) << a;
    EXPECT_THROW(model.forward(Variable(random_ids(1, kT, 1)), nullptr, 4), ConfigError) << a;
    EXPECT_NO_THROW(model.forward(Variable(random_ids(1, kT, 1)))) << a;
  }
  Gpt model(test::tiny_variant_gpt("softmax"), gen);
  EXPECT_TRUE(model.prefix_mask_unsupported().empty());
  EXPECT_THROW(model.forward(Variable(random_ids(1, kT, 1)), nullptr, kT + 1), ShapeError);
  EXPECT_THROW(model.forward(Variable(random_ids(1, kT, 1)), nullptr, -1), ShapeError);
}

// ---- overrides ----------------------------------------------------------------------------------

Variable param(const Module& m, const std::string& name) {
  for (const auto& [n, p] : m.named_parameters())
    if (n == name) return p;
  ADD_FAILURE() << "no parameter " << name;
  return Variable();
}

TEST(ParameterOverrides, AScopeSwapsAWeightAndTheModelIsUntouched) {
  Generator gen(5), gen2(5);
  Gpt model(test::tiny_variant_gpt("softmax"), gen);
  Gpt other(test::tiny_variant_gpt("softmax"), gen2);
  Generator noise(8);
  Variable w_other = param(other, "h.1.mlp.c_fc.weight");
  w_other.mutable_data().copy_(randn(w_other.shape(), noise));
  const auto before = model.state_dict();
  std::map<std::string, Tensor> copies;
  for (const auto& [n, t] : before) copies[n] = t.clone();

  NoGradGuard no_grad;
  const Variable ids(random_ids(2, kT, 4));
  const Tensor plain = model.forward(ids).data();
  ParameterOverrides o;
  o.set(param(model, "h.1.mlp.c_fc.weight"), Variable(w_other.data()));
  {
    OverrideScope scope(o);
    EXPECT_LT(max_diff(model.forward(ids).data(), other.forward(ids).data()), 1e-6)
        << "under the scope the model computes with the replacement";
    // An inner scope wins where it maps a parameter.
    ParameterOverrides inner;
    inner.set(param(model, "h.1.mlp.c_fc.weight"), param(model, "h.1.mlp.c_fc.weight"));
    OverrideScope inner_scope(inner);
    EXPECT_TRUE(bit_equal(model.forward(ids).data(), plain));
  }
  EXPECT_TRUE(bit_equal(model.forward(ids).data(), plain)) << "the scope ended";
  for (const auto& [n, t] : model.state_dict()) EXPECT_TRUE(bit_equal(t, copies[n])) << n;
  EXPECT_THROW(o.set(param(model, "h.1.mlp.c_fc.weight"), Variable(Tensor::zeros(Shape{2, 2}))), ShapeError);
}

TEST(RequiresGradGuard, FreezesASubsetAndRestoresIt) {
  Generator gen(5);
  Gpt model(test::tiny_variant_gpt("softmax"), gen);
  const std::vector<Variable> params = model.parameters();
  {
    RequiresGradGuard freeze(params, false);
    for (const Variable& p : params) EXPECT_FALSE(p.requires_grad());
    // No input needs a gradient: the forward records no graph at all.
    const Variable out = model.forward(Variable(random_ids(1, kT, 2)));
    EXPECT_FALSE(out.requires_grad());
  }
  for (const Variable& p : params) EXPECT_TRUE(p.requires_grad());
}

// ---- LoRA fast weights --------------------------------------------------------------------------

GptConfig four_layers() {
  GptConfig c = test::tiny_variant_gpt("softmax");
  c.layers = 4;
  c.mlp = "swiglu";
  return c;
}

TEST(LoraSet, AdaptsTheTopLayersNamedByTheTargets) {
  Generator gen(1);
  Gpt model(four_layers(), gen);
  LoraConfig c;  // mlp, top 35%: floor(4 * 0.65) = 2 -> layers 2, 3
  LoraSet lora(model, c);
  EXPECT_EQ(lora.first_layer(), 2);
  EXPECT_EQ(lora.adapted(), (std::vector<std::string>{"h.2.mlp.c_fc.weight", "h.2.mlp.c_proj.weight",
                                                      "h.3.mlp.c_fc.weight", "h.3.mlp.c_proj.weight"}));
  EXPECT_DOUBLE_EQ(lora.scale(), 2.0);
  ASSERT_EQ(lora.named_parameters().size(), 8u);
  EXPECT_EQ(lora.named_parameters()[0].first, "h.2.mlp.c_fc.lora_A");
  EXPECT_EQ(lora.named_parameters()[0].second.shape(), (Shape{8, 16}));   // [r, in]
  EXPECT_EQ(lora.named_parameters()[1].second.shape(), (Shape{128, 8}));  // [out = 2 * hidden 64, r]

  c.targets = {"attn.c_attn", "mlp.c_proj"};
  c.top_fraction = 1.0;
  EXPECT_EQ(LoraSet(model, c).adapted().size(), 8u);
  c.targets = {"mlp.c_gate"};
  try {
    LoraSet bad(model, c);
    ADD_FAILURE() << "an unknown target must be refused";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("mlp.c_gate"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("mlp.c_fc"), std::string::npos) << "lists what there is: " << e.what();
  }
  c.targets = {"mlp"};
  c.top_fraction = 0;
  EXPECT_THROW(LoraSet(model, c), ConfigError);
}

TEST(LoraSet, ResetIsAnExactNoOpAndTheFirstGradientOfAIsZero) {
  Generator gen(1);
  Gpt model(four_layers(), gen);
  LoraSet lora(model, LoraConfig{});
  Generator draw(7);
  lora.reset(draw);
  const Variable ids(random_ids(2, kT, 3));
  const Tensor plain = [&] {
    NoGradGuard g;
    return model.forward(ids).data();
  }();
  RequiresGradGuard freeze(model.parameters(), false);
  const ParameterOverrides o = lora.overrides();
  OverrideScope scope(o);
  const Variable logits = model.forward(ids);
  EXPECT_TRUE(bit_equal(logits.data(), plain)) << "B = 0: the adapted model is the base model";
  sum(mul(logits, logits)).backward();
  for (const auto& [name, p] : lora.named_parameters()) {
    ASSERT_TRUE(p.grad().defined()) << name;
    if (name.ends_with("lora_A"))
      EXPECT_EQ(max_abs(p.grad()), 0.0) << name << ": dA = s B^T (...) vanishes with B = 0";
    else
      EXPECT_GT(max_abs(p.grad()), 0.0) << name;
  }
  for (const auto& [name, p] : model.named_parameters())
    EXPECT_FALSE(p.grad().defined()) << name << ": the frozen base weights get no gradient";

  // A reset redraws A and zeroes B, in place.
  const Tensor a0 = lora.named_parameters()[0].second.data().clone();
  Variable b0 = lora.named_parameters()[1].second;
  b0.mutable_data().fill_(0.5);
  lora.reset(draw);
  EXPECT_FALSE(bit_equal(lora.named_parameters()[0].second.data(), a0));
  EXPECT_EQ(max_abs(lora.named_parameters()[1].second.data()), 0.0);
  const double bound = 1.0 / 4.0;  // 1 / sqrt(in = 16)
  EXPECT_LE(max_abs(lora.named_parameters()[0].second.data()), bound);
}

// ---- the span pass over a frozen prefix ----------------------------------------------------------

class FrozenPrefix : public ::testing::TestWithParam<std::string> {};

TEST_P(FrozenPrefix, TheSpanPassEqualsTheFullForwardAndLeavesTheCacheAlone) {
  Generator gen(2);
  Gpt model(test::tiny_variant_gpt(GetParam()), gen);
  model.set_training(false);
  const int64_t T = 14, start = 9, span = 4;
  const Tensor ids = random_ids(1, T, 21);
  Tensor full;
  KvCache cache = model.make_cache(1);
  {
    NoGradGuard g;
    full = model.forward(Variable(ids)).data();
    model.forward_cached(Variable(ids.narrow(1, 0, T - 1).contiguous()), cache);
  }
  std::vector<Tensor> k_before;
  for (int64_t l = 0; l < cache.num_layers(); ++l) k_before.push_back(cache.layer(l).k.clone());
  const Variable logits = model.forward_after(Variable(ids.narrow(1, start, span).contiguous()), cache, start);
  EXPECT_LT(diff_at(logits.data(), full.narrow(1, start, span).contiguous(), 0, span), 2e-5);
  EXPECT_TRUE(logits.requires_grad()) << "the span pass is differentiable";
  sum(logits).backward();
  const Variable wq = param(model, "h.0.attn.c_attn.weight");
  ASSERT_TRUE(wq.grad().defined());
  EXPECT_GT(max_abs(wq.grad()), 0.0);
  EXPECT_EQ(cache.length(), T - 1);
  for (int64_t l = 0; l < cache.num_layers(); ++l) EXPECT_TRUE(bit_equal(cache.layer(l).k, k_before[l])) << l;
  // start = 0 attends to no cached row.
  NoGradGuard g;
  EXPECT_LT(diff_at(model.forward_after(Variable(ids.narrow(1, 0, 3).contiguous()), cache, 0).data(),
                    full.narrow(1, 0, 3).contiguous(), 0, 3),
            2e-5);
}

INSTANTIATE_TEST_SUITE_P(Variants, FrozenPrefix, ::testing::Values("softmax", "sigmoid", "affine", "lla"),
                         [](const auto& info) { return info.param; });

TEST(FrozenPrefix, VariantsWithQueryStateAndBadStartsAreRefused) {
  Generator gen(2);
  for (const std::string a : {"infsa", "linear_infsa", "kda"}) {
    Gpt model(test::tiny_variant_gpt(a), gen);
    KvCache cache = model.make_cache(1);
    EXPECT_FALSE(model.frozen_prefix_unsupported().empty()) << a;
    EXPECT_THROW(model.forward_after(Variable(random_ids(1, 2, 1)), cache, 0), ConfigError) << a;
  }
  Gpt model(test::tiny_variant_gpt("softmax"), gen);
  KvCache cache = model.make_cache(1);
  {
    NoGradGuard g;
    model.forward_cached(Variable(random_ids(1, 4, 1)), cache);
  }
  EXPECT_THROW(model.forward_after(Variable(random_ids(1, 2, 1)), cache, 5), ShapeError) << "past the cache";
  EXPECT_THROW(model.forward_after(Variable(random_ids(2, 2, 1)), cache, 2), ShapeError) << "another batch size";
}

// ---- attention mass -------------------------------------------------------------------------------

TEST(AttentionMass, SoftmaxWeightsOfTheLastContextQuerySumToOne) {
  Generator gen(4);
  Gpt model(test::tiny_variant_gpt("softmax"), gen);
  const Variable ids(random_ids(2, kT, 5));
  const int64_t P = 6;
  for (const int64_t prefix : {int64_t{0}, P}) {
    MassProbe probe;
    probe.mask.prefix = prefix;
    probe.context = P;
    probe.first_query = P - 1;  // sees exactly the context under either mask
    probe.end_query = P;
    const std::vector<AttentionMass> m = model.attention_mass(ids, probe);
    ASSERT_EQ(m.size(), 2u);
    for (const AttentionMass& l : m) {
      EXPECT_TRUE(l.measured);
      EXPECT_EQ(l.kind, "softmax");
      EXPECT_GT(l.sink, 0.0);
      EXPECT_NEAR(l.sink + l.context, 1.0, 1e-5) << "prefix " << prefix;
    }
    // Answer queries also see answer keys: their context share is below one.
    probe.first_query = P;
    probe.end_query = kT;
    for (const AttentionMass& l : model.attention_mass(ids, probe)) EXPECT_LT(l.sink + l.context, 1.0 - 1e-4);
  }
  MassProbe bad;
  bad.first_query = 3, bad.end_query = kT + 1;
  EXPECT_THROW(model.attention_mass(ids, bad), ShapeError);
  Gpt kda(test::tiny_variant_gpt("kda"), gen);
  MassProbe probe;
  probe.context = 4, probe.first_query = 3, probe.end_query = 5;
  for (const AttentionMass& l : kda.attention_mass(ids, probe)) EXPECT_FALSE(l.measured);
}

}  // namespace
}  // namespace attnlab
