// Autograd wiring of dropout, its samples and its registration.
#include "autograd/ops/dropout/dropout.h"

#include "autograd/op_helpers.h"
#include "lib/rng.h"

namespace attnlab {

namespace {
constexpr const char* kName = "dropout";
}  // namespace

void DropoutOp::check(const Tensor& x, double p) {
  op::check_float(kName, "x", x);
  // Written so that a NaN p fails too.
  AL_CHECK_CONFIG(p >= 0.0 && p < 1.0, kName, ": p must be in [0, 1); got p=", p, " for x=", x);
}

Variable dropout(const Variable& x, double p, Generator& gen, bool training) {
  op::check_defined(kName, "x", x);
  DropoutOp::check(x.data(), p);
  if (!training || p == 0.0) {
    // A node of its own (rather than returning x) so the result behaves like any op output:
    // no graph under NoGradGuard, and a Variable distinct from x.
    return make_output(kName, {x}, x.data(), [](const Tensor& dy, const GradMask& needs) {
      return std::vector<Tensor>{needs[0] ? dy : Tensor()};
    });
  }
  const Tensor xc = x.data().contiguous();
  const uint64_t base = gen.reserve(static_cast<uint64_t>((xc.numel() + 3) / 4));
  auto [y, s] = op::on_device(kName, xc, [&](auto dev) { return DropoutOp::forward(dev, xc, p, gen.seed(), base); });
  return make_output(kName, {x}, y, [s = s](const Tensor& dy, const GradMask& needs) {
    if (!needs[0]) return std::vector<Tensor>{Tensor()};
    const Tensor dyc = dy.contiguous();
    return std::vector<Tensor>{op::on_device(kName, s, [&](auto dev) { return DropoutOp::backward(dev, s, dyc); })};
  });
}

std::vector<OpSample> DropoutOp::samples() {
  // The Generator is made inside run, so every evaluation by gradcheck draws the same mask.
  auto run_with = [](double p, uint64_t seed, bool training) {
    return [=](const std::vector<Variable>& in) {
      Generator gen(seed);
      return std::vector<Variable>{dropout(in[0], p, gen, training)};
    };
  };
  return {
      {"[4, 6] p=0.3", {sample_randn(Shape{4, 6}, 41)}, run_with(0.3, 5, true)},
      {"[2, 3, 5] p=0.5", {sample_randn(Shape{2, 3, 5}, 42)}, run_with(0.5, 9, true)},
      {"[3, 4] p=0 (identity)", {sample_randn(Shape{3, 4}, 43)}, run_with(0.0, 5, true)},
      {"[3, 4] p=0.5 not training (identity)", {sample_randn(Shape{3, 4}, 44)}, run_with(0.5, 5, false)},
  };
}

std::vector<OpSample> DropoutOp::parity_samples() {
  auto run_with = [](double p, uint64_t seed, uint64_t skip) {
    return [=](const std::vector<Variable>& in) {
      Generator gen(seed);
      gen.reserve(skip);  // a Generator part-way through its stream
      return std::vector<Variable>{dropout(in[0], p, gen)};
    };
  };
  return {
      {"[3, 37, 130] p=0.3", {sample_randn(Shape{3, 37, 130}, 81)}, run_with(0.3, 17, 0)},
      {"[1001] p=0.9 (ragged last Philox block)", {sample_randn(Shape{1001}, 82)}, run_with(0.9, 18, 12345)},
  };
}

std::vector<OpMisuse> DropoutOp::misuses() {
  return {
      {"p=1.5",
       [] {
         Generator gen(1);
         dropout(Variable(Tensor::zeros(Shape{2, 3}, DType::f32)), 1.5, gen);
       }},
      {"p=1 (nothing kept)",
       [] {
         Generator gen(1);
         dropout(Variable(Tensor::zeros(Shape{2, 3}, DType::f32)), 1.0, gen);
       }},
      {"i32 input",
       [] {
         Generator gen(1);
         dropout(Variable(Tensor::zeros(Shape{2, 3}, DType::i32)), 0.5, gen);
       }},
  };
}

void register_ops_dropout(OpRegistry& registry) {
  registry.add({.name = kName,
                .samples = [] { return DropoutOp::samples(); },
                .misuses = [] { return DropoutOp::misuses(); },
                .cuda = true,
                .parity_samples = [] { return DropoutOp::parity_samples(); }});
}

}  // namespace attnlab
