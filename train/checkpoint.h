// Checkpoints: two safetensors files per save, written atomically, then a `latest` pointer.
//
//   <run>/checkpoints/step-000500.model.safetensors   the weights under their stable names
//                                                      (readable by any safetensors reader) and
//                                                      the model config as JSON metadata
//   <run>/checkpoints/step-000500.state.safetensors   optimizer state ("optim.*") and the
//                                                      counters a resume needs, as metadata
//   <run>/checkpoints/latest                           "step-000500", replaced last
//
// A crash at any point leaves `latest` naming a complete checkpoint.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "lib/tensor.h"

namespace attnlab {

struct Checkpoint {
  std::map<std::string, Tensor> weights;
  std::map<std::string, std::string> model_meta;  // "config" (JSON), "tokenizer", "step"
  std::map<std::string, Tensor> state;            // optimizer state, without the "optim." prefix
  std::map<std::string, std::string> state_meta;  // counters: step, sampler_step, rng_offset, ...
};

// Writes the checkpoint of `step` under run_dir/checkpoints and points `latest` at it.
// Returns the model file's path.
std::string save_checkpoint(const std::string& run_dir, int64_t step, const Checkpoint& ckpt);

// The model file named by `path`: a run directory (its latest checkpoint), a checkpoints
// directory, or a *.model.safetensors file. IoError when there is none.
std::string resolve_checkpoint(const std::string& path);

// Loads a model file and, when `with_state`, the state file beside it.
Checkpoint load_checkpoint(const std::string& model_path, bool with_state);

// The run directory a checkpoint file belongs to (the parent of its checkpoints directory).
std::string run_dir_of_checkpoint(const std::string& model_path);

}  // namespace attnlab
