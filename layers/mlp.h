// Transformer feed-forward layers, x [*, C] -> y [*, C], hidden width Hd:
//   GeluMlp    y = c_proj(gelu(c_fc(x)))                  c_fc [Hd, C], c_proj [C, Hd]
//              gelu is GPT-2's tanh form (PyTorch's F.gelu(approximate="tanh")).
//   SwiGluMlp  h = c_fc(x) [*, 2 Hd];  gate = h[..., :Hd], up = h[..., Hd:]
//              y = c_proj(silu(gate) * up)                c_fc [2 Hd, C], c_proj [C, Hd]
//              (gate and up are one stacked Linear, gate rows first, so one GEMM makes both.)
// Parameter names c_fc.weight/.bias and c_proj.weight/.bias, as in GPT-2.
// Initialisation is Linear's; a model re-initialises (see Gpt). `precision` is both Linears'
// matmul precision (bf16: mixed precision, layers/linear.h); gelu, silu and the gating product
// stay in the parameters' dtype.
#pragma once

#include <memory>
#include <string>

#include "layers/linear.h"
#include "layers/module.h"
#include "lib/rng.h"

namespace attnlab {

class Mlp : public Module {
 public:
  virtual Variable forward(const Variable& x) const = 0;
};

class GeluMlp : public Mlp {
 public:
  GeluMlp(int64_t dim, int64_t hidden, bool bias, Generator& gen, DType dtype = DType::f32,
          MatmulPrecision precision = MatmulPrecision::f32);
  Variable forward(const Variable& x) const override;
  const Linear& c_fc() const { return *c_fc_; }
  const Linear& c_proj() const { return *c_proj_; }

 private:
  std::shared_ptr<Linear> c_fc_, c_proj_;
};

class SwiGluMlp : public Mlp {
 public:
  SwiGluMlp(int64_t dim, int64_t hidden, bool bias, Generator& gen, DType dtype = DType::f32,
            MatmulPrecision precision = MatmulPrecision::f32);
  Variable forward(const Variable& x) const override;
  const Linear& c_fc() const { return *c_fc_; }
  const Linear& c_proj() const { return *c_proj_; }

 private:
  std::shared_ptr<Linear> c_fc_, c_proj_;
  int64_t hidden_;
};

// kind: "gelu" or "swiglu"; ConfigError otherwise.
std::shared_ptr<Mlp> make_mlp(const std::string& kind, int64_t dim, int64_t hidden, bool bias, Generator& gen,
                              DType dtype = DType::f32, MatmulPrecision precision = MatmulPrecision::f32);

}  // namespace attnlab
