// Autograd wiring of the shape ops, their checks, samples and registration. Every argument is
// checked here before the Tensor view is taken, so errors name the op the user called.
#include "autograd/ops/view/view.h"

#include <algorithm>
#include <functional>
#include <numeric>
#include <utility>

#include "autograd/op_helpers.h"

namespace attnlab {

namespace {

constexpr std::pair<ViewKind, std::string_view> kKinds[] = {
    {ViewKind::reshape, "reshape"},       {ViewKind::view, "view"},     {ViewKind::permute, "permute"},
    {ViewKind::transpose, "transpose"},   {ViewKind::contiguous, "contiguous"},
    {ViewKind::narrow, "narrow"},         {ViewKind::slice, "slice"},
};

// There is no shape to print for a missing x, so the message shows the one expected.
void check_defined(std::string_view name, const Variable& x) {
  AL_CHECK(x.defined(), name, ": x is an undefined Variable; expected a tensor x [*]");
}


// Whether x's elements, in row-major order, can be addressed as shape `to` (same numel) by
// strides alone. x's dims, size-1 dims aside, fall into runs that are contiguous among
// themselves; `to`'s dims must split into consecutive groups, one per run, of the run's size.
bool has_view(const Tensor& x, const Shape& to) {
  if (x.numel() == 0) return true;
  std::vector<int64_t> runs;  // element count of each run, outermost first
  int64_t prev_stride = 0;
  for (int64_t d = 0; d < x.ndim(); ++d) {
    if (x.size(d) == 1) continue;
    if (!runs.empty() && prev_stride == x.stride(d) * x.size(d))
      runs.back() *= x.size(d);
    else
      runs.push_back(x.size(d));
    prev_stride = x.stride(d);
  }
  size_t r = 0;
  int64_t group = 1;
  for (int64_t n : to) {
    if (n == 1) continue;
    group *= n;
    if (r == runs.size() || runs[r] % group != 0) return false;
    if (group == runs[r]) ++r, group = 1;
  }
  return r == runs.size();
}

// reshape and view: dy may not be viewable as x's shape (it can come from a permute), so the
// backward of both reshapes.
Variable reshaped(std::string_view name, const Variable& x, Tensor y) {
  return make_output(name, {x}, std::move(y), [shape = x.shape()](const Tensor& dy, const GradMask&) {
    return std::vector<Tensor>{dy.reshape(shape)};
  });
}

// permute and transpose; `perm` is normalised.
Variable permuted(std::string_view name, const Variable& x, const std::vector<int64_t>& perm) {
  std::vector<int64_t> inverse(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) inverse[static_cast<size_t>(perm[i])] = static_cast<int64_t>(i);
  return make_output(name, {x}, x.data().permute(perm), [inverse](const Tensor& dy, const GradMask&) {
    return std::vector<Tensor>{dy.permute(inverse)};
  });
}

// narrow and slice.
Variable sliced(std::string_view name, const Variable& x, const SliceArgs& s) {
  Tensor y = x.data().slice(s.dim, s.start, s.end, s.step);
  return make_output(name, {x}, std::move(y), [name, s, shape = x.shape()](const Tensor& dy, const GradMask&) {
    return std::vector<Tensor>{op::on_device(name, dy, [&](auto dev) { return ViewOp::backward(dev, shape, s, dy); })};
  });
}

}  // namespace

std::string_view view_name(ViewKind kind) {
  for (const auto& [k, name] : kKinds)
    if (k == kind) return name;
  AL_ASSERT(false, "unknown ViewKind");
}

Shape ViewOp::check_reshape(std::string_view name, const Tensor& x, const Shape& shape) {
  std::vector<int64_t> dims = shape.dims();
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] == -1) {
      AL_CHECK_SHAPE(infer < 0, name, ": only one dim may be -1; got shape ", shape, " for x=", x);
      infer = static_cast<int64_t>(i);
    } else {
      AL_CHECK_SHAPE(dims[i] >= 0, name, ": sizes must be >= 0 or -1; got shape ", shape, " for x=", x);
      known *= dims[i];
    }
  }
  if (infer >= 0) {
    AL_CHECK_SHAPE(known > 0 && x.numel() % known == 0, name, ": cannot infer the -1 in shape ", shape, " for x=", x,
                   " (", x.numel(), " elements)");
    dims[static_cast<size_t>(infer)] = x.numel() / known;
  } else {
    AL_CHECK_SHAPE(known == x.numel(), name, ": shape ", shape, " has ", known, " elements; x=", x, " has ",
                   x.numel());
  }
  return Shape(std::move(dims));
}

void ViewOp::check_view(const Tensor& x, const Shape& shape) {
  AL_CHECK_SHAPE(has_view(x, shape), "view: x=", x, " with strides ", Shape(x.strides()),
                 " has no copy-free view as ", shape, "; use reshape");
}

std::vector<int64_t> ViewOp::check_permute(std::string_view name, const Tensor& x, const std::vector<int64_t>& dims) {
  const Shape given(dims);
  const int64_t n = x.ndim();
  AL_CHECK_SHAPE(given.ndim() == n, name, ": dims ", given, " must name each of x's ", n, " dims once; x=", x);
  std::vector<int64_t> perm(dims.size());
  std::vector<bool> seen(dims.size(), false);
  for (size_t i = 0; i < dims.size(); ++i) {
    AL_CHECK_SHAPE(dims[i] >= -n && dims[i] < n, name, ": dim ", dims[i], " in dims ", given, " is out of range [",
                   -n, ", ", n, ") for x=", x);
    perm[i] = dims[i] < 0 ? dims[i] + n : dims[i];
    AL_CHECK_SHAPE(!seen[static_cast<size_t>(perm[i])], name, ": dims ", given, " name dim ", perm[i],
                   " twice; x=", x);
    seen[static_cast<size_t>(perm[i])] = true;
  }
  return perm;
}

SliceArgs ViewOp::check_narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length) {
  const int64_t d = op::check_dim("narrow", dim, x);
  const int64_t n = x.size(d);
  const int64_t s = start < 0 ? start + n : start;
  AL_CHECK_SHAPE(length >= 0, "narrow: length must be >= 0; got ", length, " for x=", x);
  AL_CHECK_SHAPE(s >= 0 && s + length <= n, "narrow: range [", s, ", ", s + length, ") is outside dim ", d,
                 " of size ", n, " of x=", x);
  return {d, s, s + length, 1};
}

SliceArgs ViewOp::check_slice(const Tensor& x, int64_t dim, int64_t start, int64_t end, int64_t step) {
  const int64_t d = op::check_dim("slice", dim, x);
  AL_CHECK_SHAPE(step >= 1, "slice: step must be >= 1; got step=", step, " for x=", x);
  const int64_t n = x.size(d);
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  return {d, start, end, step};
}

Variable reshape(const Variable& x, const Shape& shape) {
  check_defined("reshape", x);
  const Shape to = ViewOp::check_reshape("reshape", x.data(), shape);
  return reshaped("reshape", x, x.data().reshape(to));
}

Variable view(const Variable& x, const Shape& shape) {
  check_defined("view", x);
  const Shape to = ViewOp::check_reshape("view", x.data(), shape);
  ViewOp::check_view(x.data(), to);
  return reshaped("view", x, x.data().view(to));
}

Variable permute(const Variable& x, const std::vector<int64_t>& dims) {
  check_defined("permute", x);
  return permuted("permute", x, ViewOp::check_permute("permute", x.data(), dims));
}

Variable transpose(const Variable& x, int64_t d0, int64_t d1) {
  check_defined("transpose", x);
  const int64_t a = op::check_dim("transpose", d0, x.data());
  const int64_t b = op::check_dim("transpose", d1, x.data());
  std::vector<int64_t> perm(static_cast<size_t>(x.ndim()));
  std::iota(perm.begin(), perm.end(), int64_t{0});
  std::swap(perm[static_cast<size_t>(a)], perm[static_cast<size_t>(b)]);
  return permuted("transpose", x, perm);
}

Variable contiguous(const Variable& x) {
  check_defined("contiguous", x);
  return make_output("contiguous", {x}, x.data().contiguous(),
                     [](const Tensor& dy, const GradMask&) { return std::vector<Tensor>{dy}; });
}

Variable narrow(const Variable& x, int64_t dim, int64_t start, int64_t length) {
  check_defined("narrow", x);
  return sliced("narrow", x, ViewOp::check_narrow(x.data(), dim, start, length));
}

Variable slice(const Variable& x, int64_t dim, int64_t start, int64_t end, int64_t step) {
  check_defined("slice", x);
  return sliced("slice", x, ViewOp::check_slice(x.data(), dim, start, end, step));
}

// ---- samples and misuses ------------------------------------------------------------------

namespace {
using UnaryFn = std::function<Variable(const Variable&)>;

OpSample sample(std::string label, const Shape& shape, uint64_t seed, UnaryFn f) {
  return {std::move(label), {sample_randn(shape, seed)},
          [f = std::move(f)](const std::vector<Variable>& in) { return std::vector<Variable>{f(in[0])}; }};
}

Variable input(const Shape& shape) { return Variable(sample_randn(shape, 1), true); }
}  // namespace

std::vector<OpSample> ViewOp::samples(ViewKind kind) {
  switch (kind) {
    case ViewKind::reshape:
      return {sample("[2, 3, 4] as [4, -1] (a view)", Shape{2, 3, 4}, 21,
                     [](const Variable& x) { return reshape(x, Shape{4, -1}); }),
              sample("permuted [4, 2, 3] as [4, 6] (copies)", Shape{2, 3, 4}, 22,
                     [](const Variable& x) { return reshape(permute(x, {2, 0, 1}), Shape{4, 6}); }),
              sample("step-2 slice [2, 2, 4] as [2, 2, 2, 2] (a view)", Shape{2, 3, 4}, 23,
                     [](const Variable& x) { return reshape(slice(x, 1, 0, 3, 2), Shape{2, 2, 2, 2}); })};
    case ViewKind::view:
      return {sample("[2, 3, 4] as [6, -1]", Shape{2, 3, 4}, 20, [](const Variable& x) { return view(x, Shape{6, -1}); }),
              sample("transposed [3, 2, 4] as [3, 2, 2, 2]", Shape{2, 3, 4}, 24,
                     [](const Variable& x) { return view(transpose(x, 0, 1), Shape{3, 2, 2, 2}); }),
              sample("step-2 slice [2, 3, 2] as [2, -1]", Shape{4, 3, 2}, 25,
                     [](const Variable& x) { return view(slice(x, 0, 0, 4, 2), Shape{2, -1}); })};
    case ViewKind::permute:
      return {sample("[2, 3, 4] by [2, 0, 1]", Shape{2, 3, 4}, 26,
                     [](const Variable& x) { return permute(x, {2, 0, 1}); }),
              sample("[2, 3, 4] by [-1, 0, -2]", Shape{2, 3, 4}, 27,
                     [](const Variable& x) { return permute(x, {-1, 0, -2}); }),
              sample("[2, 1, 3, 2] by [3, 1, 0, 2]", Shape{2, 1, 3, 2}, 28,
                     [](const Variable& x) { return permute(x, {3, 1, 0, 2}); })};
    case ViewKind::transpose:
      return {sample("[3, 4] (0, 1)", Shape{3, 4}, 29, [](const Variable& x) { return transpose(x, 0, 1); }),
              sample("[2, 3, 4] (-1, 0)", Shape{2, 3, 4}, 30, [](const Variable& x) { return transpose(x, -1, 0); })};
    case ViewKind::contiguous:
      return {sample("of a transpose (copies)", Shape{3, 4}, 31,
                     [](const Variable& x) { return contiguous(transpose(x, 0, 1)); }),
              sample("of a contiguous x (no copy)", Shape{3, 4}, 32, [](const Variable& x) { return contiguous(x); }),
              sample("of a step-2 slice", Shape{6, 3}, 33,
                     [](const Variable& x) { return contiguous(slice(x, 0, 0, 6, 2)); })};
    case ViewKind::narrow:
      return {sample("[4, 3] dim 1 [1, 3)", Shape{4, 3}, 34, [](const Variable& x) { return narrow(x, 1, 1, 2); }),
              sample("[2, 5, 3] dim -2 [1, 4)", Shape{2, 5, 3}, 35,
                     [](const Variable& x) { return narrow(x, -2, 1, 3); }),
              sample("[4, 3] dim 0 start -3", Shape{4, 3}, 36, [](const Variable& x) { return narrow(x, 0, -3, 2); })};
    case ViewKind::slice:
      return {sample("[6, 3] dim 0 step 2", Shape{6, 3}, 37, [](const Variable& x) { return slice(x, 0, 0, 6, 2); }),
              sample("[2, 7] dim -1 1:-1:3", Shape{2, 7}, 38, [](const Variable& x) { return slice(x, -1, 1, -1, 3); }),
              sample("[5, 4] dim 1 -3:100 (clamped)", Shape{5, 4}, 39,
                     [](const Variable& x) { return slice(x, 1, -3, 100); }),
              sample("permuted [4, 2, 3] dim 0 1:4:2", Shape{2, 3, 4}, 40,
                     [](const Variable& x) { return slice(permute(x, {2, 0, 1}), 0, 1, 4, 2); })};
  }
  AL_ASSERT(false, "unknown ViewKind");
}

std::vector<OpSample> ViewOp::parity_samples(ViewKind kind) {
  const Shape s{3, 37, 130};
  switch (kind) {
    case ViewKind::reshape:
      return {sample("permuted [130, 3, 37] as [130, 111] (copies)", s, 81,
                     [](const Variable& x) { return reshape(permute(x, {2, 0, 1}), Shape{130, 111}); })};
    case ViewKind::view:
      return {sample("[3, 37, 130] as [111, -1]", s, 82, [](const Variable& x) { return view(x, Shape{111, -1}); })};
    case ViewKind::permute:
      return {sample("[3, 37, 130] by [2, 0, 1]", s, 83, [](const Variable& x) { return permute(x, {2, 0, 1}); })};
    case ViewKind::transpose:
      return {sample("[3, 37, 130] (0, 2)", s, 84, [](const Variable& x) { return transpose(x, 0, 2); })};
    case ViewKind::contiguous:
      return {sample("of a transpose (copies)", s, 85, [](const Variable& x) { return contiguous(transpose(x, 1, 2)); })};
    case ViewKind::narrow:
      return {sample("[3, 37, 130] dim 1 [5, 29)", s, 86, [](const Variable& x) { return narrow(x, 1, 5, 24); }),
              sample("[3, 37, 130] dim -1 [0, 129)", s, 87, [](const Variable& x) { return narrow(x, -1, 0, 129); })};
    case ViewKind::slice:
      return {sample("[3, 37, 130] dim 1 2:35:3", s, 88, [](const Variable& x) { return slice(x, 1, 2, 35, 3); }),
              sample("[3, 37, 130] dim 2 1::7", s, 89, [](const Variable& x) { return slice(x, 2, 1, 130, 7); }),
              sample("transposed [130, 37, 3] dim 0 3:-2:4", s, 90,
                     [](const Variable& x) { return slice(transpose(x, 0, 2), 0, 3, -2, 4); })};
  }
  AL_ASSERT(false, "unknown ViewKind");
}

std::vector<OpMisuse> ViewOp::misuses(ViewKind kind) {
  switch (kind) {
    case ViewKind::reshape:
      return {{"wrong element count", [] { reshape(input(Shape{4, 3}), Shape{5, -1}); }},
              {"two -1", [] { reshape(input(Shape{4, 3}), Shape{-1, -1}); }},
              {"negative size", [] { reshape(input(Shape{4, 3}), Shape{-2, -6}); }}};
    case ViewKind::view:
      return {{"no copy-free view", [] { view(transpose(input(Shape{4, 3}), 0, 1), Shape{12}); }},
              {"wrong element count", [] { view(input(Shape{4, 3}), Shape{5}); }}};
    case ViewKind::permute:
      return {{"too few dims", [] { permute(input(Shape{2, 3, 4}), {0, 1}); }},
              {"repeated dim", [] { permute(input(Shape{2, 3, 4}), {0, 1, -3}); }},
              {"dim out of range", [] { permute(input(Shape{2, 3, 4}), {0, 1, 3}); }}};
    case ViewKind::transpose:
      return {{"dim out of range", [] { transpose(input(Shape{3, 4}), 0, 2); }},
              {"negative dim out of range", [] { transpose(input(Shape{3, 4}), -3, 1); }}};
    case ViewKind::contiguous:
      return {{"undefined x", [] { contiguous(Variable()); }}};
    case ViewKind::narrow:
      return {{"range outside the dim", [] { narrow(input(Shape{4, 3}), 0, 3, 2); }},
              {"negative length", [] { narrow(input(Shape{4, 3}), 1, 0, -1); }},
              {"dim out of range", [] { narrow(input(Shape{4, 3}), 2, 0, 1); }}};
    case ViewKind::slice:
      return {{"step 0", [] { slice(input(Shape{4, 3}), 0, 0, 4, 0); }},
              {"dim out of range", [] { slice(input(Shape{4, 3}), -3, 0, 1); }}};
  }
  AL_ASSERT(false, "unknown ViewKind");
}

void register_ops_view(OpRegistry& registry) {
  for (const auto& [kind, name] : kKinds) {
    const ViewKind k = kind;
    registry.add({.name = std::string(name),
                  .samples = [k] { return ViewOp::samples(k); },
                  .misuses = [k] { return ViewOp::misuses(k); },
                  .cuda = true,
                  .parity_samples = [k] { return ViewOp::parity_samples(k); }});
  }
}

}  // namespace attnlab
