// Autograd wiring of layer_norm, its samples and its registration.
#include "autograd/ops/layer_norm/layer_norm.h"

#include "autograd/op_helpers.h"

namespace attnlab {

namespace {
constexpr std::string_view kName = "layer_norm";
}

void LayerNormOp::check(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  op::check_float(kName, "x", x);
  AL_CHECK_SHAPE(x.ndim() >= 1, kName, ": x must be [*, C] with at least one dim; got x=", x);
  op::check_channel_vector(kName, "weight", weight, x);
  if (bias.defined()) op::check_channel_vector(kName, "bias", bias, x);
}

Variable layer_norm(const Variable& x, const Variable& weight, const Variable& bias, double eps) {
  op::check_defined(kName, "x", x);
  op::check_defined(kName, "weight", weight);
  const bool has_bias = bias.defined();
  LayerNormOp::check(x.data(), weight.data(), has_bias ? bias.data() : Tensor());
  const Tensor xc = x.data().contiguous();
  const Tensor wc = weight.data().contiguous();
  const Tensor bc = has_bias ? bias.data().contiguous() : Tensor();
  LayerNormOp::Forward f =
      op::on_device(kName, xc, [&](auto dev) { return LayerNormOp::forward(dev, xc, wc, bc, eps); });
  std::vector<Variable> inputs{x, weight};
  if (has_bias) inputs.push_back(bias);
  return make_output(
      kName, inputs, f.y, [xc, wc, mean = f.mean, rstd = f.rstd, has_bias](const Tensor& dy, const GradMask& needs) {
        const Tensor dyc = dy.contiguous();
        LayerNormOp::Grads g = op::on_device(kName, xc, [&](auto dev) {
          return LayerNormOp::backward(dev, xc, wc, mean, rstd, dyc, needs[0], needs[1], has_bias && needs[2]);
        });
        std::vector<Tensor> grads{g.dx, g.dweight};
        if (has_bias) grads.push_back(g.dbias);
        return grads;
      });
}

std::vector<OpSample> LayerNormOp::samples() {
  auto with_bias = [](const std::vector<Variable>& in) {
    return std::vector<Variable>{layer_norm(in[0], in[1], in[2])};
  };
  auto no_bias = [](const std::vector<Variable>& in) {
    return std::vector<Variable>{layer_norm(in[0], in[1], Variable())};
  };
  auto big_eps = [](const std::vector<Variable>& in) {
    return std::vector<Variable>{layer_norm(in[0], in[1], in[2], 0.5)};
  };
  return {
      {"x [4, 5], bias",
       {sample_randn(Shape{4, 5}, 21, 1.5), sample_uniform(Shape{5}, 22, 0.5, 1.5), sample_randn(Shape{5}, 23)},
       with_bias},
      {"x [2, 3, 4], no bias", {sample_randn(Shape{2, 3, 4}, 24), sample_uniform(Shape{4}, 25, -1.5, 1.5)}, no_bias},
      // Rows far from zero mean and small spread, where eps matters.
      {"x [3, 6] offset, eps 0.5, bias",
       {sample_uniform(Shape{3, 6}, 26, 2.0, 3.0), sample_randn(Shape{6}, 27), sample_randn(Shape{6}, 28)},
       big_eps},
  };
}

std::vector<OpSample> LayerNormOp::parity_samples() {
  auto with_bias = [](const std::vector<Variable>& in) {
    return std::vector<Variable>{layer_norm(in[0], in[1], in[2])};
  };
  auto no_bias = [](const std::vector<Variable>& in) {
    return std::vector<Variable>{layer_norm(in[0], in[1], Variable())};
  };
  return {
      // One warp per row, 8 rows per block, 130 rows (ragged); weight sums over 3 row chunks of
      // 64 and 2 column tiles of 32 (ragged).
      {"x [130, 45], bias",
       {sample_randn(Shape{130, 45}, 121, 2.0), sample_uniform(Shape{45}, 122, 0.5, 1.5), sample_randn(Shape{45}, 123)},
       with_bias},
      // One block per row (256 threads over 1000), rows offset from zero mean.
      {"x [37, 1000] offset, bias",
       {sample_uniform(Shape{37, 1000}, 124, 1.0, 4.0), sample_randn(Shape{1000}, 125), sample_randn(Shape{1000}, 126)},
       with_bias},
      // 3-d, 96 threads per row over 333, no bias.
      {"x [5, 13, 333], no bias",
       {sample_randn(Shape{5, 13, 333}, 127), sample_uniform(Shape{333}, 128, -1.5, 1.5)},
       no_bias},
  };
}

std::vector<OpMisuse> LayerNormOp::misuses() {
  const Variable x(Tensor::zeros(Shape{2, 3}, DType::f64)), w(Tensor::ones(Shape{3}, DType::f64));
  const Variable c2(Tensor::zeros(Shape{2}, DType::f64)), c4(Tensor::ones(Shape{4}, DType::f64));
  const Variable w_f32(Tensor::ones(Shape{3}, DType::f32)), x_i32(Tensor::zeros(Shape{2, 3}, DType::i32));
  const Variable x_0d(Tensor::scalar(1.0, DType::f64)), w1(Tensor::ones(Shape{1}, DType::f64));
  return {
      {"weight of the wrong size", [=] { layer_norm(x, c4, c4); }},
      {"bias of the wrong size", [=] { layer_norm(x, w, c2); }},
      {"weight f32, x f64", [=] { layer_norm(x, w_f32, Variable()); }},
      {"i32 x", [=] { layer_norm(x_i32, w, Variable()); }},
      {"0-d x", [=] { layer_norm(x_0d, w1, Variable()); }},
  };
}

void register_ops_layer_norm(OpRegistry& registry) {
  registry.add({.name = std::string(kName),
                .samples = [] { return LayerNormOp::samples(); },
                .misuses = [] { return LayerNormOp::misuses(); },
                .cuda = true,
                .parity_samples = [] { return LayerNormOp::parity_samples(); }});
}

}  // namespace attnlab
