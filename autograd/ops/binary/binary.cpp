// Autograd wiring of the broadcasting binary ops, their samples and their registration.
#include "autograd/ops/binary/binary.h"

#include <algorithm>

#include "autograd/op_helpers.h"
#include "autograd/ops/view/view.h"

namespace attnlab {

namespace {
struct KindInfo {
  BinaryKind kind;
  std::string_view name;
};

constexpr KindInfo kKinds[] = {
    {BinaryKind::add, "add"}, {BinaryKind::sub, "sub"}, {BinaryKind::mul, "mul"}, {BinaryKind::div, "div"}};

// NumPy's rule, without throwing: aligned on the right, sizes equal or one of them 1.
bool broadcastable(const Shape& a, const Shape& b) {
  for (int64_t i = 1; i <= std::min(a.ndim(), b.ndim()); ++i) {
    const int64_t da = a[a.ndim() - i], db = b[b.ndim() - i];
    if (da != db && da != 1 && db != 1) return false;
  }
  return true;
}
}  // namespace

std::string_view binary_name(BinaryKind kind) {
  for (const KindInfo& k : kKinds)
    if (k.kind == kind) return k.name;
  AL_ASSERT(false, "unknown BinaryKind");
}

void BinaryOp::check(BinaryKind kind, const Tensor& a, const Tensor& b) {
  const std::string_view name = binary_name(kind);
  op::check_float(name, "a", a);
  op::check_float(name, "b", b);
  op::check_same_dtype(name, "a", a, "b", b);
  op::check_same_device(name, "a", a, "b", b);
  AL_CHECK_SHAPE(broadcastable(a.shape(), b.shape()), name, ": shapes do not broadcast; got a=", a, ", b=", b);
}

Variable binary(BinaryKind kind, const Variable& a, const Variable& b) {
  const std::string_view name = binary_name(kind);
  op::check_defined(name, "a", a);
  op::check_defined(name, "b", b);
  BinaryOp::check(kind, a.data(), b.data());
  // The kernels read any strides, so views go in as they are.
  const Tensor av = a.data(), bv = b.data();
  Tensor y = op::on_device(name, av, [&](auto dev) { return BinaryOp::forward(dev, kind, av, bv); });
  return make_output(name, {a, b}, y, [kind, av, bv](const Tensor& dy, const GradMask& needs) {
    return op::on_device(binary_name(kind), dy,
                         [&](auto dev) { return BinaryOp::backward(dev, kind, av, bv, dy, needs); });
  });
}

Variable add(const Variable& a, const Variable& b) { return binary(BinaryKind::add, a, b); }
Variable sub(const Variable& a, const Variable& b) { return binary(BinaryKind::sub, a, b); }
Variable mul(const Variable& a, const Variable& b) { return binary(BinaryKind::mul, a, b); }
Variable div(const Variable& a, const Variable& b) { return binary(BinaryKind::div, a, b); }

Variable operator+(const Variable& a, const Variable& b) { return add(a, b); }
Variable operator-(const Variable& a, const Variable& b) { return sub(a, b); }
Variable operator*(const Variable& a, const Variable& b) { return mul(a, b); }
Variable operator/(const Variable& a, const Variable& b) { return div(a, b); }

std::vector<OpSample> BinaryOp::samples(BinaryKind kind) {
  auto run = [kind](const std::vector<Variable>& in) { return std::vector<Variable>{binary(kind, in[0], in[1])}; };
  // Denominators stay in [0.5, 2] so div's Jacobian is tame.
  auto rhs = [kind](const Shape& s, uint64_t seed) {
    return kind == BinaryKind::div ? sample_uniform(s, seed, 0.5, 2.0) : sample_randn(s, seed);
  };
  return {
      {"[3, 4] and [3, 4]", {sample_randn(Shape{3, 4}, 21), rhs(Shape{3, 4}, 22)}, run},
      {"[2, 3, 4] and [3, 1]", {sample_randn(Shape{2, 3, 4}, 23), rhs(Shape{3, 1}, 24)}, run},
      {"[4] and [2, 1, 4]", {sample_randn(Shape{4}, 25), rhs(Shape{2, 1, 4}, 26)}, run},
      {"[3, 1] and [1, 4]", {sample_randn(Shape{3, 1}, 27), rhs(Shape{1, 4}, 28)}, run},
      {"[2, 3] and []", {sample_randn(Shape{2, 3}, 29), rhs(Shape{}, 30)}, run},
  };
}

std::vector<OpSample> BinaryOp::parity_samples(BinaryKind kind) {
  auto run = [kind](const std::vector<Variable>& in) { return std::vector<Variable>{binary(kind, in[0], in[1])}; };
  auto rhs = [kind](const Shape& s, uint64_t seed) {
    return kind == BinaryKind::div ? sample_uniform(s, seed, 0.5, 2.0) : sample_randn(s, seed);
  };
  // A transposed input: [130, 37] seen as [37, 130] with strides (1, 37).
  auto transposed = [](const std::vector<Variable>& in) { return std::vector<Variable>{in[0], transpose(in[1], 0, 1)}; };
  auto run_t = [run, transposed](const std::vector<Variable>& in) { return run(transposed(in)); };
  return {
      {"[3, 37, 130] and [3, 37, 130]", {sample_randn(Shape{3, 37, 130}, 31), rhs(Shape{3, 37, 130}, 32)}, run},
      {"[3, 37, 130] and [130] (bias)", {sample_randn(Shape{3, 37, 130}, 33), rhs(Shape{130}, 34)}, run},
      {"[3, 37, 1] and [3, 1, 130]", {sample_randn(Shape{3, 37, 1}, 35), rhs(Shape{3, 1, 130}, 36)}, run},
      {"[37, 130] and []", {sample_randn(Shape{37, 130}, 37), rhs(Shape{}, 38)}, run},
      {"[37, 130] and transposed [130, 37]", {sample_randn(Shape{37, 130}, 39), rhs(Shape{130, 37}, 40)}, run_t},
  };
}

std::vector<OpMisuse> BinaryOp::misuses(BinaryKind kind) {
  return {
      {"[2, 3] and [4] do not broadcast",
       [kind] { binary(kind, Variable(Tensor::zeros(Shape{2, 3})), Variable(Tensor::ones(Shape{4}))); }},
      {"f32 and f64",
       [kind] { binary(kind, Variable(Tensor::ones(Shape{2, 3})), Variable(Tensor::ones(Shape{2, 3}, DType::f64))); }},
      {"i32 inputs",
       [kind] {
         binary(kind, Variable(Tensor::ones(Shape{2, 3}, DType::i32)), Variable(Tensor::ones(Shape{2, 3}, DType::i32)));
       }},
  };
}

void register_ops_binary(OpRegistry& registry) {
  for (const KindInfo& k : kKinds)
    registry.add({.name = std::string(k.name),
                  .samples = [kind = k.kind] { return BinaryOp::samples(kind); },
                  .misuses = [kind = k.kind] { return BinaryOp::misuses(kind); },
                  .cuda = true,
                  .parity_samples = [kind = k.kind] { return BinaryOp::parity_samples(kind); }});
}

}  // namespace attnlab
