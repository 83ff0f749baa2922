// `attnlab finetune RECIPE.ini`: supervised fine-tuning of a trained model, plain (method = sft)
// or bilevel with transient fast weights (method = focusft; ../shared/specs/residuals_focusft_qttt.md
// Part 2; the micro-batch steps are train/focusft.h). A run directory like `attnlab train`'s:
// recipe.ini, metrics.jsonl, checkpoints (base weights only, under the init model's names: the
// fast weights are never saved or merged; `attnlab eval` and load_model read them), result.json
// (train/results.h), and tokenizer.bpe for a BPE model.
//
// Recipe (every key checked before anything is written, against the init checkpoint or, when it
// is still to be trained, against the model init_recipe would build; unknown keys are errors):
//   [run]       name, dir, seed, device (as train)
//   [finetune]  init = RUN_DIR | CHECKPOINT (the model to start from)
//               init_recipe = recipes/x.ini (optional: when init is a directory without a finished
//                             run, `attnlab train` of it runs first, in this process, writing
//                             into init (run.dir and run.name are set from the init path);
//                             train/run_common.h InitModel, shared with `attnlab ttt`)
//               method = sft | focusft
//               mask = auto | causal | prefix (auto: causal for sft, prefix for focusft; prefix =
//                      bidirectional over the context, causal over the answer, in both loops)
//               eval_masks = causal,prefix (validation runs under each; spec 2.10; the first one
//                      gives result.json's metric, val_loss and val_accuracy)
//   [focusft]   inner_steps = 2, inner_lr = 1.0, inner_clip = 1.0 (per tensor), rank = 8,
//               alpha = 16, targets = mlp, top_fraction = 0.35 (spec Part 4's tiny-model settings;
//               read for every method so an ablation over finetune.method shares one recipe)
//   [data]      task = kv_retrieval | needle | fact_chain (+ their keys, data.eval_lengths; the
//               model's vocabulary must be the task's), or train_file / val_file = *.jsonl
//               (data/sft/sft_data.h; read with the init model's tokenizer, cut at train.seq_len)
//   [optim]     AdamW: lr = 3e-4, min_lr = lr / 10, warmup = 0 (cosine schedule), weight_decay =
//               0.01, decay_all, beta1, beta2, eps, grad_clip = 1.0 (global, 0 = off)
//   [train]     steps, batch, seq_len, grad_accum (micro-batches per optimizer step), log_every,
//               eval_every, eval_batches, checkpoint_every, max_bad_steps
//
// Metrics (metrics.jsonl): every log step train_loss (the outer loss), lr, grad_norm, ms_per_step
// and, for focusft, inner_loss_first / inner_loss_last (the inner loss before the first and the
// last inner update: before / after adaptation) and inner_skipped. Eval steps add
// val_accuracy_<mask>, val_loss_<mask> (and @<length> for each data.eval_lengths), val_loss /
// val_accuracy (the first eval mask), and the attention-sink mass and context engagement per layer
// ("attention_mass") and their means over the measured layers ("sink_mass",
// "context_engagement"): Gpt::attention_mass on validation batch 0 under the training mask,
// context = the prefix, queries = the positions that predict answer tokens (spec 2.8).
#pragma once

#include <iosfwd>
#include <string>

#include "train/model_io.h"
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
void eval_finetune_checkpoint(const LoadedModel& run, Recipe& recipe, int64_t max_batches, std::ostream& out);

}  // namespace attnlab
