// SGD with optional momentum and decoupled weight decay:
//   v = momentum v + g;  p -= lr (v + weight_decay p)      (v = g when momentum is 0)
#pragma once

#include "optim/optimizer.h"

namespace attnlab {

struct SgdConfig {
  double lr = 1e-2;
  double momentum = 0.0;
  double weight_decay = 0.0;
};

class Sgd : public Optimizer {
 public:
  Sgd(std::vector<Variable> params, SgdConfig config);
  void step() override;
  // "velocity.<i>" per parameter index (when momentum is on).
  std::map<std::string, Tensor> state() const override;
  void load_state(const std::map<std::string, Tensor>& state) override;

 private:
  SgdConfig config_;
  std::vector<Tensor> velocity_;
};

}  // namespace attnlab
