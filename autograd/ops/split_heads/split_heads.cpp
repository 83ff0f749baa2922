// Autograd wiring of split_heads, its samples and its registration.
#include "autograd/ops/split_heads/split_heads.h"

#include "autograd/op_helpers.h"

namespace attnlab {

namespace {
constexpr std::string_view kName = "split_heads";
}

void SplitHeadsOp::check(const Tensor& x, int64_t n, int64_t heads) {
  op::check_float(kName, "x", x);
  AL_CHECK_SHAPE(n >= 1 && heads >= 1 && x.ndim() == 3 && x.size(2) % (n * heads) == 0, kName,
                 ": x must be [B, T, n * H * D] with n, H >= 1; got n=", n, ", H=", heads, ", x=", x);
}

std::vector<Variable> split_heads(const Variable& x, int64_t n, int64_t heads) {
  op::check_defined(kName, "x", x);
  SplitHeadsOp::check(x.data(), n, heads);
  // Views need a D-contiguous x; a projection's output is contiguous anyway.
  const Tensor xc = x.data().contiguous();
  return make_outputs(kName, {x}, SplitHeadsOp::forward(xc, n, heads),
                      [shape = x.shape()](const std::vector<Tensor>& dys, const GradMask&) {
                        return std::vector<Tensor>{
                            op::on_device(kName, dys[0], [&](auto dev) { return SplitHeadsOp::backward(dev, shape, dys); })};
                      });
}

std::vector<OpSample> SplitHeadsOp::samples() {
  auto run = [](int64_t n, int64_t heads) {
    return [n, heads](const std::vector<Variable>& in) { return split_heads(in[0], n, heads); };
  };
  return {
      {"x [2, 3, 12] into 3 parts of 2 heads", {sample_randn(Shape{2, 3, 12}, 81)}, run(3, 2)},
      {"x [1, 4, 6] into 1 part of 3 heads", {sample_randn(Shape{1, 4, 6}, 82)}, run(1, 3)},
      {"x [2, 2, 8] into 2 parts of 1 head", {sample_randn(Shape{2, 2, 8}, 83)}, run(2, 1)},
  };
}

std::vector<OpMisuse> SplitHeadsOp::misuses() {
  auto v = [](const Shape& s, DType dt = DType::f64) { return Variable(Tensor::ones(s, dt)); };
  return {
      {"x [2, 3, 10] is not 3 parts of 2 heads", [v] { split_heads(v(Shape{2, 3, 10}), 3, 2); }},
      {"2-D x", [v] { split_heads(v(Shape{3, 12}), 3, 2); }},
      {"n = 0", [v] { split_heads(v(Shape{2, 3, 12}), 0, 2); }},
      {"i32 x", [v] { split_heads(v(Shape{2, 3, 12}, DType::i32), 3, 2); }},
  };
}

void register_ops_split_heads(OpRegistry& registry) {
  registry.add({std::string(kName), [] { return SplitHeadsOp::samples(); }, [] { return SplitHeadsOp::misuses(); }});
}

}  // namespace attnlab
