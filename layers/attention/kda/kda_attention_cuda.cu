// CUDA side of the KDA core op: placeholder until the kernels land (the two CudaTag functions
// declared in kda_attention.h). A CUDA tensor reaching them gets a DeviceError.
#include "layers/attention/kda/kda_attention.h"
#include "lib/error.h"

namespace attnlab {

KdaAttentionOp::Forward KdaAttentionOp::forward(CudaTag, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                const Tensor&, const Tensor&, double) {
  throw DeviceError("kda: CUDA kernels not built yet");
}

KdaAttentionOp::Grads KdaAttentionOp::backward(CudaTag, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                               const Tensor&, const Tensor&, const Tensor&, const Tensor&, double) {
  throw DeviceError("kda: CUDA kernels not built yet");
}

}  // namespace attnlab
