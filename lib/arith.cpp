#include "lib/arith.h"

#include "lib/cpu/arith.h"
#include "lib/error.h"
#if ATTNLAB_WITH_CUDA
#include "lib/cuda/tensor_kernels.h"
#endif

namespace attnlab {

void add_inplace(Tensor& dst, const Tensor& src, double alpha) {
  AL_CHECK_DEVICE(dst.device() == src.device(), "add_inplace: tensors on different devices; got dst=", dst, ", src=",
                  src);
#if ATTNLAB_WITH_CUDA
  if (dst.device().is_cuda()) return cuda::add_inplace(dst, src, alpha);
#endif
  cpu::add_inplace(dst, src, alpha);
}

Tensor sum_to(const Tensor& g, const Shape& target) {
#if ATTNLAB_WITH_CUDA
  if (g.device().is_cuda()) return cuda::sum_to(g, target);
#endif
  return cpu::sum_to(g, target);
}

}  // namespace attnlab
