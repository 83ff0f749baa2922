// Optimizers update parameters in place from their accumulated gradients. Parameters that do
// not require a gradient, or have none this step, are skipped: freezing a subset of weights is
// setting requires_grad to false.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "autograd/variable.h"

namespace attnlab {

class Optimizer {
 public:
  explicit Optimizer(std::vector<Variable> params);
  virtual ~Optimizer() = default;
  // One update of every trainable parameter with a gradient. Runs without recording a graph.
  virtual void step() = 0;
  void zero_grad();
  // Everything step() depends on besides the parameters, as named tensors and counters, for
  // checkpoints. load_state checks names and shapes before changing anything.
  virtual std::map<std::string, Tensor> state() const = 0;
  virtual void load_state(const std::map<std::string, Tensor>& state) = 0;
  double lr() const { return lr_; }
  void set_lr(double lr) { lr_ = lr; }
  const std::vector<Variable>& params() const { return params_; }

 protected:
  std::vector<Variable> params_;
  double lr_ = 1e-3;
};

// Scales all gradients so that their joint L2 norm is at most max_norm; returns the norm
// before clipping (computed in double, deterministically).
double clip_grad_norm(const std::vector<Variable>& params, double max_norm);

// The joint L2 norm of all gradients, without changing them (NaN or inf if any entry is).
double grad_norm(const std::vector<Variable>& params);

namespace detail {
// Shared by the optimizers' load_state: copies state[prefix + i] into slots[i] for every i
// where params[i] has a slot, after checking that the keys and shapes match.
void load_slots(const std::map<std::string, Tensor>& state, const std::string& prefix,
                const std::vector<Variable>& params, std::vector<Tensor>& slots, const char* who);
void save_slots(std::map<std::string, Tensor>& state, const std::string& prefix, const std::vector<Tensor>& slots);
}  // namespace detail

}  // namespace attnlab
