// CPU forward and backward of matmul, all through cpu::matmul (Eigen GEMM), f32 and f64.
//
//   forward:  c [..., M, N] = op(a) op(b)
//   backward: da = dc op(b)^T (op(b) dc^T when trans_a), db = op(a)^T dc (dc^T op(a) when
//             trans_b), with every transpose expressed as a GEMM flag; then cpu::sum_to over
//             the batch dims the operand was broadcast along.
//
// A contiguous, untransposed batched a [..., M, K] against a plain matrix b (a linear layer)
// is treated as one [batch * M, K] matrix: one large GEMM instead of many small ones, and db's
// sum over the batch happens inside the GEMM instead of in a [batch, K, N] temporary.
#include "autograd/ops/matmul/matmul.h"
#include "lib/cpu/arith.h"
#include "lib/cpu/gemm.h"

namespace attnlab {

namespace {

bool folds(const Tensor& a, const Tensor& b, bool trans_a) {
  return !trans_a && a.ndim() > 2 && b.ndim() == 2 && a.is_contiguous();
}

// [..., R, C] as [... * R, C] (a view when the layout allows, else a packed copy).
Tensor rows(const Tensor& x) {
  int64_t r = 1;
  for (int64_t d = 0; d + 1 < x.ndim(); ++d) r *= x.size(d);
  return x.reshape(Shape{r, x.size(-1)});
}

}  // namespace

Tensor MatmulOp::forward(CpuTag, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  if (folds(a, b, trans_a)) {
    std::vector<int64_t> shape = a.shape().dims();
    shape.back() = b.size(trans_b ? -2 : -1);
    return cpu::matmul(rows(a), b, false, trans_b).view(Shape(std::move(shape)));
  }
  return cpu::matmul(a, b, trans_a, trans_b);
}

std::vector<Tensor> MatmulOp::backward(CpuTag, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
                                       const Tensor& dc, const GradMask& needs) {
  std::vector<Tensor> grads(2);
  if (folds(a, b, trans_a)) {
    const Tensor dc2 = rows(dc);
    if (needs[0]) grads[0] = cpu::matmul(dc2, b, false, !trans_b).view(a.shape());
    if (needs[1]) {
      const Tensor a2 = rows(a);
      grads[1] = trans_b ? cpu::matmul(dc2, a2, true, false) : cpu::matmul(a2, dc2, true, false);
    }
    return grads;
  }
  if (needs[0]) {
    const Tensor g = trans_a ? cpu::matmul(b, dc, trans_b, true) : cpu::matmul(dc, b, false, !trans_b);
    grads[0] = cpu::sum_to(g, a.shape());
  }
  if (needs[1]) {
    const Tensor g = trans_b ? cpu::matmul(dc, a, true, trans_a) : cpu::matmul(a, dc, !trans_a, false);
    grads[1] = cpu::sum_to(g, b.shape());
  }
  return grads;
}

}  // namespace attnlab
