// placeholder (replaced by the kernels)
#include "layers/attention/infsa/infsa_attention.h"
#include "lib/cuda/kernel.h"
#include "lib/error.h"
namespace attnlab {
InfsaAttentionOp::Forward InfsaAttentionOp::forward(CudaTag, const Tensor& q, const Tensor&, const Tensor&,
                                                    const Tensor&, const AttentionMask&, double, const Tensor&) {
  AL_CHECK(false, "infsa_attention: todo ", q);
  return {};
}
InfsaAttentionOp::Grads InfsaAttentionOp::backward(CudaTag, const Tensor& q, const Tensor&, const Tensor&,
                                                   const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                   const AttentionMask&, double) {
  AL_CHECK(false, "infsa_attention: todo ", q);
  return {};
}
}  // namespace attnlab
