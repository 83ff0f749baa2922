#include "lib/storage.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>

#include "lib/error.h"
#if ATTNLAB_WITH_CUDA
#include "lib/cuda/runtime.h"
#endif

namespace attnlab {

namespace {

// A training step allocates the same large buffers every step (activations, gradients, logits).
// Fresh ones cost a page fault and a zeroed page per 4 KiB when first written (glibc maps blocks
// over 32 MiB anew each time, and returns smaller ones to the kernel when the heap top is free):
// at GPT-2 small that was ~800 MB of faults per step. So large blocks are not freed but kept in
// a free list by size and handed out again, PyTorch's CUDA caching allocator for the CPU.
//
// Policy: blocks of at least kCacheMin bytes, rounded up to kGranule. A request takes the
// smallest cached block that is at least as large and at most 1/8 larger (so a small tensor
// never pins a huge block). Held bytes (in use + cached) may exceed the peak in use seen so
// far by at most a quarter: past that, cached blocks are freed, largest first, before a new
// block is made. So the cache never holds much more than the program needed at its peak.
constexpr size_t kCacheMin = size_t{1} << 16;
constexpr size_t kGranule = size_t{1} << 12;

class HostCache {
 public:
  // Returns a block of at least `bytes`, and its true size in `block_bytes`.
  void* allocate(size_t bytes, size_t& block_bytes) {
    if (bytes < kCacheMin) {
      block_bytes = round_up(std::max<size_t>(bytes, 1), Storage::kAlignment);
      return fresh(block_bytes);
    }
    block_bytes = round_up(bytes, kGranule);
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.lower_bound(block_bytes);
      if (it != free_.end() && it->first <= block_bytes + block_bytes / 8) {
        block_bytes = it->first;
        void* p = it->second;
        free_.erase(it);
        cached_ -= block_bytes;
        note_in_use(block_bytes);
        ++stats_.hits;
        return p;
      }
      ++stats_.misses;
      // Make room first: what the cache holds beyond a quarter over the peak goes back.
      const size_t limit = std::max(peak_, in_use_ + block_bytes) / 4 * 5;
      while (!free_.empty() && in_use_ + cached_ + block_bytes > limit) {
        auto last = std::prev(free_.end());
        cached_ -= last->first;
        std::free(last->second);
        free_.erase(last);
      }
      note_in_use(block_bytes);
    }
    return fresh(block_bytes);
  }

  void release(void* p, size_t block_bytes) {
    if (block_bytes < kCacheMin) {
      std::free(p);
      return;
    }
    std::lock_guard<std::mutex> lock(mu_);
    in_use_ -= block_bytes;
    cached_ += block_bytes;
    free_.emplace(block_bytes, p);
  }

  void empty() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [bytes, p] : free_) std::free(p);
    free_.clear();
    cached_ = 0;
  }

  HostCacheStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    HostCacheStats s = stats_;
    s.in_use_bytes = in_use_;
    s.cached_bytes = cached_;
    s.peak_in_use_bytes = peak_;
    return s;
  }

 private:
  static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

  static void* fresh(size_t bytes) {
    void* p = std::aligned_alloc(Storage::kAlignment, bytes);
    if (!p) throw std::bad_alloc();
    return p;
  }

  void note_in_use(size_t bytes) {
    in_use_ += bytes;
    peak_ = std::max(peak_, in_use_);
  }

  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  size_t in_use_ = 0, cached_ = 0, peak_ = 0;  // bytes in blocks of at least kCacheMin
  HostCacheStats stats_;
};

// Never destroyed: tensors in static objects may be freed after main returns.
HostCache& host_cache() {
  static HostCache* cache = new HostCache;
  return *cache;
}

}  // namespace

Storage::Storage(size_t bytes, Device device) : bytes_(bytes), device_(device) {
  if (device.is_cpu()) {
    data_ = host_cache().allocate(bytes, block_bytes_);
    return;
  }
#if ATTNLAB_WITH_CUDA
  static const int devices = cuda::device_count();
  if (device.index < 0 || device.index >= devices) cuda::check_device(device);  // throws, naming what exists
  data_ = cuda::malloc(bytes, device.index);
  block_bytes_ = bytes;
#else
  AL_CHECK_DEVICE(false, "storage: ", device,
                  " is not available: this build of attnlab has no CUDA backend (configured without the CUDA toolkit)");
#endif
}

Storage::~Storage() {
  if (!data_) return;
  if (device_.is_cpu()) {
    host_cache().release(data_, block_bytes_);
    return;
  }
#if ATTNLAB_WITH_CUDA
  cuda::free(data_, block_bytes_, device_.index);
#endif
}

HostCacheStats host_cache_stats() { return host_cache().stats(); }

void host_cache_empty() { host_cache().empty(); }

}  // namespace attnlab
