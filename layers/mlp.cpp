#include "layers/mlp.h"

#include "autograd/ops.h"

namespace attnlab {

GeluMlp::GeluMlp(int64_t dim, int64_t hidden, bool bias, Generator& gen, DType dtype, MatmulPrecision precision) {
  c_fc_ = register_module("c_fc", std::make_shared<Linear>(dim, hidden, bias, gen, dtype, precision));
  c_proj_ = register_module("c_proj", std::make_shared<Linear>(hidden, dim, bias, gen, dtype, precision));
}

Variable GeluMlp::forward(const Variable& x) const { return c_proj_->forward(gelu(c_fc_->forward(x))); }

SwiGluMlp::SwiGluMlp(int64_t dim, int64_t hidden, bool bias, Generator& gen, DType dtype, MatmulPrecision precision)
    : hidden_(hidden) {
  c_fc_ = register_module("c_fc", std::make_shared<Linear>(dim, 2 * hidden, bias, gen, dtype, precision));
  c_proj_ = register_module("c_proj", std::make_shared<Linear>(hidden, dim, bias, gen, dtype, precision));
}

Variable SwiGluMlp::forward(const Variable& x) const {
  const Variable h = c_fc_->forward(x);
  const Variable gate = narrow(h, -1, 0, hidden_);
  const Variable up = narrow(h, -1, hidden_, hidden_);
  return c_proj_->forward(mul(silu(gate), up));
}

std::shared_ptr<Mlp> make_mlp(const std::string& kind, int64_t dim, int64_t hidden, bool bias, Generator& gen,
                              DType dtype, MatmulPrecision precision) {
  if (kind == "gelu") return std::make_shared<GeluMlp>(dim, hidden, bias, gen, dtype, precision);
  if (kind == "swiglu") return std::make_shared<SwiGluMlp>(dim, hidden, bias, gen, dtype, precision);
  AL_CHECK_CONFIG(false, "mlp: unknown kind '", kind, "'; valid: gelu, swiglu");
  return nullptr;
}

}  // namespace attnlab
