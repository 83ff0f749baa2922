// Causal multi-head self-attention, GPT-2 layout:
//   qkv = c_attn(x)                 x [B, T, C] -> [B, T, 3C]  (c_attn.weight [3C, C]: q, k, v rows)
//   q, k, v = split_heads(qkv)      3 x [B, H, T, D], strided views of qkv (no copy)
//   q, k = rope(q), rope(k)         when positions are rotary (positions offset + t)
//   y = attention(q, k, v, causal)  [B, H, T, D]   (query i at position S - T + i)
//   out = c_proj(merge(y))          [B, H, T, D] -> [B, T, C] -> [B, T, C]
// Parameter names c_attn.weight/.bias, c_proj.weight/.bias, as in GPT-2 and the PyTorch peer.
//
// With a KV cache (generation), the new positions' k and v are written into the layer's
// preallocated slot after the cached ones and the queries attend over all of them; no graph is
// recorded (the caller holds a NoGradGuard).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "layers/linear.h"
#include "layers/module.h"
#include "lib/rng.h"

namespace attnlab {

// The attention variants a model may name ("softmax" today; later issues add more).
const std::vector<std::string>& attention_variants();

struct AttentionBlockConfig {
  int64_t d_model = 0;
  int64_t heads = 0;
  bool bias = true;
  bool rope = false;  // rotate q and k (else the model adds learned positions to its input)
  double rope_base = 10000.0;
  std::string attention = "softmax";
  // c_attn's and c_proj's matmul precision (bf16: mixed precision, layers/linear.h); the
  // attention core runs in the parameters' dtype either way.
  MatmulPrecision matmul_precision = MatmulPrecision::f32;
};

// One layer's cache: k and v [B, H, S_max, D]; rows [0, length) hold the cached positions.
struct KvSlot {
  Tensor k, v;
};

class CausalSelfAttention : public Module {
 public:
  CausalSelfAttention(const AttentionBlockConfig& config, Generator& gen, DType dtype = DType::f32);

  // x [B, T, C] at positions [0, T) -> [B, T, C].
  Variable forward(const Variable& x) const;
  // x [B, T, C] at positions [length, length + T): writes its k, v into slot rows
  // [length, length + T) and attends over rows [0, length + T). Does not advance any length
  // (the model does, once every layer has run). ShapeError when the slot is too short.
  Variable forward_cached(const Variable& x, KvSlot& slot, int64_t length) const;

  const Linear& c_attn() const { return *c_attn_; }
  const Linear& c_proj() const { return *c_proj_; }
  int64_t heads() const { return config_.heads; }
  int64_t head_dim() const { return config_.d_model / config_.heads; }

 private:
  struct Qkv {
    Variable q, k, v;
  };
  // q, k, v [B, H, T, D], q and k rotated from `offset` when rotary.
  Qkv project(const Variable& x, int64_t offset) const;
  // The core attention op of the configured variant.
  Variable attend(const Variable& q, const Variable& k, const Variable& v) const;
  // y [B, H, T, D] -> c_proj(y as [B, T, C]).
  Variable output(const Variable& y) const;

  AttentionBlockConfig config_;
  std::shared_ptr<Linear> c_attn_, c_proj_;
};

}  // namespace attnlab
