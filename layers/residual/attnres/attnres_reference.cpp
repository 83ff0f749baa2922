// The routing op composed from autograd primitives (attnres.h): slow, obviously right, the
// oracle of the fused kernels' tests. Follows the header's maths line by line:
//   k = rms_norm(src, g) (RMSNorm over D with gain g, eps 1e-6), z = sum_d w k, a = softmax over
//   the source axis (moved last for softmax), o = sum_i a_i src_i, out = r + gate o.
#include "autograd/ops.h"
#include "layers/residual/attnres/attnres.h"

namespace attnlab {

namespace {

AttnResResult reference(const Variable& src, const Variable& r, const Variable& w, const Variable& g,
                        const Variable& gate) {
  const int64_t N = src.size(0), B = src.size(1), T = src.size(2), D = src.size(3);
  const Variable k = rms_norm(src, g, AttnResOp::kEps);                                // [N, B, T, D]
  const Variable z = sum(mul(k, reshape(w, Shape{1, 1, 1, D})), {3});                  // [N, B, T]
  const Variable a = permute(softmax(permute(z, {1, 2, 0})), {2, 0, 1});               // [N, B, T]
  Variable o = sum(mul(reshape(a, Shape{N, B, T, 1}), src), {0});                      // [B, T, D]
  if (gate.defined()) o = mul(o, reshape(gate, Shape{1, 1, 1}));
  return {r.defined() ? add(r, o) : o, a.data().contiguous()};
}

}  // namespace

AttnResResult delta_attnres_reference(const Variable& src, const Variable& r, const Variable& w, const Variable& g,
                                      const Variable& gate) {
  return reference(src, r, w, g, gate);
}

AttnResResult attnres_reference(const Variable& src, const Variable& w, const Variable& g, const Variable& gate) {
  return reference(src, Variable(), w, g, gate);
}

}  // namespace attnlab
