// The GPT model: the peer's parameter names and shapes, GPT-2 init, the function itself against a
// naive double-precision GPT-2 written out in loops, training, causality, the KV cache against the
// full forward for every variant, rope against its formula, a whole-model gradcheck, and config
// validation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <numbers>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "autograd/grad_mode.h"
#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "layers/gpt.h"
#include "lib/error.h"
#include "optim/adamw.h"
#include "tests/support/gpt_configs.h"

namespace attnlab {
namespace {

GptConfig tiny(const std::string& positions = "learned", const std::string& norm = "layernorm",
               const std::string& mlp = "gelu") {
  GptConfig c;
  c.vocab_size = 11;
  c.vocab_pad = 8;  // Vp = 16
  c.context = 9;
  c.layers = 2;
  c.d_model = 16;
  c.heads = 2;
  c.positions = positions;
  c.norm = norm;
  c.mlp = mlp;
  return c;
}

// Weights of order one for a whole-model gradcheck, so that no path is too small to check:
// matrices ~ N(0, 1), vectors (norm gains, biases, per-head scalars) uniform in [0.5, 1.5].
std::vector<Tensor> order_one_weights(const Gpt& model) {
  std::vector<Tensor> weights;
  Generator noise(9);
  uint64_t seed = 100;
  for (const Variable& p : model.parameters())
    weights.push_back(p.data().ndim() == 2 ? randn(p.shape(), noise, DType::f64)
                                           : sample_uniform(p.shape(), seed++, 0.5, 1.5));
  return weights;
}

Tensor ids_tensor(const Shape& shape, int64_t high, uint64_t seed) {
  Generator gen(seed);
  return randint(shape, high, gen);
}

// ---- names, shapes, init ---------------------------------------------------------------------

TEST(Gpt, ParameterNamesAndShapesMatchThePeer) {
  GptConfig c = tiny();
  Generator gen(1);
  Gpt model(c, gen);
  const int64_t C = 16, Vp = 16;
  std::vector<std::pair<std::string, Shape>> want{{"wte.weight", Shape{Vp, C}}, {"wpe.weight", Shape{9, C}}};
  for (int i = 0; i < 2; ++i) {
    const std::string p = "h." + std::to_string(i) + ".";
    for (auto [n, s] : std::vector<std::pair<std::string, Shape>>{
             {"ln_1.weight", Shape{C}},
             {"ln_1.bias", Shape{C}},
             {"attn.c_attn.weight", Shape{3 * C, C}},
             {"attn.c_attn.bias", Shape{3 * C}},
             {"attn.c_proj.weight", Shape{C, C}},
             {"attn.c_proj.bias", Shape{C}},
             {"ln_2.weight", Shape{C}},
             {"ln_2.bias", Shape{C}},
             {"mlp.c_fc.weight", Shape{4 * C, C}},
             {"mlp.c_fc.bias", Shape{4 * C}},
             {"mlp.c_proj.weight", Shape{C, 4 * C}},
             {"mlp.c_proj.bias", Shape{C}},
         })
      want.emplace_back(p + n, s);
  }
  want.emplace_back("ln_f.weight", Shape{C});
  want.emplace_back("ln_f.bias", Shape{C});
  const auto got = model.named_parameters();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].first, want[i].first) << i;
    EXPECT_EQ(got[i].second.shape(), want[i].second) << want[i].first;
  }
  // GPT-2's count: wte + wpe + L (12 C^2 + 13 C) + 2 C.
  EXPECT_EQ(model.num_parameters(), Vp * C + 9 * C + 2 * (12 * C * C + 13 * C) + 2 * C);
}

TEST(Gpt, VariantNamesAndShapes) {
  GptConfig c = tiny("rope", "rmsnorm", "swiglu");
  c.bias = false;
  c.tie_embeddings = false;
  c.mlp_hidden = 24;
  Generator gen(1);
  Gpt model(c, gen);
  std::map<std::string, Shape> got;
  std::vector<std::string> names;
  for (const auto& [n, v] : model.named_parameters()) got.emplace(n, v.shape()), names.push_back(n);
  EXPECT_EQ(names, (std::vector<std::string>{"wte.weight", "h.0.ln_1.weight", "h.0.attn.c_attn.weight",
                                             "h.0.attn.c_proj.weight", "h.0.ln_2.weight", "h.0.mlp.c_fc.weight",
                                             "h.0.mlp.c_proj.weight", "h.1.ln_1.weight", "h.1.attn.c_attn.weight",
                                             "h.1.attn.c_proj.weight", "h.1.ln_2.weight", "h.1.mlp.c_fc.weight",
                                             "h.1.mlp.c_proj.weight", "ln_f.weight", "lm_head.weight"}));
  EXPECT_EQ(got.at("h.0.mlp.c_fc.weight"), (Shape{48, 16}));
  EXPECT_EQ(got.at("h.0.mlp.c_proj.weight"), (Shape{16, 24}));
  EXPECT_EQ(got.at("lm_head.weight"), (Shape{16, 16}));
}

TEST(Gpt, Gpt2Initialisation) {
  GptConfig c;
  c.vocab_size = 512;
  c.context = 64;
  c.layers = 3;
  c.d_model = 64;
  c.heads = 4;
  Generator gen(3);
  Gpt model(c, gen);
  auto stats = [](const Tensor& t) {
    const std::vector<double> v = t.to_vector<double>();
    double m = 0, s = 0;
    for (double x : v) m += x;
    m /= static_cast<double>(v.size());
    for (double x : v) s += (x - m) * (x - m);
    return std::pair<double, double>{m, std::sqrt(s / static_cast<double>(v.size()))};
  };
  const double proj = 0.02 / std::sqrt(6.0);
  for (const auto& [name, p] : model.named_parameters()) {
    const auto [m, sd] = stats(p.data());
    if (name.ends_with("c_proj.weight")) {
      EXPECT_NEAR(sd, proj, 0.1 * proj) << name;
    } else if (p.ndim() == 2) {
      EXPECT_NEAR(sd, 0.02, 0.002) << name;
      EXPECT_NEAR(m, 0.0, 0.002) << name;
    } else if (name.ends_with(".bias")) {
      EXPECT_EQ(sd, 0.0) << name;
      EXPECT_EQ(m, 0.0) << name;
    } else {
      EXPECT_EQ(m, 1.0) << name;
      EXPECT_EQ(sd, 0.0) << name;
    }
  }
  // A model is a function of (config, seed).
  Generator g1(3), g2(3), g3(4);
  Gpt a(c, g1), b(c, g2), d(c, g3);
  EXPECT_EQ(a.state_dict().at("h.1.mlp.c_fc.weight").to_vector<float>(),
            b.state_dict().at("h.1.mlp.c_fc.weight").to_vector<float>());
  EXPECT_NE(a.state_dict().at("h.1.mlp.c_fc.weight").to_vector<float>(),
            d.state_dict().at("h.1.mlp.c_fc.weight").to_vector<float>());
}

TEST(Gpt, NoDecayParameters) {
  GptConfig c = tiny();
  c.tie_embeddings = false;
  Generator gen(1);
  Gpt model(c, gen);
  std::vector<std::string> decayed;
  for (const auto& [n, _] : model.named_parameters())
    if (!is_no_decay_parameter(n)) decayed.push_back(n);
  EXPECT_EQ(decayed,
            (std::vector<std::string>{"h.0.attn.c_attn.weight", "h.0.attn.c_proj.weight", "h.0.mlp.c_fc.weight",
                                      "h.0.mlp.c_proj.weight", "h.1.attn.c_attn.weight", "h.1.attn.c_proj.weight",
                                      "h.1.mlp.c_fc.weight", "h.1.mlp.c_proj.weight", "lm_head.weight"}));
  EXPECT_TRUE(is_no_decay_parameter("h.3.norm_1.weight"));
}

// ---- the function ------------------------------------------------------------------------------

TEST(Gpt, LogitsShapeAndPaddedVocab) {
  GptConfig c = tiny();
  EXPECT_EQ(c.padded_vocab(), 16);
  c.vocab_pad = 1;
  EXPECT_EQ(c.padded_vocab(), 11);
  c.vocab_pad = 11;
  EXPECT_EQ(c.padded_vocab(), 11);
  c = tiny();
  Generator gen(1);
  Gpt model(c, gen);
  const Variable logits = model.forward(Variable(ids_tensor(Shape{3, 5}, 11, 2)));
  EXPECT_EQ(logits.shape(), (Shape{3, 5, 16}));
  EXPECT_EQ(logits.dtype(), DType::f32);
  EXPECT_TRUE(logits.requires_grad());
}

// GPT-2 written out in plain loops over doubles from the state dict: the peer's function.
std::vector<double> naive_gpt2(const GptConfig& c, const std::map<std::string, Tensor>& sd,
                               const std::vector<int32_t>& ids) {
  auto W = [&](const std::string& n) { return sd.at(n).to_vector<double>(); };
  const int64_t T = static_cast<int64_t>(ids.size()), C = c.d_model, H = c.heads, D = C / H;
  const int64_t Vp = c.padded_vocab();
  using Mat = std::vector<std::vector<double>>;
  auto layernorm = [&](const Mat& x, const std::string& n) {
    const std::vector<double> w = W(n + ".weight"), b = W(n + ".bias");
    Mat y = x;
    for (auto& row : y) {
      double m = 0, v = 0;
      for (double a : row) m += a;
      m /= static_cast<double>(C);
      for (double a : row) v += (a - m) * (a - m);
      v /= static_cast<double>(C);
      for (int64_t i = 0; i < C; ++i) row[i] = (row[i] - m) / std::sqrt(v + 1e-5) * w[i] + b[i];
    }
    return y;
  };
  auto linear = [&](const Mat& x, const std::string& n) {
    const std::vector<double> w = W(n + ".weight"), b = W(n + ".bias");
    const int64_t out = static_cast<int64_t>(b.size()), in = static_cast<int64_t>(x[0].size());
    Mat y(x.size(), std::vector<double>(out));
    for (size_t t = 0; t < x.size(); ++t)
      for (int64_t o = 0; o < out; ++o) {
        double s = b[o];
        for (int64_t i = 0; i < in; ++i) s += w[o * in + i] * x[t][i];
        y[t][o] = s;
      }
    return y;
  };
  const std::vector<double> wte = W("wte.weight"), wpe = W("wpe.weight");
  Mat x(T, std::vector<double>(C));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < C; ++i) x[t][i] = wte[ids[t] * C + i] + wpe[t * C + i];
  for (int64_t l = 0; l < c.layers; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    const Mat qkv = linear(layernorm(x, p + "ln_1"), p + "attn.c_attn");
    Mat y(T, std::vector<double>(C, 0.0));
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> a(t + 1);
        double mx = -1e300, z = 0;
        for (int64_t s = 0; s <= t; ++s) {
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += qkv[t][h * D + d] * qkv[s][C + h * D + d];
          a[s] = dot / std::sqrt(static_cast<double>(D));
          mx = std::max(mx, a[s]);
        }
        for (double& e : a) z += (e = std::exp(e - mx));
        for (int64_t s = 0; s <= t; ++s)
          for (int64_t d = 0; d < D; ++d) y[t][h * D + d] += a[s] / z * qkv[s][2 * C + h * D + d];
      }
    const Mat o = linear(y, p + "attn.c_proj");
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < C; ++i) x[t][i] += o[t][i];
    Mat f = linear(layernorm(x, p + "ln_2"), p + "mlp.c_fc");
    for (auto& row : f)
      for (double& u : row) u = 0.5 * u * (1 + std::tanh(std::sqrt(2 / std::numbers::pi) * (u + 0.044715 * u * u * u)));
    const Mat m = linear(f, p + "mlp.c_proj");
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < C; ++i) x[t][i] += m[t][i];
  }
  x = layernorm(x, "ln_f");
  std::vector<double> logits(T * Vp);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t v = 0; v < Vp; ++v) {
      double s = 0;
      for (int64_t i = 0; i < C; ++i) s += wte[v * C + i] * x[t][i];
      logits[t * Vp + v] = s;
    }
  return logits;
}

TEST(Gpt, DefaultConfigIsGpt2) {
  GptConfig c = tiny();
  Generator gen(5);
  Gpt model(c, gen, DType::f64);
  // Larger weights than the init, so that every part of the function shows in the logits.
  Generator noise(6);
  for (auto [n, p] : model.named_parameters()) {
    Tensor r = randn(p.shape(), noise, DType::f64);
    Tensor& t = p.mutable_data();
    const std::vector<double> a = t.to_vector<double>(), b = r.to_vector<double>();
    std::vector<double> s(a.size());
    for (size_t i = 0; i < a.size(); ++i) s[i] = a[i] + 0.3 * b[i];
    t.copy_(Tensor::from_vector(t.shape(), s));
  }
  const Tensor ids = ids_tensor(Shape{2, 7}, 11, 7);
  const std::vector<double> got = model.forward(Variable(ids)).data().to_vector<double>();
  const std::vector<int32_t> all = ids.to_vector<int32_t>();
  for (int64_t b = 0; b < 2; ++b) {
    const std::vector<int32_t> row(all.begin() + b * 7, all.begin() + (b + 1) * 7);
    const std::vector<double> want = naive_gpt2(c, model.state_dict(), row);
    for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(got[b * want.size() + i], want[i], 1e-10) << b << " " << i;
  }
}

TEST(Gpt, RejectsBadIds) {
  GptConfig c = tiny();
  Generator gen(1);
  Gpt model(c, gen);
  // Id 11 is inside the padded table (16 rows) but is not a token.
  Tensor ids = Tensor::from_vector(Shape{1, 3}, std::vector<int32_t>{1, 11, 2});
  try {
    model.forward(Variable(ids));
    FAIL() << "an id past the vocabulary was accepted";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("vocabulary"), std::string::npos) << e.what();
  }
  EXPECT_THROW(model.forward(Variable(ids_tensor(Shape{1, 10}, 11, 1))), ShapeError);  // past the context
  EXPECT_THROW(model.forward(Variable(Tensor::zeros(Shape{1, 3}, DType::f32))), DTypeError);
  EXPECT_THROW(model.forward(Variable(ids_tensor(Shape{3}, 11, 1))), ShapeError);
}

TEST(Gpt, LossDecreasesWithAdamW) {
  for (const char* positions : {"learned", "rope"}) {
    GptConfig c = tiny(positions);
    Generator gen(11);
    Gpt model(c, gen);
    // A fixed batch of a repeating pattern, to be memorised.
    std::vector<int32_t> xs, ys;
    for (int b = 0; b < 4; ++b)
      for (int t = 0; t < 8; ++t) xs.push_back((b + 3 * t) % 11), ys.push_back((b + 3 * t + 3) % 11);
    const Variable x(Tensor::from_vector(Shape{4, 8}, xs)), y(Tensor::from_vector(Shape{4, 8}, ys));
    AdamW opt(model.parameters(), AdamWConfig{.lr = 1e-2});
    double first = 0, last = 0;
    for (int step = 0; step < 40; ++step) {
      opt.zero_grad();
      const Variable loss = cross_entropy(model.forward(x), y);
      loss.backward();
      opt.step();
      (step == 0 ? first : last) = loss.data().item<double>();
    }
    EXPECT_NEAR(first, std::log(16.0), 0.1) << positions;  // small init: nearly uniform over Vp
    EXPECT_LT(last, 0.3 * first) << positions;
  }
}

#ifdef _OPENMP
// Training steps give the same bits on 1 and 2 threads (DESIGN: results never depend on the
// thread count). Large enough that the matmuls are cut into tiles and the attention, norms,
// elementwise ops and AdamW run on both threads.
TEST(Gpt, TrainingIsBitIdenticalOnOneAndTwoThreads) {
  GptConfig c = tiny();
  c.vocab_size = 300;
  c.vocab_pad = 64;
  c.context = 64;
  c.d_model = 64;
  c.heads = 4;
  const Tensor ids = ids_tensor(Shape{4, 65}, c.vocab_size, 3);
  const Variable x(ids.narrow(1, 0, 64).contiguous()), y(ids.narrow(1, 1, 64).contiguous());
  auto train = [&](int threads) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    Generator gen(4);
    Gpt model(c, gen);
    AdamW opt(model.parameters(), AdamWConfig{.lr = 1e-3});
    std::vector<Tensor> result;
    for (int step = 0; step < 3; ++step) {
      opt.zero_grad();
      const Variable loss = cross_entropy(model.forward(x), y);
      loss.backward();
      opt.step();
      result.push_back(loss.data().clone());
    }
    for (const Variable& p : model.parameters()) result.push_back(p.data().clone());
    omp_set_num_threads(saved);
    return result;
  };
  const std::vector<Tensor> one = train(1), two = train(2);
  ASSERT_EQ(one.size(), two.size());
  for (size_t i = 0; i < one.size(); ++i)
    EXPECT_EQ(std::memcmp(one[i].data<float>(), two[i].data<float>(), static_cast<size_t>(one[i].numel()) * 4), 0)
        << (i < 3 ? "loss of step " : "parameter ") << (i < 3 ? i : i - 3);
}
#endif

TEST(Gpt, Causal) {
  for (const char* positions : {"learned", "rope"}) {
    Generator gen(2);
    Gpt model(tiny(positions), gen);
    Tensor ids = ids_tensor(Shape{1, 8}, 11, 3);
    const std::vector<float> a = model.forward(Variable(ids)).data().to_vector<float>();
    Tensor changed = ids.clone();
    changed.data<int32_t>()[5] = (changed.data<int32_t>()[5] + 1) % 11;
    const std::vector<float> b = model.forward(Variable(changed)).data().to_vector<float>();
    for (size_t i = 0; i < 5 * 16; ++i) ASSERT_EQ(a[i], b[i]) << positions << " logit " << i;
    bool after_changed = false;
    for (size_t i = 5 * 16; i < a.size(); ++i) after_changed = after_changed || a[i] != b[i];
    EXPECT_TRUE(after_changed) << positions;
  }
}

TEST(Gpt, DropoutOnlyInTrainingWithAGenerator) {
  GptConfig c = tiny();
  c.dropout = 0.3;
  Generator gen(2);
  Gpt model(c, gen);
  const Variable ids(ids_tensor(Shape{2, 6}, 11, 3));
  const std::vector<float> plain = model.forward(ids).data().to_vector<float>();
  Generator d1(9), d2(9);
  const std::vector<float> dropped = model.forward(ids, &d1).data().to_vector<float>();
  EXPECT_NE(plain, dropped);
  EXPECT_EQ(dropped, model.forward(ids, &d2).data().to_vector<float>());  // the Generator decides the masks
  model.set_training(false);
  Generator d3(9);
  EXPECT_EQ(plain, model.forward(ids, &d3).data().to_vector<float>());
}

// ---- the KV cache --------------------------------------------------------------------------------

struct Variant {
  const char* positions;
  const char* norm;
  const char* mlp;
};

class GptCache : public ::testing::TestWithParam<Variant> {};

TEST_P(GptCache, TokenByTokenMatchesFullForward) {
  const Variant v = GetParam();
  GptConfig c = tiny(v.positions, v.norm, v.mlp);
  c.dropout = 0.1;  // off in eval mode, and forward_cached never applies it
  Generator gen(4);
  Gpt model(c, gen);
  model.set_training(false);
  const int64_t B = 2, T = 9, Vp = 16;
  const Tensor ids = ids_tensor(Shape{B, T}, 11, 5);
  const std::vector<float> full = model.forward(Variable(ids)).data().to_vector<float>();

  auto check = [&](const std::vector<int64_t>& chunks) {
    KvCache cache = model.make_cache(B);
    int64_t at = 0;
    for (int64_t n : chunks) {
      const Variable logits = model.forward_cached(Variable(ids.narrow(1, at, n).contiguous()), cache);
      ASSERT_EQ(logits.shape(), (Shape{B, n, Vp}));
      EXPECT_FALSE(logits.requires_grad());
      const std::vector<float> got = logits.data().to_vector<float>();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < n; ++t)
          for (int64_t j = 0; j < Vp; ++j)
            ASSERT_NEAR(got[(b * n + t) * Vp + j], full[(b * T + at + t) * Vp + j], 1e-5)
                << "b " << b << " position " << at + t << " column " << j;
      at += n;
      EXPECT_EQ(cache.length(), at);
    }
  };
  check(std::vector<int64_t>(T, 1));
  check({4, 1, 1, 3});
  check({T});
}

INSTANTIATE_TEST_SUITE_P(
    Variants, GptCache,
    ::testing::Values(Variant{"learned", "layernorm", "gelu"}, Variant{"rope", "layernorm", "gelu"},
                      Variant{"learned", "rmsnorm", "swiglu"}, Variant{"rope", "rmsnorm", "swiglu"},
                      Variant{"rope", "layernorm", "swiglu"}),
    [](const auto& i) { return std::string(i.param.positions) + "_" + i.param.norm + "_" + i.param.mlp; });

TEST(GptCacheErrors, ContextBatchAndModel) {
  Generator gen(1);
  Gpt model(tiny(), gen);
  KvCache cache = model.make_cache(2);
  EXPECT_EQ(cache.capacity(), 9);
  EXPECT_EQ(cache.layer(0).k.shape(), (Shape{2, 2, 9, 8}));
  model.forward_cached(Variable(ids_tensor(Shape{2, 7}, 11, 1)), cache);
  try {
    model.forward_cached(Variable(ids_tensor(Shape{2, 3}, 11, 2)), cache);
    FAIL() << "the cache ran past the context";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("context of 9"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cache.length(), 7);  // a refused call changes nothing
  model.forward_cached(Variable(ids_tensor(Shape{2, 2}, 11, 2)), cache);
  EXPECT_EQ(cache.length(), 9);
  cache.reset();
  EXPECT_EQ(cache.length(), 0);
  EXPECT_THROW(model.forward_cached(Variable(ids_tensor(Shape{3, 1}, 11, 2)), cache), ShapeError);  // batch
  GptConfig other = tiny();
  other.layers = 1;
  Generator g2(1);
  Gpt small(other, g2);
  KvCache wrong = small.make_cache(2);
  EXPECT_THROW(model.forward_cached(Variable(ids_tensor(Shape{2, 1}, 11, 2)), wrong), ShapeError);
}

// ---- rope ------------------------------------------------------------------------------------------

TEST(Rope, MatchesTheFormula) {
  const int64_t B = 2, H = 3, T = 5, D = 6, offset = 7;
  const double base = 100.0;
  const Tensor x = sample_randn(Shape{B, H, T, D}, 3);
  const std::vector<double> got = rope(Variable(x), offset, base).data().to_vector<double>();
  const std::vector<double> ref = rope_reference(Variable(x), offset, base).data().to_vector<double>();
  const std::vector<double> in = x.to_vector<double>();
  for (int64_t r = 0; r < B * H * T; ++r) {
    const double pos = static_cast<double>(offset + r % T);
    for (int64_t i = 0; i < D / 2; ++i) {
      const double th = pos * std::pow(base, -2.0 * static_cast<double>(i) / D);
      const double x1 = in[r * D + i], x2 = in[r * D + i + D / 2];
      EXPECT_NEAR(got[r * D + i], x1 * std::cos(th) - x2 * std::sin(th), 1e-12);
      EXPECT_NEAR(got[r * D + i + D / 2], x1 * std::sin(th) + x2 * std::cos(th), 1e-12);
      EXPECT_NEAR(ref[r * D + i], got[r * D + i], 1e-12);
      EXPECT_NEAR(ref[r * D + i + D / 2], got[r * D + i + D / 2], 1e-12);
    }
  }
  // f32 agrees (angles are computed in double either way).
  const std::vector<float> g32 = rope(Variable(x.to(DType::f32)), offset, base).data().to_vector<float>();
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(g32[i], got[i], 1e-5);
}

TEST(Rope, ScoresDependOnRelativePositionOnly) {
  const Tensor q = sample_randn(Shape{1, 1, 1, 8}, 1), k = sample_randn(Shape{1, 1, 1, 8}, 2);
  auto score = [&](int64_t m, int64_t n) {
    const std::vector<double> a = rope(Variable(q), m).data().to_vector<double>();
    const std::vector<double> b = rope(Variable(k), n).data().to_vector<double>();
    double s = 0;
    for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
    return s;
  };
  EXPECT_NEAR(score(5, 2), score(103, 100), 1e-10);
  EXPECT_NEAR(score(0, 0), score(50, 50), 1e-10);
}

TEST(Rope, BackwardIsTheInverseRotation) {
  const Tensor x = sample_randn(Shape{1, 2, 3, 4}, 4), w = sample_randn(Shape{1, 2, 3, 4}, 5);
  Variable xv(x, true);
  sum(mul(rope(xv, 3), Variable(w))).backward();
  // dx = R^T w, so R dx = w.
  const std::vector<double> back = rope(Variable(xv.grad()), 3).data().to_vector<double>();
  const std::vector<double> want = w.to_vector<double>();
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(back[i], want[i], 1e-12);
}

// ---- whole-model gradcheck ---------------------------------------------------------------------------

// The model as a function of its parameters: gradcheck's inputs are copied into the model's
// parameters, and the logits come back through one node whose backward runs the model's own
// backward. (The model's saved tensors alias its parameters, which gradcheck's evaluations
// overwrite, so the backward first puts the values of its own forward back.)
OpFn model_as_function(const Gpt& model, const Tensor& ids, uint64_t dropout_seed) {
  return [&model, ids, dropout_seed](const std::vector<Variable>& in) {
    std::vector<Variable> params = model.parameters();
    std::vector<Tensor> values;
    for (size_t i = 0; i < params.size(); ++i) {
      params[i].mutable_data().copy_(in[i].data());
      values.push_back(in[i].data().clone());
    }
    Generator gen(dropout_seed);  // the same dropout masks on every evaluation
    const Variable logits = model.forward(Variable(ids), &gen);
    return std::vector<Variable>{make_output(
        "gpt", in, logits.data(), [logits, params, values](const Tensor& dy, const GradMask& needs) mutable {
          for (size_t i = 0; i < params.size(); ++i) params[i].mutable_data().copy_(values[i]), params[i].zero_grad();
          logits.backward(dy, /*retain_graph=*/true);
          std::vector<Tensor> grads(params.size());
          for (size_t i = 0; i < params.size(); ++i)
            if (needs[i])
              grads[i] =
                  params[i].grad().defined() ? params[i].grad().clone() : Tensor::zeros(params[i].shape(), DType::f64);
          return grads;
        })};
  };
}

class GptGradcheck : public ::testing::TestWithParam<Variant> {};

TEST_P(GptGradcheck, Float64) {
  const Variant v = GetParam();
  GptConfig c = test::micro_gpt();
  c.positions = v.positions;
  c.norm = v.norm;
  c.mlp = v.mlp;
  c.dropout = 0.2;
  Generator gen(8);
  Gpt model(c, gen, DType::f64);
  std::vector<Tensor> inputs = order_one_weights(model);
  const Tensor ids = ids_tensor(Shape{2, 3}, 5, 10);
  // The full Jacobian (about 560 parameters x 30 logits), then random projections of it.
  for (const int64_t limit : {int64_t{1} << 20, int64_t{0}}) {
    GradcheckOptions o;
    o.full_jacobian_limit = limit;
    o.projections = 8;
    const GradcheckResult r = gradcheck(model_as_function(model, ids, 12), inputs, {}, o);
    EXPECT_TRUE(r.ok) << r.worst;
    std::printf("gpt gradcheck %s/%s/%s: %lld %s, max abs err %.3g, max rel err %.3g\n", v.positions, v.norm, v.mlp,
                static_cast<long long>(r.checked), r.full_jacobian ? "Jacobian entries" : "projections", r.max_abs_err,
                r.max_rel_err);
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, GptGradcheck,
                         ::testing::Values(Variant{"learned", "layernorm", "gelu"},
                                           Variant{"rope", "rmsnorm", "swiglu"}),
                         [](const auto& i) {
                           return std::string(i.param.positions) + "_" + i.param.norm + "_" + i.param.mlp;
                         });

// ---- vector mode ---------------------------------------------------------------------------------

GptConfig tiny_vector(const std::string& positions = "learned") {
  GptConfig c = tiny(positions);
  c.vocab_size = 0;  // unused in vector mode
  c.input_dim = 5;
  c.output_dim = 3;
  return c;
}

TEST(GptVector, ParameterNamesShapesAndDecay) {
  GptConfig c = tiny_vector();
  c.tie_embeddings = false;  // no lm_head either way
  Generator gen(1);
  Gpt model(c, gen);
  std::map<std::string, Shape> got;
  std::vector<std::string> names, decayed;
  for (const auto& [n, v] : model.named_parameters()) {
    got.emplace(n, v.shape());
    names.push_back(n);
    if (!is_no_decay_parameter(n)) decayed.push_back(n);
  }
  EXPECT_EQ(names.front(), "input_proj.weight");
  EXPECT_EQ(names[1], "input_proj.bias");
  EXPECT_EQ(names[names.size() - 2], "output_head.weight");
  EXPECT_EQ(names.back(), "output_head.bias");
  EXPECT_EQ(got.at("input_proj.weight"), (Shape{16, 5}));
  EXPECT_EQ(got.at("input_proj.bias"), (Shape{16}));
  EXPECT_EQ(got.at("output_head.weight"), (Shape{3, 16}));
  EXPECT_EQ(got.at("output_head.bias"), (Shape{3}));
  EXPECT_EQ(got.count("wte.weight"), 0u);
  EXPECT_EQ(got.count("lm_head.weight"), 0u);
  EXPECT_EQ(got.count("wpe.weight"), 1u);
  // The input projection is the embedding (no decay); the output head decays like lm_head.
  EXPECT_EQ(std::count(decayed.begin(), decayed.end(), "input_proj.weight"), 0);
  EXPECT_EQ(std::count(decayed.begin(), decayed.end(), "output_head.weight"), 1);
  EXPECT_EQ(std::count(decayed.begin(), decayed.end(), "output_head.bias"), 0);
  // GPT-2 init: the output head starts small, its bias at zero.
  for (double b : model.state_dict().at("output_head.bias").to_vector<double>()) EXPECT_EQ(b, 0.0);
}

TEST(GptVector, ForwardShapesDtypesAndDiagnostics) {
  for (const char* positions : {"learned", "rope"}) {
    GptConfig c = tiny_vector(positions);
    Generator gen(2), data(3);
    Gpt model(c, gen);
    const Tensor x = randn(Shape{2, 7, 5}, data);
    const Variable y = model.forward(Variable(x));
    EXPECT_EQ(y.shape(), (Shape{2, 7, 3})) << positions;
    EXPECT_EQ(y.dtype(), DType::f32);
    // f64 inputs are converted to the model's dtype: the same function.
    const std::vector<double> a = y.data().to_vector<double>();
    const std::vector<double> b = model.forward(Variable(x.to(DType::f64))).data().to_vector<double>();
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-6);
    // Causal: the first four positions do not see a change at position 4.
    Tensor x2 = x.clone();
    x2.narrow(1, 4, 1).fill_(7.0);
    const Tensor y2 = model.forward(Variable(x2)).data();
    const std::vector<double> p = y.data().narrow(1, 0, 4).contiguous().to_vector<double>();
    const std::vector<double> q = y2.narrow(1, 0, 4).contiguous().to_vector<double>();
    for (size_t i = 0; i < p.size(); ++i) EXPECT_NEAR(p[i], q[i], 1e-6);
    EXPECT_EQ(model.attention_diagnostics(Variable(x)).size(), 2u);
    EXPECT_TRUE(model.routing_diagnostics(Variable(x)).empty());
  }
  GptConfig routed = tiny_vector();
  routed.residual.mode = "attnres";
  Generator gen(4), data(5);
  Gpt model(routed, gen);
  const Tensor x = randn(Shape{2, 6, 5}, data);
  EXPECT_EQ(model.forward(Variable(x)).shape(), (Shape{2, 6, 3}));
  EXPECT_FALSE(model.routing_diagnostics(Variable(x)).empty());
}

TEST(GptVector, ErrorsNameWhatWasExpected) {
  Generator gen(1);
  Gpt model(tiny_vector(), gen);
  auto message = [&](const Tensor& x) {
    try {
      model.forward(Variable(x));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  // Token ids to a vector model: a dtype error naming the expected input.
  try {
    model.forward(Variable(ids_tensor(Shape{2, 4}, 11, 1)));
    FAIL() << "ids were accepted by a vector model";
  } catch (const DTypeError& e) {
    EXPECT_NE(std::string(e.what()).find("[B, T, 5]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(model.forward(Variable(Tensor::zeros(Shape{2, 4, 4}, DType::f32))), ShapeError);
  EXPECT_NE(message(Tensor::zeros(Shape{2, 4, 4}, DType::f32)).find("[B, T, 5]"), std::string::npos);
  EXPECT_THROW(model.forward(Variable(Tensor::zeros(Shape{2, 4}, DType::f32))), ShapeError);
  EXPECT_THROW(model.forward(Variable(Tensor::zeros(Shape{1, 10, 5}, DType::f32))), ShapeError);  // past the context
  EXPECT_NE(message(Tensor::zeros(Shape{1, 10, 5}, DType::f32)).find("context"), std::string::npos);
  EXPECT_THROW(model.attention_diagnostics(Variable(ids_tensor(Shape{2, 4}, 11, 1))), DTypeError);
  // Decoding is token-only.
  EXPECT_THROW(model.make_cache(1), ConfigError);
  KvCache cache;
  EXPECT_THROW(model.forward_cached(Variable(Tensor::zeros(Shape{1, 2, 5}, DType::f32)), cache), ConfigError);
  // A token model given vectors still says it wants ids.
  Gpt tokens(tiny(), gen);
  EXPECT_THROW(tokens.forward(Variable(Tensor::zeros(Shape{2, 4, 5}, DType::f32))), DTypeError);
  // Both dims or neither.
  GptConfig half = tiny_vector();
  half.output_dim = 0;
  try {
    half.validate();
    FAIL() << "input_dim without output_dim was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("output_dim"), std::string::npos) << e.what();
  }
  half = tiny();
  half.output_dim = 2;
  EXPECT_THROW(half.validate(), ConfigError);
  half = tiny_vector();
  half.input_dim = -1;
  half.output_dim = -1;
  EXPECT_THROW(half.validate(), ConfigError);
}

class GptVectorGradcheck : public ::testing::TestWithParam<std::string> {};

TEST_P(GptVectorGradcheck, Float64) {
  GptConfig c = test::micro_gpt();
  c.vocab_size = 0;
  c.input_dim = 3;
  c.output_dim = 2;
  c.dropout = 0.2;
  if (GetParam() == "rope") c.positions = "rope", c.norm = "rmsnorm";
  if (GetParam() == "attnres") c.residual.mode = "attnres";
  Generator gen(8);
  Gpt model(c, gen, DType::f64);
  std::vector<Tensor> inputs = order_one_weights(model);
  Generator data(10);
  const Tensor x = randn(Shape{2, 3, 3}, data, DType::f64);
  for (const int64_t limit : {int64_t{1} << 20, int64_t{0}}) {
    GradcheckOptions o;
    o.full_jacobian_limit = limit;
    o.projections = 8;
    const GradcheckResult r = gradcheck(model_as_function(model, x, 12), inputs, {}, o);
    EXPECT_TRUE(r.ok) << r.worst;
    std::printf("gpt vector gradcheck %s: %lld %s, max abs err %.3g, max rel err %.3g\n", GetParam().c_str(),
                static_cast<long long>(r.checked), r.full_jacobian ? "Jacobian entries" : "projections", r.max_abs_err,
                r.max_rel_err);
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, GptVectorGradcheck, ::testing::Values("learned", "rope", "attnres"),
                         [](const auto& i) { return i.param; });

// ---- config validation ---------------------------------------------------------------------------------

TEST(GptConfig, ValidationNamesTheFieldAndTheValidValues) {
  auto message = [](auto edit) {
    GptConfig c;
    edit(c);
    try {
      c.validate();
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  auto has = [](const std::string& msg, std::vector<std::string> parts) {
    for (const std::string& p : parts)
      if (msg.find(p) == std::string::npos) return testing::AssertionFailure() << "'" << p << "' not in: " << msg;
    return testing::AssertionSuccess();
  };
  EXPECT_EQ(message([](GptConfig&) {}), "(no error)");
  EXPECT_TRUE(has(message([](GptConfig& c) { c.heads = 3; }), {"d_model = 256", "heads = 3"}));
  EXPECT_TRUE(has(message([](GptConfig& c) { c.norm = "batchnorm"; }), {"norm", "batchnorm", "layernorm, rmsnorm"}));
  EXPECT_TRUE(has(message([](GptConfig& c) { c.mlp = "relu"; }), {"mlp", "relu", "gelu, swiglu"}));
  EXPECT_TRUE(has(message([](GptConfig& c) { c.positions = "alibi"; }), {"positions", "learned, rope"}));
  EXPECT_TRUE(has(message([](GptConfig& c) { c.attention = "mamba"; }), {"attention", "mamba", "softmax"}));
  EXPECT_TRUE(has(message([](GptConfig& c) { c.dropout = 1.0; }), {"dropout", "[0, 1)"}));
  EXPECT_TRUE(has(message([](GptConfig& c) { c.dropout = -0.1; }), {"dropout"}));
  EXPECT_TRUE(has(message([](GptConfig& c) { c.layers = 0; }), {"layers must be > 0"}));
  EXPECT_TRUE(has(message([](GptConfig& c) { c.vocab_size = -1; }), {"vocab_size"}));
  EXPECT_TRUE(has(message([](GptConfig& c) { c.context = 0; }), {"context"}));
  EXPECT_TRUE(has(message([](GptConfig& c) { c.mlp_hidden = -4; }), {"mlp_hidden"}));
  EXPECT_TRUE(
      has(message([](GptConfig& c) { c.d_model = 6, c.heads = 2, c.positions = "rope"; }), {"rope", "even", "3"}));
  // The same head dim is fine with learned positions.
  EXPECT_EQ(message([](GptConfig& c) { c.d_model = 6, c.heads = 2; }), "(no error)");
  GptConfig bad;
  bad.heads = 5;
  Generator gen(1);
  EXPECT_THROW(Gpt(bad, gen), ConfigError);
}

}  // namespace
}  // namespace attnlab
