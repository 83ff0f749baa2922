// KDA and LLA inside the GPT, and layer patterns: the KDA token mixer (parameters, init, f64
// gradient check, decoding with O(1) carried state equal to the full forward), LLA as an attention
// variant (the ridge as a constant or a learned log_lambda, decoding with the KV cache, a huge
// ridge giving softmax attention), and model.layer_pattern (parsing, tiling, hybrid models'
// gradients, caches and diagnostics).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/gradcheck.h"
#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "layers/gpt.h"
#include "layers/kda_mixer.h"
#include "lib/error.h"
#include "tests/support/gpt_configs.h"
#include "tests/support/tensor_compare.h"

namespace attnlab {
namespace {

Tensor ids_tensor(const Shape& shape, int64_t high, uint64_t seed) {
  Generator gen(seed);
  return randint(shape, high, gen);
}

Tensor uniform(const Shape& shape, Generator& gen, double lo, double hi) {
  Tensor t = Tensor::empty(shape, DType::f64);
  fill_uniform(t, gen, lo, hi);
  return t;
}

GptConfig tiny(const std::string& attention, const std::string& pattern = "") {
  GptConfig c = test::tiny_variant_gpt(attention);
  c.layer_pattern = pattern;
  return c;
}

// Weights of order one (matrices normal(0, 1/sqrt(fan_in)) scaled up, vectors around 1), so that
// every path of a tiny model matters in a comparison or a gradient check.
void perturb(Module& m, uint64_t seed) {
  Generator gen(seed);
  for (auto& [name, p] : m.named_parameters()) {
    Tensor& t = p.mutable_data();
    const Tensor r = t.ndim() == 2 ? mul_scalar(Variable(randn(p.shape(), gen, DType::f64)),
                                                0.7 / std::sqrt(static_cast<double>(p.size(1))))
                                         .data()
                                   : uniform(p.shape(), gen, 0.5, 1.5);
    t.copy_(r.to(t.dtype()));
  }
}

// A module's forward as an OpFn of (x, every parameter) for gradcheck; `x_input` false: of the
// parameters only (x then undefined).
OpFn module_as_function(const Module& m, std::function<Variable(const Variable&)> fwd, bool x_input) {
  return [&m, fwd, x_input](const std::vector<Variable>& in) {
    std::vector<Variable> params = m.parameters();
    const size_t off = x_input ? 1 : 0;
    std::vector<Tensor> values;
    for (size_t i = 0; i < params.size(); ++i) {
      params[i].mutable_data().copy_(in[i + off].data());
      values.push_back(in[i + off].data().clone());
    }
    Variable x = x_input ? Variable(in[0].data().clone(), true) : Variable();
    const Variable y = fwd(x);
    return std::vector<Variable>{
        make_output("module", in, y.data(), [y, x, params, values, off](const Tensor& dy, const GradMask& needs) mutable {
          for (size_t i = 0; i < params.size(); ++i) params[i].mutable_data().copy_(values[i]), params[i].zero_grad();
          if (x.defined()) x.zero_grad();
          y.backward(dy, /*retain_graph=*/true);
          std::vector<Tensor> grads(params.size() + off);
          if (off && needs[0]) grads[0] = x.grad().defined() ? x.grad().clone() : Tensor::zeros(x.shape(), DType::f64);
          for (size_t i = 0; i < params.size(); ++i)
            if (needs[i + off])
              grads[i + off] = params[i].grad().defined() ? params[i].grad().clone()
                                                           : Tensor::zeros(params[i].shape(), DType::f64);
          return grads;
        })};
  };
}

AttentionBlockConfig kda_block(int64_t d_model, int64_t heads, int64_t conv) {
  AttentionBlockConfig ac;
  ac.d_model = d_model;
  ac.heads = heads;
  ac.attention = "kda";
  ac.options.kda_conv = conv;
  return ac;
}

// ---- the KDA mixer ---------------------------------------------------------------------------------

TEST(KdaMixer, ParameterNamesAndShapes) {
  Generator gen(1);
  KdaMixer m(kda_block(16, 2, 4), gen);
  std::vector<std::string> names;
  for (const auto& [name, p] : m.named_parameters()) {
    std::ostringstream os;
    os << name << " " << p.shape();
    names.push_back(os.str());
  }
  // A module lists its own parameters before its children's.
  const std::vector<std::string> expected{
      "A_log [2]",               "dt_bias [16]",           "q_proj.weight [16, 16]",  "k_proj.weight [16, 16]",
      "v_proj.weight [16, 16]",  "q_conv1d.weight [16, 4]", "k_conv1d.weight [16, 4]", "v_conv1d.weight [16, 4]",
      "f_a_proj.weight [8, 16]", "f_b_proj.weight [16, 8]", "b_proj.weight [2, 16]",   "g_a_proj.weight [8, 16]",
      "g_b_proj.weight [16, 8]", "g_b_proj.bias [16]",     "o_norm.weight [8]",       "c_proj.weight [16, 16]"};
  EXPECT_EQ(names, expected);
  Generator gen2(1);
  KdaMixer no_conv(kda_block(16, 2, 0), gen2);
  for (const auto& [name, p] : no_conv.named_parameters()) EXPECT_EQ(name.find("conv"), std::string::npos) << name;
}

TEST(KdaMixer, InitFollowsTheSpecInsideTheModel) {
  Generator gen(2);
  Gpt model(tiny("kda"), gen);
  const auto sd = model.state_dict();
  for (int layer = 0; layer < 2; ++layer) {
    const std::string p = "h." + std::to_string(layer) + ".attn.";
    for (double a : sd.at(p + "A_log").to_vector<double>()) {
      EXPECT_GE(a, 0.0);
      EXPECT_LE(a, std::log(16.0));
    }
    for (double b : sd.at(p + "dt_bias").to_vector<double>()) {
      const double dt = std::log1p(std::exp(b));  // softplus(dt_bias) = dt
      EXPECT_GE(dt, 1e-3 * (1 - 1e-6));
      EXPECT_LE(dt, 1e-1 * (1 + 1e-6));
    }
    for (double w : sd.at(p + "o_norm.weight").to_vector<double>()) EXPECT_EQ(w, 1.0);
    for (double w : sd.at(p + "g_b_proj.bias").to_vector<double>()) EXPECT_EQ(w, 0.0);
    // Matrices (the conv weights too) from the model's normal(0, 0.02); c_proj scaled by 1/sqrt(2 layers).
    for (const char* name : {"q_proj.weight", "q_conv1d.weight", "f_a_proj.weight", "b_proj.weight", "c_proj.weight"}) {
      const std::vector<double> w = sd.at(p + name).to_vector<double>();
      double s2 = 0;
      for (double x : w) s2 += x * x;
      const double expected = std::string(name) == "c_proj.weight" ? 0.02 / 2.0 : 0.02;
      EXPECT_NEAR(std::sqrt(s2 / static_cast<double>(w.size())), expected, 0.45 * expected) << name;
    }
  }
  // The two layers drew different decay rates; a second model from the same seed is identical.
  EXPECT_GT(test::max_diff(sd.at("h.0.attn.A_log"), sd.at("h.1.attn.A_log")), 0.0);
  Generator again(2);
  Gpt twin(tiny("kda"), again);
  for (const auto& [name, t] : twin.state_dict()) EXPECT_TRUE(test::bit_equal(t, sd.at(name))) << name;
}

TEST(KdaMixer, WeightDecayGrouping) {
  for (const char* name : {"h.0.attn.A_log", "h.0.attn.dt_bias", "h.0.attn.o_norm.weight", "h.0.attn.g_b_proj.bias",
                           "h.3.attn.log_lambda"})
    EXPECT_TRUE(is_no_decay_parameter(name)) << name;
  for (const char* name : {"h.0.attn.q_proj.weight", "h.0.attn.q_conv1d.weight", "h.0.attn.f_a_proj.weight",
                           "h.0.attn.f_b_proj.weight", "h.0.attn.b_proj.weight", "h.0.attn.g_b_proj.weight",
                           "h.0.attn.c_proj.weight"})
    EXPECT_FALSE(is_no_decay_parameter(name)) << name;
}

class KdaMixerGradcheck : public ::testing::TestWithParam<int64_t> {};

TEST_P(KdaMixerGradcheck, Float64) {
  const int64_t conv = GetParam();
  Generator gen(3);
  KdaMixer m(kda_block(4, 2, conv), gen, DType::f64);
  perturb(m, 30);
  std::vector<Tensor> inputs;
  Generator noise(31);
  inputs.push_back(randn(Shape{2, 5, 4}, noise, DType::f64));
  for (const Variable& p : m.parameters()) inputs.push_back(p.data().clone());
  GradcheckOptions o;
  o.full_jacobian_limit = int64_t{1} << 20;
  const GradcheckResult r = gradcheck(module_as_function(m, [&m](const Variable& x) { return m.forward(x); }, true), inputs,
                                      {}, o);
  EXPECT_TRUE(r.ok) << r.worst;
  EXPECT_GT(r.checked, 1000);
}

INSTANTIATE_TEST_SUITE_P(Conv, KdaMixerGradcheck, ::testing::Values(int64_t{4}, int64_t{0}),
                         [](const auto& i) { return "conv" + std::to_string(i.param); });

// Decoding token by token (and in uneven pieces) with the carried state and conv inputs equals
// the full forward, in f64, also across the core op's 64-token chunks.
TEST(KdaMixer, CachedDecodingEqualsTheFullForward) {
  for (const int64_t conv : {4, 1, 0}) {
    Generator gen(4);
    KdaMixer m(kda_block(8, 2, conv), gen, DType::f64);
    perturb(m, 40 + static_cast<uint64_t>(conv));
    Generator noise(41);
    const int64_t B = 2, T = 70;
    const Tensor x = randn(Shape{B, T, 8}, noise, DType::f64);
    NoGradGuard ng;
    const Tensor full = m.forward(Variable(x)).data();
    for (const std::vector<int64_t>& pieces : {std::vector<int64_t>(20, 1), std::vector<int64_t>{7, 1, 5, 57}}) {
      KvSlot slot;
      int64_t at = 0;
      std::vector<Variable> outs;
      for (int64_t n : pieces) {
        outs.push_back(m.forward_cached(Variable(x.narrow(1, at, n).contiguous()), slot, at));
        at += n;
      }
      const Tensor got = concat(outs, 1).data();
      EXPECT_LT(test::max_diff(got, full.narrow(1, 0, at).contiguous()), 1e-11) << "conv " << conv;
      // O(1) state: the delta-rule state and the last conv - 1 inputs, nothing per position.
      EXPECT_EQ(slot.state.shape(), (Shape{B, 2, 4, 4}));
      EXPECT_FALSE(slot.k.defined());
      if (conv > 1) {
        EXPECT_EQ(slot.conv.shape(), (Shape{B, conv - 1, 24}));
      }
      // length 0 starts again from zeros, whatever the slot holds.
      const Tensor again = m.forward_cached(Variable(x.narrow(1, 0, 3).contiguous()), slot, 0).data();
      EXPECT_LT(test::max_diff(again, full.narrow(1, 0, 3).contiguous()), 1e-11);
    }
  }
}

TEST(KdaMixer, CachedDecodingChecksTheSlot) {
  Generator gen(5);
  KdaMixer m(kda_block(8, 2, 4), gen);
  KvSlot slot;
  NoGradGuard ng;
  EXPECT_THROW(m.forward_cached(Variable(Tensor::zeros(Shape{1, 2, 8})), slot, 3), ShapeError);
  m.forward_cached(Variable(Tensor::zeros(Shape{1, 2, 8})), slot, 0);
  EXPECT_THROW(m.forward_cached(Variable(Tensor::zeros(Shape{2, 1, 8})), slot, 2), ShapeError);  // another batch
}

// ---- models: kda, lla, hybrids --------------------------------------------------------------------

TEST(LayerPattern, ParsingTilingAndErrors) {
  EXPECT_EQ(parse_layer_pattern(""), std::vector<std::string>{});
  EXPECT_EQ(parse_layer_pattern(" kda , softmax"), (std::vector<std::string>{"kda", "softmax"}));
  GptConfig c = tiny("softmax", "kda,kda,softmax");
  c.layers = 7;
  EXPECT_NO_THROW(c.validate());
  std::string got;
  for (int64_t i = 0; i < 7; ++i) got += c.layer_attention(i) + " ";
  EXPECT_EQ(got, "kda kda softmax kda kda softmax kda ");
  c.layer_pattern = "";
  EXPECT_EQ(c.layer_attention(5), "softmax");

  auto message = [](const std::string& pattern, int64_t layers) {
    GptConfig c = tiny("softmax", pattern);
    c.layers = layers;
    try {
      c.validate();
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  const std::string unknown = message("kda,mamba", 4);
  EXPECT_NE(unknown.find("mamba"), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("layer_pattern"), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("linear_infsa"), std::string::npos) << unknown;  // the valid names
  const std::string longer = message("kda,kda,kda,softmax", 3);
  EXPECT_NE(longer.find("layers = 3"), std::string::npos) << longer;
  EXPECT_NE(message("kda,,softmax", 4).find("empty entry"), std::string::npos);
  EXPECT_NE(message("kda,", 4).find("empty entry"), std::string::npos);
  EXPECT_EQ(message("kda,kda,kda,softmax", 4), "(no error)");
  GptConfig bad = tiny("lla");
  bad.attention_options.lla_lambda = 0.0;
  EXPECT_THROW(bad.validate(), ConfigError);
  bad = tiny("kda");
  bad.attention_options.kda_conv = -1;
  EXPECT_THROW(bad.validate(), ConfigError);
}

TEST(LayerPattern, EachLayerGetsItsMixerAndCache) {
  GptConfig c = tiny("softmax", "kda,kda,lla,softmax");
  c.layers = 5;  // kda kda lla softmax kda
  Generator gen(6);
  Gpt model(c, gen);
  const auto sd = model.state_dict();
  for (int i : {0, 1, 4}) {
    EXPECT_TRUE(sd.count("h." + std::to_string(i) + ".attn.q_proj.weight")) << i;
    EXPECT_FALSE(sd.count("h." + std::to_string(i) + ".attn.c_attn.weight")) << i;
  }
  for (int i : {2, 3}) EXPECT_TRUE(sd.count("h." + std::to_string(i) + ".attn.c_attn.weight")) << i;
  const KvCache cache = model.make_cache(3);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(cache.layer(i).k.defined(), i == 2 || i == 3) << i;
  EXPECT_EQ(cache.layer(2).k.shape(), (Shape{3, 2, 24, 8}));
}

struct ModelCase {
  std::string attention, pattern, option;
};

std::string model_case_name(const ::testing::TestParamInfo<ModelCase>& i) {
  std::string s = i.param.attention + (i.param.pattern.empty() ? "" : "_" + i.param.pattern) +
                  (i.param.option.empty() ? "" : "_" + i.param.option);
  for (char& ch : s)
    if (ch == ',' || ch == '=' || ch == '.') ch = '_';
  return s;
}

GptConfig model_config(const ModelCase& v) {
  GptConfig c = tiny(v.attention, v.pattern);
  if (v.pattern.find(',') != std::string::npos) c.layers = static_cast<int64_t>(parse_layer_pattern(v.pattern).size());
  if (v.option == "learn_lambda") c.attention_options.lla_learn_lambda = true;
  if (v.option == "lambda=0.5") c.attention_options.lla_lambda = 0.5;
  if (v.option == "conv=0") c.attention_options.kda_conv = 0;
  return c;
}

class GptMixerCase : public ::testing::TestWithParam<ModelCase> {};

TEST_P(GptMixerCase, CachedDecodingEqualsTheFullForwardInF64) {
  Generator gen(7);
  Gpt model(model_config(GetParam()), gen, DType::f64);
  perturb(model, 70);
  model.set_training(false);
  const int64_t B = 2, T = 20, Vp = 16;
  const Tensor ids = ids_tensor(Shape{B, T}, 11, 71);
  NoGradGuard ng;
  const Tensor full = model.forward(Variable(ids)).data();
  for (const std::vector<int64_t>& pieces : {std::vector<int64_t>(T, 1), std::vector<int64_t>{7, 1, 5, 7}}) {
    KvCache cache = model.make_cache(B);
    int64_t at = 0;
    for (int64_t n : pieces) {
      const Tensor got = model.forward_cached(Variable(ids.narrow(1, at, n).contiguous()), cache).data();
      EXPECT_LT(test::max_diff(got, full.narrow(1, at, n).contiguous()), 1e-9)
          << model_case_name({GetParam(), 0}) << ": positions " << at << ".." << at + n << " of " << Vp << " columns";
      at += n;
    }
    // A reset cache starts over.
    cache.reset();
    const Tensor again = model.forward_cached(Variable(ids.narrow(1, 0, 4).contiguous()), cache).data();
    EXPECT_LT(test::max_diff(again, full.narrow(1, 0, 4).contiguous()), 1e-9);
  }
}

TEST_P(GptMixerCase, EveryParameterGetsAGradient) {
  Generator gen(8);
  Gpt model(model_config(GetParam()), gen);
  perturb(model, 80);
  const Tensor ids = ids_tensor(Shape{2, 12}, 11, 81);
  const Variable logits = model.forward(Variable(ids.narrow(1, 0, 11).contiguous()));
  cross_entropy(logits, Variable(ids.narrow(1, 1, 11).contiguous())).backward();
  for (const auto& [name, p] : model.named_parameters()) {
    ASSERT_TRUE(p.grad().defined()) << name;
    EXPECT_GT(test::max_abs(p.grad()), 0.0) << model_case_name({GetParam(), 0}) << ": " << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Mixers, GptMixerCase,
                         ::testing::Values(ModelCase{"kda", "", ""}, ModelCase{"kda", "", "conv=0"},
                                           ModelCase{"lla", "", ""}, ModelCase{"lla", "", "learn_lambda"},
                                           ModelCase{"lla", "", "lambda=0.5"},
                                           ModelCase{"softmax", "kda,softmax", ""},
                                           ModelCase{"softmax", "kda,lla,kda,softmax", ""}),
                         model_case_name);

// A tiny hybrid (kda, softmax) in f64: every parameter's gradient against central differences.
TEST(GptHybrid, GradcheckFloat64) {
  GptConfig c = test::micro_gpt();
  c.layer_pattern = "kda,softmax";
  Generator gen(9);
  Gpt model(c, gen, DType::f64);
  perturb(model, 90);
  std::vector<Tensor> inputs;
  for (const Variable& p : model.parameters()) inputs.push_back(p.data().clone());
  const Tensor ids = ids_tensor(Shape{2, 4}, 5, 91);
  for (const int64_t limit : {int64_t{1} << 20, int64_t{0}}) {
    GradcheckOptions o;
    o.full_jacobian_limit = limit;
    o.projections = 8;
    const GradcheckResult r =
        gradcheck(module_as_function(model, [&model, ids](const Variable&) { return model.forward(Variable(ids)); }, false),
                  inputs, {}, o);
    EXPECT_TRUE(r.ok) << r.worst;
  }
}

TEST(GptLla, LearnedRidgeStartsAtLambdaAndFlashllaGradLeavesItAlone) {
  GptConfig c = tiny("lla");
  c.attention_options.lla_learn_lambda = true;
  c.attention_options.lla_lambda = 3.0;
  Generator gen(10);
  Gpt model(c, gen);
  EXPECT_NEAR(model.state_dict().at("h.1.attn.log_lambda").to_vector<double>()[0], std::log(3.0), 1e-6);
  const Tensor ids = ids_tensor(Shape{2, 12}, 11, 11);
  auto lambda_grad = [&](bool flashlla) {
    GptConfig cc = c;
    cc.attention_options.lla_flashlla_grad = flashlla;
    Generator g(12);
    Gpt m(cc, g);
    perturb(m, 120);
    cross_entropy(m.forward(Variable(ids.narrow(1, 0, 11).contiguous())), Variable(ids.narrow(1, 1, 11).contiguous()))
        .backward();
    for (const auto& [name, p] : m.named_parameters())
      if (name == "h.0.attn.log_lambda") return p.grad().to_vector<double>()[0];
    return std::nan("");
  };
  EXPECT_NE(lambda_grad(false), 0.0);
  EXPECT_EQ(lambda_grad(true), 0.0);  // FlashLLA's gradient treats the ridge as a constant
}

// lam -> infinity gives softmax attention: an lla model with a huge ridge and a softmax model with
// the same weights give the same logits.
TEST(GptLla, HugeRidgeIsSoftmax) {
  GptConfig c = tiny("lla");
  c.attention_options.lla_lambda = 1e9;
  Generator gen(13);
  Gpt lla(c, gen, DType::f64);
  perturb(lla, 130);
  Generator gen2(13);
  Gpt softmax(tiny("softmax"), gen2, DType::f64);
  softmax.load_state_dict(lla.state_dict());
  const Tensor ids = ids_tensor(Shape{2, 16}, 11, 14);
  NoGradGuard ng;
  const Tensor a = lla.forward(Variable(ids)).data(), b = softmax.forward(Variable(ids)).data();
  EXPECT_LT(test::max_diff(a, b), 1e-6 * std::max(1.0, test::max_abs(b)));
}

TEST(GptMixerDiagnostics, EachLayerReportsItsOwnKind) {
  GptConfig c = tiny("softmax", "kda,lla,softmax");
  c.layers = 3;
  Generator gen(15);
  Gpt model(c, gen);
  const Tensor ids = ids_tensor(Shape{2, 12}, 11, 16);
  const std::vector<AttentionDiagnostics> ds = model.attention_diagnostics(Variable(ids));
  ASSERT_EQ(ds.size(), 3u);
  EXPECT_EQ(ds[0].kind, "kda");
  EXPECT_FALSE(ds[0].has_sink);
  // At init: softplus(dt_bias) <= 0.1 and exp(A_log) <= 16, so every per-step decay is in
  // [exp(-1.6), 1); beta = sigmoid(small) ~ 1/2.
  EXPECT_GT(ds[0].kda_decay_mean, std::exp(-1.6));
  EXPECT_LT(ds[0].kda_decay_mean, 1.0);
  EXPECT_NEAR(ds[0].kda_beta_mean, 0.5, 0.05);
  EXPECT_EQ(ds[1].kind, "lla");
  EXPECT_TRUE(ds[1].has_sink);
  EXPECT_DOUBLE_EQ(ds[1].lla_lambda, 10.0);
  EXPECT_GT(ds[1].lla_delta_ratio_min, 0.0);
  EXPECT_LE(ds[1].lla_delta_ratio_min, ds[1].lla_delta_ratio_mean);
  EXPECT_LE(ds[1].lla_delta_ratio_mean, 1.0 + 1e-9);
  EXPECT_GE(ds[1].lla_cond_mean, 1.0 - 1e-9);
  EXPECT_LE(ds[1].lla_cond_mean, ds[1].lla_cond_max);
  EXPECT_TRUE(std::isfinite(ds[1].sink));
  EXPECT_EQ(ds[2].kind, "softmax");
  EXPECT_GE(ds[2].sink, 1.0 / 12 - 1e-6);
}

}  // namespace
}  // namespace attnlab
