#include "layers/attention_block.h"

#include "autograd/ops.h"
#include "layers/attention/softmax/softmax_attention.h"
#include "layers/positions.h"

namespace attnlab {

const std::vector<std::string>& attention_variants() {
  static const std::vector<std::string> names{"softmax"};
  return names;
}

CausalSelfAttention::CausalSelfAttention(const AttentionBlockConfig& config, Generator& gen, DType dtype)
    : config_(config) {
  AL_CHECK_CONFIG(config.d_model > 0 && config.heads > 0 && config.d_model % config.heads == 0,
                  "CausalSelfAttention: d_model must be a positive multiple of heads; got d_model=", config.d_model,
                  ", heads=", config.heads);
  AL_CHECK_CONFIG(!config.rope || head_dim() % 2 == 0, "CausalSelfAttention: rotary positions need an even head dim; got ",
                  head_dim(), " (d_model=", config.d_model, ", heads=", config.heads, ")");
  bool known = false;
  for (const std::string& n : attention_variants()) known = known || n == config.attention;
  AL_CHECK_CONFIG(known, "CausalSelfAttention: unknown attention '", config.attention, "'; valid: softmax");
  const int64_t C = config.d_model;
  const MatmulPrecision mp = config.matmul_precision;
  c_attn_ = register_module("c_attn", std::make_shared<Linear>(C, 3 * C, config.bias, gen, dtype, mp));
  c_proj_ = register_module("c_proj", std::make_shared<Linear>(C, C, config.bias, gen, dtype, mp));
}

CausalSelfAttention::Qkv CausalSelfAttention::project(const Variable& x, int64_t offset) const {
  const int64_t C = config_.d_model;
  AL_CHECK_SHAPE(x.ndim() == 3 && x.size(2) == C, "CausalSelfAttention: x must be [B, T, ", C, "]; got x=", x.str());
  // One GEMM for q|k|v, then the heads as strided views of its [B, T, 3C] output (no copies;
  // attention reads them in place, and its gradients come back as one [B, T, 3C] buffer).
  const std::vector<Variable> h = split_heads(c_attn_->forward(x), 3, config_.heads);
  if (!config_.rope) return {h[0], h[1], h[2]};
  return {rope(h[0], offset, config_.rope_base), rope(h[1], offset, config_.rope_base), h[2]};
}

Variable CausalSelfAttention::attend(const Variable& q, const Variable& k, const Variable& v) const {
  // Causal with offset: query i sits at position S - T + i, which covers the cache case too.
  const AttentionMask mask{.causal = true, .prefix = 0};
  return softmax_attention(q, k, v, mask);
}

Variable CausalSelfAttention::output(const Variable& y) const {
  const int64_t B = y.size(0), T = y.size(2);
  // Attention writes y token-major, so this permute is contiguous and the reshape a view.
  return c_proj_->forward(reshape(permute(y, {0, 2, 1, 3}), Shape{B, T, config_.d_model}));
}

Variable CausalSelfAttention::forward(const Variable& x) const {
  const Qkv p = project(x, 0);
  return output(attend(p.q, p.k, p.v));
}

Variable CausalSelfAttention::forward_cached(const Variable& x, KvSlot& slot, int64_t length) const {
  const int64_t H = config_.heads, D = head_dim();
  AL_CHECK_SHAPE(x.ndim() == 3, "CausalSelfAttention: x must be [B, T, C]; got x=", x.str());
  const int64_t B = x.size(0), T = x.size(1);
  AL_CHECK_SHAPE(slot.k.defined() && slot.v.defined() && slot.k.ndim() == 4 && slot.k.size(0) == B &&
                     slot.k.size(1) == H && slot.k.size(3) == D && slot.v.shape() == slot.k.shape(),
                 "CausalSelfAttention: the cache must hold k and v [", B, ", ", H, ", S_max, ", D, "] for x=", x.str(),
                 "; got k=", slot.k, ", v=", slot.v);
  AL_CHECK_SHAPE(length >= 0 && length + T <= slot.k.size(2), "CausalSelfAttention: ", T,
                 " new positions after ", length, " cached ones exceed the cache of ", slot.k.size(2),
                 " positions (k=", slot.k, ")");
  const Qkv p = project(x, length);
  slot.k.narrow(2, length, T).copy_(p.k.data());
  slot.v.narrow(2, length, T).copy_(p.v.data());
  const Variable k(slot.k.narrow(2, 0, length + T)), v(slot.v.narrow(2, 0, length + T));
  return output(attend(p.q, k, v));
}

}  // namespace attnlab
