// The pieces `attnlab train`, `finetune` and `ttt` share (train/run_common.h).
#include "train/run_common.h"

#include <sys/resource.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <ostream>
#include <stdexcept>

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

// ---- recipe keys both training commands read ------------------------------------------------

RunKeys read_run_keys(Recipe& r, const std::string& default_name) {
  RunKeys k;
  const std::string src = r.source();
  const std::string stem = fs::path(src).stem().string();
  k.name = r.get_string("run.name", stem.empty() || stem == "<defaults>" ? default_name : stem);
  k.dir = r.get_string("run.dir", "runs");
  k.seed = static_cast<uint64_t>(r.get_int("run.seed", 1));
  const std::string device = r.get_string("run.device", "cpu");
  try {
    k.device = Device::parse(device);
  } catch (const ConfigError& e) {
    detail::throw_error<ConfigError>("recipe ", src, ": run.device = ", device, ": ", e.what());
  }
  if (k.device.is_cuda()) {
#if ATTNLAB_WITH_CUDA
    try {
      cuda::check_device(k.device);
    } catch (const DeviceError& e) {
      detail::throw_error<ConfigError>("recipe ", src, ": run.device = ", device, ": ", e.what());
    }
#else
    detail::throw_error<ConfigError>(
        "recipe ", src, ": run.device = ", device,
        ": this build of attnlab has no CUDA backend (configured without the CUDA toolkit)");
#endif
  }
  AL_CHECK_CONFIG(!k.name.empty() && k.name.find('/') == std::string::npos && k.name != "." && k.name != "..",
                  "recipe ", src, ": run.name must be a plain directory name; got '", k.name, "'");
  return k;
}

LoopKeys read_loop_keys(Recipe& r, int64_t default_eval_batches) {
  LoopKeys k;
  k.batch = r.get_int("train.batch", k.batch);
  k.seq_len = r.get_int("train.seq_len", k.seq_len);
  k.steps = r.get_int("train.steps", k.steps);
  k.log_every = r.get_int("train.log_every", k.log_every);
  k.eval_every = r.get_int("train.eval_every", k.eval_every);
  k.eval_batches = r.get_int("train.eval_batches", default_eval_batches);
  k.checkpoint_every = r.get_int("train.checkpoint_every", k.checkpoint_every);
  k.max_bad_steps = r.get_int("train.max_bad_steps", k.max_bad_steps);
  for (auto [key, v] : {std::pair{"train.batch", k.batch},
                        {"train.seq_len", k.seq_len},
                        {"train.steps", k.steps},
                        {"train.log_every", k.log_every},
                        {"train.eval_every", k.eval_every},
                        {"train.eval_batches", k.eval_batches},
                        {"train.max_bad_steps", k.max_bad_steps}})
    AL_CHECK_CONFIG(v > 0, "recipe ", r.source(), ": ", key, " must be > 0; got ", v);
  AL_CHECK_CONFIG(k.checkpoint_every >= 0, "recipe ", r.source(),
                  ": train.checkpoint_every must be >= 0 (0: only at the end); got ", k.checkpoint_every);
  return k;
}

AdamWKeys read_adamw_keys(Recipe& r, int64_t steps, double default_lr, double default_weight_decay) {
  AdamWKeys k;
  k.schedule.peak = r.get_double("optim.lr", default_lr);
  k.schedule.min_lr = r.get_double("optim.min_lr", k.schedule.peak * 0.1);
  k.schedule.warmup = r.get_int("optim.warmup", 0);
  k.schedule.total = steps;
  k.weight_decay = r.get_double("optim.weight_decay", default_weight_decay);
  k.decay_all = r.get_bool("optim.decay_all", false);
  k.beta1 = r.get_double("optim.beta1", 0.9);
  k.beta2 = r.get_double("optim.beta2", 0.95);
  k.eps = r.get_double("optim.eps", 1e-8);
  k.grad_clip = r.get_double("optim.grad_clip", 1.0);
  return k;
}

void check_adamw_keys(const Recipe& r, const AdamWKeys& k) {
  try {
    k.schedule.validate();
  } catch (const ConfigError& e) {
    detail::throw_error<ConfigError>("recipe ", r.source(), ": ", e.what());
  }
  AL_CHECK_CONFIG(k.grad_clip >= 0, "recipe ", r.source(), ": optim.grad_clip must be >= 0 (0: off); got ",
                  k.grad_clip);
}

std::vector<bool> decay_mask(const Gpt& model, bool decay_all) {
  std::vector<bool> mask;
  for (const auto& [name, _] : model.named_parameters()) mask.push_back(decay_all || !is_no_decay_parameter(name));
  return mask;
}

// ---- the training loop ----------------------------------------------------------------------

void check_run_dir(const std::string& run_dir, bool resume) {
  const fs::path latest = fs::path(run_dir) / "checkpoints" / "latest";
  AL_CHECK_CONFIG(resume || !fs::exists(latest), "run directory ", run_dir,
                  " already has checkpoints; pass --resume to continue it, or choose another run.name");
  AL_CHECK_CONFIG(!resume || fs::exists(latest), "--resume: ", run_dir, " has no checkpoint to resume from");
}

std::ofstream open_metrics(const std::string& run_dir, bool resume, int64_t step, std::ostream& out) {
  const fs::path path = fs::path(run_dir) / "metrics.jsonl";
  if (resume) {
    truncate_metrics(path, step);
    out << "resuming " << run_dir << " from step " << step << "\n";
  } else if (fs::exists(path)) {
    fs::remove(path);  // a fresh run in a directory without checkpoints starts a new log
  }
  std::ofstream metrics(path, std::ios::app);
  AL_CHECK_IO(metrics.good(), "cannot open ", path.string(), " for writing");
  return metrics;
}

json LogWindow::metrics(int64_t step, double lr, double grad_norm, int64_t tokens_per_step, int64_t skipped) const {
  return {{"step", step},
          {"train_loss", mean_loss()},
          {"lr", lr},
          {"grad_norm", grad_norm},
          {"tokens_per_s", tokens_per_s(tokens_per_step)},
          {"ms_per_step", ms_per_step()},
          {"skipped_steps", skipped}};
}

std::string RunClock::eta(int64_t step, int64_t steps) const {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return format_duration(elapsed / static_cast<double>(step - first_step) * static_cast<double>(steps - step));
}

bool BadSteps::skip(int64_t step, double loss, double grad_norm, std::ostream& out, bool interactive) {
  if (std::isfinite(loss) && std::isfinite(grad_norm)) {
    in_a_row = 0;
    return false;
  }
  ++skipped;
  ++in_a_row;
  out << (interactive ? "\n" : "") << "step " << step << ": loss " << loss << ", gradient norm " << grad_norm
      << " are not finite; step skipped (" << in_a_row << " in a row)\n";
  return true;
}

void BadSteps::throw_diverged(const std::string& what, int64_t step, const std::string& advice) const {
  detail::throw_error<Error>(what, " diverged: ", in_a_row,
                             " non-finite steps in a row (train.max_bad_steps = ", max_in_a_row, ") at step ", step,
                             "; ", advice);
}

Checkpoint run_checkpoint(const Gpt& model, const GptConfig& config, const std::string& tokenizer, const Optimizer& opt,
                          int64_t step, int64_t skipped) {
  Checkpoint ck;
  ck.weights = model.state_dict();
  ck.model_meta = {
      {"config", gpt_config_json(config)}, {"tokenizer", tokenizer}, {"step", std::to_string(step)}, {"format", "pt"}};
  ck.state = opt.state();
  ck.state_meta = {{"step", std::to_string(step)}, {"skipped_steps", std::to_string(skipped)}};
  return ck;
}

void put_generator(std::map<std::string, std::string>& meta, const std::string& prefix, const Generator& gen) {
  meta[prefix + "_seed"] = std::to_string(gen.seed());
  meta[prefix + "_offset"] = std::to_string(gen.offset());
}

Generator generator_from_meta(const std::map<std::string, std::string>& meta, const std::string& prefix) {
  return Generator(std::stoull(meta.at(prefix + "_seed")), std::stoull(meta.at(prefix + "_offset")));
}

void restore_run_state(const std::string& from, bool with_weights, const std::function<void()>& restore) {
  try {
    restore();
  } catch (const std::out_of_range&) {
    detail::throw_error<IoError>("--resume: checkpoint state of ", from, " is incomplete");
  } catch (const std::invalid_argument&) {
    detail::throw_error<IoError>("--resume: checkpoint state of ", from, " has malformed counters");
  } catch (const Error& e) {
    detail::throw_error<IoError>("--resume: checkpoint ", with_weights ? "" : "state of ", from,
                                 " does not fit: ", e.what());
  }
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
