// Autograd wiring of rope, its samples and its registration.
#include "autograd/ops/rope/rope.h"

#include <cmath>

#include "autograd/op_helpers.h"
#include "autograd/ops/view/view.h"

namespace attnlab {

namespace {
constexpr std::string_view kName = "rope";
}

void RopeOp::check(const Tensor& x, int64_t position_offset, double base) {
  op::check_float(kName, "x", x);
  AL_CHECK_SHAPE(x.ndim() == 4, kName, ": x must be [B, H, T, D]; got x=", x);
  AL_CHECK_SHAPE(x.size(3) % 2 == 0, kName, ": the head dim D must be even (pairs are rotated); got x=", x);
  AL_CHECK_SHAPE(position_offset >= 0, kName, ": position_offset must be >= 0; got ", position_offset, " for x=", x);
  // Written so that a NaN base fails too.
  AL_CHECK_CONFIG(base > 0.0 && std::isfinite(base), kName, ": base must be a positive number; got ", base,
                  " for x=", x);
}

Variable rope(const Variable& x, int64_t position_offset, double base) {
  op::check_defined(kName, "x", x);
  RopeOp::check(x.data(), position_offset, base);
  const Tensor xc = x.data().contiguous();
  Tensor y = op::on_device(kName, xc, [&](auto dev) { return RopeOp::forward(dev, xc, position_offset, base); });
  return make_output(kName, {x}, y, [position_offset, base, xc](const Tensor& dy, const GradMask& needs) {
    if (!needs[0]) return std::vector<Tensor>{Tensor()};
    const Tensor dyc = dy.contiguous();
    return std::vector<Tensor>{
        op::on_device(kName, xc, [&](auto dev) { return RopeOp::backward(dev, dyc, position_offset, base); })};
  });
}

std::vector<OpSample> RopeOp::samples() {
  auto run_with = [](int64_t offset, double base) {
    return [=](const std::vector<Variable>& in) { return std::vector<Variable>{rope(in[0], offset, base)}; };
  };
  // A non-contiguous input: [B, T, H, D] permuted to [B, H, T, D], as attention makes it.
  auto permuted = [](const std::vector<Variable>& in) {
    return std::vector<Variable>{rope(permute(in[0], {0, 2, 1, 3}), 2, 10000.0)};
  };
  return {
      {"[1, 2, 3, 4] offset 0", {sample_randn(Shape{1, 2, 3, 4}, 61)}, run_with(0, 10000.0)},
      {"[2, 1, 4, 6] offset 5 base 100", {sample_randn(Shape{2, 1, 4, 6}, 62)}, run_with(5, 100.0)},
      {"[1, 1, 2, 2] offset 1000", {sample_randn(Shape{1, 1, 2, 2}, 63)}, run_with(1000, 10000.0)},
      {"permuted [1, 3, 2, 4] offset 2", {sample_randn(Shape{1, 3, 2, 4}, 64)}, permuted},
  };
}

std::vector<OpSample> RopeOp::parity_samples() {
  auto run_with = [](int64_t offset, double base) {
    return [=](const std::vector<Variable>& in) { return std::vector<Variable>{rope(in[0], offset, base)}; };
  };
  auto permuted = [](const std::vector<Variable>& in) {
    return std::vector<Variable>{rope(permute(in[0], {0, 2, 1, 3}), 7, 10000.0)};
  };
  return {
      {"[2, 3, 37, 64] offset 5", {sample_randn(Shape{2, 3, 37, 64}, 161)}, run_with(5, 10000.0)},
      {"[1, 4, 130, 10] offset 1000 base 500", {sample_randn(Shape{1, 4, 130, 10}, 162)}, run_with(1000, 500.0)},
      {"permuted [2, 65, 3, 32] offset 7", {sample_randn(Shape{2, 65, 3, 32}, 163)}, permuted},
  };
}

std::vector<OpMisuse> RopeOp::misuses() {
  return {
      {"odd head dim", [] { rope(Variable(Tensor::zeros(Shape{1, 2, 3, 5}, DType::f64)), 0); }},
      {"3-D x", [] { rope(Variable(Tensor::zeros(Shape{2, 3, 4}, DType::f64)), 0); }},
      {"negative offset", [] { rope(Variable(Tensor::zeros(Shape{1, 2, 3, 4}, DType::f64)), -1); }},
      {"base 0", [] { rope(Variable(Tensor::zeros(Shape{1, 2, 3, 4}, DType::f64)), 0, 0.0); }},
      {"i32 x", [] { rope(Variable(Tensor::zeros(Shape{1, 2, 3, 4}, DType::i32)), 0); }},
  };
}

void register_ops_rope(OpRegistry& registry) {
  registry.add({.name = std::string(kName),
                .samples = [] { return RopeOp::samples(); },
                .misuses = [] { return RopeOp::misuses(); },
                .cuda = true,
                .parity_samples = [] { return RopeOp::parity_samples(); }});
}

}  // namespace attnlab
