#include "layers/norm.h"

#include "autograd/ops.h"

namespace attnlab {

LayerNorm::LayerNorm(int64_t dim, bool bias, DType dtype, double eps) : eps_(eps) {
  AL_CHECK_CONFIG(dim > 0, "LayerNorm: dim must be positive; got ", dim);
  weight_ = register_parameter("weight", Tensor::ones(Shape{dim}, dtype));
  if (bias) bias_ = register_parameter("bias", Tensor::zeros(Shape{dim}, dtype));
}

Variable LayerNorm::forward(const Variable& x) const { return layer_norm(x, weight_, bias_, eps_); }

RmsNorm::RmsNorm(int64_t dim, DType dtype, double eps) : eps_(eps) {
  AL_CHECK_CONFIG(dim > 0, "RmsNorm: dim must be positive; got ", dim);
  weight_ = register_parameter("weight", Tensor::ones(Shape{dim}, dtype));
}

Variable RmsNorm::forward(const Variable& x) const { return rms_norm(x, weight_, eps_); }

std::shared_ptr<Norm> make_norm(const std::string& kind, int64_t dim, bool bias, DType dtype) {
  if (kind == "layernorm") return std::make_shared<LayerNorm>(dim, bias, dtype);
  if (kind == "rmsnorm") return std::make_shared<RmsNorm>(dim, dtype);
  AL_CHECK_CONFIG(false, "norm: unknown kind '", kind, "'; valid: layernorm, rmsnorm");
  return nullptr;
}

}  // namespace attnlab
