// Normalisation layers over the last dim, x [*, C] -> y [*, C]:
//   LayerNorm  y = (x - mean) / sqrt(var + eps) * weight + bias   (weight [C] = 1, bias [C] = 0)
//   RmsNorm    y = x / sqrt(mean(x^2) + eps) * weight               (weight [C] = 1, no bias)
// Parameter names "weight" and "bias", as PyTorch's nn.LayerNorm and nn.RMSNorm.
#pragma once

#include <memory>
#include <string>

#include "layers/module.h"

namespace attnlab {

class Norm : public Module {
 public:
  virtual Variable forward(const Variable& x) const = 0;
};

class LayerNorm : public Norm {
 public:
  // eps 1e-5: PyTorch's nn.LayerNorm default, which the GPT-2 peer uses.
  LayerNorm(int64_t dim, bool bias, DType dtype = DType::f32, double eps = 1e-5);
  Variable forward(const Variable& x) const override;
  const Variable& weight() const { return weight_; }
  const Variable& bias() const { return bias_; }

 private:
  Variable weight_, bias_;
  double eps_;
};

class RmsNorm : public Norm {
 public:
  RmsNorm(int64_t dim, DType dtype = DType::f32, double eps = 1e-6);
  Variable forward(const Variable& x) const override;
  const Variable& weight() const { return weight_; }

 private:
  Variable weight_;
  double eps_;
};

// kind: "layernorm" (with a bias when `bias`) or "rmsnorm" (never a bias); ConfigError otherwise.
std::shared_ptr<Norm> make_norm(const std::string& kind, int64_t dim, bool bias, DType dtype = DType::f32);

}  // namespace attnlab
