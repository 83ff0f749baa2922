// Autograd wiring of softmax and log_softmax, their samples and their registration.
#include "autograd/ops/softmax/softmax.h"

#include "autograd/op_helpers.h"

namespace attnlab {

namespace {
Variable softmax_impl(bool log, const Variable& x) {
  const std::string_view name = SoftmaxOp::name(log);
  op::check_defined(name, "x", x);
  SoftmaxOp::check(log, x.data());
  const Tensor xc = x.data().contiguous();
  Tensor y = op::on_device(name, xc, [&](auto dev) { return SoftmaxOp::forward(dev, log, xc); });
  return make_output(name, {x}, y, [log, y](const Tensor& dy, const GradMask& needs) {
    if (!needs[0]) return std::vector<Tensor>{Tensor()};
    const Tensor dyc = dy.contiguous();
    return std::vector<Tensor>{
        op::on_device(SoftmaxOp::name(log), y, [&](auto dev) { return SoftmaxOp::backward(dev, log, y, dyc); })};
  });
}
}  // namespace

std::string_view SoftmaxOp::name(bool log) { return log ? "log_softmax" : "softmax"; }

void SoftmaxOp::check(bool log, const Tensor& x) {
  op::check_float(name(log), "x", x);
  AL_CHECK_SHAPE(x.ndim() >= 1, name(log), ": x must have at least 1 dim (the op runs over the last); got x=", x);
}

Variable softmax(const Variable& x) { return softmax_impl(false, x); }
Variable log_softmax(const Variable& x) { return softmax_impl(true, x); }

std::vector<OpSample> SoftmaxOp::samples(bool log) {
  auto run = [log](const std::vector<Variable>& in) { return std::vector<Variable>{softmax_impl(log, in[0])}; };
  return {
      {"[3, 5]", {sample_randn(Shape{3, 5}, 21)}, run},
      {"[7] (1-d)", {sample_randn(Shape{7}, 22)}, run},
      {"[2, 3, 4] (3-d)", {sample_randn(Shape{2, 3, 4}, 23)}, run},
      // exp(30 * 3) overflows f32 without the max subtraction.
      {"[2, 6] logits at scale 30", {sample_randn(Shape{2, 6}, 24, 30.0)}, run},
  };
}

std::vector<OpSample> SoftmaxOp::parity_samples(bool log) {
  auto run = [log](const std::vector<Variable>& in) { return std::vector<Variable>{softmax_impl(log, in[0])}; };
  return {
      // One warp per row, 8 rows per block: 65 rows leave the last block one live row.
      {"[65, 37] (warp per row, ragged)", {sample_randn(Shape{65, 37}, 25, 3.0)}, run},
      // One block per row: 64 threads over 130, then 256 over 1000, then 512 over 3000 (6 each).
      {"[5, 130]", {sample_randn(Shape{5, 130}, 26)}, run},
      {"[3, 4, 1000] (3-d)", {sample_randn(Shape{3, 4, 1000}, 27, 5.0)}, run},
      {"[2, 3000] at scale 30", {sample_randn(Shape{2, 3000}, 28, 30.0)}, run},
  };
}

std::vector<OpMisuse> SoftmaxOp::misuses(bool log) {
  return {
      {"0-d input", [log] { softmax_impl(log, Variable(Tensor::scalar(1.0, DType::f64))); }},
      {"i32 input", [log] { softmax_impl(log, Variable(Tensor::zeros(Shape{2, 3}, DType::i32))); }},
  };
}

void register_ops_softmax(OpRegistry& registry) {
  for (bool log : {false, true})
    registry.add({.name = std::string(SoftmaxOp::name(log)),
                  .samples = [log] { return SoftmaxOp::samples(log); },
                  .misuses = [log] { return SoftmaxOp::misuses(log); },
                  .cuda = true,
                  .parity_samples = [log] { return SoftmaxOp::parity_samples(log); }});
}

}  // namespace attnlab
