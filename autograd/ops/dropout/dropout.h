// Inverted dropout: in training every element is kept with probability 1 - p and scaled by
// 1 / (1 - p), else zeroed: y = s * x with s = keep / (1 - p); dx = s * dy.
// Element i (row-major) is kept when uniform01(word i % 4 of Philox block base + i / 4) >= p,
// with `base` reserved from the Generator: the mask is what fill_uniform would draw from the
// same Generator, the same on any thread count, and a CUDA kernel can draw it too.
// p = 0 or training = false: the identity (y shares x's storage, dx = dy; no numbers drawn).
// Shapes: x [*] -> y [*]. dtypes: f32, f64. CUDA: f32, f64, the same mask as the CPU's.
// Saved for backward: s [*], the per-element scale (0 or 1 / (1 - p)) in x's dtype.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "lib/device.h"

namespace attnlab {

class Generator;  // lib/rng.h (not included: its Generator part is host-only)

struct DropoutOp {
  static void check(const Tensor& x, double p);
  // Returns {y, s}; `seed` and `base` select the Philox blocks (see above).
  static std::pair<Tensor, Tensor> forward(CpuTag, const Tensor& x, double p, uint64_t seed, uint64_t base);
  static Tensor backward(CpuTag, const Tensor& s, const Tensor& dy);
  static std::pair<Tensor, Tensor> forward(CudaTag, const Tensor& x, double p, uint64_t seed, uint64_t base);
  static Tensor backward(CudaTag, const Tensor& s, const Tensor& dy);
  static std::vector<OpSample> samples();
  // Larger shapes for the CUDA parity test (the masks must match the CPU's exactly).
  static std::vector<OpSample> parity_samples();
  static std::vector<OpMisuse> misuses();
};

Variable dropout(const Variable& x, double p, Generator& gen, bool training = true);

}  // namespace attnlab
