// Linear layer: y = x W^T + b.
//   x [*, in] -> y [*, out]; weight [out, in] (the layout PyTorch checkpoints use), bias [out].
// Initialisation: weight ~ U(-1/sqrt(in), 1/sqrt(in)), bias zero.
#pragma once

#include "layers/module.h"
#include "lib/rng.h"

namespace attnlab {

class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias, Generator& gen, DType dtype = DType::f32);
  Variable forward(const Variable& x) const;

  const Variable& weight() const { return weight_; }
  const Variable& bias() const { return bias_; }

 private:
  Variable weight_, bias_;
};

}  // namespace attnlab
