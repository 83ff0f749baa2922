// LoRA fast weights over a model's linear layers (FocuSFT, ../shared/specs/residuals_focusft_qttt.md
// section 2.2): for each adapted weight W [out, in]
//   W_eff = W + s B A,   A [r, in], B [out, r], s = alpha / r
// A reset draws A ~ U(-1/sqrt(in), 1/sqrt(in)) and sets B = 0, so a freshly reset adapter is an
// exact no-op (W_eff == W) and the first inner step's gradient w.r.t. A is exactly zero.
//
// The adapters live outside the model: they are not parameters of it, never enter its optimizer
// or checkpoint, and are never merged into W. They act only through overrides() in an
// OverrideScope (layers/param_override.h).
//
// Which weights: `targets` names projections of a block, each applied in every layer
// l >= first_layer = floor(L (1 - top_fraction)) (L = 4, 0.35 -> layers 2, 3; top_fraction 1 ->
// all layers). A target is a block-relative module path ("mlp.c_fc", "mlp.c_proj", "attn.c_attn",
// "attn.c_proj", "attn.q_proj", ...) or a group: "mlp" = mlp.c_fc + mlp.c_proj (the spec's
// gate/up/down: our SwiGLU stacks gate and up in one c_fc, so they share one adapter), "attn" =
// every Linear weight under attn. ConfigError when a target matches no weight of an adapted
// layer, listing the ones there are.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "layers/gpt.h"
#include "layers/param_override.h"
#include "lib/rng.h"

namespace attnlab {

struct LoraConfig {
  int64_t rank = 8;
  double alpha = 16.0;
  std::vector<std::string> targets = {"mlp"};
  double top_fraction = 0.35;  // in (0, 1]
  void validate() const;       // ConfigError naming the field
};

class LoraSet {
 public:
  // Adapters in the model's dtype and on its device, A and B zero until reset().
  LoraSet(const Gpt& model, const LoraConfig& config);

  // A ~ U(-1/sqrt(in), 1/sqrt(in)) from `gen`, B = 0, in place (the Variables keep their identity).
  void reset(Generator& gen);
  // W -> W + s B A for every adapted W, computed now: the graph reaches A and B when they require
  // a gradient and W when it does.
  ParameterOverrides overrides() const;
  // "h.<l>.<target>.lora_A" / ".lora_B" with the adapter tensors, in model order (A before B).
  const std::vector<std::pair<std::string, Variable>>& named_parameters() const { return params_; }
  std::vector<Variable> parameters() const;
  void set_requires_grad(bool on);
  int64_t first_layer() const { return first_layer_; }
  double scale() const { return scale_; }
  // The adapted weights' names (h.<l>.<target>.weight), in model order.
  std::vector<std::string> adapted() const;

 private:
  struct Adapter {
    std::string name;  // of the base weight
    Variable weight, a, b;
  };
  std::vector<Adapter> adapters_;
  std::vector<std::pair<std::string, Variable>> params_;
  int64_t first_layer_ = 0;
  double scale_ = 1.0;
};

}  // namespace attnlab
