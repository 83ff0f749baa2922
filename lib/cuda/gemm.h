// CUDA matrix products, the counterpart of lib/cpu/gemm.h: strided-batched GEMM on device
// pointers, and matmul on CUDA tensors. No CUDA types here; the definitions live in gemm.cu.
//
//   gemm_strided_batched: for i < batch,
//     C_i[M, N] = alpha * op(A_i) @ op(B_i) + beta * C_i       row-major, leading dims lda/ldb/ldc,
//     A_i = A + i * stride_a (likewise B, C), op(X) = X or X^T. A is [M, K] ([K, M] when trans_a),
//     B is [K, N] ([N, K] when trans_b). beta == 0 never reads C (it may hold NaN).
//     A stride of 0 reuses one operand for the whole batch. f32, f64, and bf16 A and B with an
//     f32 C and f32 accumulation (mixed precision).
//   matmul / matmul_into: cpu::matmul's contract on CUDA tensors (batch dims broadcast, any
//     strides: row- or column-major matrices are read in place, others packed). bf16 a and b give
//     an f32 result.
//
// Two engines compute the product:
//   tiled   our own shared-memory kernel (gemm.cu: 64x64 tiles of C per 256-thread block, 4x4
//           outputs per thread, k-tiles of 16). The only engine on the simt emulator.
//   cublas  cuBLAS (cublas<S|D>gemmStridedBatched, cublasGemmStridedBatchedEx for bf16), on a
//           handle per device bound to cuda::current_stream(). Real GPUs only; the default there.
// GemmEngine::automatic means the process default: cublas on a GPU, tiled when emulated, or what
// set_default_gemm_engine or the environment variable ATTNLAB_GEMM=tiled|cublas chose (so a GPU
// run can put every op's products through the tiled kernel and compare).
#pragma once

#include <cstdint>

#include "lib/dtype.h"
#include "lib/tensor.h"

namespace attnlab::cuda {

enum class GemmEngine : uint8_t { automatic, tiled, cublas };

// "tiled", "cublas" or "automatic".
const char* gemm_engine_name(GemmEngine engine);
// True when cuBLAS is there (the nvcc-built backend), false on the emulator.
bool has_cublas();
// The engine that GemmEngine::automatic stands for. Setting automatic restores the built-in
// choice; setting cublas where has_cublas() is false throws DeviceError.
void set_default_gemm_engine(GemmEngine engine);
GemmEngine default_gemm_engine();

// All pointers are device pointers on the current device; work is queued on current_stream().
// Throws ShapeError for negative sizes or a leading dim shorter than its matrix's row, and
// DeviceError for GemmEngine::cublas on the emulator.
void gemm_strided_batched(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                          int64_t lda, int64_t stride_a, const float* B, int64_t ldb, int64_t stride_b, float beta,
                          float* C, int64_t ldc, int64_t stride_c, int64_t batch,
                          GemmEngine engine = GemmEngine::automatic);
void gemm_strided_batched(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
                          int64_t lda, int64_t stride_a, const double* B, int64_t ldb, int64_t stride_b, double beta,
                          double* C, int64_t ldc, int64_t stride_c, int64_t batch,
                          GemmEngine engine = GemmEngine::automatic);
// bf16 operands, f32 accumulation and result.
void gemm_strided_batched(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const bf16* A,
                          int64_t lda, int64_t stride_a, const bf16* B, int64_t ldb, int64_t stride_b, float beta,
                          float* C, int64_t ldc, int64_t stride_c, int64_t batch,
                          GemmEngine engine = GemmEngine::automatic);

// One product: cpu::gemm's argument order.
template <typename TIn, typename TOut, typename TScalar>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, TScalar alpha, const TIn* A, int64_t lda,
          const TIn* B, int64_t ldb, TScalar beta, TOut* C, int64_t ldc, GemmEngine engine = GemmEngine::automatic) {
  gemm_strided_batched(trans_a, trans_b, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1, engine);
}

// a [..., M, K] @ b [..., K, N] -> [..., M, N] on a and b's CUDA device (trans flags as in
// cpu::matmul). f32, f64, or bf16 (f32 result).
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false,
              GemmEngine engine = GemmEngine::automatic);
// out = beta * out + a @ b, out contiguous, of shape cpu::matmul_shape(a, b, ...) and of the
// result dtype, on the same device.
void matmul_into(Tensor& out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, double beta,
                 GemmEngine engine = GemmEngine::automatic);

}  // namespace attnlab::cuda
