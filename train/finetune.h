// `attnlab finetune RECIPE.ini`: supervised fine-tuning of a trained model, plain (method = sft)
// or bilevel with transient fast weights (method = focusft; ../shared/specs/residuals_focusft_qttt.md
// Part 2). A run directory like `attnlab train`'s: recipe.ini, metrics.jsonl, checkpoints (base
// weights only: fast weights are never saved or merged), result.json (train/results.h).
//
// Recipe (every key checked before anything is written; unknown keys are errors):
//   [run]       name, seed, device, threads (as train)
//   [finetune]  init = RUN_DIR | CHECKPOINT (the model to start from)
//               init_recipe = recipes/x.ini (optional: trains it with `attnlab train` first when
//                             init has no checkpoint yet)
//               method = sft | focusft
//               mask = auto | causal | prefix (auto: causal for sft, prefix for focusft; prefix =
//                      bidirectional over the context, causal over the answer, in both loops)
//               eval_masks = causal,prefix (validation runs under each; spec 2.10)
//   [focusft]   inner_steps = 2, inner_lr = 1.0, inner_clip = 1.0 (per tensor), rank = 8,
//               alpha = 16, targets = mlp, top_fraction = 0.35 (spec Part 4's tiny-model settings)
//   [data]      task = kv_retrieval | needle | fact_chain (+ their keys, data.eval_lengths), or
//               train_file / val_file = *.jsonl (data/sft/sft_data.h)
//   [optim]     as train (AdamW lr, weight_decay, warmup, schedule, grad_clip)
//   [train]     steps, batch, seq_len, grad_accum, log_every, eval_every, eval_batches, checkpoint_every
//
// Metrics (metrics.jsonl at eval steps): val answer accuracy and loss per eval mask and length,
// attention-sink mass and context engagement per layer and their means (Gpt::attention_mass on a
// fixed probe batch, spec 2.8), the inner loss before/after adaptation for focusft.
#pragma once

#include <iosfwd>
#include <string>

#include "layers/gpt.h"
#include "train/recipe.h"
#include "train/trainer.h"

namespace attnlab {

TrainResult run_finetune(Recipe& recipe, const TrainOptions& options, std::ostream& out);

// Reads and checks every key as run_finetune would, touching nothing (ablate checks cells with it).
void check_finetune_recipe(Recipe& recipe);

// Whether a run's recipe is a finetune recipe (it has [finetune] keys).
bool is_finetune_recipe(const Recipe& recipe);

// `attnlab eval` of a finetune run's checkpoint (`recipe`: the run's recipe.ini): the answer
// accuracy and loss under each finetune.eval_masks at train.seq_len and each data.eval_lengths,
// on `max_batches` validation batches (train.eval_batches when < 0).
void eval_finetune_checkpoint(const std::string& model_path, const Gpt& model, Recipe& recipe, int64_t max_batches,
                              std::ostream& out);

}  // namespace attnlab
