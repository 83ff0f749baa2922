// `attnlab train`: a recipe in, a run directory out.
//
//   runs/<run.name>/recipe.ini       the resolved recipe (every key with the value used)
//   runs/<run.name>/metrics.jsonl    one JSON object per log or eval step
//   runs/<run.name>/tokenizer.bpe    the BPE merges (BPE runs only)
//   runs/<run.name>/samples.txt      the samples printed at the end of training
//   runs/<run.name>/checkpoints/     see train/checkpoint.h
//
// Everything a run reads from its recipe is checked before the run directory is touched; a
// directory that already holds checkpoints is only continued with --resume, which restores the
// weights, optimizer state, data position and RNG so the losses continue bit for bit.
//
// Under `mpirun -np N` each process is one data-parallel rank (train/data_parallel.h): train.batch
// is the global batch, and only rank 0 prints and writes the run directory.
#pragma once

#include <ostream>
#include <string>

#include "layers/gpt.h"
#include "train/recipe.h"

namespace attnlab {

struct TrainOptions {
  bool resume = false;
  // Progress as a rewritten terminal line (true) or plain log lines (false).
  bool interactive = false;
};

struct TrainResult {
  std::string run_dir;
  int64_t steps = 0;
  double final_train_loss = 0;
  double final_val_loss = 0;
  int64_t skipped_steps = 0;  // steps whose loss or gradients were not finite
};

TrainResult run_train(Recipe& recipe, const TrainOptions& options, std::ostream& out);

// Reads and checks every key of a train recipe as run_train would, touching no file and building
// no data: ConfigError for the first bad key or value (`attnlab ablate` checks every cell first).
void check_train_recipe(Recipe& recipe);

// The model a train recipe would build, checked as check_train_recipe checks it, and the
// tokenizer its checkpoints name ("byte", "bpe" or kTaskTokenizer): `attnlab finetune` checks its
// own recipe against a model before training it.
struct TrainRecipeModel {
  GptConfig config = {};
  std::string tokenizer = {};
};
TrainRecipeModel train_recipe_model(Recipe& recipe);

// `attnlab compare-devices`: the recipe's model trained for `steps` steps twice from the same
// initial weights and batches, on the CPU and on run.device (e.g. cuda), printing per step the
// two losses and the largest gradient difference (relative to the parameter's largest gradient),
// and after the last step the largest weight difference and the time per step on each. True
// when losses (1e-4 relative) and gradients (1e-3 relative) agree at every step.
bool run_compare_devices(Recipe& recipe, int64_t steps, std::ostream& out);

// `attnlab eval`: validation loss and perplexity of a checkpoint on its run's validation split
// (all of it, or the first max_batches batches of the run's batch x seq_len windows).
void run_eval(const std::string& checkpoint, int64_t max_batches, std::ostream& out);

struct SampleCommand {
  std::string checkpoint;
  std::string prompt = "\n";
  int64_t tokens = 300;
  double temperature = 0.8;
  int64_t top_k = 40;
  uint64_t seed = 1;
};
// `attnlab sample`: prints the prompt and its continuation.
void run_sample(const SampleCommand& cmd, std::ostream& out);

}  // namespace attnlab
