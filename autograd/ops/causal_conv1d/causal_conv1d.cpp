// Autograd wiring of causal_conv1d, its samples and its registration.
#include "autograd/ops/causal_conv1d/causal_conv1d.h"

#include "autograd/op_helpers.h"

namespace attnlab {

namespace {
constexpr std::string_view kName = "causal_conv1d";
}

void CausalConv1dOp::check(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  op::check_float(kName, "x", x);
  AL_CHECK_SHAPE(x.ndim() == 3, kName, ": x must be [B, T, C]; got x=", x);
  AL_CHECK_SHAPE(weight.ndim() == 2 && weight.size(0) == x.size(2) && weight.size(1) >= 1, kName,
                 ": weight must be [C, W] with C the last dim of x and W >= 1; got x=", x, ", weight=", weight);
  op::check_same_dtype(kName, "x", x, "weight", weight);
  op::check_same_device(kName, "x", x, "weight", weight);
  if (bias.defined()) op::check_channel_vector(kName, "bias", bias, x);
}

Variable causal_conv1d(const Variable& x, const Variable& weight, const Variable& bias) {
  op::check_defined(kName, "x", x);
  op::check_defined(kName, "weight", weight);
  const bool has_bias = bias.defined();
  CausalConv1dOp::check(x.data(), weight.data(), has_bias ? bias.data() : Tensor());
  const Tensor xc = x.data().contiguous();
  const Tensor wc = weight.data().contiguous();
  const Tensor bc = has_bias ? bias.data().contiguous() : Tensor();
  Tensor y = op::on_device(kName, xc, [&](auto dev) { return CausalConv1dOp::forward(dev, xc, wc, bc); });
  std::vector<Variable> inputs{x, weight};
  if (has_bias) inputs.push_back(bias);
  return make_output(kName, inputs, y, [xc, wc, has_bias](const Tensor& dy, const GradMask& needs) {
    const Tensor dyc = dy.contiguous();
    CausalConv1dOp::Grads g = op::on_device(kName, xc, [&](auto dev) {
      return CausalConv1dOp::backward(dev, xc, wc, dyc, needs[0], needs[1], has_bias && needs[2]);
    });
    std::vector<Tensor> grads{g.dx, g.dweight};
    if (has_bias) grads.push_back(g.dbias);
    return grads;
  });
}

std::vector<OpSample> CausalConv1dOp::samples() {
  auto with_bias = [](const std::vector<Variable>& in) {
    return std::vector<Variable>{causal_conv1d(in[0], in[1], in[2])};
  };
  auto no_bias = [](const std::vector<Variable>& in) {
    return std::vector<Variable>{causal_conv1d(in[0], in[1], Variable())};
  };
  return {
      {"x [2, 5, 3], W 4, bias",
       {sample_randn(Shape{2, 5, 3}, 51), sample_randn(Shape{3, 4}, 52), sample_randn(Shape{3}, 53)},
       with_bias},
      {"x [2, 5, 3], W 4, no bias", {sample_randn(Shape{2, 5, 3}, 54), sample_randn(Shape{3, 4}, 55)}, no_bias},
      {"x [2, 3, 4], W 1, bias",
       {sample_randn(Shape{2, 3, 4}, 56), sample_randn(Shape{4, 1}, 57), sample_randn(Shape{4}, 58)},
       with_bias},
      // Kernel longer than the sequence: every output sees the padding.
      {"x [3, 2, 2], W 4 > T, no bias", {sample_randn(Shape{3, 2, 2}, 59), sample_randn(Shape{2, 4}, 60)}, no_bias},
  };
}

std::vector<OpSample> CausalConv1dOp::parity_samples() {
  auto with_bias = [](const std::vector<Variable>& in) {
    return std::vector<Variable>{causal_conv1d(in[0], in[1], in[2])};
  };
  auto no_bias = [](const std::vector<Variable>& in) {
    return std::vector<Variable>{causal_conv1d(in[0], in[1], Variable())};
  };
  return {
      // R = 300 rows: weight sums over 5 row chunks of 64 (ragged) and 3 column tiles (ragged).
      {"x [3, 100, 70], W 4, bias",
       {sample_randn(Shape{3, 100, 70}, 151), sample_randn(Shape{70, 4}, 152), sample_randn(Shape{70}, 153)},
       with_bias},
      {"x [2, 37, 130], W 5, no bias",
       {sample_randn(Shape{2, 37, 130}, 154), sample_randn(Shape{130, 5}, 155)},
       no_bias},
      // Kernel longer than the sequence.
      {"x [4, 3, 33], W 6 > T, bias",
       {sample_randn(Shape{4, 3, 33}, 156), sample_randn(Shape{33, 6}, 157), sample_randn(Shape{33}, 158)},
       with_bias},
  };
}

std::vector<OpMisuse> CausalConv1dOp::misuses() {
  const Variable x(Tensor::zeros(Shape{2, 5, 3}, DType::f64)), w(Tensor::ones(Shape{3, 4}, DType::f64));
  const Variable w44(Tensor::ones(Shape{4, 4}, DType::f64)), x2d(Tensor::zeros(Shape{5, 3}, DType::f64));
  const Variable w1d(Tensor::ones(Shape{3}, DType::f64)), w30(Tensor::ones(Shape{3, 0}, DType::f64));
  const Variable b4(Tensor::ones(Shape{4}, DType::f64)), w_f32(Tensor::ones(Shape{3, 4}, DType::f32));
  return {
      {"weight channels != C", [=] { causal_conv1d(x, w44, Variable()); }},
      {"x not 3-D", [=] { causal_conv1d(x2d, w, Variable()); }},
      {"weight 1-D", [=] { causal_conv1d(x, w1d, Variable()); }},
      {"W = 0", [=] { causal_conv1d(x, w30, Variable()); }},
      {"bias of the wrong size", [=] { causal_conv1d(x, w, b4); }},
      {"weight f32, x f64", [=] { causal_conv1d(x, w_f32, Variable()); }},
  };
}

void register_ops_causal_conv1d(OpRegistry& registry) {
  registry.add({.name = std::string(kName),
                .samples = [] { return CausalConv1dOp::samples(); },
                .misuses = [] { return CausalConv1dOp::misuses(); },
                .cuda = true,
                .parity_samples = [] { return CausalConv1dOp::parity_samples(); }});
}

}  // namespace attnlab
