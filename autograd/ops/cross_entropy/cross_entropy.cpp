// Autograd wiring of cross_entropy, its samples and its registration.
#include "autograd/ops/cross_entropy/cross_entropy.h"

#include "autograd/op_helpers.h"

namespace attnlab {

namespace {
constexpr const char* kName = "cross_entropy";

// The leading dims of logits: the shape targets must have.
Shape rows_shape(const Tensor& logits) {
  const std::vector<int64_t>& d = logits.shape().dims();
  return Shape(std::vector<int64_t>(d.begin(), d.end() - 1));
}
}  // namespace

void CrossEntropyOp::check(const Tensor& logits, const Tensor& targets) {
  op::check_float(kName, "logits", logits);
  AL_CHECK_DTYPE(targets.dtype() == DType::i32, kName, ": targets must be i32 class indices; got logits=", logits,
                 ", targets=", targets);
  op::check_same_device(kName, "logits", logits, "targets", targets);
  AL_CHECK_SHAPE(logits.ndim() >= 2 && targets.shape() == rows_shape(logits), kName,
                 ": expected logits [N, V] with targets [N] (or [B, T, V] with [B, T]); got logits=", logits,
                 ", targets=", targets);
}

Variable cross_entropy(const Variable& logits, const Variable& targets, int32_t ignore_index) {
  op::check_defined(kName, "logits", logits);
  op::check_defined(kName, "targets", targets);
  CrossEntropyOp::check(logits.data(), targets.data());
  const Tensor xc = logits.data().contiguous();
  const Tensor tc = targets.data().contiguous();
  CrossEntropyOp::Forward f =
      op::on_device(kName, xc, [&](auto dev) { return CrossEntropyOp::forward(dev, xc, tc, ignore_index); });
  return make_output(kName, {logits, targets}, f.loss,
                     [xc, tc, lse = f.lse, count = f.count, ignore_index](const Tensor& dloss, const GradMask& needs) {
                       // targets are integers: never differentiated.
                       std::vector<Tensor> grads(2);
                       if (needs[0])
                         grads[0] = op::on_device(kName, xc, [&](auto dev) {
                           return CrossEntropyOp::backward(dev, xc, tc, lse, count, ignore_index, dloss);
                         });
                       return grads;
                     });
}

std::vector<OpSample> CrossEntropyOp::samples() {
  auto run_with = [](int32_t ignore_index) {
    return [ignore_index](const std::vector<Variable>& in) {
      return std::vector<Variable>{cross_entropy(in[0], in[1], ignore_index)};
    };
  };
  auto targets = [](const Shape& s, std::vector<int32_t> v) { return Tensor::from_vector<int32_t>(s, v); };
  return {
      {"[4, 5], one target ignored", {sample_randn(Shape{4, 5}, 31), targets(Shape{4}, {2, -100, 0, 4})}, run_with(-100)},
      {"[2, 3, 4] with [2, 3] targets (3-d)",
       {sample_randn(Shape{2, 3, 4}, 32, 2.0), targets(Shape{2, 3}, {1, 3, -100, 0, 2, 2})},
       run_with(-100)},
      // ignore_index inside [0, V), and logits large enough to overflow a naive exp in f32.
      {"[3, 6] ignore_index=1, logits at scale 30",
       {sample_randn(Shape{3, 6}, 33, 30.0), targets(Shape{3}, {1, 5, 0})},
       run_with(1)},
      {"[3, 4] every target ignored (loss 0)",
       {sample_randn(Shape{3, 4}, 34), targets(Shape{3}, {-100, -100, -100})},
       run_with(-100)},
  };
}

std::vector<OpSample> CrossEntropyOp::parity_samples() {
  auto run = [](const std::vector<Variable>& in) { return std::vector<Variable>{cross_entropy(in[0], in[1])}; };
  // Targets in [0, V), every seventh ignored (-100).
  auto targets = [](int64_t n, int64_t v, uint64_t seed) {
    const std::vector<double> u = sample_uniform(Shape{n}, seed, 0.0, static_cast<double>(v)).to_vector<double>();
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (size_t i = 0; i < t.size(); ++i)
      t[i] = i % 7 == 3 ? -100 : static_cast<int32_t>(u[i]) % static_cast<int32_t>(v);
    return Tensor::from_vector<int32_t>(Shape{n}, t);
  };
  return {
      // One warp per row, 8 rows per block: 65 rows leave the last block one live row.
      {"[65, 37] (warp per row, ragged)", {sample_randn(Shape{65, 37}, 35, 3.0), targets(65, 37, 36)}, run},
      // One block per row: 256 threads over 1000 logits, then 512 over 3001.
      {"[5, 3, 1000] with [5, 3] targets",
       {sample_randn(Shape{5, 3, 1000}, 37, 5.0), targets(15, 1000, 38).reshape(Shape{5, 3})},
       run},
      {"[7, 3001] at scale 30", {sample_randn(Shape{7, 3001}, 39, 30.0), targets(7, 3001, 40)}, run},
  };
}

std::vector<OpMisuse> CrossEntropyOp::misuses() {
  auto logits = [] { return Variable(Tensor::zeros(Shape{3, 5}, DType::f64)); };
  auto targets = [](const Shape& s, std::vector<int32_t> v) { return Variable(Tensor::from_vector<int32_t>(s, v)); };
  return {
      {"target >= V", [=] { cross_entropy(logits(), targets(Shape{3}, {0, 7, 1})); }},
      {"negative target that is not ignore_index", [=] { cross_entropy(logits(), targets(Shape{3}, {0, -1, 1})); }},
      {"targets [4] for logits [3, 5]", [=] { cross_entropy(logits(), targets(Shape{4}, {0, 1, 2, 3})); }},
      {"1-d logits", [=] { cross_entropy(Variable(Tensor::zeros(Shape{5}, DType::f64)), targets(Shape{}, {1})); }},
      {"f64 targets", [=] { cross_entropy(logits(), Variable(Tensor::zeros(Shape{3}, DType::f64))); }},
      {"i32 logits",
       [=] { cross_entropy(Variable(Tensor::zeros(Shape{3, 5}, DType::i32)), targets(Shape{3}, {0, 1, 2})); }},
  };
}

void register_ops_cross_entropy(OpRegistry& registry) {
  registry.add({.name = kName,
                .samples = [] { return CrossEntropyOp::samples(); },
                .misuses = [] { return CrossEntropyOp::misuses(); },
                .cuda = true,
                .parity_samples = [] { return CrossEntropyOp::parity_samples(); }});
}

}  // namespace attnlab
