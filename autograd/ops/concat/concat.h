// Joining tensors along a dim.
//
//   concat  xs[i] [*a, n_i, *b] -> y [*a, n_0 + n_1 + ..., *b]    dxs[i] = dy[.., o_i : o_i + n_i, ..]
//                                                                  along dim, o_i = n_0 + .. + n_(i-1)
//   stack   xs[i] [*s], all equal, N of them -> y [*s with N inserted at dim]
//                                                                  dxs[i] = dy[.., i, ..] along dim
//
// Inputs share dtype and device; dim may be negative (stack's counts over ndim + 1 places).
// dtypes: any (the forward moves bytes; gradients are views of dy). CPU and CUDA.
// Saved for backward: the input shapes; no tensors.
#pragma once

#include <string_view>
#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "lib/device.h"

namespace attnlab {

enum class ConcatKind { concat, stack };

std::string_view concat_name(ConcatKind kind);

struct ConcatOp {
  // Checks xs for `kind` and returns dim in [0, ndim(y)).
  static int64_t check(ConcatKind kind, const std::vector<Tensor>& xs, int64_t dim);
  // y [outer, n_0 + n_1 + .., inner] from xs[i] [outer, n_i, inner]: each xs[i] contiguous with
  // y's rank and matching y_shape everywhere but `dim`; outer and inner are the products of
  // y_shape before and after `dim`. The backward is views of dy and needs no kernel.
  static Tensor forward(CpuTag, const std::vector<Tensor>& xs, int64_t dim, const Shape& y_shape);
  static Tensor forward(CudaTag, const std::vector<Tensor>& xs, int64_t dim, const Shape& y_shape);
  static std::vector<OpSample> samples(ConcatKind kind);
  // Larger shapes for the CUDA parity test, and more inputs than one launch takes.
  static std::vector<OpSample> parity_samples(ConcatKind kind);
  static std::vector<OpMisuse> misuses(ConcatKind kind);
};

Variable concat(const std::vector<Variable>& xs, int64_t dim);
Variable stack(const std::vector<Variable>& xs, int64_t dim);

}  // namespace attnlab
