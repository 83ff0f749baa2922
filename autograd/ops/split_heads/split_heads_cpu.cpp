// CPU backward of split_heads: take the gradients' own buffer when they tile it as
// [B, T, n, H, D] (SplitHeadsOp::joint_buffer), else copy each into its place in a fresh dx
// (Tensor::copy_, parallel).
#include "autograd/ops/split_heads/split_heads.h"

namespace attnlab {

std::vector<Tensor> SplitHeadsOp::forward(const Tensor& x, int64_t n, int64_t heads) {
  std::vector<Tensor> parts;
  for (int64_t p = 0; p < n; ++p) parts.push_back(part(x, n, heads, p));
  return parts;
}

Tensor SplitHeadsOp::backward(CpuTag, const Shape& x_shape, const std::vector<Tensor>& dys) {
  if (Tensor joint = joint_buffer(x_shape, dys); joint.defined()) return joint;
  const int64_t n = static_cast<int64_t>(dys.size()), H = dys[0].size(1);
  Tensor dx = Tensor::empty(x_shape, dys[0].dtype());
  for (int64_t p = 0; p < n; ++p) part(dx, n, H, p).copy_(dys[static_cast<size_t>(p)]);
  return dx;
}

}  // namespace attnlab
