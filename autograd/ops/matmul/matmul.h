// Batched matrix product with broadcast batch dims: C = op(A) op(B), op(X) = X or X^T.
//   dA: op(A) = A: dC op(B)^T;  op(A) = A^T: op(B) dC^T
//   dB: op(B) = B: op(A)^T dC;  op(B) = B^T: dC^T op(A)
// each then summed over the batch dims its operand was broadcast along.
//
// Shapes: a [..., M, K] ([..., K, M] when trans_a), b [..., K, N] ([..., N, K] when trans_b),
// c [..., M, N] with the batch dims broadcast (NumPy rules); both operands have at least 2 dims.
// Any strides (cpu::matmul reads row- or column-major matrices in place and packs the rest).
// dtypes: f32, f64 (CPU and CUDA), a and b the same. CUDA: cuda::matmul (lib/cuda/gemm.h), cuBLAS on
// a GPU and our tiled kernel on the emulator; no kernels of its own (matmul_cuda.cu).
// Saved for backward: a and b (held by the graph anyway). The transposes of the backward are
// folded into the GEMM flags; no transposed copy is made.
#pragma once

#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "lib/device.h"

namespace attnlab {

struct MatmulOp {
  static void check(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b);
  static Tensor forward(CpuTag, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b);
  // {da, db} shaped like a and b; undefined where `needs` says no.
  static std::vector<Tensor> backward(CpuTag, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
                                      const Tensor& dc, const GradMask& needs);
  static Tensor forward(CudaTag, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b);
  static std::vector<Tensor> backward(CudaTag, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
                                      const Tensor& dc, const GradMask& needs);
  // Larger ragged shapes for the CUDA parity test (several 64x64 tiles, edges off the tile).
  static std::vector<OpSample> parity_samples();
  static std::vector<OpSample> samples();
  static std::vector<OpMisuse> misuses();
};

Variable matmul(const Variable& a, const Variable& b, bool trans_a = false, bool trans_b = false);

}  // namespace attnlab
