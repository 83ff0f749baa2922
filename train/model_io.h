// A trained model and what it needs to be used again: its config travels in the checkpoint's
// metadata as JSON, so a checkpoint file alone rebuilds the model.
#pragma once

#include <memory>
#include <string>

#include "layers/gpt.h"

namespace attnlab {

// The config as compact JSON with sorted keys (equal configs give equal strings).
std::string gpt_config_json(const GptConfig& config);
// Parses and validates it; IoError naming `source` when it is malformed or invalid.
GptConfig gpt_config_from_json(const std::string& text, const std::string& source);

// The checkpoint's "tokenizer" for a synthetic-task run (data/synthetic/task.h): its ids come from
// the task's generator, there is no text tokenizer.
inline constexpr const char* kTaskTokenizer = "task";

struct LoadedModel {
  std::string model_path;  // the *.model.safetensors file
  std::string run_dir;     // the run directory it belongs to
  std::string tokenizer;   // "byte", "bpe" or kTaskTokenizer
  GptConfig config;
  std::unique_ptr<Gpt> model;  // weights loaded, in eval mode
};

// Loads a run directory's latest checkpoint, a checkpoints directory's, or a model file.
LoadedModel load_model(const std::string& path);

}  // namespace attnlab
