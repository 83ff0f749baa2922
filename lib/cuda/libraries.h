// Checked calls into the CUDA libraries: cuBLAS, cuDNN and NCCL. A failing status throws
// CudaError "<call> failed at <file>:<line>: <the library's own error string> (<status>)".
// Real builds only: the emulator cannot run these libraries, so in a kernel file compiled for the
// emulator (lib/simt/compat.h included first, ATTNLAB_SIMT_EMULATED 1) this header declares nothing
// and kernels that need a library take their emulated path (lib/cuda/gemm.cu). Host code of the
// real build (tests) may include it directly.
#pragma once

#if !(defined(ATTNLAB_SIMT_EMULATED) && ATTNLAB_SIMT_EMULATED)

#include <cublas_v2.h>
#include <cudnn.h>
#include <nccl.h>

namespace attnlab::cuda::detail {
void check_cublas(cublasStatus_t status, const char* what, const char* file, int line);
void check_cudnn(cudnnStatus_t status, const char* what, const char* file, int line);
void check_nccl(ncclResult_t result, const char* what, const char* file, int line);
}  // namespace attnlab::cuda::detail

#define AL_CUBLAS_CHECK(call) ::attnlab::cuda::detail::check_cublas((call), #call, __FILE__, __LINE__)
#define AL_CUDNN_CHECK(call) ::attnlab::cuda::detail::check_cudnn((call), #call, __FILE__, __LINE__)
#define AL_NCCL_CHECK(call) ::attnlab::cuda::detail::check_nccl((call), #call, __FILE__, __LINE__)

#endif
