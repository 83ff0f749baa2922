#include "layers/linear.h"

#include <cmath>

#include "autograd/ops.h"
#include "layers/param_override.h"

namespace attnlab {

Linear::Linear(int64_t in_features, int64_t out_features, bool bias, Generator& gen, DType dtype,
               MatmulPrecision precision)
    : precision_(precision) {
  AL_CHECK_CONFIG(in_features > 0 && out_features > 0, "Linear: sizes must be positive; got in=", in_features,
                  ", out=", out_features);
  AL_CHECK_DTYPE(precision == MatmulPrecision::f32 || dtype == DType::f32,
                 "Linear: bf16 matmul precision needs f32 parameters; got dtype ", dtype);
  Tensor w = Tensor::empty(Shape{out_features, in_features}, dtype);
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
  fill_uniform(w, gen, -bound, bound);
  weight_ = register_parameter("weight", w);
  if (bias) bias_ = register_parameter("bias", Tensor::zeros(Shape{out_features}, dtype));
}

// One op, which also checks x against the weight: leading dims fold into one GEMM, and the bias
// rides on it (autograd/ops/linear).
// Reads its parameters through effective(), so an OverrideScope can swap in fast weights.
Variable Linear::forward(const Variable& x) const {
  return linear(x, effective(weight_), effective(bias_), precision_);
}

}  // namespace attnlab
