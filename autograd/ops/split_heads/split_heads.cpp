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

Tensor SplitHeadsOp::part(const Tensor& x, int64_t n, int64_t heads, int64_t p) {
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2) / (n * heads);
  return x.view(Shape{B, T, n, heads, D}).narrow(2, p, 1).view(Shape{B, T, heads, D}).permute({0, 2, 1, 3});
}

Tensor SplitHeadsOp::joint_buffer(const Shape& x_shape, const std::vector<Tensor>& dys) {
  const int64_t n = static_cast<int64_t>(dys.size()), H = dys[0].size(1), D = dys[0].size(3);
  const int64_t B = x_shape[0], T = x_shape[1];
  // dy_p must sit at base + p H D with the strides of part p of a contiguous [B, T, n, H, D].
  const int64_t base = dys[0].offset();
  const std::vector<int64_t> strides{T * n * H * D, D, n * H * D, 1};
  bool in_place = dys[0].storage() && B * T * H * D > 0;
  for (int64_t p = 0; p < n && in_place; ++p) {
    const Tensor& d = dys[static_cast<size_t>(p)];
    in_place = d.shares_storage_with(dys[0]) && d.offset() == base + p * H * D && d.strides() == strides;
  }
  if (in_place && (base + B * T * n * H * D) * static_cast<int64_t>(dtype_size(dys[0].dtype())) <=
                      static_cast<int64_t>(dys[0].storage()->bytes()))
    return Tensor(dys[0].storage(), x_shape, x_shape.contiguous_strides(), base, dys[0].dtype());
  return Tensor();
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

std::vector<OpSample> SplitHeadsOp::parity_samples() {
  auto run = [](int64_t n, int64_t heads) {
    return [n, heads](const std::vector<Variable>& in) { return split_heads(in[0], n, heads); };
  };
  return {
      {"x [2, 37, 3 * 4 * 13] into 3 parts of 4 heads", {sample_randn(Shape{2, 37, 156}, 181)}, run(3, 4)},
      {"x [3, 65, 2 * 3 * 33] into 2 parts of 3 heads", {sample_randn(Shape{3, 65, 198}, 182)}, run(2, 3)},
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
  registry.add({.name = std::string(kName),
                .samples = [] { return SplitHeadsOp::samples(); },
                .misuses = [] { return SplitHeadsOp::misuses(); },
                .cuda = true,
                .parity_samples = [] { return SplitHeadsOp::parity_samples(); }});
}

}  // namespace attnlab
