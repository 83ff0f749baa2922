// Autograd wiring of linear, its samples and its registration.
#include "autograd/ops/linear/linear.h"

#include "autograd/op_helpers.h"

namespace attnlab {

namespace {
constexpr std::string_view kName = "linear";
}

void LinearOp::check(const Tensor& x, const Tensor& w, const Tensor& b) {
  op::check_float(kName, "x", x);
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

Variable linear(const Variable& x, const Variable& w, const Variable& b) {
  op::check_defined(kName, "x", x);
  op::check_defined(kName, "w", w);
  const bool has_bias = b.defined();
  LinearOp::check(x.data(), w.data(), has_bias ? b.data() : Tensor());
  const Tensor xc = x.data().contiguous(), wc = w.data().contiguous();
  const Tensor bc = has_bias ? b.data().contiguous() : Tensor();
  Tensor y = op::on_device(kName, xc, [&](auto dev) { return LinearOp::forward(dev, xc, wc, bc); });
  std::vector<Variable> inputs{x, w};
  if (has_bias) inputs.push_back(b);
  return make_output(kName, inputs, std::move(y), [xc, wc, has_bias](const Tensor& dy, const GradMask& needs) {
    const Tensor dyc = dy.contiguous();
    LinearOp::Grads g = op::on_device(kName, dyc, [&](auto dev) {
      return LinearOp::backward(dev, xc, wc, dyc, needs[0], needs[1], has_bias && needs[2]);
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

std::vector<OpMisuse> LinearOp::misuses() {
  auto v = [](const Shape& s, DType dt = DType::f64) { return Variable(Tensor::ones(s, dt)); };
  return {
      {"x [2, 3] with w [4, 5]", [v] { linear(v(Shape{2, 3}), v(Shape{4, 5}), Variable()); }},
      {"b [3] for w [4, 3]", [v] { linear(v(Shape{2, 3}), v(Shape{4, 3}), v(Shape{3})); }},
      {"1-D w", [v] { linear(v(Shape{2, 3}), v(Shape{3}), Variable()); }},
      {"x f32, w f64", [v] { linear(v(Shape{2, 3}, DType::f32), v(Shape{4, 3}), Variable()); }},
      {"i32 x", [v] { linear(v(Shape{2, 3}, DType::i32), v(Shape{4, 3}, DType::i32), Variable()); }},
  };
}

void register_ops_linear(OpRegistry& registry) {
  registry.add({std::string(kName), [] { return LinearOp::samples(); }, [] { return LinearOp::misuses(); }});
}

}  // namespace attnlab
