// Autograd wiring of rms_norm, its samples and its registration.
#include "autograd/ops/rms_norm/rms_norm.h"

#include "autograd/op_helpers.h"

namespace attnlab {

namespace {
constexpr std::string_view kName = "rms_norm";
}

void RmsNormOp::check(const Tensor& x, const Tensor& weight) {
  op::check_float(kName, "x", x);
  AL_CHECK_SHAPE(x.ndim() >= 1, kName, ": x must be [*, C] with at least one dim; got x=", x);
  op::check_channel_vector(kName, "weight", weight, x);
}

Variable rms_norm(const Variable& x, const Variable& weight, double eps) {
  op::check_defined(kName, "x", x);
  op::check_defined(kName, "weight", weight);
  RmsNormOp::check(x.data(), weight.data());
  const Tensor xc = x.data().contiguous();
  const Tensor wc = weight.data().contiguous();
  RmsNormOp::Forward f = op::on_device(kName, xc, [&](auto dev) { return RmsNormOp::forward(dev, xc, wc, eps); });
  return make_output(kName, {x, weight}, f.y, [xc, wc, rstd = f.rstd](const Tensor& dy, const GradMask& needs) {
    const Tensor dyc = dy.contiguous();
    RmsNormOp::Grads g = op::on_device(
        kName, xc, [&](auto dev) { return RmsNormOp::backward(dev, xc, wc, rstd, dyc, needs[0], needs[1]); });
    return std::vector<Tensor>{g.dx, g.dweight};
  });
}

std::vector<OpSample> RmsNormOp::samples() {
  auto run = [](const std::vector<Variable>& in) { return std::vector<Variable>{rms_norm(in[0], in[1])}; };
  auto big_eps = [](const std::vector<Variable>& in) { return std::vector<Variable>{rms_norm(in[0], in[1], 0.5)}; };
  return {
      {"x [4, 5]", {sample_randn(Shape{4, 5}, 31, 1.5), sample_uniform(Shape{5}, 32, 0.5, 1.5)}, run},
      {"x [2, 3, 4]", {sample_randn(Shape{2, 3, 4}, 33), sample_uniform(Shape{4}, 34, -1.5, 1.5)}, run},
      // Small rows, where eps matters.
      {"x [3, 6] small, eps 0.5", {sample_randn(Shape{3, 6}, 35, 0.3), sample_randn(Shape{6}, 36)}, big_eps},
  };
}

std::vector<OpSample> RmsNormOp::parity_samples() {
  auto run = [](const std::vector<Variable>& in) { return std::vector<Variable>{rms_norm(in[0], in[1])}; };
  return {
      // One warp per row, 8 rows per block, 130 rows (ragged); weight sums over 3 row chunks of
      // 64 and 2 column tiles of 32 (ragged).
      {"x [130, 45]", {sample_randn(Shape{130, 45}, 131, 1.5), sample_uniform(Shape{45}, 132, 0.5, 1.5)}, run},
      // One block per row: 256 threads over 1000; then 3-d, 96 threads over 333.
      {"x [37, 1000]", {sample_randn(Shape{37, 1000}, 133), sample_randn(Shape{1000}, 134)}, run},
      {"x [5, 13, 333]", {sample_randn(Shape{5, 13, 333}, 135, 0.5), sample_uniform(Shape{333}, 136, -1.5, 1.5)}, run},
  };
}

std::vector<OpMisuse> RmsNormOp::misuses() {
  const Variable x(Tensor::zeros(Shape{2, 3}, DType::f64)), w(Tensor::ones(Shape{3}, DType::f64));
  const Variable w4(Tensor::ones(Shape{4}, DType::f64)), w13(Tensor::ones(Shape{1, 3}, DType::f64));
  const Variable w_f32(Tensor::ones(Shape{3}, DType::f32)), x_i32(Tensor::zeros(Shape{2, 3}, DType::i32));
  const Variable x_0d(Tensor::scalar(1.0, DType::f64)), w1(Tensor::ones(Shape{1}, DType::f64));
  return {
      {"weight of the wrong size", [=] { rms_norm(x, w4); }},
      {"weight [1, 3]", [=] { rms_norm(x, w13); }},
      {"weight f32, x f64", [=] { rms_norm(x, w_f32); }},
      {"i32 x", [=] { rms_norm(x_i32, w); }},
      {"0-d x", [=] { rms_norm(x_0d, w1); }},
  };
}

void register_ops_rms_norm(OpRegistry& registry) {
  registry.add({.name = std::string(kName),
                .samples = [] { return RmsNormOp::samples(); },
                .misuses = [] { return RmsNormOp::misuses(); },
                .cuda = true,
                .parity_samples = [] { return RmsNormOp::parity_samples(); }});
}

}  // namespace attnlab
