// What every attention variant shares: the glossary, the mask, and the input checks.
//
// Glossary (DESIGN.md section 2): B batch, H heads, T query length, S key length (S >= T; the
// queries are the last T of the S positions), D head dim (Dk for q/k, Dv for v), C model dim
// (C = H * D), V vocabulary. Activations are [B, T, C]; attention tensors are [B, H, T, D],
// with any strides but a unit-stride D (views of [B, T, H, D] or [B, T, 3, H, D] memory: the
// heads of a projection, split and merged without copies).
//
// The core-op contract: q [B, H, T, Dk], k [B, H, S, Dk], v [B, H, S, Dv] -> out [B, H, T, Dv].
// Query i sits at absolute position S - T + i, so a KV cache (T = 1, S growing) and test-time
// training use the same kernels as training (T = S).
#pragma once

#include <cstdint>
#include <string_view>

#include "lib/tensor.h"

namespace attnlab {

struct AttentionMask {
  // Query at absolute position p sees key j when j <= p (causal) or always (not causal) ...
  bool causal = true;
  // ... and, when both p < prefix and j < prefix, always: a bidirectional prefix of `prefix`
  // positions (FocuSFT's context) followed by causal positions.
  int64_t prefix = 0;

  bool visible(int64_t query_pos, int64_t key_pos) const {
    return !causal || key_pos <= query_pos || (key_pos < prefix && query_pos < prefix);
  }
};

// Checks q [B, H, T, Dk], k [B, H, S, Dk], v [B, H, S, Dv] with S >= T, one float dtype and
// device; throws ShapeError/DTypeError naming `op` with every shape.
void check_attention_inputs(std::string_view op, const Tensor& q, const Tensor& k, const Tensor& v);

// `t` itself when it is not 4-D-with-a-strided-last-dim, else a packed copy: the fused kernels read
// [B, H, T, D] views through their strides but need a unit-stride D.
Tensor unit_last_dim(const Tensor& t);

// The scale actually used: `scale` if positive, else 1 / sqrt(Dk).
double attention_scale(double scale, int64_t head_dim);

}  // namespace attnlab
