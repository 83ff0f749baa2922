#include "train/checkpoint.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "lib/error.h"
#include "lib/file_io.h"
#include "lib/safetensors.h"

namespace attnlab {

namespace fs = std::filesystem;

namespace {
constexpr const char* kModelSuffix = ".model.safetensors";
constexpr const char* kStateSuffix = ".state.safetensors";

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%06lld", static_cast<long long>(step));
  return buf;
}

std::string state_path_of(const std::string& model_path) {
  const std::string base = model_path.substr(0, model_path.size() - std::strlen(kModelSuffix));
  return base + kStateSuffix;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

std::string save_checkpoint(const std::string& run_dir, int64_t step, const Checkpoint& ckpt) {
  const fs::path dir = fs::path(run_dir) / "checkpoints";
  fs::create_directories(dir);
  const std::string base = (dir / step_name(step)).string();
  std::map<std::string, Tensor> state;
  for (const auto& [k, t] : ckpt.state) state["optim." + k] = t;
  // The state file first and the pointer last: `latest` only ever names complete pairs.
  save_safetensors(base + kStateSuffix, state, ckpt.state_meta);
  save_safetensors(base + kModelSuffix, ckpt.weights, ckpt.model_meta);
  write_file_atomic((dir / "latest").string(), step_name(step) + "\n");
  return base + kModelSuffix;
}

std::string resolve_checkpoint(const std::string& path) {
  AL_CHECK_IO(fs::exists(path), "checkpoint '", path, "' does not exist");
  if (fs::is_regular_file(path)) {
    AL_CHECK_IO(ends_with(path, kModelSuffix), "'", path, "' is not a checkpoint (expected a run directory or a *",
                kModelSuffix, " file)");
    return path;
  }
  fs::path dir = path;
  if (fs::exists(dir / "checkpoints")) dir /= "checkpoints";
  std::ifstream latest(dir / "latest");
  AL_CHECK_IO(latest.good(), "'", path, "' has no checkpoints (no ", (dir / "latest").string(), ")");
  std::string name;
  std::getline(latest, name);
  AL_CHECK_IO(!name.empty() && name.find('/') == std::string::npos, "'", (dir / "latest").string(),
              "' is malformed: expected a checkpoint name like step-000500");
  const std::string model = (dir / (name + kModelSuffix)).string();
  AL_CHECK_IO(fs::exists(model), "'", (dir / "latest").string(), "' names ", name, ", but ", model, " is missing");
  return model;
}

Checkpoint load_checkpoint(const std::string& model_path, bool with_state) {
  Checkpoint c;
  SafetensorsFile m = load_safetensors(model_path);
  c.weights = std::move(m.tensors);
  c.model_meta = std::move(m.metadata);
  if (with_state) {
    SafetensorsFile s = load_safetensors(state_path_of(model_path));
    for (auto& [k, t] : s.tensors) {
      AL_CHECK_IO(k.rfind("optim.", 0) == 0, "checkpoint state '", state_path_of(model_path),
                  "' has an unexpected tensor '", k, "'");
      c.state[k.substr(6)] = t;
    }
    c.state_meta = std::move(s.metadata);
  }
  return c;
}

std::string run_dir_of_checkpoint(const std::string& model_path) {
  return fs::path(model_path).parent_path().parent_path().string();
}

}  // namespace attnlab
