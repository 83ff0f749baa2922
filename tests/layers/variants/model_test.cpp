// Every attention variant inside the GPT: one recipe line picks it, its parameters start as the
// spec says, incremental decoding with the KV cache (and the variant's carried state) matches the
// full forward, the learnable per-head scalars receive gradient, affine's running mean moves only
// in training steps and is saved with the weights, and the diagnostics report what they should.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "layers/gpt.h"
#include "lib/error.h"
#include "tests/support/gpt_configs.h"

namespace attnlab {
namespace {

struct VariantCase {
  std::string attention;
  std::string option;  // "", or key=value of AttentionOptions set below
};

GptConfig tiny(const VariantCase& v) {
  GptConfig c = test::tiny_variant_gpt(v.attention);
  AttentionOptions& o = c.attention_options;
  if (v.option == "neglogn") o.sigmoid_bias = "neglogn";
  if (v.option == "neglog_visible") o.sigmoid_bias = "neglog_visible";
  if (v.option == "qk_norm") o.qk_norm = true;
  if (v.option == "phi=sigmoid") o.affine_phi = "sigmoid";
  if (v.option == "bias_norm=full") o.affine_bias_norm = "full";
  if (v.option == "form=prefix") o.linear_infsa_form = "prefix";
  return c;
}

Tensor ids_tensor(const Shape& shape, int64_t high, uint64_t seed) {
  Generator gen(seed);
  return randint(shape, high, gen);
}

std::vector<VariantCase> all_cases() {
  return {{"softmax", ""},         {"softmax", "qk_norm"},     {"sigmoid", ""},
          {"sigmoid", "neglogn"},  {"sigmoid", "neglog_visible"}, {"sigmoid", "qk_norm"},
          {"affine", ""},          {"affine", "phi=sigmoid"},  {"infsa", ""},
          {"linear_infsa", ""},    {"linear_infsa", "form=prefix"}};
}

std::string case_name(const ::testing::TestParamInfo<VariantCase>& i) {
  std::string s = i.param.attention + (i.param.option.empty() ? "" : "_" + i.param.option);
  for (char& ch : s)
    if (ch == '=') ch = '_';
  return s;
}

class GptVariant : public ::testing::TestWithParam<VariantCase> {};

// Affine's alpha map is zero at the start, so alpha = 0.5 for every token and the buffer at 0:
// give the model a few training steps first so that every parameter matters in the comparison.
void train_a_little(Gpt& model, int steps) {
  const Tensor ids = ids_tensor(Shape{2, 16}, 11, 77);
  for (int s = 0; s < steps; ++s) {
    model.zero_grad();
    const Variable logits = model.forward(Variable(ids.narrow(1, 0, 15).contiguous()));
    cross_entropy(logits, Variable(ids.narrow(1, 1, 15).contiguous())).backward();
    for (Variable p : model.parameters()) {
      Tensor g = p.grad();
      if (!g.defined()) continue;
      const std::vector<float> gv = g.to_vector<float>();
      std::vector<float> pv = p.data().to_vector<float>();
      for (size_t i = 0; i < pv.size(); ++i) pv[i] -= 0.05f * gv[i];
      p.mutable_data().copy_(Tensor::from_vector(p.shape(), pv));
    }
  }
}

TEST_P(GptVariant, KvCacheMatchesFullForward) {
  Generator gen(3);
  Gpt model(tiny(GetParam()), gen);
  train_a_little(model, 3);
  model.set_training(false);
  const int64_t B = 2, T = 20, Vp = 16;
  const Tensor ids = ids_tensor(Shape{B, T}, 11, 5);
  const std::vector<float> full = model.forward(Variable(ids)).data().to_vector<float>();
  for (const std::vector<int64_t>& chunks : {std::vector<int64_t>(T, 1), std::vector<int64_t>{7, 1, 5, 7}}) {
    KvCache cache = model.make_cache(B);
    int64_t at = 0;
    for (int64_t n : chunks) {
      const std::vector<float> got =
          model.forward_cached(Variable(ids.narrow(1, at, n).contiguous()), cache).data().to_vector<float>();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < n; ++t)
          for (int64_t j = 0; j < Vp; ++j)
            ASSERT_NEAR(got[(b * n + t) * Vp + j], full[(b * T + at + t) * Vp + j], 2e-5)
                << case_name({GetParam(), 0}) << ": b " << b << " position " << at + t << " column " << j;
      at += n;
    }
  }
}

TEST_P(GptVariant, EveryParameterGetsAGradient) {
  Generator gen(4);
  Gpt model(tiny(GetParam()), gen);
  train_a_little(model, 2);  // affine's zero-initialised alpha map passes gradient to x only after a step
  model.zero_grad();
  const Tensor ids = ids_tensor(Shape{2, 12}, 11, 6);
  const Variable logits = model.forward(Variable(ids.narrow(1, 0, 11).contiguous()));
  cross_entropy(logits, Variable(ids.narrow(1, 1, 11).contiguous())).backward();
  for (const auto& [name, p] : model.named_parameters()) {
    ASSERT_TRUE(p.grad().defined()) << name;
    double norm = 0;
    for (double g : p.grad().to_vector<double>()) norm += g * g;
    // The padded vocabulary rows are never targets but still get pushed down; every parameter
    // moves, the learned discounts of InfSA included (the released code's gamma does not).
    EXPECT_GT(norm, 0.0) << case_name({GetParam(), 0}) << ": " << name << " has a zero gradient";
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, GptVariant, ::testing::ValuesIn(all_cases()), case_name);

TEST(GptVariantInit, ParametersStartAsTheSpecSays) {
  Generator gen(1);
  {
    Gpt m(tiny({"affine", ""}), gen);
    const auto sd = m.state_dict();
    for (double w : sd.at("h.0.attn.alpha.weight").to_vector<double>()) EXPECT_EQ(w, 0.0);
    for (double w : sd.at("h.1.attn.alpha.bias").to_vector<double>()) EXPECT_EQ(w, 0.0);
    for (double w : sd.at("h.0.attn.alpha_mean").to_vector<double>()) EXPECT_EQ(w, 0.0);
    EXPECT_EQ(sd.at("h.0.attn.alpha.weight").shape(), (Shape{2, 16}));
    // The buffer is saved but never trained.
    for (const auto& [name, p] : m.named_parameters()) EXPECT_EQ(name.find("alpha_mean"), std::string::npos) << name;
  }
  {
    Gpt m(tiny({"infsa", ""}), gen);
    for (double t : m.state_dict().at("h.1.attn.theta").to_vector<double>())
      EXPECT_NEAR(1.0 / (1.0 + std::exp(-t)), 0.95, 1e-6);
    EXPECT_TRUE(is_no_decay_parameter("h.1.attn.theta"));
  }
  {
    Gpt m(tiny({"sigmoid", "neglogn"}), gen);
    for (double b : m.state_dict().at("h.0.attn.sigmoid_bias").to_vector<double>()) EXPECT_NEAR(b, -std::log(24.0), 1e-6);
    EXPECT_TRUE(is_no_decay_parameter("h.0.attn.sigmoid_bias"));
  }
  {
    Gpt m(tiny({"softmax", "qk_norm"}), gen);
    for (double w : m.state_dict().at("h.0.attn.q_norm.weight").to_vector<double>()) EXPECT_EQ(w, 1.0);
    EXPECT_EQ(m.state_dict().at("h.0.attn.k_norm.weight").shape(), (Shape{8}));
  }
}

// Affine's running mean of alpha: the forward reads it as it was before the step and updates it
// afterwards, in training steps only (not under NoGradGuard, not in eval mode).
TEST(GptVariantAffine, RunningMeanMovesOnlyInTrainingSteps) {
  Generator gen(2);
  Gpt model(tiny({"affine", ""}), gen);
  const Tensor ids = ids_tensor(Shape{2, 10}, 11, 8);
  auto buffer = [&] { return model.state_dict().at("h.0.attn.alpha_mean").to_vector<double>(); };
  {
    NoGradGuard ng;
    model.forward(Variable(ids));
  }
  EXPECT_EQ(buffer(), std::vector<double>(2, 0.0)) << "an evaluation forward moved the running mean";
  const Variable first = model.forward(Variable(ids));
  // alpha = 0.5 everywhere at init: one EMA step from 0 with rho = 0.9 gives 0.05.
  for (double a : buffer()) EXPECT_NEAR(a, 0.05, 1e-7);
  // That forward used the value from before it (0): the same forward again now differs.
  const Variable second = model.forward(Variable(ids));
  EXPECT_GT(std::abs(first.data().to_vector<double>()[3] - second.data().to_vector<double>()[3]), 0.0);
  model.set_training(false);
  model.forward(Variable(ids));
  for (double a : buffer()) EXPECT_NEAR(a, 0.095, 1e-7);
  // Saved and restored with the weights.
  Generator gen2(9);
  Gpt other(tiny({"affine", ""}), gen2);
  other.load_state_dict(model.state_dict());
  EXPECT_EQ(other.state_dict().at("h.0.attn.alpha_mean").to_vector<double>(), buffer());
}

TEST(GptVariantDiagnostics, SinkGammaAndAlpha) {
  const Tensor ids = ids_tensor(Shape{2, 12}, 11, 10);
  for (const VariantCase& v : all_cases()) {
    Generator gen(5);
    Gpt model(tiny(v), gen);
    const std::vector<AttentionDiagnostics> ds = model.attention_diagnostics(Variable(ids));
    ASSERT_EQ(ds.size(), 2u);
    for (const AttentionDiagnostics& d : ds) {
      EXPECT_TRUE(std::isfinite(d.sink)) << v.attention;
      if (v.attention == "softmax") {
        // Softmax rows sum to 1 and position 0 sees only itself: the mean weight on position 0 is
        // at least 1/T and at most 1.
        EXPECT_GE(d.sink, 1.0 / 12 - 1e-6);
        EXPECT_LE(d.sink, 1.0 + 1e-6);
        EXPECT_NEAR(d.sink_share, d.sink, 1e-6);  // rows sum to 1
      }
      if (v.attention == "sigmoid" && v.option.empty()) {
        // Zero bias, small scores at init: every visible weight is near 1/2, so the weight on
        // position 0 is ~1/2 and its share ~1/(i+1), averaging the harmonic mean over 12 rows.
        EXPECT_NEAR(d.sink, 0.5, 0.05);
        double h = 0;
        for (int i = 1; i <= 12; ++i) h += 1.0 / i;
        EXPECT_NEAR(d.sink_share, h / 12, 0.03);
      }
      EXPECT_EQ(d.gamma.size(), v.attention == "infsa" || v.attention == "linear_infsa" ? 2u : 0u) << v.attention;
      for (double g : d.gamma) EXPECT_NEAR(g, 0.95, 1e-6);
      if (v.attention == "affine") {
        EXPECT_EQ(d.alpha_running.size(), 2u);
        EXPECT_NEAR(d.alpha_mean, 0.5, 1e-6);  // the zero alpha map at init
        EXPECT_NEAR(d.alpha_std, 0.0, 1e-6);
      }
    }
    // The diagnostics changed nothing.
    if (v.attention == "affine") {
      for (double a : model.state_dict().at("h.0.attn.alpha_mean").to_vector<double>()) EXPECT_EQ(a, 0.0);
    }
  }
}

TEST(GptVariantConfig, BadOptionsNameTheFieldAndTheValidValues) {
  auto message = [](auto edit) {
    GptConfig c = tiny({"sigmoid", ""});
    edit(c);
    try {
      c.validate();
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(message([](GptConfig& c) { c.attention_options.sigmoid_bias = "big"; }).find("neglogn"), std::string::npos);
  EXPECT_NE(message([](GptConfig& c) { c.attention_options.affine_phi = "relu"; }).find("linear_clip"), std::string::npos);
  EXPECT_NE(message([](GptConfig& c) { c.attention_options.infsa_gamma = 1.0; }).find("infsa.gamma"), std::string::npos);
  EXPECT_NE(message([](GptConfig& c) { c.attention = "cosine"; }).find("linear_infsa"), std::string::npos);
}

}  // namespace
}  // namespace attnlab
