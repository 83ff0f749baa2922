// placeholder while the CPU path is checked
#include "layers/attention/linear_infsa/linear_infsa_attention.h"
#include "lib/cuda/kernel.h"
#include "lib/error.h"
namespace attnlab {
LinearInfsaAttentionOp::Forward LinearInfsaAttentionOp::forward(CudaTag, const Tensor& q, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, double) {
  AL_CHECK(false, "linear_infsa_attention: no CUDA yet; got ", q);
  return {};
}
LinearInfsaAttentionOp::Grads LinearInfsaAttentionOp::backward(CudaTag, const Tensor& q, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, double) {
  AL_CHECK(false, "linear_infsa_attention: no CUDA yet; got ", q);
  return {};
}
}
