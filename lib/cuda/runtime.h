// The CUDA runtime as the rest of attnlab sees it: devices, memory, copies, synchronisation.
// No CUDA types here, so any file may include it; the definitions live in runtime.cu, built
// into both CUDA backends (the real one through nvcc and cudart, the emulated one through
// lib/simt's stand-ins, where "device memory" is host memory and there is one device, cuda:0).
//
// Device memory comes from a caching allocator (allocator.cu): blocks are rounded up and kept
// for reuse, keyed by size, so a training loop allocates from the cache after its first step and
// never calls cudaMalloc/cudaFree in steady state. Every call is checked: failures throw
// CudaError (runtime failures) or DeviceError (a device this machine lacks), with file:line.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "lib/device.h"

namespace attnlab::cuda {

// True when the kernels run on the simt emulator (on the CPU), false on a real GPU.
bool emulated();
// Number of usable devices: 0 on a machine without a GPU (real backend), 1 when emulated.
int device_count();
// "NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB" or "simt emulator (CUDA kernels on the CPU)".
std::string device_name(int index);
// Throws DeviceError naming the device and what this machine has when `device` is not usable.
void check_device(Device device);
// Makes `index` the current device of the calling thread (cudaSetDevice).
void set_device(int index);

// Makes a device current for a scope and restores the previous one after it.
class DeviceGuard {
 public:
  explicit DeviceGuard(int index);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// A CUDA stream owned by this object (created blocking: the legacy default stream, which the
// synchronous copies use, waits for it, so host reads after a copy always see its kernels).
class Stream {
 public:
  Stream();
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  void* handle() const { return handle_; }  // a cudaStream_t
  void synchronize() const;

 private:
  void* handle_ = nullptr;
};

// Queues every kernel and copy of the calling thread on `stream` for a scope (current_stream()
// in lib/cuda/kernel.h), then restores the previous stream. The caching allocator assumes a block
// is used on one stream at a time.
class StreamGuard {
 public:
  explicit StreamGuard(const Stream& stream);
  ~StreamGuard();
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  void* previous_;
};

// Device memory from the caching allocator; free() returns it to the cache.
void* malloc(size_t bytes, int device);
void free(void* ptr, size_t bytes, int device);

struct CacheStats {
  size_t in_use_bytes = 0, cached_bytes = 0, peak_in_use_bytes = 0;
  uint64_t hits = 0, misses = 0;  // requests served from the cache / by cudaMalloc
};
CacheStats cache_stats();
// Returns every cached block to the driver (blocks in use are untouched).
void cache_empty();

// Byte copies on the current stream; the *_sync forms wait until the copy is done, so the host
// side may be read or freed at once.
void copy_h2d(void* dst, const void* src, size_t bytes);
void copy_d2h(void* dst, const void* src, size_t bytes);
void copy_d2d(void* dst, const void* src, size_t bytes);
void memset_zero(void* dst, size_t bytes);
// Waits for all work queued on the current device.
void synchronize();

}  // namespace attnlab::cuda
