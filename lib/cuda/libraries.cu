// The checks of lib/cuda/libraries.h (real builds; nothing under emulation). Each names the
// failing call, where it was made, and the library's own description of the status.
#include "lib/cuda/kernel.h"  // the compat layer first: it says whether this build is emulated
#include "lib/cuda/libraries.h"

#include "lib/error.h"

#if !ATTNLAB_SIMT_EMULATED

namespace attnlab::cuda::detail {

void check_cublas(cublasStatus_t status, const char* what, const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  ::attnlab::detail::throw_error<CudaError>(what, " failed at ", file, ":", line, ": ", cublasGetStatusString(status),
                                            " (cublasStatus_t ", static_cast<int>(status), ")");
}

void check_cudnn(cudnnStatus_t status, const char* what, const char* file, int line) {
  if (status == CUDNN_STATUS_SUCCESS) return;
  ::attnlab::detail::throw_error<CudaError>(what, " failed at ", file, ":", line, ": ", cudnnGetErrorString(status),
                                            " (cudnnStatus_t ", static_cast<int>(status), ")");
}

void check_nccl(ncclResult_t result, const char* what, const char* file, int line) {
  if (result == ncclSuccess) return;
  ::attnlab::detail::throw_error<CudaError>(what, " failed at ", file, ":", line, ": ", ncclGetErrorString(result),
                                            " (ncclResult_t ", static_cast<int>(result), ")");
}

}  // namespace attnlab::cuda::detail

#endif
