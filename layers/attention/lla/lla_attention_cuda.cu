// CUDA forward and backward of local linear attention (lla_attention.h): a placeholder until the
// kernels land. Both entry points refuse with an attnlab error, so a CUDA call fails loudly
// instead of computing anything wrong; the CPU op (lla_attention_cpu.cpp) is complete.
#include "layers/attention/lla/lla_attention.h"
#include "lib/error.h"

namespace attnlab {

LlaAttentionOp::Forward LlaAttentionOp::forward(CudaTag, const Tensor& q, const Tensor&, const Tensor&,
                                                const Tensor&, const AttentionMask&, double) {
  AL_CHECK(false, "lla: CUDA kernels not built yet; got q=", q);
  return {};
}

LlaAttentionOp::Grads LlaAttentionOp::backward(CudaTag, const Tensor& q, const Tensor&, const Tensor&,
                                               const Tensor&, const Forward&, const Tensor&, const AttentionMask&,
                                               double, bool) {
  AL_CHECK(false, "lla: CUDA kernels not built yet; got q=", q);
  return {};
}

}  // namespace attnlab
