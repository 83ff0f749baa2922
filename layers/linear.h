// Linear layer: y = x W^T + b.
//   x [*, in] -> y [*, out]; weight [out, in] (the layout PyTorch checkpoints use), bias [out].
// Initialisation: weight ~ U(-1/sqrt(in), 1/sqrt(in)), bias zero.
// Precision: MatmulPrecision::f32 (default) computes in the parameters' dtype;
// MatmulPrecision::bf16 is mixed precision (f32 parameters and x required): x and the weight are
// rounded to bf16 for the products, sums and y stay f32, the weight's gradient is f32
// (autograd/ops/linear/linear.h has the exact semantics).
#pragma once

#include "autograd/ops/linear/linear.h"
#include "layers/module.h"
#include "lib/rng.h"

namespace attnlab {

class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias, Generator& gen, DType dtype = DType::f32,
         MatmulPrecision precision = MatmulPrecision::f32);
  Variable forward(const Variable& x) const;

  const Variable& weight() const { return weight_; }
  const Variable& bias() const { return bias_; }
  MatmulPrecision precision() const { return precision_; }

 private:
  Variable weight_, bias_;
  MatmulPrecision precision_;
};

}  // namespace attnlab
