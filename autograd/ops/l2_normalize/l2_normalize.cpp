// Autograd wiring of l2_normalize, its samples and its registration.
#include "autograd/ops/l2_normalize/l2_normalize.h"

#include "autograd/op_helpers.h"

namespace attnlab {

namespace {
constexpr std::string_view kName = "l2_normalize";
}

void L2NormalizeOp::check(const Tensor& x) {
  op::check_float(kName, "x", x);
  AL_CHECK_SHAPE(x.ndim() >= 1, kName, ": x must be [*, C] with at least one dim; got x=", x);
}

Variable l2_normalize(const Variable& x, double eps) {
  op::check_defined(kName, "x", x);
  L2NormalizeOp::check(x.data());
  const Tensor xc = x.data().contiguous();
  L2NormalizeOp::Forward f = op::on_device(kName, xc, [&](auto dev) { return L2NormalizeOp::forward(dev, xc, eps); });
  return make_output(kName, {x}, f.y, [y = f.y, rinv = f.rinv](const Tensor& dy, const GradMask&) {
    const Tensor dyc = dy.contiguous();
    return std::vector<Tensor>{
        op::on_device(kName, y, [&](auto dev) { return L2NormalizeOp::backward(dev, y, rinv, dyc); })};
  });
}

std::vector<OpSample> L2NormalizeOp::samples() {
  auto run = [](const std::vector<Variable>& in) { return std::vector<Variable>{l2_normalize(in[0])}; };
  auto big_eps = [](const std::vector<Variable>& in) { return std::vector<Variable>{l2_normalize(in[0], 0.5)}; };
  return {
      {"x [4, 5]", {sample_randn(Shape{4, 5}, 41, 1.5)}, run},
      {"x [2, 3, 4]", {sample_randn(Shape{2, 3, 4}, 42)}, run},
      // Small rows, where eps matters.
      {"x [3, 6] small, eps 0.5", {sample_randn(Shape{3, 6}, 43, 0.3)}, big_eps},
  };
}

std::vector<OpSample> L2NormalizeOp::parity_samples() {
  auto run = [](const std::vector<Variable>& in) { return std::vector<Variable>{l2_normalize(in[0])}; };
  return {
      // One warp per row, 8 rows per block: 65 rows leave the last block one live row.
      {"x [65, 37]", {sample_randn(Shape{65, 37}, 141, 1.5)}, run},
      // One block per row: 256 threads over 1000; then 3-d, 96 threads over 333.
      {"x [37, 1000]", {sample_randn(Shape{37, 1000}, 142)}, run},
      {"x [5, 13, 333]", {sample_randn(Shape{5, 13, 333}, 143, 0.5)}, run},
  };
}

std::vector<OpMisuse> L2NormalizeOp::misuses() {
  const Variable x_i32(Tensor::zeros(Shape{2, 3}, DType::i32)), x_0d(Tensor::scalar(1.0, DType::f64));
  return {
      {"i32 x", [=] { l2_normalize(x_i32); }},
      {"0-d x", [=] { l2_normalize(x_0d); }},
  };
}

void register_ops_l2_normalize(OpRegistry& registry) {
  registry.add({.name = std::string(kName),
                .samples = [] { return L2NormalizeOp::samples(); },
                .misuses = [] { return L2NormalizeOp::misuses(); },
                .cuda = true,
                .parity_samples = [] { return L2NormalizeOp::parity_samples(); }});
}

}  // namespace attnlab
