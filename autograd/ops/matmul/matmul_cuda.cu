// CUDA forward and backward of matmul: the same products as matmul_cpu.cpp, through cuda::matmul
// (lib/cuda/gemm.h: cuBLAS on a GPU, our tiled kernel on the emulator), f32 and f64. No kernels
// of its own, so no launch shape here: gemm.cu has them.
//
//   forward:  c [..., M, N] = op(a) op(b)
//   backward: da = dc op(b)^T (op(b) dc^T when trans_a), db = op(a)^T dc (dc^T op(a) when
//             trans_b), every transpose a GEMM flag; then cuda::sum_to over the batch dims the
//             operand was broadcast along.
//
// As on the CPU, a contiguous untransposed a [..., M, K] against a plain matrix b is one
// [batch * M, K] GEMM, and db's sum over the batch happens inside that GEMM.
#include "lib/cuda/kernel.h"

#include "autograd/ops/matmul/matmul.h"
#include "lib/cuda/gemm.h"
#include "lib/cuda/tensor_kernels.h"

namespace attnlab {

namespace {

bool folds_cuda(const Tensor& a, const Tensor& b, bool trans_a) {
  return !trans_a && a.ndim() > 2 && b.ndim() == 2 && a.is_contiguous();
}

// [..., R, C] as [... * R, C] (a view when the layout allows, else a packed copy).
Tensor rows_cuda(const Tensor& x) {
  int64_t r = 1;
  for (int64_t d = 0; d + 1 < x.ndim(); ++d) r *= x.size(d);
  return x.reshape(Shape{r, x.size(-1)});
}

void check_cuda_dtype(const Tensor& a) {
  AL_CHECK_DTYPE(a.dtype() == DType::f32 || a.dtype() == DType::f64, "matmul: CUDA needs f32 or f64 operands; got a=",
                 a);
}

}  // namespace

Tensor MatmulOp::forward(CudaTag, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  check_cuda_dtype(a);
  if (folds_cuda(a, b, trans_a)) {
    std::vector<int64_t> shape = a.shape().dims();
    shape.back() = b.size(trans_b ? -2 : -1);
    return cuda::matmul(rows_cuda(a), b, false, trans_b).view(Shape(std::move(shape)));
  }
  return cuda::matmul(a, b, trans_a, trans_b);
}

std::vector<Tensor> MatmulOp::backward(CudaTag, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
                                       const Tensor& dc, const GradMask& needs) {
  check_cuda_dtype(a);
  std::vector<Tensor> grads(2);
  if (folds_cuda(a, b, trans_a)) {
    const Tensor dc2 = rows_cuda(dc);
    if (needs[0]) grads[0] = cuda::matmul(dc2, b, false, !trans_b).view(a.shape());
    if (needs[1]) {
      const Tensor a2 = rows_cuda(a);
      grads[1] = trans_b ? cuda::matmul(dc2, a2, true, false) : cuda::matmul(a2, dc2, true, false);
    }
    return grads;
  }
  if (needs[0]) {
    const Tensor g = trans_a ? cuda::matmul(b, dc, trans_b, true) : cuda::matmul(dc, b, false, !trans_b);
    grads[0] = cuda::sum_to(g, a.shape());
  }
  if (needs[1]) {
    const Tensor g = trans_b ? cuda::matmul(dc, a, true, trans_a) : cuda::matmul(a, dc, !trans_a, false);
    grads[1] = cuda::sum_to(g, b.shape());
  }
  return grads;
}

}  // namespace attnlab
