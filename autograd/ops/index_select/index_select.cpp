// Autograd wiring of index_select and embedding, their samples and registration.
#include "autograd/ops/index_select/index_select.h"

#include <utility>

#include "autograd/op_helpers.h"

namespace attnlab {

namespace {

constexpr std::pair<GatherKind, std::string_view> kKinds[] = {{GatherKind::index_select, "index_select"},
                                                               {GatherKind::embedding, "embedding"}};

// The coordinates of row-major position `pos` in `shape`, printed like a shape: "[1, 2]".
Shape unravel(int64_t pos, const Shape& shape) {
  std::vector<int64_t> at(static_cast<size_t>(shape.ndim()));
  for (int64_t d = shape.ndim(); d-- > 0;) {
    at[static_cast<size_t>(d)] = pos % shape[d];
    pos /= shape[d];
  }
  return Shape(std::move(at));
}

// dx for x [x_shape] from dy, gathered along `dim` at idx [K]; dy has x's shape with K at dim.
Tensor gather_backward(std::string_view name, const Shape& x_shape, int64_t dim, const Tensor& idx, const Tensor& dy) {
  const Tensor dyc = dy.contiguous();
  return op::on_device(name, dyc, [&](auto dev) { return IndexSelectOp::backward(dev, name, x_shape, dim, idx, dyc); });
}

}  // namespace

IndexSelectOp::Split IndexSelectOp::split_at(const Shape& s, int64_t dim) {
  Split r;
  for (int64_t d = 0; d < dim; ++d) r.outer *= s[d];
  r.n = s[dim];
  for (int64_t d = dim + 1; d < s.ndim(); ++d) r.inner *= s[d];
  return r;
}

std::string_view gather_name(GatherKind kind) {
  return kind == GatherKind::index_select ? "index_select" : "embedding";
}

int64_t IndexSelectOp::check(const Tensor& x, int64_t dim, const Tensor& index) {
  AL_CHECK_DTYPE(index.dtype() == DType::i32, "index_select: index must be i32; got index=", index, " for x=", x);
  AL_CHECK_SHAPE(index.ndim() == 1, "index_select: index must be 1-D [K]; got index=", index, " for x=", x);
  op::check_same_device("index_select", "x", x, "index", index);
  return op::check_dim("index_select", dim, x);
}

void IndexSelectOp::check_embedding(const Tensor& weight, const Tensor& ids) {
  AL_CHECK_SHAPE(weight.ndim() == 2, "embedding: weight must be 2-D [V, C]; got weight=", weight);
  AL_CHECK_DTYPE(ids.dtype() == DType::i32, "embedding: ids must be i32; got ids=", ids, " for weight=", weight);
  op::check_same_device("embedding", "weight", weight, "ids", ids);
}

Variable index_select(const Variable& x, int64_t dim, const Variable& index) {
  op::check_defined("index_select", "x", x);
  op::check_defined("index_select", "index", index);
  const int64_t d = IndexSelectOp::check(x.data(), dim, index.data());
  const Tensor xc = x.data().contiguous();
  const Tensor idx = index.data().contiguous();
  const int64_t n = xc.size(d);
  const BadIndex bad =
      op::on_device("index_select", idx, [&](auto dev) { return IndexSelectOp::find_bad_index(dev, idx, n); });
  AL_CHECK_SHAPE(!bad.found(), "index_select: index[", bad.pos, "]=", bad.value, " is outside [0, ", n,
                 "), the range of dim ", d, " of x=", x.data(), "; index=", index.data());
  Tensor y = op::on_device("index_select", xc, [&](auto dev) { return IndexSelectOp::forward(dev, xc, d, idx); });
  return make_output("index_select", {x, index}, std::move(y),
                     [d, idx, shape = x.shape()](const Tensor& dy, const GradMask& needs) {
                       std::vector<Tensor> grads(2);
                       if (needs[0]) grads[0] = gather_backward("index_select", shape, d, idx, dy);
                       return grads;
                     });
}

Variable embedding(const Variable& weight, const Variable& ids) {
  op::check_defined("embedding", "weight", weight);
  op::check_defined("embedding", "ids", ids);
  IndexSelectOp::check_embedding(weight.data(), ids.data());
  const Tensor w = weight.data().contiguous();
  const Tensor flat = ids.data().contiguous().view(Shape{ids.numel()});
  const int64_t V = w.size(0), C = w.size(1);
  const BadIndex bad =
      op::on_device("embedding", flat, [&](auto dev) { return IndexSelectOp::find_bad_index(dev, flat, V); });
  AL_CHECK_SHAPE(!bad.found(), "embedding: ids", unravel(bad.pos, ids.shape()), "=", bad.value, " is outside [0, ", V,
                 "), the rows of weight=", weight.data(), "; ids=", ids.data());
  std::vector<int64_t> y_dims = ids.shape().dims();
  y_dims.push_back(C);
  Tensor y = op::on_device("embedding", w, [&](auto dev) { return IndexSelectOp::forward(dev, w, 0, flat); });
  return make_output("embedding", {weight, ids}, y.view(Shape(std::move(y_dims))),
                     [flat, C, shape = weight.shape()](const Tensor& dy, const GradMask& needs) {
                       std::vector<Tensor> grads(2);
                       const Shape rows{flat.numel(), C};
                       if (needs[0]) grads[0] = gather_backward("embedding", shape, 0, flat, dy.reshape(rows));
                       return grads;
                     });
}

// ---- samples and misuses ------------------------------------------------------------------

namespace {

Tensor ids_tensor(const Shape& shape, const std::vector<int32_t>& values) {
  return Tensor::from_vector<int32_t>(shape, values);
}

OpSample select_sample(std::string label, const Shape& x_shape, uint64_t seed, int64_t dim,
                       const std::vector<int32_t>& index) {
  return {std::move(label),
          {sample_randn(x_shape, seed), ids_tensor(Shape{static_cast<int64_t>(index.size())}, index)},
          [dim](const std::vector<Variable>& in) { return std::vector<Variable>{index_select(in[0], dim, in[1])}; }};
}

OpSample embedding_sample(std::string label, const Shape& w_shape, uint64_t seed, const Shape& ids_shape,
                          const std::vector<int32_t>& ids) {
  return {std::move(label), {sample_randn(w_shape, seed), ids_tensor(ids_shape, ids)},
          [](const std::vector<Variable>& in) { return std::vector<Variable>{embedding(in[0], in[1])}; }};
}

Variable input(const Shape& shape) { return Variable(sample_randn(shape, 1), true); }
Variable ids(const Shape& shape, const std::vector<int32_t>& values) { return Variable(ids_tensor(shape, values)); }

}  // namespace

// Every sample repeats an index, so the backward's accumulation is checked.
std::vector<OpSample> IndexSelectOp::samples(GatherKind kind) {
  if (kind == GatherKind::index_select)
    return {select_sample("[5, 3] dim 0 at [0, 2, 2, 4, 0]", Shape{5, 3}, 51, 0, {0, 2, 2, 4, 0}),
            select_sample("[2, 4, 3] dim 1 at [3, 1, 3]", Shape{2, 4, 3}, 52, 1, {3, 1, 3}),
            select_sample("[2, 3, 4] dim -1 at [1, 1, 0, 3, 1]", Shape{2, 3, 4}, 53, -1, {1, 1, 0, 3, 1})};
  return {embedding_sample("[6, 4] at ids [2, 3]", Shape{6, 4}, 54, Shape{2, 3}, {1, 5, 1, 0, 5, 1}),
          embedding_sample("[5, 3] at ids [4] = [2, 2, 2, 0]", Shape{5, 3}, 55, Shape{4}, {2, 2, 2, 0}),
          embedding_sample("[4, 3] at a 0-d id", Shape{4, 3}, 56, Shape{}, {3})};
}

std::vector<OpSample> IndexSelectOp::parity_samples(GatherKind kind) {
  // count indices in [0, n), from a fixed LCG so the sample is the same everywhere.
  auto draw = [](int64_t count, int32_t n, uint32_t seed) {
    std::vector<int32_t> v(static_cast<size_t>(count));
    for (int32_t& x : v) {
      seed = seed * 1664525u + 1013904223u;
      x = static_cast<int32_t>((seed >> 8) % static_cast<uint32_t>(n));
    }
    return v;
  };
  if (kind == GatherKind::index_select)
    return {select_sample("[3, 37, 130] dim 1 at 50 of 37", Shape{3, 37, 130}, 57, 1, draw(50, 37, 1)),
            select_sample("[3, 37, 130] dim -1 at 200 of 130", Shape{3, 37, 130}, 58, -1, draw(200, 130, 2)),
            select_sample("[300, 37] dim 0 at 400 of 20", Shape{300, 37}, 59, 0, draw(400, 20, 3))};
  return {embedding_sample("[300, 130] at ids [3, 37]", Shape{300, 130}, 60, Shape{3, 37}, draw(111, 300, 4)),
          embedding_sample("[50, 257] at ids [150] of 7", Shape{50, 257}, 61, Shape{150}, draw(150, 7, 5))};
}

std::vector<OpMisuse> IndexSelectOp::misuses(GatherKind kind) {
  if (kind == GatherKind::index_select)
    return {{"index past the end", [] { index_select(input(Shape{5, 3}), 0, ids(Shape{3}, {0, 5, 1})); }},
            {"negative index", [] { index_select(input(Shape{5, 3}), 1, ids(Shape{2}, {0, -1})); }},
            {"f64 index", [] { index_select(input(Shape{5, 3}), 0, Variable(sample_randn(Shape{2}, 2))); }},
            {"2-D index", [] { index_select(input(Shape{5, 3}), 0, ids(Shape{1, 2}, {0, 1})); }},
            {"dim out of range", [] { index_select(input(Shape{5, 3}), 2, ids(Shape{1}, {0})); }}};
  return {{"id past the vocabulary", [] { embedding(input(Shape{6, 4}), ids(Shape{2, 2}, {0, 1, 6, 2})); }},
          {"negative id", [] { embedding(input(Shape{6, 4}), ids(Shape{2}, {-3, 1})); }},
          {"weight not 2-D", [] { embedding(input(Shape{6}), ids(Shape{2}, {0, 1})); }},
          {"f64 ids", [] { embedding(input(Shape{6, 4}), Variable(sample_randn(Shape{2}, 2))); }}};
}

void register_ops_index_select(OpRegistry& registry) {
  for (const auto& [kind, name] : kKinds) {
    const GatherKind k = kind;
    registry.add({.name = std::string(name),
                  .samples = [k] { return IndexSelectOp::samples(k); },
                  .misuses = [k] { return IndexSelectOp::misuses(k); },
                  .cuda = true,
                  .parity_samples = [k] { return IndexSelectOp::parity_samples(k); }});
  }
}

}  // namespace attnlab
