// The one CUDA header a kernel file (*.cu) includes, directly or through lib/cuda/kernel.h.
//
// Under nvcc it is the CUDA runtime plus three small helpers; under a host compiler it is the
// simt emulator (lib/simt/emu.h), which runs the same kernel source on the CPU with every CUDA
// thread a fiber. Kernel-writing rules (specs/cuda_on_cpu.md section 5, enforced by
// tests/lint/kernel_rules_test): launch only through simt::launch inside a host function of the
// same .cu file; dynamic shared memory only through simt::dynamic_smem<T>() or simt::SmemCarver;
// `_sync` warp intrinsics with exact masks; barriers only in block-uniform control flow; no inline
// PTX, `__CUDA_ARCH__` branches or CUB/CUTLASS outside lib/simt/arch/.
//
//   ATTNLAB_SIMT_EMULATED   1 when the kernels run on the emulator, 0 under nvcc.
//
//   template <typename T> T* simt::dynamic_smem();       the launch's dynamic shared memory
//   simt::SmemCarver carve;  T* p = carve.take<T>(n);   typed sub-arrays of it, 16-byte aligned
//   cudaError_t simt::launch(kernel, dim3 grid, dim3 block, size_t dynamic_smem_bytes,
//                            cudaStream_t stream, args...);   kernel<<<grid, block, smem, stream>>>
//   AL_UNROLL                 `#pragma unroll` for the next loop (g++ -Wall rejects the CUDA
//                             spelling; its own is `GCC unroll`)
#pragma once

#if defined(__CUDACC__)

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#define ATTNLAB_SIMT_EMULATED 0
#define AL_UNROLL _Pragma("unroll")

namespace attnlab::simt {

template <typename T>
__device__ inline T* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char attnlab_simt_dynamic_smem[];
  return reinterpret_cast<T*>(attnlab_simt_dynamic_smem);
}

// Hands out consecutive 16-byte-aligned typed arrays from the dynamic shared memory. Every
// thread of a block must make the same sequence of take() calls.
class SmemCarver {
 public:
  __device__ SmemCarver() : next_(dynamic_smem<unsigned char>()) {}
  template <typename T>
  __device__ T* take(size_t count) {
    T* p = reinterpret_cast<T*>(next_);
    next_ += (count * sizeof(T) + 15) / 16 * 16;
    return p;
  }

 private:
  unsigned char* next_;
};

template <typename... Params, typename... Args>
inline cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_smem_bytes,
                          cudaStream_t stream, Args&&... args) {
  // Above 48 KiB a kernel must opt in to more dynamic shared memory (the emulator allows up to
  // 227 KiB, an H100's limit; a GPU that has less refuses the launch with a checked error).
  constexpr size_t kDefaultDynamicSmem = 48 * 1024;
  if (dynamic_smem_bytes > kDefaultDynamicSmem) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(dynamic_smem_bytes));
    if (err != cudaSuccess) return err;
  }
  kernel<<<grid, block, dynamic_smem_bytes, stream>>>(std::forward<Args>(args)...);
  return cudaGetLastError();
}

}  // namespace attnlab::simt

#else

#define ATTNLAB_SIMT_EMULATED 1
#define AL_UNROLL _Pragma("GCC unroll 16")
#include "lib/simt/emu.h"

#endif
