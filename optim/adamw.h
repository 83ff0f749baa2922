// AdamW (Loshchilov & Hutter, decoupled weight decay), one fused pass per parameter:
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr (m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps) + weight_decay p)
// State (m, v) is f32 for f32 parameters and f64 for f64 ones, on the parameter's device (a CUDA
// parameter is updated by one fused kernel, adamw_cuda.cu; state() hands out CPU copies of its
// m and v, and load_state puts them back on the device); t counts steps. Weight decay
// applies to the parameters `decay` marks (all when it is empty): transformers leave norms,
// biases and embeddings undecayed.
#pragma once

#include "optim/optimizer.h"

namespace attnlab {

struct AdamWConfig {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

class AdamW : public Optimizer {
 public:
  AdamW(std::vector<Variable> params, AdamWConfig config, std::vector<bool> decay = {});
  void step() override;
  int64_t steps() const { return t_; }
  // "m.<i>", "v.<i>" per parameter index, and "t" (the step count, an f64 scalar).
  std::map<std::string, Tensor> state() const override;
  void load_state(const std::map<std::string, Tensor>& state) override;

 private:
  AdamWConfig config_;
  std::vector<bool> decay_;
  std::vector<Tensor> m_, v_;
  int64_t t_ = 0;
};

}  // namespace attnlab
