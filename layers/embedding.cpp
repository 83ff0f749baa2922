#include "layers/embedding.h"

#include "autograd/ops.h"

namespace attnlab {

Embedding::Embedding(int64_t num, int64_t dim, Generator& gen, DType dtype, double init_std) {
  AL_CHECK_CONFIG(num > 0 && dim > 0, "Embedding: sizes must be positive; got num=", num, ", dim=", dim);
  Tensor w = Tensor::empty(Shape{num, dim}, dtype);
  fill_normal(w, gen, 0.0, init_std);
  weight_ = register_parameter("weight", w);
}

Variable Embedding::forward(const Variable& ids) const { return embedding(weight_, ids); }

}  // namespace attnlab
