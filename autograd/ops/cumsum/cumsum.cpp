// Autograd wiring of cumsum, its samples and its registration.
#include "autograd/ops/cumsum/cumsum.h"

#include <algorithm>

#include "autograd/op_helpers.h"

namespace attnlab {

namespace {
constexpr const char* kName = "cumsum";
}  // namespace

int64_t CumsumOp::check(const Tensor& x, int64_t dim) {
  op::check_float(kName, "x", x);
  return op::check_dim(kName, dim, x, std::max<int64_t>(x.ndim(), 1));  // a 0-d x scans as [1]
}

Variable cumsum(const Variable& x, int64_t dim) {
  op::check_defined(kName, "x", x);
  const int64_t d = CumsumOp::check(x.data(), dim);
  const Tensor xc = x.data().contiguous();
  Tensor y = op::on_device(kName, xc, [&](auto dev) { return CumsumOp::forward(dev, xc, d); });
  return make_output(kName, {x}, y, [d](const Tensor& dy, const GradMask& needs) {
    if (!needs[0]) return std::vector<Tensor>{Tensor()};
    const Tensor dyc = dy.contiguous();
    return std::vector<Tensor>{op::on_device(kName, dyc, [&](auto dev) { return CumsumOp::backward(dev, dyc, d); })};
  });
}

std::vector<OpSample> CumsumOp::samples() {
  auto run_with = [](int64_t dim) {
    return [dim](const std::vector<Variable>& in) { return std::vector<Variable>{cumsum(in[0], dim)}; };
  };
  const Tensor x = sample_randn(Shape{2, 3, 4}, 51);
  return {
      {"[2, 3, 4] dim 0", {x}, run_with(0)},
      {"[2, 3, 4] dim 1", {x}, run_with(1)},
      {"[2, 3, 4] dim -1", {x}, run_with(-1)},
  };
}

std::vector<OpSample> CumsumOp::parity_samples() {
  auto run_with = [](int64_t dim) {
    return [dim](const std::vector<Variable>& in) { return std::vector<Variable>{cumsum(in[0], dim)}; };
  };
  return {
      {"[3, 37, 130] dim 1", {sample_randn(Shape{3, 37, 130}, 57)}, run_with(1)},
      {"[3, 37, 130] dim -1", {sample_randn(Shape{3, 37, 130}, 58)}, run_with(-1)},
      {"[37, 1000] dim 1 (block scan)", {sample_randn(Shape{37, 1000}, 59)}, run_with(1)},
  };
}

std::vector<OpMisuse> CumsumOp::misuses() {
  auto x = [] { return Variable(Tensor::zeros(Shape{2, 3, 4}, DType::f32)); };
  return {
      {"dim 3 of a 3-d tensor", [=] { cumsum(x(), 3); }},
      {"dim -4 of a 3-d tensor", [=] { cumsum(x(), -4); }},
      {"i32 input", [] { cumsum(Variable(Tensor::zeros(Shape{2, 3}, DType::i32)), 0); }},
  };
}

void register_ops_cumsum(OpRegistry& registry) {
  registry.add({.name = kName,
                .samples = [] { return CumsumOp::samples(); },
                .misuses = [] { return CumsumOp::misuses(); },
                .cuda = true,
                .parity_samples = [] { return CumsumOp::parity_samples(); }});
}

}  // namespace attnlab
