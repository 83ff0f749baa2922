// Evaluating a model with some of its parameters replaced, without touching the model: the
// mechanism under fast weights (FocuSFT's LoRA adapters, W + s B A) and test-time training (a
// trainable copy of W_Q). A ParameterOverrides maps parameters (by identity) to the Variables to
// use in their place; while an OverrideScope holding it is alive on this thread, every layer
// that reads its parameters through effective() sees the replacements. The replacement is an
// ordinary Variable, so gradients flow into whatever it was computed from (A and B, the copy,
// or the base weight itself), and nothing of the module changes: the base weights stay
// bit-identical whatever a scope does.
//
// Which layers consult it: Linear (weight and bias), so every projection of the model (c_attn,
// c_proj, c_fc, KDA's q_proj, ..., lm_head) can be overridden; embeddings, norms and the
// variants' per-head scalars cannot (set() refuses nothing, but they would not see it).
//
// Scopes nest: the innermost scope that maps a parameter wins. Per thread, like NoGradGuard.
#pragma once

#include <unordered_map>
#include <vector>

#include "autograd/variable.h"

namespace attnlab {

class ParameterOverrides {
 public:
  // Use `value` in place of `parameter`. ShapeError unless value has parameter's shape, dtype and
  // device; replacing a parameter twice keeps the last value.
  void set(const Variable& parameter, Variable value);
  // The replacement of `parameter`, or null.
  const Variable* find(const Variable& parameter) const;
  bool empty() const { return map_.empty(); }
  size_t size() const { return map_.size(); }

 private:
  std::unordered_map<const void*, Variable> map_;
};

// Makes `overrides` active on this thread until destroyed. It must outlive the scope.
class OverrideScope {
 public:
  explicit OverrideScope(const ParameterOverrides& overrides);
  ~OverrideScope();
  OverrideScope(const OverrideScope&) = delete;
  OverrideScope& operator=(const OverrideScope&) = delete;

 private:
  const ParameterOverrides* overrides_;
  const OverrideScope* outer_;
  friend const Variable& effective(const Variable& parameter);
};

// What a layer should compute with in place of `parameter`: the innermost active scope's
// replacement, else `parameter` itself (also when it is undefined).
const Variable& effective(const Variable& parameter);

// Sets requires_grad of `parameters` to `on` and restores each one's previous setting when
// destroyed: "gradients with respect to this subset only". With the base weights frozen, a
// backward writes no .grad into them and ops record no graph where no input needs a gradient
// (so the layers below the first adapted one run graph-free by themselves).
class RequiresGradGuard {
 public:
  RequiresGradGuard(const std::vector<Variable>& parameters, bool on);
  ~RequiresGradGuard();
  RequiresGradGuard(const RequiresGradGuard&) = delete;
  RequiresGradGuard& operator=(const RequiresGradGuard&) = delete;

 private:
  std::vector<std::pair<Variable, bool>> saved_;
};

}  // namespace attnlab
