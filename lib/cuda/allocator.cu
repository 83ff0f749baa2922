// The caching device allocator behind cuda::malloc/free (lib/cuda/runtime.h).
//
// Why: cudaMalloc and cudaFree synchronise the device and cost tens of microseconds; a training
// step allocates and frees the same few hundred activation sizes every step. Blocks are rounded
// up (to 512 B below 1 MiB, to 2 MiB above, so near sizes share blocks) and returned to a
// per-device free list keyed by rounded size; a request takes an exact-size block from the list
// when there is one. After the first step every request is a hit. A failed cudaMalloc empties
// the cache and retries once before reporting out-of-memory. Frees run on the host in stream
// order with the kernels that used the block, so reuse on the same (single) stream is safe.
#include <cstddef>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "lib/cuda/kernel.h"
#include "lib/cuda/runtime.h"
#include "lib/error.h"

namespace attnlab::cuda {

namespace {

constexpr int kMaxDevices = 16;

size_t round_up(size_t bytes) {
  constexpr size_t kSmall = 512, kLarge = size_t{2} << 20, kSmallLimit = size_t{1} << 20;
  const size_t unit = bytes < kSmallLimit ? kSmall : kLarge;
  return (bytes + unit - 1) / unit * unit;
}

struct DeviceCache {
  std::multimap<size_t, void*> free_blocks;        // rounded size -> block
  std::unordered_map<void*, size_t> block_size;    // every block we own, in use or not
};

struct Cache {
  std::mutex mutex;
  DeviceCache devices[kMaxDevices];
  CacheStats stats;

  void release_all_locked() {
    for (int d = 0; d < kMaxDevices; ++d) {
      DeviceCache& dc = devices[d];
      if (dc.free_blocks.empty()) continue;
      int previous = 0;
      AL_CUDA_CHECK(cudaGetDevice(&previous));
      AL_CUDA_CHECK(cudaSetDevice(d));
      for (auto& [size, ptr] : dc.free_blocks) {
        AL_CUDA_CHECK(cudaFree(ptr));
        dc.block_size.erase(ptr);
        stats.cached_bytes -= size;
      }
      dc.free_blocks.clear();
      AL_CUDA_CHECK(cudaSetDevice(previous));
    }
  }
};

Cache& cache() {
  // Leaked on purpose: tensors held by other statics may be freed after main returns.
  static Cache* c = new Cache();
  return *c;
}

}  // namespace

void* malloc(size_t bytes, int device) {
  AL_CHECK_DEVICE(device >= 0 && device < kMaxDevices, "cuda: device index ", device, " is out of range");
  const size_t size = round_up(bytes == 0 ? 1 : bytes);
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  DeviceCache& dc = c.devices[device];
  void* ptr = nullptr;
  if (auto it = dc.free_blocks.find(size); it != dc.free_blocks.end()) {
    ptr = it->second;
    dc.free_blocks.erase(it);
    c.stats.cached_bytes -= size;
    ++c.stats.hits;
  } else {
    int previous = 0;
    AL_CUDA_CHECK(cudaGetDevice(&previous));
    if (previous != device) AL_CUDA_CHECK(cudaSetDevice(device));
    cudaError_t err = cudaMalloc(&ptr, size);
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      c.release_all_locked();
      err = cudaMalloc(&ptr, size);
    }
    if (previous != device) AL_CUDA_CHECK(cudaSetDevice(previous));
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      ::attnlab::detail::throw_error<CudaError>("cuda: out of memory allocating ", bytes, " bytes on cuda:", device, " (",
                                     c.stats.in_use_bytes, " bytes in use by tensors, cache emptied and retried): ",
                                     cudaGetErrorString(err));
    }
    dc.block_size[ptr] = size;
    ++c.stats.misses;
  }
  c.stats.in_use_bytes += size;
  if (c.stats.in_use_bytes > c.stats.peak_in_use_bytes) c.stats.peak_in_use_bytes = c.stats.in_use_bytes;
  return ptr;
}

void free(void* ptr, size_t bytes, int device) {
  if (ptr == nullptr) return;
  (void)bytes;
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  DeviceCache& dc = c.devices[device];
  auto it = dc.block_size.find(ptr);
  AL_ASSERT(it != dc.block_size.end(), "cuda::free of a pointer the allocator does not own");
  dc.free_blocks.emplace(it->second, ptr);
  c.stats.in_use_bytes -= it->second;
  c.stats.cached_bytes += it->second;
}

CacheStats cache_stats() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.stats;
}

void cache_empty() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.release_all_locked();
}

}  // namespace attnlab::cuda
