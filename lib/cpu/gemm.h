// CPU matrix products: OpenBLAS for products of 32^3 multiply-adds and more when the build found
// it (ATTNLAB_BLAS, cmake/Dependencies.cmake), Eigen otherwise. This is the only translation unit
// that instantiates Eigen's GEMM, which keeps build times down.
//
//   gemm:   C[M, N] = alpha * op(A) @ op(B) + beta * C     row-major, leading dims lda/ldb/ldc,
//           op(X) = X or X^T. A is [M, K] (or [K, M] when trans_a), B is [K, N] (or [N, K]).
//   matmul: a [..., M, K] @ b [..., K, N] -> [..., M, N], batch dims broadcast; trans_a/trans_b
//           read a as [..., K, M] / b as [..., N, K]. f32 and f64. Small products in a batch run
//           one per thread.
//
// Threads: gemm cuts C into a few tiles chosen from the shape alone and runs each tile on one
// thread with a single-threaded BLAS (or Eigen) call. A BLAS's own threading gives different
// bits on different thread counts (OpenBLAS splits the work by it); this way products, and so
// training, are bit-identical on any thread count, and as fast on 2 cores (gemm.cpp).
#pragma once

#include <cstdint>

#include "lib/tensor.h"

namespace attnlab::cpu {

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// The same product through Eigen alone (the benchmark's second column).
template <typename T>
void gemm_eigen(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
                const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// "OpenBLAS" or "Eigen": what gemm uses for large products in this build.
const char* gemm_backend();

// The result shape of matmul(a, b, trans_a, trans_b); throws ShapeError naming `op` otherwise.
Shape matmul_shape(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, const char* op = "matmul");

// A matrix operand (the last two dims of x) as a GEMM sees it: the tensor to read, its leading
// dim, and whether it is read transposed. Unit stride along the row gives a row-major matrix,
// unit stride down the column a column-major one (read with `trans` flipped); anything else is
// packed with Tensor::contiguous (on x's device). Shared by cpu::matmul and cuda::matmul.
struct GemmOperand {
  Tensor t;
  bool trans;
  int64_t ld;
};
GemmOperand gemm_operand(const Tensor& x, bool trans);

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);

// out = beta * out + a @ b, with out contiguous and of shape matmul_shape(a, b, ...).
void matmul_into(Tensor& out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, double beta);

}  // namespace attnlab::cpu
