// The CPU block cache behind Storage: large blocks are reused rather than freed, a request does
// not take a much larger block, stats add up, and it stays consistent under OpenMP threads.
#include <gtest/gtest.h>

#include <vector>

#include "lib/storage.h"
#include "lib/tensor.h"

namespace attnlab {
namespace {

TEST(HostCache, ReusesAFreedLargeBlock) {
  host_cache_empty();  // so that no block of this size is left over from other tests
  const HostCacheStats before = host_cache_stats();
  const void* first = nullptr;
  {
    Tensor t = Tensor::empty(Shape{1 << 18});  // 1 MiB
    first = t.data<float>();
    EXPECT_GE(host_cache_stats().in_use_bytes, before.in_use_bytes + (size_t{1} << 20));
  }
  EXPECT_GE(host_cache_stats().cached_bytes, size_t{1} << 20);
  Tensor again = Tensor::empty(Shape{1 << 18});
  EXPECT_EQ(again.data<float>(), first);
  EXPECT_GT(host_cache_stats().hits, before.hits);
}

TEST(HostCache, ASmallRequestDoesNotTakeAMuchLargerBlock) {
  host_cache_empty();
  const void* big_ptr = nullptr;
  {
    Tensor big = Tensor::empty(Shape{1 << 20});  // 4 MiB, then cached
    big_ptr = big.data<float>();
  }
  Tensor small = Tensor::empty(Shape{1 << 17});  // 512 KiB
  EXPECT_NE(small.data<float>(), big_ptr);
  Tensor close = Tensor::empty(Shape{(1 << 20) - 1000});  // within 1/8: takes the cached block
  EXPECT_EQ(close.data<float>(), big_ptr);
}

TEST(HostCache, SmallTensorsBypassTheCache) {
  const HostCacheStats before = host_cache_stats();
  { Tensor t = Tensor::zeros(Shape{100}); }
  const HostCacheStats after = host_cache_stats();
  EXPECT_EQ(after.hits + after.misses, before.hits + before.misses);
}

TEST(HostCache, EmptyFreesCachedBlocksOnly) {
  Tensor kept = Tensor::ones(Shape{1 << 16});
  { Tensor t = Tensor::empty(Shape{1 << 19}); }
  host_cache_empty();
  EXPECT_EQ(host_cache_stats().cached_bytes, 0u);
  EXPECT_EQ(kept.data<float>()[12345], 1.0f);
}

TEST(HostCache, ConsistentUnderThreads) {
  const size_t in_use = host_cache_stats().in_use_bytes;
#pragma omp parallel for
  for (int i = 0; i < 400; ++i) {
    Tensor t = Tensor::full(Shape{(1 << 14) + 1024 * (i % 7)}, static_cast<double>(i));
    EXPECT_EQ(t.data<float>()[t.numel() - 1], static_cast<float>(i));
  }
  EXPECT_EQ(host_cache_stats().in_use_bytes, in_use);
}

}  // namespace
}  // namespace attnlab
