// Autograd wiring of sum, mean and max, their samples and their registration.
#include "autograd/ops/reduce/reduce.h"

#include <algorithm>
#include <limits>
#include <numeric>

#include "autograd/op_helpers.h"

namespace attnlab {

namespace {
struct KindInfo {
  ReduceKind kind;
  std::string_view name;
};

constexpr KindInfo kKinds[] = {{ReduceKind::sum, "sum"}, {ReduceKind::mean, "mean"}, {ReduceKind::max, "max"}};

std::vector<int64_t> all_dims(const Variable& x) {
  std::vector<int64_t> dims(static_cast<size_t>(x.ndim()));
  std::iota(dims.begin(), dims.end(), int64_t{0});
  return dims;
}

// `shape` with the reduced dims set to 1 (keep) or removed.
Shape reduced_shape(const Shape& shape, const std::vector<bool>& reduce, bool keep) {
  std::vector<int64_t> out;
  for (int64_t d = 0; d < shape.ndim(); ++d) {
    if (!reduce[static_cast<size_t>(d)]) out.push_back(shape[d]);
    else if (keep) out.push_back(1);
  }
  return Shape(std::move(out));
}

// Values 0.1 or more apart in a random order: no gradcheck step can move max's argmax, and f32
// rounding keeps the order.
Tensor distinct(const Shape& shape, uint64_t seed) {
  const std::vector<double> keys = sample_uniform(shape, seed, 0.0, 1.0).to_vector<double>();
  std::vector<size_t> order(keys.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t i, size_t j) { return keys[i] < keys[j]; });
  std::vector<double> values(keys.size());
  const double mid = 0.5 * static_cast<double>(order.size());
  for (size_t r = 0; r < order.size(); ++r) values[order[r]] = 0.1 * (static_cast<double>(r) - mid);
  return Tensor::from_vector(shape, values);
}
}  // namespace

ReduceOp::Split ReduceOp::split(const Shape& shape, const std::vector<bool>& reduce) {
  Split s;
  const auto dim = std::find(reduce.begin(), reduce.end(), true) - reduce.begin();
  for (int64_t d = 0; d < shape.ndim(); ++d) {
    if (d < dim) s.outer *= shape[d];
    else if (d == dim) s.n = shape[d];
    else s.inner *= shape[d];
  }
  return s;
}

std::string_view reduce_name(ReduceKind kind) {
  for (const KindInfo& k : kKinds)
    if (k.kind == kind) return k.name;
  AL_ASSERT(false, "unknown ReduceKind");
}

std::vector<bool> ReduceOp::check(ReduceKind kind, const Tensor& x, const std::vector<int64_t>& dims) {
  const std::string_view name = reduce_name(kind);
  op::check_float(name, "x", x);
  AL_ASSERT(kind != ReduceKind::max || dims.size() == 1, "max reduces exactly one dim");
  const int64_t nd = x.ndim();
  std::vector<bool> reduce(static_cast<size_t>(nd), false);
  for (int64_t d : dims) {
    const size_t k = static_cast<size_t>(op::check_dim(name, d, x));
    AL_CHECK_SHAPE(!reduce[k], name, ": dims ", Shape(dims), " name dim ", k, " twice; got x=", x);
    reduce[k] = true;
  }
  if (kind == ReduceKind::max) {
    AL_CHECK_SHAPE(x.size(dims[0]) > 0, name, ": dim ", dims[0], " is empty, so it has no maximum; got x=", x);
    // The argmax is kept as i32.
    AL_CHECK_SHAPE(x.size(dims[0]) <= std::numeric_limits<int32_t>::max(), name, ": dim ", dims[0],
                   " is longer than 2^31 - 1; got x=", x);
  }
  return reduce;
}

Variable reduce(ReduceKind kind, const Variable& x, const std::vector<int64_t>& dims, bool keepdim) {
  const std::string_view name = reduce_name(kind);
  op::check_defined(name, "x", x);
  const std::vector<bool> mask = ReduceOp::check(kind, x.data(), dims);
  // sum_dims packs its input itself; the max kernel indexes x as [outer, n, inner].
  const Tensor xc = kind == ReduceKind::max ? x.data().contiguous() : x.data();
  std::vector<Tensor> outs = op::on_device(name, xc, [&](auto dev) { return ReduceOp::forward(dev, kind, xc, mask); });
  const Shape x_shape = x.shape();
  const Shape kept = reduced_shape(x_shape, mask, true);
  const Tensor y = keepdim ? outs[0] : outs[0].view(reduced_shape(x_shape, mask, false));
  const Tensor argmax = kind == ReduceKind::max ? outs[1] : Tensor();
  return make_output(name, {x}, y, [kind, x_shape, kept, mask, argmax](const Tensor& dy, const GradMask&) {
    const Tensor dyc = dy.reshape(kept).contiguous();
    return std::vector<Tensor>{op::on_device(reduce_name(kind), dyc, [&](auto dev) {
      return ReduceOp::backward(dev, kind, x_shape, mask, argmax, dyc);
    })};
  });
}

Variable sum(const Variable& x) { return reduce(ReduceKind::sum, x, all_dims(x), false); }
Variable sum(const Variable& x, const std::vector<int64_t>& dims, bool keepdim) {
  return reduce(ReduceKind::sum, x, dims, keepdim);
}
Variable mean(const Variable& x) { return reduce(ReduceKind::mean, x, all_dims(x), false); }
Variable mean(const Variable& x, const std::vector<int64_t>& dims, bool keepdim) {
  return reduce(ReduceKind::mean, x, dims, keepdim);
}
Variable max(const Variable& x, int64_t dim, bool keepdim) { return reduce(ReduceKind::max, x, {dim}, keepdim); }

std::vector<OpSample> ReduceOp::samples(ReduceKind kind) {
  auto run = [kind](std::vector<int64_t> dims, bool keepdim) {
    return [kind, dims, keepdim](const std::vector<Variable>& in) {
      return std::vector<Variable>{reduce(kind, in[0], dims, keepdim)};
    };
  };
  auto run_all = [kind](const std::vector<Variable>& in) {
    return std::vector<Variable>{kind == ReduceKind::sum ? sum(in[0]) : mean(in[0])};
  };
  if (kind == ReduceKind::max) {
    return {
        {"[3, 4] dim 1", {distinct(Shape{3, 4}, 61)}, run({1}, false)},
        {"[2, 3, 4] dim 0 keepdim", {distinct(Shape{2, 3, 4}, 62)}, run({0}, true)},
        {"[2, 3, 4] dim -2", {distinct(Shape{2, 3, 4}, 63)}, run({-2}, false)},
    };
  }
  return {
      {"[3, 4] all", {sample_randn(Shape{3, 4}, 64)}, run_all},
      {"[2, 3, 4] dim 1", {sample_randn(Shape{2, 3, 4}, 65)}, run({1}, false)},
      {"[2, 3, 4] dims 0, 2 keepdim", {sample_randn(Shape{2, 3, 4}, 66)}, run({0, 2}, true)},
      {"[2, 3, 4] dims -1, 0", {sample_randn(Shape{2, 3, 4}, 67)}, run({-1, 0}, false)},
  };
}

std::vector<OpSample> ReduceOp::parity_samples(ReduceKind kind) {
  auto run = [kind](std::vector<int64_t> dims, bool keepdim) {
    return [kind, dims, keepdim](const std::vector<Variable>& in) {
      return std::vector<Variable>{reduce(kind, in[0], dims, keepdim)};
    };
  };
  const Shape s{3, 37, 130};
  if (kind == ReduceKind::max) {
    // The last dim long enough for the block-per-row kernel.
    return {
        {"[3, 37, 130] dim 1", {distinct(s, 71)}, run({1}, false)},
        {"[3, 37, 130] dim -1", {distinct(s, 72)}, run({-1}, false)},
        {"[37, 1000] dim 1 keepdim", {distinct(Shape{37, 1000}, 73)}, run({1}, true)},
        {"[1000, 37] dim 0", {distinct(Shape{1000, 37}, 74)}, run({0}, false)},
    };
  }
  auto run_all = [kind](const std::vector<Variable>& in) {
    return std::vector<Variable>{kind == ReduceKind::sum ? sum(in[0]) : mean(in[0])};
  };
  return {
      {"[3, 37, 130] all", {sample_randn(s, 75)}, run_all},
      {"[3, 37, 130] dim -1", {sample_randn(s, 76)}, run({-1}, false)},
      {"[3, 37, 130] dims 0, 1 (columns)", {sample_randn(s, 77)}, run({0, 1}, false)},
      {"[3, 37, 130] dims 0, 2 keepdim (permuted)", {sample_randn(s, 78)}, run({0, 2}, true)},
      {"[37, 1000] dim 1", {sample_randn(Shape{37, 1000}, 79)}, run({1}, false)},
      {"[3, 37, 130] no dims", {sample_randn(s, 80)}, run({}, false)},
  };
}

std::vector<OpMisuse> ReduceOp::misuses(ReduceKind kind) {
  auto x = [](const Shape& s, DType dt = DType::f32) { return Variable(Tensor::ones(s, dt)); };
  std::vector<OpMisuse> m = {
      {"dim 2 of [2, 3]", [kind, x] { reduce(kind, x(Shape{2, 3}), {2}, false); }},
      {"dim -3 of [2, 3]", [kind, x] { reduce(kind, x(Shape{2, 3}), {-3}, false); }},
      {"i32 input", [kind, x] { reduce(kind, x(Shape{2, 3}, DType::i32), {0}, false); }},
  };
  if (kind == ReduceKind::max)
    m.push_back({"empty dim", [kind, x] { reduce(kind, x(Shape{2, 0}), {1}, false); }});
  else
    m.push_back({"dims 0 and -2 of [2, 3]", [kind, x] { reduce(kind, x(Shape{2, 3}), {0, -2}, false); }});
  return m;
}

void register_ops_reduce(OpRegistry& registry) {
  for (const KindInfo& k : kKinds)
    registry.add({.name = std::string(k.name),
                  .samples = [kind = k.kind] { return ReduceOp::samples(kind); },
                  .misuses = [kind = k.kind] { return ReduceOp::misuses(kind); },
                  .cuda = true,
                  .parity_samples = [kind = k.kind] { return ReduceOp::parity_samples(kind); }});
}

}  // namespace attnlab
