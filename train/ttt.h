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
// The override of each c_attn.weight [3C, C] is concat(Q', W[C:3C]) along rows, W[C:3C] (the K
// and V rows) a constant copy, Q' = the trainable copy of W[0:C] (params = wq) or W[0:C] + s B A
// (params = lora: A [r, C] ~ U(-1/sqrt(C), 1/sqrt(C)), B [C, r] = 0, s = alpha / r, so it starts
// as an exact no-op). c_attn.bias (its Q part included) stays frozen (spec 3.2).
//
// Span starts are uniform in [0, T - 1 - span] for a context of T tokens, so every target
// ids[start + 1 .. start + span] is a context token (the last one may be the final prompt token).
// With spans = answers each step's span ends at one answered question of the context instead,
// and only the answers inside it are targets.
//
// `attnlab ttt RECIPE.ini` evaluates a checkpoint on a synthetic task at each length, plain and
// with TTT, and writes runs/<name>/: recipe.ini, ttt.jsonl (one object per length), results.md,
// result.json. `attnlab eval CKPT --ttt` and `attnlab sample CKPT --ttt` use the same adaptation.
//
// Recipe:
//   [run]   name, dir = runs, seed = 1, threads = 0 (0: OpenMP's default)
//   [ttt]   init = RUN_DIR | CHECKPOINT (a synthetic-task run), init_recipe (optional: when init
//           is a directory without a finished run, `attnlab train init_recipe` runs first, in
//           this process, writing into init (run.dir and run.name are set from the init path);
//           the recipe and the model it builds are checked first; train/run_common.h InitModel),
//           steps = 32, span = 32, lr = 1e-3, weight_decay = 0.01, clip = 1.0 (0: no clipping),
//           params = wq | lora, rank = 8, alpha = 16 (lora), spans = context | answers (the
//           rows' earlier scored positions, e.g. kv_retrieval's demos), examples = 64 (rows per
//           length)
//   [data]  task (+ its keys; default: the init run's task and keys from its recipe.ini),
//           eval_lengths (default: the init run's train.seq_len and data.eval_lengths)
// Rows come from the validation stream of the init run (validation_seed(its run.seed)), one at a
// time; the answer is the target at the row's last scored position p, the context ids[0, p].
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

#include "layers/gpt.h"
#include "layers/param_override.h"
#include "lib/rng.h"
#include "train/recipe.h"
#include "train/trainer.h"

namespace attnlab {

struct TttConfig {
  int64_t steps = 32;
  int64_t span = 32;
  double lr = 1e-3;
  double weight_decay = 0.01;
  double clip = 1.0;          // global gradient-norm clip; 0 = none
  std::string params = "wq";  // wq (full W_Q rows, fp32 copy) | lora (on the W_Q rows)
  int64_t rank = 8;
  double alpha = 16.0;
  // Which next-token targets train the queries: context = every token of a random span (the
  // spec's default); answers = only the context's own answered questions (kv_retrieval's demo
  // values), each step a span ending at one of them (spec 3.6's "spans restricted to the demo
  // region", with the loss on the answers alone: keys and fillers are unpredictable noise).
  std::string spans = "context";
  void validate() const;  // ConfigError naming the key (ttt.<field>)
};

// ConfigError unless `model` can be adapted: token mode, every layer able to attend over a frozen
// k, v prefix (Gpt::frozen_prefix_unsupported: not kda, infsa, linear_infsa). `who` starts the message.
void check_ttt_model(const Gpt& model, const std::string& who);

// The adapted queries for one context: ids [1, T] (T >= 2, span < T) adapted from `gen`.
// Returns the overrides that hold the adaptation (use under an OverrideScope; constants, no graph)
// and fills `cache` (made by model.make_cache(1); reset first) with the frozen prefill of
// ids[0, T - 1). ConfigError for a context shorter than span + 1 or longer than model.context, or
// a model check_ttt_model refuses. `answers` (spans = answers): the positions p < T - 1 whose next
// token ids[p + 1] answers a question of the context; ConfigError when that mode gets none.
ParameterOverrides adapt_queries(const Gpt& model, const std::vector<int32_t>& ids, const TttConfig& config,
                                 Generator& gen, KvCache& cache, const std::vector<int64_t>& answers = {});

// The logits [1, 1, Vp] (CPU) of the next token after `last`, fed through forward_cached on a cache
// that holds the context before it, under `overrides` (empty: the plain model). Advances the cache.
Tensor answer_logits(const Gpt& model, int32_t last, const ParameterOverrides& overrides, KvCache& cache);

// The plain model's answer logits for a context: prefill ids[0, T - 1), then ids[T - 1]; the same
// route the adapted answer takes, so steps = 0 gives bit-identical logits.
Tensor plain_answer_logits(const Gpt& model, const std::vector<int32_t>& ids);

// The mean next-token cross-entropy of span ids[start, start + span) against ids[start + 1, ...]
// over the cache's frozen prefix, under `overrides`; no graph.
double span_loss(const Gpt& model, const std::vector<int32_t>& ids, const KvCache& cache, int64_t start, int64_t span,
                 const ParameterOverrides& overrides);

// `attnlab ttt RECIPE.ini`.
void run_ttt(Recipe& recipe, std::ostream& out);

// `attnlab eval CKPT --ttt`: on the checkpoint's own task at its train.seq_len, `examples`
// validation rows, plain and adapted answer accuracy. ConfigError for a text checkpoint.
void run_eval_ttt(const std::string& checkpoint, const TttConfig& config, int64_t examples, uint64_t seed,
                  std::ostream& out);

// `attnlab sample CKPT --ttt`: adapts on the prompt's tokens (more than span + 1 of them, at most
// model.context), then samples from the frozen prompt cache with the adapted queries. Text models.
void run_sample_ttt(const SampleCommand& cmd, const TttConfig& config, std::ostream& out);

}  // namespace attnlab
