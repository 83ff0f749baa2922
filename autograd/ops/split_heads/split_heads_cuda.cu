// CUDA backward of split_heads (forward is views, the same on every device): the CPU's rule on
// CUDA tensors. When the gradients dy_p [B, H, T, D] are themselves the parts of one buffer laid
// out as [B, T, n, H, D] (softmax attention's dq, dk, dv are), dx [B, T, n * H * D] is that
// buffer, with no copy and no launch; otherwise each dy_p is copied into its place in a fresh dx
// by cuda::copy_strided (lib/cuda/tensor_kernels.h; its kernel and launch shape live there).
#include "lib/cuda/kernel.h"

#include "autograd/ops/split_heads/split_heads.h"
#include "lib/cuda/tensor_kernels.h"

namespace attnlab {

Tensor SplitHeadsOp::backward(CudaTag, const Shape& x_shape, const std::vector<Tensor>& dys) {
  if (Tensor joint = joint_buffer(x_shape, dys); joint.defined()) return joint;
  const int64_t n = static_cast<int64_t>(dys.size()), H = dys[0].size(1);
  Tensor dx = Tensor::empty(x_shape, dys[0].dtype(), dys[0].device());
  for (int64_t p = 0; p < n; ++p) {
    Tensor dx_p = part(dx, n, H, p);
    cuda::copy_strided(dx_p, dys[static_cast<size_t>(p)]);
  }
  return dx;
}

}  // namespace attnlab
