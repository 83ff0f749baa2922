// What `attnlab train` (train/trainer.cpp) does differently for a synthetic task (data.task =
// mqar, regression, ...; data/synthetic/task.h): the recipe keys of the task, the loss the model is
// trained on, and the validation metric at the training length and at longer ones.
//
// Recipe keys (read only when the task uses them, so a key the task ignores stays an unknown-key
// error): data.vocab (fact_chain: the filler-word alphabet), data.pairs, data.queries,
// data.copy_tokens, data.dim, data.out_dim, data.noise, data.segments, data.entities,
// data.locations, data.objects, data.facts (the TaskConfig fields) and data.eval_lengths (a comma
// list of extra sequence lengths to evaluate the metric at).
//
// Batches: training batch `step` is task.batch(run.seed, step, B, T), so a resumed run draws
// exactly what an uninterrupted one would; validation batch i is task.batch(validation_seed(run.seed),
// i, B, L) for each evaluated length L.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "autograd/variable.h"
#include "data/synthetic/task.h"
#include "layers/gpt.h"
#include "train/recipe.h"

namespace attnlab {

// The recipe's data.task ("corpus" when absent: train on text).
inline constexpr const char* kCorpusTask = "corpus";

// A task's settings read from a recipe.
struct TaskSetup {
  std::shared_ptr<const SyntheticTask> task;
  std::vector<int64_t> eval_lengths;  // data.eval_lengths, in the order given (may be empty)
};

// data.eval_lengths' value "64, 128" -> {64, 128} ("" -> none); ConfigError naming r's source and
// the key for anything else.
std::vector<int64_t> parse_eval_lengths(const Recipe& r, const std::string& text);

// Reads the keys of task `name` (not "corpus"), builds the task and validates it for seq_len and
// each eval length (<= context). ConfigError naming the recipe and the key for a bad one.
TaskSetup read_task_recipe(Recipe& recipe, const std::string& name, int64_t seq_len, int64_t context);

// The validation stream's seed: a fixed function of run.seed that no training batch uses.
uint64_t validation_seed(uint64_t run_seed);

// The model's input for a batch on `device` (ids, or vectors).
Variable task_input(const TaskBatch& batch, Device device);

// The training loss of the model's output for a batch: cross-entropy over the targets (token tasks;
// kIgnoreTarget skipped) or the masked mean squared error sum(mask (out - y)^2) / (sum(mask) *
// output_dim) (vector tasks), differentiable through `output`.
Variable task_loss(const SyntheticTask& task, const Variable& output, const TaskBatch& batch);

// The validation loss and metric at one sequence length.
struct TaskEval {
  double loss = 0;  // mean of the batches' losses
  TaskScore score;  // pooled over the batches
};
// `batches` validation batches of batch x seq_len.
TaskEval evaluate_task(const Gpt& model, const SyntheticTask& task, uint64_t seed, int64_t batch, int64_t seq_len,
                       int64_t batches);

// task.describe() of the first `rows` rows of validation batch 0 with the model's outputs.
std::vector<std::string> describe_task_rows(const Gpt& model, const SyntheticTask& task, uint64_t seed, int64_t batch,
                                            int64_t seq_len, int64_t rows);

}  // namespace attnlab
