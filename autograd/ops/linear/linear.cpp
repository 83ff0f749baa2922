// Autograd wiring of linear, its samples and its registration.
#include "autograd/ops/linear/linear.h"

#include "autograd/op_helpers.h"

namespace attnlab {

namespace {
constexpr std::string_view kName = "linear";
}

MatmulPrecision parse_matmul_precision(std::string_view name) {
  if (name == matmul_precision_name(MatmulPrecision::f32)) return MatmulPrecision::f32;
  if (name == matmul_precision_name(MatmulPrecision::bf16)) return MatmulPrecision::bf16;
  detail::throw_error<ConfigError>("matmul precision '", name, "' is not known; valid: f32, bf16");
}

void LinearOp::check(const Tensor& x, const Tensor& w, const Tensor& b, MatmulPrecision precision) {
  op::check_float(kName, "x", x);
  // Mixed precision rounds f32 master values; an f64 x would be rounded twice (through f32).
  AL_CHECK_DTYPE(precision == MatmulPrecision::f32 || x.dtype() == DType::f32, kName,
                 ": bf16 matmul precision needs f32 x, w and b; got x=", x);
  op::check_same_dtype(kName, "x", x, "w", w);
  op::check_same_device(kName, "x", x, "w", w);
  AL_CHECK_SHAPE(x.ndim() >= 1 && w.ndim() == 2 && w.size(1) == x.size(-1), kName,
                 ": expected x [*, K] and w [N, K]; got x=", x, ", w=", w);
  if (b.defined()) {
    op::check_same_dtype(kName, "x", x, "b", b);
    op::check_same_device(kName, "x", x, "b", b);
    AL_CHECK_SHAPE(b.ndim() == 1 && b.size(0) == w.size(0), kName, ": b must be [N] with N = w.size(0); got x=", x,
                   ", w=", w, ", b=", b);
  }
}

Variable linear(const Variable& x, const Variable& w, const Variable& b, MatmulPrecision precision) {
  op::check_defined(kName, "x", x);
  op::check_defined(kName, "w", w);
  const bool has_bias = b.defined();
  LinearOp::check(x.data(), w.data(), has_bias ? b.data() : Tensor(), precision);
  // The operands the GEMMs read, which are also what backward keeps: x and w themselves, or
  // their bf16 roundings (Tensor::to gives contiguous copies, on x's device).
  const bool half = precision == MatmulPrecision::bf16;
  const Tensor xs = half ? x.data().to(DType::bf16) : x.data().contiguous();
  const Tensor ws = half ? w.data().to(DType::bf16) : w.data().contiguous();
  const Tensor bc = has_bias ? b.data().contiguous() : Tensor();
  Tensor y = op::on_device(kName, xs, [&](auto dev) { return LinearOp::forward(dev, xs, ws, bc); });
  std::vector<Variable> inputs{x, w};
  if (has_bias) inputs.push_back(b);
  return make_output(kName, inputs, std::move(y), [xs, ws, has_bias](const Tensor& dy, const GradMask& needs) {
    const Tensor dyc = dy.contiguous();
    LinearOp::Grads g = op::on_device(kName, dyc, [&](auto dev) {
      return LinearOp::backward(dev, xs, ws, dyc, needs[0], needs[1], has_bias && needs[2]);
    });
    std::vector<Tensor> grads{g.dx, g.dw};
    if (has_bias) grads.push_back(g.db);
    return grads;
  });
}

std::vector<OpSample> LinearOp::samples() {
  auto with_bias = [](const std::vector<Variable>& in) { return std::vector<Variable>{linear(in[0], in[1], in[2])}; };
  auto no_bias = [](const std::vector<Variable>& in) { return std::vector<Variable>{linear(in[0], in[1], Variable())}; };
  auto r = [](const Shape& s, uint64_t seed) { return sample_randn(s, seed); };
  return {
      {"x [3, 4], w [5, 4], b [5]", {r(Shape{3, 4}, 61), r(Shape{5, 4}, 62), r(Shape{5}, 63)}, with_bias},
      {"x [2, 3, 4], w [2, 4], no bias", {r(Shape{2, 3, 4}, 64), r(Shape{2, 4}, 65)}, no_bias},
      {"x [4], w [3, 4], b [3]", {r(Shape{4}, 66), r(Shape{3, 4}, 67), r(Shape{3}, 68)}, with_bias},
      // Large enough for the BLAS path (>= 32^3 multiply-adds) and a non-multiple-of-64 bias.
      {"x [2, 20, 40], w [70, 40], b [70]", {r(Shape{2, 20, 40}, 69), r(Shape{70, 40}, 70), r(Shape{70}, 71)},
       with_bias},
  };
}

std::vector<OpSample> LinearOp::parity_samples() {
  auto with_bias = [](const std::vector<Variable>& in) { return std::vector<Variable>{linear(in[0], in[1], in[2])}; };
  auto no_bias = [](const std::vector<Variable>& in) { return std::vector<Variable>{linear(in[0], in[1], Variable())}; };
  auto bf16_bias = [](const std::vector<Variable>& in) {
    return std::vector<Variable>{linear(in[0], in[1], in[2], MatmulPrecision::bf16)};
  };
  auto bf16_no_bias = [](const std::vector<Variable>& in) {
    return std::vector<Variable>{linear(in[0], in[1], Variable(), MatmulPrecision::bf16)};
  };
  auto r = [](const Shape& s, uint64_t seed) { return sample_randn(s, seed); };
  // Rows, K and N all end off the GEMM's 64x64 tiles and 16-deep k-tiles; the 600 rows of the
  // last f32 one give the bias gradient's column sums two chunks of rows. The bf16 ones (only
  // here: the parity test runs f32 inputs, which bf16 precision needs, and the f64 gradcheck
  // must not see them) round identically on both sides, so CPU and CUDA differ only in the
  // order of f32 sums, as for f32.
  return {
      {"x [2, 37, 65], w [33, 65], b [33]", {r(Shape{2, 37, 65}, 161), r(Shape{33, 65}, 162), r(Shape{33}, 163)},
       with_bias},
      {"x [130, 20], w [70, 20], no bias", {r(Shape{130, 20}, 164), r(Shape{70, 20}, 165)}, no_bias},
      {"x [3, 200, 17], w [40, 17], b [40]", {r(Shape{3, 200, 17}, 166), r(Shape{40, 17}, 167), r(Shape{40}, 168)},
       with_bias},
      {"bf16: x [2, 37, 65], w [33, 65], b [33]",
       {r(Shape{2, 37, 65}, 171), r(Shape{33, 65}, 172), r(Shape{33}, 173)}, bf16_bias},
      {"bf16: x [130, 20], w [70, 20], no bias", {r(Shape{130, 20}, 174), r(Shape{70, 20}, 175)}, bf16_no_bias},
  };
}

std::vector<OpMisuse> LinearOp::misuses() {
  auto v = [](const Shape& s, DType dt = DType::f64) { return Variable(Tensor::ones(s, dt)); };
  return {
      {"x [2, 3] with w [4, 5]", [v] { linear(v(Shape{2, 3}), v(Shape{4, 5}), Variable()); }},
      {"b [3] for w [4, 3]", [v] { linear(v(Shape{2, 3}), v(Shape{4, 3}), v(Shape{3})); }},
      {"1-D w", [v] { linear(v(Shape{2, 3}), v(Shape{3}), Variable()); }},
      {"x f32, w f64", [v] { linear(v(Shape{2, 3}, DType::f32), v(Shape{4, 3}), Variable()); }},
      {"i32 x", [v] { linear(v(Shape{2, 3}, DType::i32), v(Shape{4, 3}, DType::i32), Variable()); }},
      {"bf16 precision with f64 x and w",
       [v] { linear(v(Shape{2, 3}), v(Shape{4, 3}), Variable(), MatmulPrecision::bf16); }},
      {"bf16 precision, x [2, 3] with w [4, 5]",
       [v] {
         linear(v(Shape{2, 3}, DType::f32), v(Shape{4, 5}, DType::f32), Variable(), MatmulPrecision::bf16);
       }},
  };
}

void register_ops_linear(OpRegistry& registry) {
  registry.add({.name = std::string(kName),
                .samples = [] { return LinearOp::samples(); },
                .misuses = [] { return LinearOp::misuses(); },
                .cuda = true,
                .parity_samples = [] { return LinearOp::parity_samples(); }});
}

}  // namespace attnlab
