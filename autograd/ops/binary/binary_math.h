// What the CPU and CUDA binary ops share: the elementwise functors (AL_HOST_DEVICE, so the same
// expression runs on either device) and the per-kind plan of forward and backward. Each backend
// supplies its own `map` (a new contiguous [shape] tensor with out[i] = f(in[i]...), inputs
// broadcast) and `sum_to`. C++17: binary_cuda.cu includes it.
#pragma once

#include <vector>

#include "autograd/ops/binary/binary.h"
#include "lib/error.h"
#include "lib/host_device.h"

namespace attnlab::binary_math {

struct AddF {
  template <typename T>
  AL_HOST_DEVICE T operator()(T x, T y) const { return x + y; }
};
struct SubF {
  template <typename T>
  AL_HOST_DEVICE T operator()(T x, T y) const { return x - y; }
};
struct MulF {
  template <typename T>
  AL_HOST_DEVICE T operator()(T x, T y) const { return x * y; }
};
struct DivF {
  template <typename T>
  AL_HOST_DEVICE T operator()(T x, T y) const { return x / y; }
};
struct NegF {
  template <typename T>
  AL_HOST_DEVICE T operator()(T x) const { return -x; }
};
// div's db before the sum: -dy a / b^2.
struct DivGradBF {
  template <typename T>
  AL_HOST_DEVICE T operator()(T g, T num, T den) const { return -g * num / (den * den); }
};

// y = map(F{}, a, b) with F the functor of `kind`.
template <class Map>
Tensor forward(BinaryKind kind, const Tensor& a, const Tensor& b, Map&& map) {
  switch (kind) {
    case BinaryKind::add: return map(AddF{}, a, b);
    case BinaryKind::sub: return map(SubF{}, a, b);
    case BinaryKind::mul: return map(MulF{}, a, b);
    case BinaryKind::div: return map(DivF{}, a, b);
  }
  AL_ASSERT(false, "unknown BinaryKind");
}

// {da, db}: the gradients at the broadcast shape dy.shape() formed by `map` (for a [shape] result),
// summed back to a's and b's shapes by `sum_to`, and sub's db negated after the sum (by `map_b`,
// for a [b.shape()] result: a pass over b's elements, not the broadcast shape's).
template <class Map, class MapB, class SumTo>
std::vector<Tensor> backward(BinaryKind kind, const Tensor& a, const Tensor& b, const Tensor& dy, const GradMask& needs,
                             Map&& map, MapB&& map_b, SumTo&& sum_to) {
  std::vector<Tensor> grads(2);
  Tensor da, db;  // at the broadcast shape, before sum_to
  switch (kind) {
    case BinaryKind::add:
    case BinaryKind::sub:
      if (needs[0]) da = dy;
      if (needs[1]) db = dy;
      break;
    case BinaryKind::mul:
      if (needs[0]) da = map(MulF{}, dy, b);
      if (needs[1]) db = map(MulF{}, dy, a);
      break;
    case BinaryKind::div:
      if (needs[0]) da = map(DivF{}, dy, b);
      if (needs[1]) db = map(DivGradBF{}, dy, a, b);
      break;
  }
  if (da.defined()) grads[0] = sum_to(da, a.shape());
  if (db.defined()) grads[1] = sum_to(db, b.shape());
  if (kind == BinaryKind::sub && db.defined()) grads[1] = map_b(NegF{}, grads[1]);
  return grads;
}

}  // namespace attnlab::binary_math
