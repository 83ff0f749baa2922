// Optimizers update parameters in place from their accumulated gradients. Parameters that do
// not require a gradient, or have none this step, are skipped: freezing a subset of weights is
// setting requires_grad to false.
#pragma once

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

}  // namespace attnlab
