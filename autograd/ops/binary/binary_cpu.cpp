// CPU kernels of the broadcasting binary ops.
//
//   forward:  y [S] = f(a [*a], b [*b]), S = broadcast(*a, *b). y is written contiguously; the
//             inputs are read through broadcast strides (0 along broadcast dims), so nothing is
//             expanded in memory. Inputs that are contiguous and already [S] take one flat loop.
//   backward: the gradient at [S] is formed elementwise (dy b, dy / b, -dy a / b^2) and summed
//             back to each input's shape by cpu::sum_to (each element summed by one thread in a
//             fixed order, so the result does not depend on the thread count).
#include <array>
#include <utility>

#include "autograd/ops/binary/binary.h"
#include "lib/cpu/arith.h"
#include "lib/cpu/loops.h"

namespace attnlab {

namespace {

template <typename T, typename F, size_t... K>
void map_impl(Tensor& out, F f, const std::array<Tensor, sizeof...(K)>& in, std::index_sequence<K...>) {
  constexpr size_t N = sizeof...(K) + 1;  // operands: out, then the inputs
  using Ptrs = std::array<const T*, sizeof...(K)>;
  using Offsets = std::array<int64_t, N>;
  const Shape& shape = out.shape();
  T* po = out.data<T>();
  const Ptrs pi{in[K].template data<T>()...};
  if (((in[K].shape() == shape && in[K].is_contiguous()) && ...)) {
    cpu::parallel_for(0, out.numel(), cpu::kElementwiseGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) po[i] = f(pi[K][i]...);
    });
    return;
  }
  const std::array<std::vector<int64_t>, N> strides{out.strides(),
                                                    broadcast_strides(in[K].shape(), in[K].strides(), shape)...};
  cpu::for_each_row(shape, strides, [&](int64_t n, const Offsets& off, const Offsets& inc) {
    // out is contiguous, so each of its rows is unit-stride.
    T* o = po + off[0];
    const Ptrs p{(pi[K] + off[K + 1])...};
    if (((inc[K + 1] == 1) && ...)) {
      for (int64_t i = 0; i < n; ++i) o[i] = f(p[K][i]...);
    } else {
      for (int64_t i = 0; i < n; ++i) o[i] = f(p[K][i * inc[K + 1]]...);
    }
  });
}

// A new contiguous tensor of `shape` with out[i] = f(in[i]...), each input broadcast to `shape`.
template <typename T, typename F, typename... In>
Tensor map(const Shape& shape, F f, const In&... in) {
  Tensor out = Tensor::empty(shape, dtype_v<T>);
  map_impl<T>(out, f, std::array<Tensor, sizeof...(In)>{in...}, std::index_sequence_for<In...>{});
  return out;
}

}  // namespace

Tensor BinaryOp::forward(CpuTag, BinaryKind kind, const Tensor& a, const Tensor& b) {
  const std::string_view name = binary_name(kind);
  const Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  return dispatch_float(a.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    switch (kind) {
      case BinaryKind::add: return map<T>(shape, [](T x, T y) { return x + y; }, a, b);
      case BinaryKind::sub: return map<T>(shape, [](T x, T y) { return x - y; }, a, b);
      case BinaryKind::mul: return map<T>(shape, [](T x, T y) { return x * y; }, a, b);
      case BinaryKind::div: return map<T>(shape, [](T x, T y) { return x / y; }, a, b);
    }
    AL_ASSERT(false, "unknown BinaryKind");
  });
}

std::vector<Tensor> BinaryOp::backward(CpuTag, BinaryKind kind, const Tensor& a, const Tensor& b, const Tensor& dy,
                                       const GradMask& needs) {
  const Shape& shape = dy.shape();
  std::vector<Tensor> grads(2);
  dispatch_float(dy.dtype(), binary_name(kind), [&](auto tag) {
    using T = decltype(tag);
    Tensor da, db;  // at the broadcast shape, before sum_to
    switch (kind) {
      case BinaryKind::add:
      case BinaryKind::sub:
        if (needs[0]) da = dy;
        if (needs[1]) db = dy;
        break;
      case BinaryKind::mul:
        if (needs[0]) da = map<T>(shape, [](T g, T other) { return g * other; }, dy, b);
        if (needs[1]) db = map<T>(shape, [](T g, T other) { return g * other; }, dy, a);
        break;
      case BinaryKind::div:
        if (needs[0]) da = map<T>(shape, [](T g, T den) { return g / den; }, dy, b);
        if (needs[1]) db = map<T>(shape, [](T g, T num, T den) { return -g * num / (den * den); }, dy, a, b);
        break;
    }
    if (da.defined()) grads[0] = cpu::sum_to(da, a.shape());
    if (db.defined()) grads[1] = cpu::sum_to(db, b.shape());
    // Negating after the reduction touches b's elements, not the broadcast shape's.
    if (kind == BinaryKind::sub && db.defined())
      grads[1] = map<T>(b.shape(), [](T g) { return -g; }, grads[1]);
  });
  return grads;
}

}  // namespace attnlab
