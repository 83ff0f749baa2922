// Query-only test-time training (train/ttt.h) on tiny models: the base weights and the frozen
// prefill are bit-identical after an adaptation and its answer; only the Q rows of c_attn change;
// zero steps (and a fresh LoRA) answer exactly as the plain model; the steps lower the span loss
// on the context they adapted to; models and contexts it cannot handle are refused.
#include "train/ttt.h"

#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "layers/gpt.h"
#include "layers/param_override.h"
#include "lib/error.h"
#include "tests/support/gpt_configs.h"
#include "tests/support/tensor_compare.h"

namespace attnlab {
namespace {

using test::bit_equal;

GptConfig tiny_model(const std::string& attention = "softmax") {
  GptConfig c = test::tiny_variant_gpt(attention);
  c.context = 48;
  c.mlp = "swiglu";
  return c;
}

// A context with structure to learn: a random period-5 pattern repeated (an induction-friendly
// sequence whose later tokens are predictable from earlier ones).
std::vector<int32_t> context_ids(int64_t T, uint64_t seed) {
  Generator gen(seed);
  const std::vector<int32_t> period = randint(Shape{5}, 11, gen).to_vector<int32_t>();
  std::vector<int32_t> ids(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) ids[static_cast<size_t>(t)] = period[static_cast<size_t>(t % 5)];
  return ids;
}

TttConfig small_config(int64_t steps, const std::string& params = "wq") {
  TttConfig c;
  c.steps = steps;
  c.span = 8;
  c.lr = 1e-2;
  c.params = params;
  c.rank = 4;
  c.alpha = 8;
  return c;
}

// Byte-exact copies of every tensor of the state dict.
std::map<std::string, std::vector<char>> snapshot(const Gpt& model) {
  std::map<std::string, std::vector<char>> out;
  for (const auto& [name, t] : model.state_dict()) {
    const Tensor c = t.contiguous();
    const char* p = static_cast<const char*>(c.raw_data());
    out[name].assign(p, p + c.numel() * static_cast<int64_t>(dtype_size(c.dtype())));
  }
  return out;
}

Variable c_attn(const Gpt& model, int64_t layer) {
  for (const auto& [name, p] : model.named_parameters())
    if (name == "h." + std::to_string(layer) + ".attn.c_attn.weight") return p;
  return Variable();
}

TEST(Ttt, WeightsAndPrefillAreBitIdenticalAfterAdaptAndAnswer) {
  for (const std::string params : {"wq", "lora"}) {
    Generator init(1);
    Gpt model(tiny_model(), init);
    const std::map<std::string, std::vector<char>> before = snapshot(model);
    const std::vector<int32_t> ids = context_ids(32, 2);
    const int64_t T = static_cast<int64_t>(ids.size());
    // The reference prefill of ids[0, T - 1) with the base weights.
    KvCache ref = model.make_cache(1);
    {
      NoGradGuard g;
      model.forward_cached(
          Variable(Tensor::from_vector(Shape{1, T - 1}, std::vector<int32_t>(ids.begin(), ids.end() - 1))), ref);
    }
    Generator gen(3);
    KvCache cache = model.make_cache(1);
    const ParameterOverrides o = adapt_queries(model, ids, small_config(6, params), gen, cache);
    ASSERT_EQ(cache.length(), T - 1);
    for (int64_t l = 0; l < cache.num_layers(); ++l) {
      EXPECT_TRUE(bit_equal(cache.layer(l).k.narrow(2, 0, T - 1), ref.layer(l).k.narrow(2, 0, T - 1))) << params << l;
      EXPECT_TRUE(bit_equal(cache.layer(l).v.narrow(2, 0, T - 1), ref.layer(l).v.narrow(2, 0, T - 1))) << params << l;
    }
    answer_logits(model, ids.back(), o, cache);
    EXPECT_EQ(snapshot(model), before) << params << ": the base weights were written";
    for (const auto& [name, p] : model.named_parameters()) {
      EXPECT_TRUE(p.requires_grad()) << name << ": the freeze was not undone";
      EXPECT_FALSE(p.grad().defined()) << name << ": a base weight received a gradient";
    }
  }
}

TEST(Ttt, OnlyTheQueryRowsOfCAttnChange) {
  for (const std::string params : {"wq", "lora"}) {
    Generator init(4);
    Gpt model(tiny_model(), init);
    const int64_t C = model.config().d_model;
    const std::vector<int32_t> ids = context_ids(32, 5);
    Generator gen(6);
    KvCache cache = model.make_cache(1);
    const ParameterOverrides o = adapt_queries(model, ids, small_config(4, params), gen, cache);
    EXPECT_EQ(o.size(), static_cast<size_t>(model.config().layers)) << "one override per layer's c_attn";
    for (int64_t l = 0; l < model.config().layers; ++l) {
      const Variable w = c_attn(model, l);
      const Variable* adapted = o.find(w);
      ASSERT_NE(adapted, nullptr) << params << " layer " << l;
      EXPECT_FALSE(adapted->requires_grad()) << "the returned overrides are constants";
      EXPECT_TRUE(bit_equal(adapted->data().narrow(0, C, 2 * C), w.data().narrow(0, C, 2 * C)))
          << params << " layer " << l << ": K and V rows must stay the base rows";
      EXPECT_GT(test::max_diff(adapted->data().narrow(0, 0, C).contiguous(), w.data().narrow(0, 0, C).contiguous()),
                0.0)
          << params << " layer " << l << ": the Q rows did not move";
    }
  }
}

TEST(Ttt, ZeroStepsAnswerExactlyAsThePlainModel) {
  for (const std::string params : {"wq", "lora"}) {
    Generator init(7);
    Gpt model(tiny_model(), init);
    const std::vector<int32_t> ids = context_ids(20, 8);
    const Tensor plain = plain_answer_logits(model, ids);
    Generator gen(9);
    KvCache cache = model.make_cache(1);
    const ParameterOverrides o = adapt_queries(model, ids, small_config(0, params), gen, cache);
    EXPECT_TRUE(bit_equal(answer_logits(model, ids.back(), o, cache), plain)) << params;
  }
}

TEST(Ttt, LoraStartsAsAnExactNoOp) {
  Generator init(10);
  Gpt model(tiny_model(), init);
  const std::vector<int32_t> ids = context_ids(20, 11);
  Generator gen(12);
  KvCache cache = model.make_cache(1);
  const ParameterOverrides o = adapt_queries(model, ids, small_config(0, "lora"), gen, cache);
  for (int64_t l = 0; l < model.config().layers; ++l) {
    const Variable w = c_attn(model, l);
    ASSERT_NE(o.find(w), nullptr);
    EXPECT_TRUE(bit_equal(o.find(w)->data(), w.data())) << "layer " << l << ": W + s B A with B = 0 must be W";
  }
}

TEST(Ttt, StepsLowerTheLossOnTheAdaptedContext) {
  for (const std::string params : {"wq", "lora"}) {
    Generator init(13);
    Gpt model(tiny_model(), init);
    const std::vector<int32_t> ids = context_ids(40, 14);
    const int64_t T = static_cast<int64_t>(ids.size());
    Generator gen(15);
    KvCache cache = model.make_cache(1);
    TttConfig c = small_config(30, params);
    c.lr = 3e-2;
    const ParameterOverrides o = adapt_queries(model, ids, c, gen, cache);
    // The whole context as one span over an empty prefix: every span trained on is inside it.
    const double before = span_loss(model, ids, cache, 0, T - 1, ParameterOverrides());
    const double after = span_loss(model, ids, cache, 0, T - 1, o);
    EXPECT_LT(after, before - 1e-3) << params << ": before " << before << ", after " << after;
  }
}

TEST(Ttt, SameSeedSameAdaptation) {
  Generator init(16);
  Gpt model(tiny_model(), init);
  const std::vector<int32_t> ids = context_ids(24, 17);
  Tensor first;
  for (int run = 0; run < 2; ++run) {
    Generator gen(18);
    KvCache cache = model.make_cache(1);
    const ParameterOverrides o = adapt_queries(model, ids, small_config(3), gen, cache);
    const Tensor q = o.find(c_attn(model, 1))->data();
    if (run == 0)
      first = q.clone();
    else
      EXPECT_TRUE(bit_equal(q, first));
  }
}

TEST(Ttt, RefusesModelsWithoutAFrozenPrefixAndShortContexts) {
  for (const std::string a : {"kda", "infsa", "linear_infsa"}) {
    Generator init(19);
    Gpt model(tiny_model(a), init);
    Generator gen(20);
    KvCache cache = model.make_cache(1);
    EXPECT_THROW(adapt_queries(model, context_ids(20, 21), small_config(2), gen, cache), ConfigError) << a;
  }
  {
    GptConfig c = tiny_model();
    c.layer_pattern = "softmax,kda";
    Generator init(22);
    Gpt model(c, init);
    Generator gen(23);
    KvCache cache = model.make_cache(1);
    EXPECT_THROW(adapt_queries(model, context_ids(20, 24), small_config(2), gen, cache), ConfigError)
        << "one kda layer";
  }
  Generator init(25);
  Gpt model(tiny_model(), init);
  Generator gen(26);
  KvCache cache = model.make_cache(1);
  // span 8 needs at least 9 context tokens.
  EXPECT_THROW(adapt_queries(model, context_ids(8, 27), small_config(2), gen, cache), ConfigError);
  EXPECT_NO_THROW(adapt_queries(model, context_ids(9, 27), small_config(2), gen, cache));
  EXPECT_THROW(adapt_queries(model, context_ids(49, 27), small_config(2), gen, cache), ConfigError) << "past context";
  TttConfig bad = small_config(2);
  bad.params = "wk";
  EXPECT_THROW(adapt_queries(model, context_ids(20, 27), bad, gen, cache), ConfigError);
  bad = small_config(2);
  bad.lr = 0;
  EXPECT_THROW(bad.validate(), ConfigError);
  bad = small_config(2);
  bad.steps = -1;
  EXPECT_THROW(bad.validate(), ConfigError);
}

TEST(Ttt, RefusesVectorModeModels) {
  GptConfig c = tiny_model();
  c.input_dim = 3;
  c.output_dim = 2;
  c.vocab_size = 0;
  Generator init(28);
  Gpt model(c, init);
  EXPECT_THROW(check_ttt_model(model, "test"), ConfigError);
}

}  // namespace
}  // namespace attnlab
