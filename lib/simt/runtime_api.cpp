// Host stand-ins for the part of the CUDA runtime API that attnlab uses, with the toolkit's own
// declarations (cuda_runtime_api.h, through emu.h). The emulated device is the host: one device
// (0), "device memory" is 64-byte-aligned host memory, every call is synchronous, and streams are
// tokens. Like cudart, each call that fails also records its error as this thread's last error
// (cudaGetLastError returns and clears it, cudaPeekAtLastError only returns it).
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "lib/simt/emu.h"

struct CUstream_st {  // opaque to users; a stream of the emulator is just a distinct handle
  int unused = 0;
};

namespace {

thread_local cudaError_t tl_last = cudaSuccess;

cudaError_t ret(cudaError_t e) {
  if (e != cudaSuccess) tl_last = e;
  return e;
}

// Live allocations, so cudaFree can reject foreign pointers and cudaMemGetInfo can report use.
std::mutex g_mutex;
std::unordered_map<void*, size_t> g_allocations;
size_t g_allocated = 0;

size_t physical_memory() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : size_t{1} << 34;
}

bool valid_kind(cudaMemcpyKind kind) {
  return kind == cudaMemcpyHostToHost || kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToHost ||
         kind == cudaMemcpyDeviceToDevice || kind == cudaMemcpyDefault;
}

}  // namespace

extern "C" {

cudaError_t cudaMalloc(void** devPtr, size_t size) {
  if (!devPtr) return ret(cudaErrorInvalidValue);
  *devPtr = nullptr;
  if (size == 0) return cudaSuccess;  // as cudart: success and a null pointer
  void* p = std::aligned_alloc(64, (size + 63) / 64 * 64);
  if (!p) return ret(cudaErrorMemoryAllocation);
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_allocations.emplace(p, size);
    g_allocated += size;
  }
  *devPtr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* devPtr) {
  if (!devPtr) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_allocations.find(devPtr);
    if (it == g_allocations.end()) return ret(cudaErrorInvalidValue);
    g_allocated -= it->second;
    g_allocations.erase(it);
  }
  std::free(devPtr);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  if (!valid_kind(kind)) return ret(cudaErrorInvalidMemcpyDirection);
  if (count == 0) return cudaSuccess;
  if (!dst || !src) return ret(cudaErrorInvalidValue);
  std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy(dst, src, count, kind);
}

cudaError_t cudaMemset(void* devPtr, int value, size_t count) {
  if (count == 0) return cudaSuccess;
  if (!devPtr) return ret(cudaErrorInvalidValue);
  std::memset(devPtr, value, count);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* devPtr, int value, size_t count, cudaStream_t) {
  return cudaMemset(devPtr, value, count);
}

cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

cudaError_t cudaStreamCreate(cudaStream_t* pStream) {
  if (!pStream) return ret(cudaErrorInvalidValue);
  *pStream = new CUstream_st;
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* pStream, unsigned int) { return cudaStreamCreate(pStream); }

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (!stream) return ret(cudaErrorInvalidResourceHandle);
  delete stream;
  return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = tl_last;
  tl_last = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) { return tl_last; }

cudaError_t cudaGetDeviceCount(int* count) {
  if (!count) return ret(cudaErrorInvalidValue);
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : ret(cudaErrorInvalidDevice); }

cudaError_t cudaGetDevice(int* device) {
  if (!device) return ret(cudaErrorInvalidValue);
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  if (!free || !total) return ret(cudaErrorInvalidValue);
  *total = physical_memory();
  std::lock_guard<std::mutex> lock(g_mutex);
  *free = *total > g_allocated ? *total - g_allocated : 0;
  return cudaSuccess;
}

#define ATTNLAB_SIMT_ERRORS(X)                                                        \
  X(cudaSuccess, "no error")                                                          \
  X(cudaErrorInvalidValue, "invalid argument")                                        \
  X(cudaErrorMemoryAllocation, "out of memory")                                       \
  X(cudaErrorInitializationError, "initialization error")                             \
  X(cudaErrorLaunchFailure, "unspecified launch failure")                             \
  X(cudaErrorLaunchOutOfResources, "too many resources requested for launch")         \
  X(cudaErrorInvalidConfiguration, "invalid configuration argument")                  \
  X(cudaErrorInvalidDevice, "invalid device ordinal")                                 \
  X(cudaErrorInvalidDevicePointer, "invalid device pointer")                          \
  X(cudaErrorInvalidMemcpyDirection, "invalid copy direction for memcpy")             \
  X(cudaErrorInvalidResourceHandle, "invalid resource handle")                        \
  X(cudaErrorIllegalAddress, "an illegal memory access was encountered")             \
  X(cudaErrorNoDevice, "no CUDA-capable device is detected")                          \
  X(cudaErrorNotReady, "device not ready")                                            \
  X(cudaErrorNotSupported, "operation not supported")                                 \
  X(cudaErrorUnknown, "unknown error")

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
#define X(code, text) \
  case code: return text;
    ATTNLAB_SIMT_ERRORS(X)
#undef X
    default: return "unrecognized error code";
  }
}

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
#define X(code, text) \
  case code: return #code;
    ATTNLAB_SIMT_ERRORS(X)
#undef X
    default: return "cudaErrorUnknown";
  }
}

}  // extern "C"
