#include "layers/positions.h"

#include <cmath>

#include "autograd/ops.h"

namespace attnlab {

LearnedPositions::LearnedPositions(int64_t context, int64_t dim, Generator& gen, DType dtype, double init_std) {
  AL_CHECK_CONFIG(context > 0 && dim > 0, "LearnedPositions: sizes must be positive; got context=", context,
                  ", dim=", dim);
  Tensor w = Tensor::empty(Shape{context, dim}, dtype);
  fill_normal(w, gen, 0.0, init_std);
  weight_ = register_parameter("weight", w);
}

Variable LearnedPositions::forward(int64_t offset, int64_t length) const {
  AL_CHECK_SHAPE(offset >= 0 && length >= 0 && offset + length <= context(), "positions: positions [", offset, ", ",
                 offset + length, ") do not fit the context of ", context(), " (table ", weight_.str(), ")");
  return narrow(weight_, 0, offset, length);
}

std::vector<double> rope_inverse_frequencies(int64_t head_dim, double base) {
  AL_CHECK_CONFIG(head_dim > 0 && head_dim % 2 == 0, "rope: the head dim must be positive and even; got ", head_dim);
  std::vector<double> f(static_cast<size_t>(head_dim / 2));
  for (int64_t i = 0; i < head_dim / 2; ++i)
    f[static_cast<size_t>(i)] = std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
  return f;
}

Variable apply_rope(const Variable& x, int64_t position_offset, double base) { return rope(x, position_offset, base); }

Variable rope_reference(const Variable& x, int64_t position_offset, double base) {
  RopeOp::check(x.data(), position_offset, base);
  const int64_t T = x.size(2), D = x.size(3), half = D / 2;
  const std::vector<double> inv = rope_inverse_frequencies(D, base);
  std::vector<double> c(static_cast<size_t>(T * half)), s(c.size());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const double theta = static_cast<double>(position_offset + t) * inv[static_cast<size_t>(i)];
      c[static_cast<size_t>(t * half + i)] = std::cos(theta);
      s[static_cast<size_t>(t * half + i)] = std::sin(theta);
    }
  const Variable cs(Tensor::from_vector(Shape{T, half}, c).to(x.dtype()));
  const Variable sn(Tensor::from_vector(Shape{T, half}, s).to(x.dtype()));
  const Variable x1 = narrow(x, -1, 0, half), x2 = narrow(x, -1, half, half);
  return concat({sub(mul(x1, cs), mul(x2, sn)), add(mul(x1, sn), mul(x2, cs))}, -1);
}

}  // namespace attnlab
