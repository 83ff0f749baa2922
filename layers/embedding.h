// Token embedding: y[*, :] = weight[ids[*], :].
//   ids i32 [*] -> y [*, dim]; weight [num, dim] (the layout of PyTorch's nn.Embedding).
// Initialisation: weight ~ normal(0, init_std); GPT-2 uses 0.02 (PyTorch's default is 1).
#pragma once

#include "layers/module.h"
#include "lib/rng.h"

namespace attnlab {

class Embedding : public Module {
 public:
  Embedding(int64_t num, int64_t dim, Generator& gen, DType dtype = DType::f32, double init_std = 0.02);
  // Ids outside [0, num) are errors (checked by the embedding op before anything is read).
  Variable forward(const Variable& ids) const;

  const Variable& weight() const { return weight_; }
  int64_t num() const { return weight_.size(0); }
  int64_t dim() const { return weight_.size(1); }

 private:
  Variable weight_;
};

}  // namespace attnlab
