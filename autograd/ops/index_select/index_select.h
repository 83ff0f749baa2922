// Gathering slices by integer index.
//
//   index_select  y[.., k, ..] = x[.., index[k], ..] along dim    x [*a, N, *b], index [K] i32 -> y [*a, K, *b]
//   embedding     y[*, :] = weight[ids[*], :]                      weight [V, C], ids [*] i32 -> y [*, C]
//
// Backward: dx = 0, then dx[.., index[k], ..] += dy[.., k, ..] for every k, so repeated indices
// add up; each element of dx is summed by one thread in k order (in double), whatever the
// thread count. Indices get no gradient. Every index must lie in [0, N) (embedding: [0, V));
// that is checked before anything is gathered.
// dtypes: x/weight any for the forward (it moves bytes), f32 or f64 where a gradient is taken;
// index/ids i32. CPU and CUDA (the CUDA backward sums in the same order as the CPU's, without
// float atomics: see index_select_cuda.cu).
// Saved for backward: the index (contiguous) and x's shape.
#pragma once

#include <string_view>
#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "lib/device.h"

namespace attnlab {

enum class GatherKind { index_select, embedding };

std::string_view gather_name(GatherKind kind);

// The first index outside the valid range, if any: its row-major position and its value.
struct BadIndex {
  int64_t pos = -1;
  int32_t value = 0;
  bool found() const { return pos >= 0; }
};

struct IndexSelectOp {
  // Both throw naming the op and printing shapes; check returns dim in [0, ndim).
  static int64_t check(const Tensor& x, int64_t dim, const Tensor& index);
  static void check_embedding(const Tensor& weight, const Tensor& ids);
  // x's shape as [outer, n, inner] around `dim` (how both backends' kernels see x).
  struct Split {
    int64_t outer = 1, n = 1, inner = 1;
  };
  static Split split_at(const Shape& s, int64_t dim);
  // Scans idx (i32, contiguous, any shape) for a value outside [0, n).
  static BadIndex find_bad_index(CpuTag, const Tensor& idx, int64_t n);
  // y [outer, K, inner] = x [outer, N, inner] at idx [K] along the middle dim; x contiguous,
  // `dim` is N's dim in x, outer and inner the products of the dims before and after it.
  static Tensor forward(CpuTag, const Tensor& x, int64_t dim, const Tensor& idx);
  // dx [x_shape] from dy [outer, K, inner] (contiguous): dx[o, n, :] = sum of dy[o, k, :] over
  // the k with idx[k] = n. `name` is the op for dtype errors.
  static Tensor backward(CpuTag, std::string_view name, const Shape& x_shape, int64_t dim, const Tensor& idx,
                         const Tensor& dy);
  static BadIndex find_bad_index(CudaTag, const Tensor& idx, int64_t n);
  static Tensor forward(CudaTag, const Tensor& x, int64_t dim, const Tensor& idx);
  static Tensor backward(CudaTag, std::string_view name, const Shape& x_shape, int64_t dim, const Tensor& idx,
                         const Tensor& dy);
  static std::vector<OpSample> samples(GatherKind kind);
  // Larger shapes for the CUDA parity test: many repeated indices, several blocks and tiles.
  static std::vector<OpSample> parity_samples(GatherKind kind);
  static std::vector<OpMisuse> misuses(GatherKind kind);
};

Variable index_select(const Variable& x, int64_t dim, const Variable& index);
Variable embedding(const Variable& weight, const Variable& ids);

}  // namespace attnlab
