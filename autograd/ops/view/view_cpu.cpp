// CPU kernel of the view ops: narrow/slice backward, dx [x_shape] = 0 with dy scattered into
// the slice (dim, start:end:step). Tensor's fill_ and copy_ do the strided, parallel work.
#include "autograd/ops/view/view.h"

namespace attnlab {

Tensor ViewOp::backward(CpuTag, const Shape& x_shape, const SliceArgs& s, const Tensor& dy) {
  Tensor dx = Tensor::zeros(x_shape, dy.dtype());
  dx.slice(s.dim, s.start, s.end, s.step).copy_(dy);
  return dx;
}

}  // namespace attnlab
