// Autograd wiring of concat and stack, their samples and registration.
#include "autograd/ops/concat/concat.h"

#include <sstream>
#include <string>
#include <utility>

#include "autograd/op_helpers.h"

namespace attnlab {

namespace {

constexpr std::pair<ConcatKind, std::string_view> kKinds[] = {{ConcatKind::concat, "concat"},
                                                               {ConcatKind::stack, "stack"}};

// "xs[0]=[2, 3] f64 cpu, xs[1]=[2, 4] f64 cpu": every input, for messages.
std::string describe(const std::vector<Tensor>& xs) {
  std::ostringstream os;
  for (size_t i = 0; i < xs.size(); ++i) os << (i ? ", " : "") << "xs[" << i << "]=" << xs[i];
  return os.str();
}

}  // namespace

std::string_view concat_name(ConcatKind kind) { return kind == ConcatKind::concat ? "concat" : "stack"; }

int64_t ConcatOp::check(ConcatKind kind, const std::vector<Tensor>& xs, int64_t dim) {
  const std::string_view name = concat_name(kind);
  AL_CHECK_SHAPE(!xs.empty(), name, ": needs at least one input; got xs=[]");
  const Tensor& x0 = xs[0];
  for (const Tensor& x : xs) {
    AL_CHECK_DTYPE(x.dtype() == x0.dtype(), name, ": inputs must share a dtype; got ", describe(xs));
    AL_CHECK_DEVICE(x.device() == x0.device(), name, ": inputs must share a device; got ", describe(xs));
  }
  const int64_t n = x0.ndim() + (kind == ConcatKind::stack ? 1 : 0);
  AL_CHECK_SHAPE(dim >= -n && dim < n, name, ": dim ", dim, " is out of range [", -n, ", ", n, ") for ",
                 describe(xs));
  const int64_t d = dim < 0 ? dim + n : dim;
  for (const Tensor& x : xs) {
    if (kind == ConcatKind::stack) {
      AL_CHECK_SHAPE(x.shape() == x0.shape(), "stack: inputs must all have one shape; got ", describe(xs));
      continue;
    }
    bool match = x.ndim() == x0.ndim();
    for (int64_t k = 0; match && k < x.ndim(); ++k) match = k == d || x.size(k) == x0.size(k);
    AL_CHECK_SHAPE(match, "concat: inputs must have one rank and match in every dim but dim ", d, "; got ",
                   describe(xs));
  }
  return d;
}

namespace {

Variable join(ConcatKind kind, const std::vector<Variable>& xs, int64_t dim) {
  const std::string_view name = concat_name(kind);
  std::vector<Tensor> ts;
  for (size_t i = 0; i < xs.size(); ++i) {
    op::check_defined(name, "xs[" + std::to_string(i) + "]", xs[i]);
    ts.push_back(xs[i].data());
  }
  const int64_t d = ConcatOp::check(kind, ts, dim);
  // The kernel takes contiguous inputs of y's rank: stack's get their size-1 dim at d.
  std::vector<Shape> shapes;
  int64_t total = 0;
  for (Tensor& t : ts) {
    shapes.push_back(t.shape());
    t = t.contiguous();
    if (kind == ConcatKind::stack) t = t.unsqueeze(d);
    total += t.size(d);
  }
  Shape y_shape = ts[0].shape();
  y_shape[d] = total;
  Tensor y = op::on_device(name, ts[0], [&](auto dev) { return ConcatOp::forward(dev, ts, d, y_shape); });
  return make_output(name, xs, std::move(y), [kind, d, shapes](const Tensor& dy, const GradMask& needs) {
    std::vector<Tensor> dxs(shapes.size());
    int64_t at = 0;
    for (size_t i = 0; i < shapes.size(); ++i) {
      const int64_t n = kind == ConcatKind::stack ? 1 : shapes[i][d];
      if (needs[i]) {
        Tensor g = dy.narrow(d, at, n);
        dxs[i] = kind == ConcatKind::stack ? g.reshape(shapes[i]) : g;
      }
      at += n;
    }
    return dxs;
  });
}

}  // namespace

Variable concat(const std::vector<Variable>& xs, int64_t dim) { return join(ConcatKind::concat, xs, dim); }
Variable stack(const std::vector<Variable>& xs, int64_t dim) { return join(ConcatKind::stack, xs, dim); }

// ---- samples and misuses ------------------------------------------------------------------

namespace {

std::vector<Tensor> randn_each(const std::vector<Shape>& shapes, uint64_t seed) {
  std::vector<Tensor> ts;
  for (const Shape& s : shapes) ts.push_back(sample_randn(s, seed++));
  return ts;
}

OpSample sample(ConcatKind kind, std::string label, const std::vector<Shape>& shapes, uint64_t seed, int64_t dim) {
  return {std::move(label), randn_each(shapes, seed), [kind, dim](const std::vector<Variable>& in) {
            return std::vector<Variable>{kind == ConcatKind::concat ? concat(in, dim) : stack(in, dim)};
          }};
}

std::vector<Variable> inputs(const std::vector<Shape>& shapes) {
  std::vector<Variable> vs;
  for (const Tensor& t : randn_each(shapes, 1)) vs.emplace_back(t, true);
  return vs;
}

}  // namespace

std::vector<OpSample> ConcatOp::samples(ConcatKind kind) {
  using K = ConcatKind;
  if (kind == K::concat) {
    OpSample twice{"x with itself, dim 0", {sample_randn(Shape{2, 3}, 45)},
                   [](const std::vector<Variable>& in) { return std::vector<Variable>{concat({in[0], in[0]}, 0)}; }};
    return {sample(K::concat, "three along the middle dim", {Shape{2, 1, 3}, Shape{2, 3, 3}, Shape{2, 2, 3}}, 41, 1),
            sample(K::concat, "two along dim -1", {Shape{3, 2}, Shape{3, 4}}, 42, -1),
            sample(K::concat, "three along dim -3 (the first)", {Shape{1, 2, 2}, Shape{2, 2, 2}, Shape{1, 2, 2}}, 43, -3),
            std::move(twice)};
  }
  return {sample(K::stack, "three [2, 3] at dim 1", {Shape{2, 3}, Shape{2, 3}, Shape{2, 3}}, 46, 1),
          sample(K::stack, "two [3, 2] at dim -1 (a new last dim)", {Shape{3, 2}, Shape{3, 2}}, 47, -1),
          sample(K::stack, "two [2, 2] at dim 0", {Shape{2, 2}, Shape{2, 2}}, 48, 0)};
}

std::vector<OpSample> ConcatOp::parity_samples(ConcatKind kind) {
  using K = ConcatKind;
  if (kind == K::concat)
    return {sample(K::concat, "three along dim 1", {Shape{3, 5, 130}, Shape{3, 37, 130}, Shape{3, 1, 130}}, 91, 1),
            sample(K::concat, "two along dim -1", {Shape{37, 130}, Shape{37, 257}}, 92, -1),
            sample(K::concat, "ten along dim 1 (two launches)", std::vector<Shape>(10, Shape{37, 13}), 93, 1)};
  return {sample(K::stack, "three [37, 130] at dim 1", {Shape{37, 130}, Shape{37, 130}, Shape{37, 130}}, 94, 1),
          sample(K::stack, "nine [3, 130] at dim -1", std::vector<Shape>(9, Shape{3, 130}), 95, -1)};
}

std::vector<OpMisuse> ConcatOp::misuses(ConcatKind kind) {
  auto run = [kind](const std::vector<Variable>& xs, int64_t dim) {
    kind == ConcatKind::concat ? concat(xs, dim) : stack(xs, dim);
  };
  std::vector<OpMisuse> m = {
      {"empty list", [run] { run({}, 0); }},
      {"dtype mismatch",
       [run] {
         run({Variable(sample_randn(Shape{2, 3}, 1)), Variable(sample_randn(Shape{2, 3}, 2).to(DType::f32))}, 0);
       }},
      {"dim out of range", [run, kind] { run(inputs({Shape{2, 3}, Shape{2, 3}}), kind == ConcatKind::concat ? 2 : 3); }},
  };
  if (kind == ConcatKind::concat) {
    m.push_back({"sizes differ off the dim", [run] { run(inputs({Shape{2, 3}, Shape{2, 3}, Shape{3, 3}}), 1); }});
    m.push_back({"ranks differ", [run] { run(inputs({Shape{2, 3}, Shape{2, 3, 1}}), 0); }});
  } else {
    m.push_back({"shapes differ", [run] { run(inputs({Shape{2, 3}, Shape{2, 4}}), 0); }});
  }
  return m;
}

void register_ops_concat(OpRegistry& registry) {
  for (const auto& [kind, name] : kKinds) {
    const ConcatKind k = kind;
    registry.add({.name = std::string(name),
                  .samples = [k] { return ConcatOp::samples(k); },
                  .misuses = [k] { return ConcatOp::misuses(k); },
                  .cuda = true,
                  .parity_samples = [k] { return ConcatOp::parity_samples(k); }});
  }
}

}  // namespace attnlab
