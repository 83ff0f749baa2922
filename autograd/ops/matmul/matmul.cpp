// Autograd wiring of matmul, its samples and its registration.
#include "autograd/ops/matmul/matmul.h"

#include <algorithm>

#include "autograd/op_helpers.h"

namespace attnlab {

namespace {
constexpr std::string_view kName = "matmul";

const char* flag(bool on) { return on ? "true" : "false"; }

// The batch dims (all but the last two) broadcast under NumPy's rule.
bool batches_broadcast(const Shape& a, const Shape& b) {
  const int64_t na = a.ndim() - 2, nb = b.ndim() - 2;
  for (int64_t i = 1; i <= std::min(na, nb); ++i) {
    const int64_t da = a[na - i], db = b[nb - i];
    if (da != db && da != 1 && db != 1) return false;
  }
  return true;
}
}  // namespace

void MatmulOp::check(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  op::check_float(kName, "a", a);
  op::check_float(kName, "b", b);
  op::check_same_dtype(kName, "a", a, "b", b);
  op::check_same_device(kName, "a", a, "b", b);
  AL_CHECK_SHAPE(a.ndim() >= 2 && b.ndim() >= 2, kName,
                 ": a and b need at least 2 dims ([..., M, K] and [..., K, N]); got a=", a, ", b=", b);
  const int64_t ka = a.size(trans_a ? -2 : -1), kb = b.size(trans_b ? -1 : -2);
  AL_CHECK_SHAPE(ka == kb, kName, ": inner dimensions must agree (K=", ka, " from a, K=", kb, " from b; trans_a=",
                 flag(trans_a), ", trans_b=", flag(trans_b), "); got a=", a, ", b=", b);
  AL_CHECK_SHAPE(batches_broadcast(a.shape(), b.shape()), kName, ": batch dims do not broadcast; got a=", a, ", b=", b);
}

Variable matmul(const Variable& a, const Variable& b, bool trans_a, bool trans_b) {
  op::check_defined(kName, "a", a);
  op::check_defined(kName, "b", b);
  MatmulOp::check(a.data(), b.data(), trans_a, trans_b);
  // cpu::matmul reads strided matrices itself (and packs only what it must), so views go in as they are.
  const Tensor av = a.data(), bv = b.data();
  Tensor c = op::on_device(kName, av, [&](auto dev) { return MatmulOp::forward(dev, av, bv, trans_a, trans_b); });
  return make_output(kName, {a, b}, c, [av, bv, trans_a, trans_b](const Tensor& dc, const GradMask& needs) {
    return op::on_device(kName, dc,
                         [&](auto dev) { return MatmulOp::backward(dev, av, bv, trans_a, trans_b, dc, needs); });
  });
}

std::vector<OpSample> MatmulOp::samples() {
  auto run = [](bool ta, bool tb) {
    return [ta, tb](const std::vector<Variable>& in) { return std::vector<Variable>{matmul(in[0], in[1], ta, tb)}; };
  };
  auto r = [](const Shape& s, uint64_t seed) { return sample_randn(s, seed); };
  return {
      {"[3, 4] @ [4, 5]", {r(Shape{3, 4}, 41), r(Shape{4, 5}, 42)}, run(false, false)},
      {"[4, 3]^T @ [4, 5]", {r(Shape{4, 3}, 43), r(Shape{4, 5}, 44)}, run(true, false)},
      {"[2, 3, 4] @ [2, 5, 4]^T", {r(Shape{2, 3, 4}, 45), r(Shape{2, 5, 4}, 46)}, run(false, true)},
      {"[2, 1, 4, 3]^T @ [3, 5, 4]^T", {r(Shape{2, 1, 4, 3}, 47), r(Shape{3, 5, 4}, 48)}, run(true, true)},
      {"[2, 1, 3, 4] @ [3, 4, 2]", {r(Shape{2, 1, 3, 4}, 49), r(Shape{3, 4, 2}, 50)}, run(false, false)},
      // A batched a against a plain matrix b (a linear layer): the batch folds into one GEMM.
      {"[2, 3, 4] @ [4, 5]", {r(Shape{2, 3, 4}, 51), r(Shape{4, 5}, 52)}, run(false, false)},
      {"[2, 3, 4] @ [5, 4]^T", {r(Shape{2, 3, 4}, 53), r(Shape{5, 4}, 54)}, run(false, true)},
      {"[3, 4] @ [2, 4, 5]", {r(Shape{3, 4}, 55), r(Shape{2, 4, 5}, 56)}, run(false, false)},
  };
}

std::vector<OpSample> MatmulOp::parity_samples() {
  auto run = [](bool ta, bool tb) {
    return [ta, tb](const std::vector<Variable>& in) { return std::vector<Variable>{matmul(in[0], in[1], ta, tb)}; };
  };
  auto r = [](const Shape& s, uint64_t seed) { return sample_randn(s, seed); };
  // Several 64x64 tiles of C and 16-deep k-tiles, every side ending off a tile boundary.
  return {
      {"[2, 37, 65] @ [65, 33]", {r(Shape{2, 37, 65}, 141), r(Shape{65, 33}, 142)}, run(false, false)},
      {"[70, 45]^T @ [70, 81]", {r(Shape{70, 45}, 143), r(Shape{70, 81}, 144)}, run(true, false)},
      {"[3, 67, 20] @ [3, 130, 20]^T", {r(Shape{3, 67, 20}, 145), r(Shape{3, 130, 20}, 146)}, run(false, true)},
      {"[2, 1, 33, 17]^T @ [3, 66, 33]^T", {r(Shape{2, 1, 33, 17}, 147), r(Shape{3, 66, 33}, 148)}, run(true, true)},
      {"[40, 65] @ [2, 65, 70]", {r(Shape{40, 65}, 149), r(Shape{2, 65, 70}, 150)}, run(false, false)},
  };
}

std::vector<OpMisuse> MatmulOp::misuses() {
  auto v = [](const Shape& s, DType dt = DType::f32) { return Variable(Tensor::ones(s, dt)); };
  return {
      {"inner dims 3 vs 4", [v] { matmul(v(Shape{2, 3}), v(Shape{4, 5})); }},
      {"[3, 2]^T @ [2, 5]", [v] { matmul(v(Shape{3, 2}), v(Shape{2, 5}), true, false); }},
      {"1-D operand", [v] { matmul(v(Shape{3}), v(Shape{3, 2})); }},
      {"f32 and f64", [v] { matmul(v(Shape{2, 3}), v(Shape{3, 2}, DType::f64)); }},
      {"i32 operands", [v] { matmul(v(Shape{2, 3}, DType::i32), v(Shape{3, 2}, DType::i32)); }},
      {"batch dims 2 vs 3", [v] { matmul(v(Shape{2, 2, 3}), v(Shape{3, 3, 4})); }},
  };
}

void register_ops_matmul(OpRegistry& registry) {
  registry.add({.name = std::string(kName),
                .samples = [] { return MatmulOp::samples(); },
                .misuses = [] { return MatmulOp::misuses(); },
                .cuda = true,
                .parity_samples = [] { return MatmulOp::parity_samples(); }});
}

}  // namespace attnlab
