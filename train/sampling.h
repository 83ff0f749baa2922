// Text generation from a trained Gpt: prefill the prompt into a KV cache, then one token at a
// time, sampling from softmax(logits / temperature) restricted to the top_k most likely tokens
// (0 = all). Only the real vocabulary is ever sampled (padded rows of the head are ignored).
// When the cache fills the context, it is rebuilt from the last half-context of tokens.
#pragma once

#include <cstdint>
#include <vector>

#include "layers/gpt.h"
#include "lib/rng.h"

namespace attnlab {

struct SampleOptions {
  int64_t tokens = 200;
  double temperature = 0.8;
  int64_t top_k = 0;
  uint64_t seed = 1;
};

// Returns the generated ids (without the prompt). An empty prompt is an error.
std::vector<int32_t> generate(const Gpt& model, const std::vector<int32_t>& prompt, const SampleOptions& options);

}  // namespace attnlab
