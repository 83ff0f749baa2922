// CPU backward of split_heads: take the gradients' own buffer when they tile it as
// [B, T, n, H, D], else copy each into its place in a fresh dx (Tensor::copy_, parallel).
#include "autograd/ops/split_heads/split_heads.h"

namespace attnlab {

namespace {
// Part p of x [B, T, n * H * D] as [B, H, T, D].
Tensor part_view(const Tensor& x, int64_t n, int64_t heads, int64_t p) {
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2) / (n * heads);
  return x.view(Shape{B, T, n, heads, D}).narrow(2, p, 1).view(Shape{B, T, heads, D}).permute({0, 2, 1, 3});
}
}  // namespace

std::vector<Tensor> SplitHeadsOp::forward(const Tensor& x, int64_t n, int64_t heads) {
  std::vector<Tensor> parts;
  for (int64_t p = 0; p < n; ++p) parts.push_back(part_view(x, n, heads, p));
  return parts;
}

Tensor SplitHeadsOp::backward(CpuTag, const Shape& x_shape, const std::vector<Tensor>& dys) {
  const int64_t n = static_cast<int64_t>(dys.size()), H = dys[0].size(1), D = dys[0].size(3);
  const int64_t B = x_shape[0], T = x_shape[1];
  // dy_p must sit at base + p H D with the strides of part p of a contiguous [B, T, n, H, D].
  const int64_t base = dys[0].offset();
  const std::vector<int64_t> strides{T * n * H * D, D, n * H * D, 1};
  bool in_place = dys[0].storage() && B * T * H * D > 0;
  for (int64_t p = 0; p < n && in_place; ++p) {
    const Tensor& d = dys[static_cast<size_t>(p)];
    in_place = d.shares_storage_with(dys[0]) && d.offset() == base + p * H * D && d.strides() == strides;
  }
  if (in_place && (base + B * T * n * H * D) * static_cast<int64_t>(dtype_size(dys[0].dtype())) <=
                      static_cast<int64_t>(dys[0].storage()->bytes()))
    return Tensor(dys[0].storage(), x_shape, x_shape.contiguous_strides(), base, dys[0].dtype());
  Tensor dx = Tensor::empty(x_shape, dys[0].dtype());
  for (int64_t p = 0; p < n; ++p) part_view(dx, n, H, p).copy_(dys[static_cast<size_t>(p)]);
  return dx;
}

}  // namespace attnlab
