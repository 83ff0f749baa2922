// What a kernel file (*.cu) includes besides its op header: the CUDA compat layer (real or
// emulated), checked launches and calls, the current stream, and launch-shape helpers.
//
//   AL_CUDA_CHECK(cudaMemsetAsync(...));                     throws CudaError with file:line
//   AL_CUDA_LAUNCH(kernel, grid, block, smem_bytes, args...); launches on the current stream
//                                                              and checks the launch
//   AL_CUDA_LAUNCH((kernel<A, B>), ...)                      a template-id with a comma goes
//                                                              in parentheses
// Host-side only code (Tensor allocation, shape checks) may sit beside the kernels in a .cu file;
// every header a .cu file includes stays C++17 (nvcc 13 with CMake 3.25 compiles CUDA as C++17).
#pragma once

#include <cstddef>
#include <cstdint>

#include "lib/simt/compat.h"

namespace attnlab::cuda {

// The stream kernels are queued on (the default stream unless a StreamGuard says otherwise).
cudaStream_t current_stream();

// Blocks of `threads` covering n items, capped so grid-stride loops cover the rest.
inline unsigned blocks_for(int64_t n, unsigned threads, unsigned max_blocks = 65535) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > max_blocks ? max_blocks : b));
}

namespace detail {
// Throws CudaError "<what> failed at <file>:<line>: <cudaGetErrorString>" (plus the emulator's
// diagnostic, when emulated) if err is not cudaSuccess.
void check(cudaError_t err, const char* what, const char* file, int line);
}  // namespace detail

}  // namespace attnlab::cuda

#define AL_CUDA_CHECK(call) ::attnlab::cuda::detail::check((call), #call, __FILE__, __LINE__)

#define AL_CUDA_LAUNCH(kernel, grid, block, smem, ...)                                                     \
  ::attnlab::cuda::detail::check(                                                                          \
      ::attnlab::simt::launch(kernel, grid, block, smem, ::attnlab::cuda::current_stream(), __VA_ARGS__), \
      "launch of " #kernel, __FILE__, __LINE__)
