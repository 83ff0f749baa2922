#include "lib/rng.h"

#include <cmath>
#include <numbers>

#include "lib/cpu/parallel.h"

namespace attnlab {

namespace {
// Generates element values in row-major order into a contiguous double buffer, block-parallel.
// Each block of 4 elements uses one Philox call, so the split over threads cannot change them.
template <typename Gen>
void generate(Tensor& t, Generator& gen, Gen&& per_block) {
  AL_CHECK_DTYPE(is_floating(t.dtype()), "random fill: expected a floating tensor; got ", t.str());
  const int64_t n = t.numel();
  const uint64_t blocks = static_cast<uint64_t>((n + 3) / 4);
  const uint64_t base = gen.reserve(blocks);
  const uint64_t seed = gen.seed();
  Tensor buf = Tensor::empty(t.shape(), DType::f64);
  double* out = buf.data<double>();
  cpu::parallel_for(0, static_cast<int64_t>(blocks), 1024, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      double vals[4];
      per_block(philox4x32_10(base + static_cast<uint64_t>(b), 0, seed), vals);
      for (int64_t j = 0; j < 4 && 4 * b + j < n; ++j) out[4 * b + j] = vals[j];
    }
  });
  t.copy_(buf);
}
}  // namespace

void fill_uniform(Tensor& t, Generator& gen, double low, double high) {
  const double span = high - low;
  generate(t, gen, [&](const Philox4x32& r, double* v) {
    for (int j = 0; j < 4; ++j) v[j] = low + span * uniform01(r.v[j]);
  });
}

void fill_normal(Tensor& t, Generator& gen, double mean, double stddev) {
  generate(t, gen, [&](const Philox4x32& r, double* v) {
    // Box-Muller on word pairs (0,1) and (2,3); 1 - u keeps the log argument in (0, 1].
    for (int j = 0; j < 4; j += 2) {
      const double u1 = 1.0 - uniform01(r.v[j]);
      const double u2 = uniform01(r.v[j + 1]);
      const double radius = std::sqrt(-2.0 * std::log(u1));
      const double angle = 2.0 * std::numbers::pi * u2;
      v[j] = mean + stddev * radius * std::cos(angle);
      v[j + 1] = mean + stddev * radius * std::sin(angle);
    }
  });
}

Tensor rand(const Shape& shape, Generator& gen, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype);
  fill_uniform(t, gen);
  return t;
}

Tensor randn(const Shape& shape, Generator& gen, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype);
  fill_normal(t, gen);
  return t;
}

Tensor randint(const Shape& shape, int64_t high, Generator& gen) {
  AL_CHECK(high > 0 && high <= (int64_t{1} << 31), "randint: high must be in [1, 2^31]; got ", high);
  Tensor t = Tensor::empty(shape, DType::i32);
  int32_t* out = t.data<int32_t>();
  const int64_t n = t.numel();
  const uint64_t base = gen.reserve(static_cast<uint64_t>((n + 3) / 4));
  const uint64_t seed = gen.seed();
  cpu::parallel_for(0, (n + 3) / 4, 1024, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const Philox4x32 r = philox4x32_10(base + static_cast<uint64_t>(b), 0, seed);
      for (int64_t j = 0; j < 4 && 4 * b + j < n; ++j)
        out[4 * b + j] = static_cast<int32_t>((static_cast<uint64_t>(r.v[j]) * static_cast<uint64_t>(high)) >> 32);
    }
  });
  return t;
}

}  // namespace attnlab
