// Query-only test-time training (qTTT, ../shared/specs/residuals_focusft_qttt.md Part 3).
//
// Per input: prefill the context once into a KV cache (Gpt::make_cache / forward_cached) with the
// original weights; then N steps, each on one random contiguous span of k context tokens: the
// span attends to the frozen cache rows before it plus its own fresh k, v (Gpt::forward_after),
// mean next-token cross-entropy on the span, gradients to the query projections only (the W_Q
// rows of every h.<i>.attn.c_attn.weight: a trainable fp32 copy, or LoRA on them), global clip,
// AdamW; then answer from the frozen cache with the adapted queries (forward_cached under the
// same overrides). The base weights are never written: the adaptation lives in a
// ParameterOverrides (layers/param_override.h), dropped after each input, so the model is
// bit-identical afterwards. The AdamW state is created and dropped per input.
//
// `attnlab ttt RECIPE.ini` evaluates a checkpoint on a synthetic task at each length, plain and
// with TTT, and writes runs/<name>/: recipe.ini, ttt.jsonl (one object per length), results.md,
// result.json. `attnlab eval CKPT --ttt` and `attnlab sample CKPT --ttt` use the same adaptation.
//
// Recipe:
//   [run]   name, seed, device, threads
//   [ttt]   init = RUN_DIR | CHECKPOINT, init_recipe (optional, as finetune),
//           steps = 32, span = 32, lr = 1e-3, weight_decay = 0.01, clip = 1.0,
//           params = wq | lora, rank = 8, alpha = 16 (lora), spans = context | demos,
//           examples = 64 (per length)
//   [data]  task = kv_retrieval | needle | fact_chain (+ keys), eval_lengths
#pragma once

#include <iosfwd>
#include <vector>

#include "layers/gpt.h"
#include "lib/rng.h"
#include "train/recipe.h"

namespace attnlab {

struct TttConfig {
  int64_t steps = 32;
  int64_t span = 32;
  double lr = 1e-3;
  double weight_decay = 0.01;
  double clip = 1.0;
  std::string params = "wq";  // wq (full W_Q rows, fp32 copy) | lora (on the W_Q rows)
  int64_t rank = 8;
  double alpha = 16.0;
  void validate() const;  // ConfigError naming the key (ttt.<field>)
};

// The adapted queries for one context: ids [1, T] (T >= 2, span < T) adapted from `gen`.
// Returns the overrides that hold the adaptation (use under an OverrideScope) and fills `cache`
// (made by model.make_cache(1)) with the frozen prefill of ids[0, T - 1).
ParameterOverrides adapt_queries(const Gpt& model, const std::vector<int32_t>& ids, const TttConfig& config,
                                 Generator& gen, KvCache& cache);

void run_ttt(Recipe& recipe, std::ostream& out);

}  // namespace attnlab
