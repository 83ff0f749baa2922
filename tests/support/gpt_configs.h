// The small GptConfigs the model tests build: tiny_variant_gpt for the attention-variant model
// tests (f32 training steps, decoding), micro_gpt for the f64 whole-model gradchecks (few enough
// parameters for central differences).
#pragma once

#include <string>

#include "layers/gpt.h"

namespace attnlab::test {

// 2 layers, d_model 16, 2 heads, rope, rmsnorm; vocabulary 11 padded to a multiple of 8; context 24.
inline GptConfig tiny_variant_gpt(const std::string& attention) {
  GptConfig c;
  c.vocab_size = 11;
  c.vocab_pad = 8;
  c.context = 24;
  c.layers = 2;
  c.d_model = 16;
  c.heads = 2;
  c.positions = "rope";
  c.norm = "rmsnorm";
  c.attention = attention;
  return c;
}

// 2 layers, d_model 4, 2 heads, MLP hidden 6; vocabulary 5; context 4; the rest default.
inline GptConfig micro_gpt() {
  GptConfig c;
  c.vocab_size = 5;
  c.context = 4;
  c.layers = 2;
  c.d_model = 4;
  c.heads = 2;
  c.mlp_hidden = 6;
  return c;
}

}  // namespace attnlab::test
