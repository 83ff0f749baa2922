// Counter-based random numbers: Philox-4x32-10 (Salmon et al., "Parallel random numbers: as
// easy as 1, 2, 3", SC'11). Element i of a fill draws from block (offset + i / 4), word i % 4,
// so the numbers depend only on (seed, offset, i): the same on any thread count, and the same
// function runs unchanged in a CUDA kernel (the header is plain C++17 with host/device marks).
#pragma once

#include <cstdint>

#include "lib/host_device.h"

namespace attnlab {

struct Philox4x32 {
  uint32_t v[4];
};

// One Philox-4x32-10 block: counter (4 words) encrypted under a 64-bit key.
AL_HOST_DEVICE inline Philox4x32 philox4x32_10(uint64_t counter_lo, uint64_t counter_hi, uint64_t key) {
  uint32_t c0 = static_cast<uint32_t>(counter_lo), c1 = static_cast<uint32_t>(counter_lo >> 32);
  uint32_t c2 = static_cast<uint32_t>(counter_hi), c3 = static_cast<uint32_t>(counter_hi >> 32);
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

// A uniform double in [0, 1) from one 32-bit word (resolution 2^-32).
AL_HOST_DEVICE inline double uniform01(uint32_t w) { return static_cast<double>(w) * (1.0 / 4294967296.0); }

}  // namespace attnlab

#if !defined(__CUDACC__)
#include "lib/tensor.h"

namespace attnlab {

// A stream of random numbers: a seed plus a counter offset that each fill advances past the
// blocks it used. Copy it to branch; save (seed, offset) to resume bit-identically.
class Generator {
 public:
  explicit Generator(uint64_t seed = 0, uint64_t offset = 0) : seed_(seed), offset_(offset) {}
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  // Reserves `blocks` Philox blocks and returns the first one's counter.
  uint64_t reserve(uint64_t blocks) {
    const uint64_t o = offset_;
    offset_ += blocks;
    return o;
  }

 private:
  uint64_t seed_;
  uint64_t offset_;
};

// Fills a floating tensor (any layout) in row-major element order.
void fill_uniform(Tensor& t, Generator& gen, double low = 0.0, double high = 1.0);
void fill_normal(Tensor& t, Generator& gen, double mean = 0.0, double stddev = 1.0);

Tensor rand(const Shape& shape, Generator& gen, DType dtype = DType::f32);
Tensor randn(const Shape& shape, Generator& gen, DType dtype = DType::f32);
// Integers uniform in [0, high), as i32. (Multiply-shift on 32 random bits: the bias is below
// high / 2^32, far under anything a sampler of token positions can notice.)
Tensor randint(const Shape& shape, int64_t high, Generator& gen);

}  // namespace attnlab
#endif
