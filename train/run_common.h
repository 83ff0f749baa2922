// What the training commands share (`attnlab train`, train/trainer.h; `attnlab finetune`,
// train/finetune.h; `attnlab ttt`, train/ttt.h): the progress line's ETA, metrics.jsonl
// bookkeeping, the checkpoint's tokenizer, the fields every result.json holds, and the init model
// a fine-tuning or test-time-training run starts from (trained first from its init recipe when
// it has not been); and the pieces of the training loop `train` and `finetune` both run: the [run],
// [train] and AdamW [optim] keys, the run directory checks, metrics.jsonl's opening and lines, the
// non-finite step guard, the checkpoint's counters and the resume's error mapping. One definition
// each, so the commands' recipes, messages and run directories read the same.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iosfwd>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "layers/gpt.h"
#include "lib/device.h"
#include "lib/rng.h"
#include "optim/adamw.h"
#include "optim/optimizer.h"
#include "optim/schedule.h"
#include "train/checkpoint.h"
#include "train/model_io.h"
#include "train/recipe.h"
#include "train/trainer.h"

namespace attnlab {

// "42s", "3m07s", "1h05m" (rounded to the second).
std::string format_duration(double seconds);

// Keeps the metrics.jsonl lines of steps <= `step` (a resumed run rewrites what came after); a
// torn last line from an interrupted run is dropped. Nothing to do when the file is not there.
void truncate_metrics(const std::filesystem::path& path, int64_t step);

// The process's peak resident set in MiB (Linux reports ru_maxrss in KiB).
double peak_rss_mb();

// The text tokenizer a checkpoint names: "byte", or "bpe" read from the run directory's
// tokenizer.bpe; null for kTaskTokenizer (task ids have no text form).
std::unique_ptr<Tokenizer> load_run_tokenizer(const std::string& kind, const std::string& run_dir);

// The result.json fields (train/results.h) every training run writes: steps, final_train_loss,
// final_val_loss, skipped_steps, seconds, tokens_per_s, parameters, peak_rss_mb, attention,
// residual, device, threads (and peak_device_mb on a CUDA device). Train loss and throughput come
// from the run's metrics.jsonl, which covers the whole run also when it was resumed: the final
// train loss is the last log window's mean (r.final_train_loss when no line has one), tokens/s
// the run's tokens (`tokens_per_step` a step) over the summed step times. With `ms_per_step`,
// also the mean step time. The caller adds its metric and its own fields.
nlohmann::json result_json(const std::string& run_dir, const TrainResult& r, double final_val_loss, double seconds,
                           int64_t tokens_per_step, const Gpt& model, const GptConfig& config, Device device,
                           bool ms_per_step = false);

// A metric by sequence length as result.json keeps it: {"64": v, ...}.
nlohmann::json by_length_json(const std::map<int64_t, double>& by_length);

// ---- recipe keys both training commands read ------------------------------------------------

// [run]: where the run directory is, its seed and its device. `train` and `finetune` read them
// with the same defaults but the name's (the recipe file's stem, else `default_name`).
struct RunKeys {
  std::string name, dir;
  uint64_t seed = 1;
  Device device = Device::cpu();  // run.device: cpu, cuda or cuda:N

  std::string run_dir() const { return (std::filesystem::path(dir) / name).string(); }
};

// Reads run.name, run.dir, run.seed, run.device; ConfigError when the name is not a plain
// directory name or the device is malformed or not in this build (or, with CUDA, not there).
RunKeys read_run_keys(Recipe& r, const std::string& default_name);

// [train]'s loop keys and the cadence they set. The defaults are the same for both commands but
// eval_batches (a finetune evaluates several masks and lengths: fewer batches each).
struct LoopKeys {
  int64_t batch = 8, seq_len = 128, steps = 100, log_every = 10, eval_every = 100, eval_batches = 20;
  int64_t checkpoint_every = 0, max_bad_steps = 5;

  // After optimizer step `step` (1-based): evaluate, write a log line, save a checkpoint. The last
  // step does all three, and step 1 is logged so that a run shows its start at once.
  bool eval_due(int64_t step) const { return step % eval_every == 0 || step == steps; }
  bool log_due(int64_t step) const { return step % log_every == 0 || eval_due(step) || step == 1; }
  bool checkpoint_due(int64_t step) const {
    return (checkpoint_every > 0 && step % checkpoint_every == 0) || step == steps;
  }
};

// Reads train.batch, seq_len, steps, log_every, eval_every, eval_batches (default
// `default_eval_batches`), checkpoint_every, max_bad_steps; ConfigError when one is out of range.
LoopKeys read_loop_keys(Recipe& r, int64_t default_eval_batches);

// The AdamW keys of [optim] and the warmup-cosine schedule over train.steps. The peak lr and the
// weight decay default differently (pretraining vs fine-tuning), the rest alike.
struct AdamWKeys {
  WarmupCosine schedule;
  double weight_decay = 0, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, grad_clip = 1.0;  // grad_clip 0: off
  bool decay_all = false;  // also decay norms, biases and embeddings

  AdamWConfig adamw() const {
    return AdamWConfig{.lr = schedule.peak, .beta1 = beta1, .beta2 = beta2, .eps = eps, .weight_decay = weight_decay};
  }
};

// Reads optim.lr, min_lr, warmup, weight_decay, decay_all, beta1, beta2, eps, grad_clip. Checked
// apart (check_adamw_keys) so that `train` can read its own [optim] keys in between, as it always
// has, and report the first bad key in the same order.
AdamWKeys read_adamw_keys(Recipe& r, int64_t steps, double default_lr, double default_weight_decay);
void check_adamw_keys(const Recipe& r, const AdamWKeys& k);

// Weight decay applies to the matrices of linear layers; norms, biases and embeddings are left
// alone unless optim.decay_all asks for everything. One flag a parameter, in named_parameters order.
std::vector<bool> decay_mask(const Gpt& model, bool decay_all);

// ---- the training loop ----------------------------------------------------------------------

// Before anything is written: a fresh run must not overwrite checkpoints, a resumed one needs one.
void check_run_dir(const std::string& run_dir, bool resume);

// metrics.jsonl for appending: a resumed run keeps the lines up to `step` (and says it resumes),
// a fresh one starts a new file. IoError when it cannot be opened.
std::ofstream open_metrics(const std::string& run_dir, bool resume, int64_t step, std::ostream& out);

// The steps since the last log line: what the line and its metrics.jsonl entry average over.
struct LogWindow {
  double loss = 0, secs = 0;
  int64_t steps = 0;

  void add(double step_loss, double step_secs) {
    loss += step_loss;
    secs += step_secs;
    ++steps;
  }
  double mean_loss() const { return loss / static_cast<double>(steps); }
  double ms_per_step() const { return 1000.0 * secs / static_cast<double>(steps); }
  double tokens_per_s(int64_t tokens_per_step) const {
    return static_cast<double>(steps * tokens_per_step) / std::max(secs, 1e-9);
  }
  // The metrics.jsonl fields every training command writes: step, train_loss, lr, grad_norm,
  // tokens_per_s, ms_per_step, skipped_steps (results.h and the report read them).
  nlohmann::json metrics(int64_t step, double lr, double grad_norm, int64_t tokens_per_step, int64_t skipped) const;
  void reset() { *this = LogWindow{}; }
};

// The loop's clock, for the progress line's time left: the mean time of the steps this process
// ran (from `first_step`, where a resumed run started) times the steps to go.
struct RunClock {
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  int64_t first_step = 0;

  std::string eta(int64_t step, int64_t steps) const;
};

// Non-finite steps (loss or gradient norm): skipped and counted; too many in a row end the run.
struct BadSteps {
  int64_t max_in_a_row = 5;  // train.max_bad_steps
  int64_t in_a_row = 0;
  int64_t skipped = 0;  // over the whole run: checkpointed, restored on resume, in result.json

  // Whether step `step` (1-based) must be skipped; says so on `out` (after a newline when a
  // progress line is being redrawn there).
  bool skip(int64_t step, double loss, double grad_norm, std::ostream& out, bool interactive = false);
  bool diverged() const { return in_a_row >= max_in_a_row; }
  // Error "<what> diverged: N non-finite steps in a row (train.max_bad_steps = M) at step S; <advice>".
  [[noreturn]] void throw_diverged(const std::string& what, int64_t step, const std::string& advice) const;
};

// A training run's checkpoint at `step`, as both commands write it: the model's weights, its
// model_meta (config, tokenizer, step, format), the optimizer's state and the counters both keep
// (step, skipped_steps). The caller adds its own counters (its generators, a sampler's position).
Checkpoint run_checkpoint(const Gpt& model, const GptConfig& config, const std::string& tokenizer, const Optimizer& opt,
                          int64_t step, int64_t skipped);
// A generator's state in a checkpoint's state_meta: `prefix`_seed and `prefix`_offset.
void put_generator(std::map<std::string, std::string>& meta, const std::string& prefix, const Generator& gen);
// The generator put_generator saved; std::out_of_range / std::invalid_argument when it is missing
// or malformed (restore_run_state maps them).
Generator generator_from_meta(const std::map<std::string, std::string>& meta, const std::string& prefix);

// Runs `restore` (what a resumed run reads back from checkpoint `from`: its counters, optimizer
// state, generators) and turns its failures into IoError: a missing counter "is incomplete", an
// unparsable one "has malformed counters", anything else "does not fit". The last names
// "checkpoint <from>" when `restore` also loads the weights, else "checkpoint state of <from>".
void restore_run_state(const std::string& from, bool with_weights, const std::function<void()>& restore);

// ---- the init model -------------------------------------------------------------------------

// The model a run starts from (finetune.init, ttt.init): a run directory or a checkpoint, and
// optionally the train recipe that makes it (`key`_recipe). When `path` names a directory (or
// nothing yet) that holds no finished run (no result.json), the recipe is trained first, in this
// process, writing into `path` (run.dir and run.name come from it; an interrupted run there is
// resumed), its progress on the caller's stream.
struct InitModel {
  std::string key;     // the recipe key naming it, e.g. "finetune.init"; messages name it
  std::string path;    // RUN_DIR | CHECKPOINT
  std::string recipe;  // `key`_recipe: a train recipe, "" = none
};

// Whether the init model must first be trained from its recipe (there is one, and `path` holds
// no finished run).
bool init_needs_training(const InitModel& init);

// The init recipe with run.dir and run.name set from the init path.
Recipe init_train_recipe(const InitModel& init);

// Reads and checks every key of the init recipe as `attnlab train` would, writing nothing: the
// model it would build. ConfigError "recipe `src`: <key>_recipe = ...: ..." when it is bad.
TrainRecipeModel check_init_recipe(const InitModel& init, const std::string& src);

// Loads the init checkpoint; ConfigError "recipe `src`: <key> = ...: ..." when there is none
// (suggesting <key>_recipe when the recipe has none).
LoadedModel load_init_checkpoint(const InitModel& init, const std::string& src);

// Trains the init model when init_needs_training (the caller has checked the recipe with
// check_init_recipe first), then loads it as load_init_checkpoint does.
LoadedModel train_and_load_init(const InitModel& init, const std::string& src, std::ostream& out);

}  // namespace attnlab
