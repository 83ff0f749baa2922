// What the training commands share (`attnlab train`, train/trainer.h; `attnlab finetune`,
// train/finetune.h; `attnlab ttt`, train/ttt.h): the progress line's ETA, metrics.jsonl
// bookkeeping, the checkpoint's tokenizer, the fields every result.json holds, and the init model
// a fine-tuning or test-time-training run starts from (trained first from its init recipe when
// it has not been). One definition each, so the commands' run directories read the same.
#pragma once

#include <cstdint>
#include <filesystem>
#include <iosfwd>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "data/tokenizer.h"
#include "layers/gpt.h"
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
