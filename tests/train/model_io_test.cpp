// The model config in checkpoints: layer patterns and the kda / lla options round-trip through
// the JSON metadata, configs written before they existed load with the defaults, and a hybrid
// model's checkpoint rebuilds the same model (config and every parameter).
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "autograd/grad_mode.h"
#include "lib/error.h"
#include "tests/support/tensor_compare.h"
#include "train/checkpoint.h"
#include "train/model_io.h"

namespace fs = std::filesystem;

namespace attnlab {
namespace {

GptConfig hybrid() {
  GptConfig c;
  c.vocab_size = 256;
  c.context = 16;
  c.layers = 4;
  c.d_model = 16;
  c.heads = 2;
  c.layer_pattern = "kda,lla,kda,softmax";
  c.attention_options.kda_conv = 3;
  c.attention_options.lla_lambda = 2.5;
  c.attention_options.lla_learn_lambda = true;
  c.attention_options.lla_flashlla_grad = true;
  return c;
}

TEST(ModelConfigJson, LayerPatternAndKdaLlaOptionsRoundTrip) {
  const GptConfig c = hybrid();
  const std::string text = gpt_config_json(c);
  const GptConfig back = gpt_config_from_json(text, "x");
  EXPECT_EQ(back.layer_pattern, c.layer_pattern);
  EXPECT_EQ(back.attention_options.kda_conv, 3);
  EXPECT_EQ(back.attention_options.lla_lambda, 2.5);
  EXPECT_TRUE(back.attention_options.lla_learn_lambda);
  EXPECT_TRUE(back.attention_options.lla_flashlla_grad);
  EXPECT_EQ(gpt_config_json(back), text);
}

TEST(ModelConfigJson, OlderConfigsLoadAsBefore) {
  // A config from before layer patterns and the kda / lla options.
  nlohmann::json j = nlohmann::json::parse(gpt_config_json(GptConfig{}));
  j.erase("layer_pattern");
  for (const char* key : {"kda_conv", "lla_lambda", "lla_learn_lambda", "lla_flashlla_grad"})
    j["attention_options"].erase(key);
  const GptConfig back = gpt_config_from_json(j.dump(), "old");
  EXPECT_EQ(back.layer_pattern, "");
  EXPECT_EQ(back.attention_options.kda_conv, 4);
  EXPECT_EQ(back.attention_options.lla_lambda, 10.0);
  EXPECT_FALSE(back.attention_options.lla_learn_lambda);
  EXPECT_EQ(gpt_config_json(back), gpt_config_json(GptConfig{}));
  // A bad pattern in a checkpoint is an IoError naming it.
  j["layer_pattern"] = "kda,mamba";
  try {
    gpt_config_from_json(j.dump(), "bad.safetensors");
    ADD_FAILURE() << "no error";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("mamba"), std::string::npos) << e.what();
  }
}

TEST(ModelCheckpoint, HybridModelRoundTrips) {
  const fs::path dir = fs::temp_directory_path() / "attnlab_model_io_hybrid";
  fs::remove_all(dir);
  const GptConfig c = hybrid();
  Generator gen(3);
  Gpt model(c, gen);
  // Move every parameter off its init so that a model rebuilt from the config alone cannot pass.
  Generator noise(4);
  for (auto& [name, p] : model.named_parameters()) {
    Tensor& t = p.mutable_data();
    fill_uniform(t, noise, -0.3, 0.3);
  }
  Checkpoint ck;
  ck.weights = model.state_dict();
  ck.model_meta = {{"config", gpt_config_json(c)}, {"tokenizer", "byte"}, {"step", "7"}};
  save_checkpoint(dir.string(), 7, ck);

  const LoadedModel loaded = load_model(dir.string());
  EXPECT_EQ(gpt_config_json(loaded.config), gpt_config_json(c));
  const auto a = model.state_dict(), b = loaded.model->state_dict();
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    EXPECT_TRUE(test::bit_equal(t, b.at(name))) << name;
  }
  for (const char* name : {"h.0.attn.A_log", "h.1.attn.log_lambda", "h.2.attn.q_conv1d.weight", "h.3.attn.c_attn.weight"})
    EXPECT_TRUE(b.count(name)) << name;
  EXPECT_EQ(b.at("h.2.attn.q_conv1d.weight").shape(), (Shape{16, 3}));
  model.set_training(false);
  NoGradGuard ng;
  const Tensor ids = Tensor::from_vector(Shape{1, 6}, std::vector<int32_t>{1, 5, 9, 200, 3, 3});
  EXPECT_TRUE(test::bit_equal(model.forward(Variable(ids)).data(), loaded.model->forward(Variable(ids)).data()));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace attnlab
