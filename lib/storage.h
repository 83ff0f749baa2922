// A block of memory that tensors share. CPU storage is 64-byte aligned (one cache line, an
// AVX-512 vector) and released when the last tensor using it goes away: blocks of 64 KiB and
// more go to a size-keyed cache and are reused by later tensors (storage.cpp says why), the
// rest back to malloc. The cache is thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "lib/device.h"

namespace attnlab {

class Storage {
 public:
  // Allocates `bytes` on `device`, uninitialised. Throws DeviceError for devices this build lacks.
  Storage(size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() { return data_; }
  const void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

  static constexpr size_t kAlignment = 64;

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  size_t block_bytes_ = 0;  // the allocated block, bytes_ rounded up
  Device device_;
};

using StoragePtr = std::shared_ptr<Storage>;

// The CPU block cache's counters: bytes in blocks of at least 64 KiB in use by tensors, held
// free for reuse, and the most ever in use at once; requests served from the cache or not.
struct HostCacheStats {
  size_t in_use_bytes = 0, cached_bytes = 0, peak_in_use_bytes = 0;
  uint64_t hits = 0, misses = 0;
};
HostCacheStats host_cache_stats();
// Frees every cached block (tensors in use are untouched).
void host_cache_empty();

}  // namespace attnlab
