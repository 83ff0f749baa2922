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
#include "autograd/ops/binary/binary_math.h"
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
    return binary_math::forward(kind, a, b, [&](auto f, const auto&... in) { return map<T>(shape, f, in...); });
  });
}

std::vector<Tensor> BinaryOp::backward(CpuTag, BinaryKind kind, const Tensor& a, const Tensor& b, const Tensor& dy,
                                       const GradMask& needs) {
  return dispatch_float(dy.dtype(), binary_name(kind), [&](auto tag) {
    using T = decltype(tag);
    return binary_math::backward(
        kind, a, b, dy, needs, [&](auto f, const auto&... in) { return map<T>(dy.shape(), f, in...); },
        [&](auto f, const Tensor& x) { return map<T>(b.shape(), f, x); },
        [](const Tensor& g, const Shape& to) { return cpu::sum_to(g, to); });
  });
}

}  // namespace attnlab
