// The pieces `attnlab train`, `finetune` and `ttt` share (train/run_common.h).
#include "train/run_common.h"

#include <sys/resource.h>

#include <cstdio>
#include <fstream>
#include <ostream>

#include "data/bpe.h"
#include "data/byte_tokenizer.h"
#include "lib/cpu/parallel.h"
#include "lib/error.h"
#include "lib/file_io.h"
#if ATTNLAB_WITH_CUDA
#include "lib/cuda/runtime.h"
#endif
#include "train/checkpoint.h"
#include "train/results.h"

namespace attnlab {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string format_duration(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600),
                  static_cast<long long>(s % 3600 / 60));
  else if (s >= 60)
    std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  else
    std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
  return buf;
}

void truncate_metrics(const fs::path& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    try {
      if (json::parse(line).at("step").get<int64_t>() <= step) kept += line + "\n";
    } catch (const json::exception&) {
      // a torn last line from an interrupted run: dropped
    }
  }
  write_file_atomic(path.string(), kept);
}

double peak_rss_mb() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

std::unique_ptr<Tokenizer> load_run_tokenizer(const std::string& kind, const std::string& run_dir) {
  if (kind == "byte") return std::make_unique<ByteTokenizer>();
  if (kind == "bpe")
    return std::make_unique<BpeTokenizer>(BpeTokenizer::load((fs::path(run_dir) / "tokenizer.bpe").string()));
  return nullptr;
}

json result_json(const std::string& run_dir, const TrainResult& r, double final_val_loss, double seconds,
                 int64_t tokens_per_step, const Gpt& model, const GptConfig& config, Device device, bool ms_per_step) {
  double train_loss = r.final_train_loss, step_secs = 0;
  int64_t prev = 0, timed_steps = 0;
  std::ifstream in(fs::path(run_dir) / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    try {
      const json m = json::parse(line);
      const int64_t step = m.at("step").get<int64_t>();
      train_loss = m.at("train_loss").get<double>();
      step_secs += m.at("ms_per_step").get<double>() / 1000.0 * static_cast<double>(step - prev);
      timed_steps += step - prev;
      prev = step;
    } catch (const json::exception&) {
      // a line this run did not write (cannot happen after truncate_metrics): skipped
    }
  }
  const double tokens = static_cast<double>(timed_steps * tokens_per_step);
  json j = {{"steps", r.steps},
            {"final_train_loss", train_loss},
            {"final_val_loss", final_val_loss},
            {"skipped_steps", r.skipped_steps},
            {"seconds", seconds},
            {"tokens_per_s", step_secs > 0 ? tokens / step_secs : 0.0},
            {"parameters", model.num_parameters()},
            {"peak_rss_mb", peak_rss_mb()},
            {"attention", config.layer_pattern.empty() ? config.attention : config.layer_pattern},
            {"residual", config.residual.mode},
            {"device", device.str()},
            {"threads", cpu::max_threads()}};
  if (ms_per_step) j["ms_per_step"] = timed_steps > 0 ? 1000.0 * step_secs / static_cast<double>(timed_steps) : 0.0;
#if ATTNLAB_WITH_CUDA
  if (device.is_cuda())
    j["peak_device_mb"] = static_cast<double>(cuda::cache_stats().peak_in_use_bytes) / (1024.0 * 1024.0);
#endif
  return j;
}

json by_length_json(const std::map<int64_t, double>& by_length) {
  json by = json::object();
  for (const auto& [len, v] : by_length) by[std::to_string(len)] = v;
  return by;
}

// ---- the init model -------------------------------------------------------------------------

namespace {

// The init path as the run directory a training run writes: {run.dir, run.name}.
std::pair<std::string, std::string> init_run_location(const std::string& init) {
  fs::path p = fs::path(init).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  const std::string parent = p.parent_path().string();
  return {parent.empty() ? "." : parent, p.filename().string()};
}

}  // namespace

bool init_needs_training(const InitModel& init) {
  if (init.recipe.empty()) return false;
  const fs::path p(init.path);
  if (fs::exists(p) && !fs::is_directory(p)) return false;  // a checkpoint file
  if (fs::exists(p / kResultFile)) return false;
  // A checkpoints directory given directly counts as trained when it has a latest.
  if (fs::exists(p / "latest")) return false;
  return true;
}

Recipe init_train_recipe(const InitModel& init) {
  const auto [dir, name] = init_run_location(init.path);
  return Recipe::load(init.recipe, {"--run.dir=" + dir, "--run.name=" + name});
}

TrainRecipeModel check_init_recipe(const InitModel& init, const std::string& src) {
  try {
    Recipe r = init_train_recipe(init);
    return train_recipe_model(r);
  } catch (const Error& e) {
    if (!dynamic_cast<const ConfigError*>(&e) && !dynamic_cast<const IoError*>(&e)) throw;
    detail::throw_error<ConfigError>("recipe ", src, ": ", init.key, "_recipe = ", init.recipe, ": ", e.what());
  }
}

LoadedModel load_init_checkpoint(const InitModel& init, const std::string& src) {
  try {
    return load_model(init.path);
  } catch (const IoError& e) {
    detail::throw_error<ConfigError>("recipe ", src, ": ", init.key, " = ", init.path, ": ", e.what(),
                                     init.recipe.empty() ? " (set " + init.key + "_recipe to train it first)" : "");
  }
}

LoadedModel train_and_load_init(const InitModel& init, const std::string& src, std::ostream& out) {
  if (init_needs_training(init)) {
    Recipe pre = init_train_recipe(init);
    TrainOptions o;
    o.resume = fs::exists(fs::path(init.path) / "checkpoints" / "latest");
    out << init.key << " " << init.path << " is not trained yet: " << (o.resume ? "resuming" : "running")
        << " attnlab train " << init.recipe << " into it\n"
        << std::flush;
    run_train(pre, o, out);
  }
  return load_init_checkpoint(init, src);
}

}  // namespace attnlab
