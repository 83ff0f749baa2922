// The Kimi Delta Attention token mixer (../shared/specs/attention_kda_lla.md, section A2): a
// block's h.<i>.attn when the layer's attention is `kda`. H = heads, D = C / H, Dk = Dv = D, no
// grouped value heads, W = options.kda_conv (the short conv's kernel, 4; 0 = no conv):
//   q~, k~, v = SiLU(Conv_W(W_q x)), SiLU(Conv_W(W_k x)), SiLU(Conv_W(W_v x))   [B, T, C] each
//   q, k      = per head q~ / sqrt(|q~|^2 + 1e-6), likewise k                   [B, H, T, D]
//   g         = -exp(A_log[h]) softplus(W_f_up W_f_down x + dt_bias)           [B, H, T, D], log-decay
//   beta      = sigmoid(W_beta x)                                             [B, H, T]
//   o, state  = kda_attention(q, k, v, g, beta, s0, 1 / sqrt(D))              the chunkwise core op
//   y         = per head rms_norm(o, w_n, 1e-5) * sigmoid(W_g_up W_g_down x + b_g)
//   out       = c_proj(y as [B, T, C])
// Conv_W is causal and depthwise, no bias (causal_conv1d); without a conv the streams are SiLU(W x).
//
// Parameters, in this order (names after fla's KDA layer, except W_o, which is c_proj like every residual branch
// of the model so that the GPT-2 init scales it by 1 / sqrt(2 layers)):
//   A_log [H], dt_bias [C]                            the gate's per-head rate and per-channel bias
//   q_proj.weight, k_proj.weight, v_proj.weight   [C, C]
//   q_conv1d.weight, k_conv1d.weight, v_conv1d.weight   [C, W]   (when W > 0)
//   f_a_proj.weight [D, C], f_b_proj.weight [C, D]   the low-rank decay input (rank D)
//   b_proj.weight [H, C]                              beta
//   g_a_proj.weight [D, C], g_b_proj.weight [C, D], g_b_proj.bias [C]   the output gate
//   o_norm.weight [D]                                 the per-head RMSNorm's gain (shared by heads)
//   c_proj.weight [C, C]                              W_o
// Init (spec A2's table): matrices normal(0, 0.02) (the model's GPT-2 init), g_b_proj.bias 0,
// o_norm.weight 1, A_log = log U(1, 16), dt_bias = inverse softplus of dt ~ exp(U(log 1e-3,
// log 1e-1)) clamped >= 1e-4 (Mamba's). A_log and dt_bias are drawn in the constructor from `gen`
// and put back by init_variant_parameters() after the model's generic init. A_log, dt_bias and
// o_norm.weight get no weight decay (is_no_decay_parameter).
//
// Decoding (forward_cached) keeps O(1) memory per sequence in the layer's KvSlot: state [B, H, D, D]
// (the delta-rule state after the last position) and conv [B, W - 1, 3C] (the last W - 1 pre-conv
// inputs of q | k | v); a call at `length` 0 starts from zeros whatever the slot holds.
#pragma once

#include <memory>

#include "layers/attention_block.h"
#include "layers/linear.h"
#include "layers/norm.h"
#include "lib/rng.h"

namespace attnlab {

class KdaMixer : public TokenMixer {
 public:
  // config.attention must be "kda"; config.bias is not used (the spec's layer has no biases but
  // b_g); config.rope is not used (KDA supplies position through its recurrence and conv).
  KdaMixer(const AttentionBlockConfig& config, Generator& gen, DType dtype = DType::f32);

  using TokenMixer::forward;
  // Causal by construction: ConfigError for any mask but the plain causal one.
  Variable forward(const Variable& x, const AttentionMask& mask) const override;
  Variable forward_cached(const Variable& x, KvSlot& slot, int64_t length) const override;
  void init_variant_parameters() override;
  // kind "kda", no sink; the mean decay exp(g) and the mean beta on x.
  AttentionDiagnostics diagnose(const Variable& x) const override;
  bool uses_kv_rows() const override { return false; }
  bool supports_prefix_mask() const override { return false; }
  const std::string& kind() const override { return config_.attention; }

  int64_t heads() const { return config_.heads; }
  int64_t head_dim() const { return config_.d_model / config_.heads; }
  int64_t conv_size() const { return config_.options.kda_conv; }
  const AttentionBlockConfig& config() const { return config_; }

  // The core op's inputs for x [B, T, C]: q, k (L2-normalised), v, g [B, H, T, D], beta [B, H, T].
  struct Streams {
    Variable q, k, v, g, beta;
    Variable gate_low;  // g_a_proj(x) [B, T, D], the output gate's low-rank input
  };
  // `history` [B, W - 1, 3C]: the pre-conv inputs before x (undefined: zeros, a sequence start);
  // `next_history`, when non-null, receives the last W - 1 pre-conv inputs through x.
  Streams streams(const Variable& x, const Tensor& history = {}, Tensor* next_history = nullptr) const;

 private:
  class ShortConv;
  // o [B, H, T, D] -> c_proj(per-head RMSNorm of o gated by sigmoid(g_b_proj(gate_low))) [B, T, C].
  Variable output(const Variable& o, const Variable& gate_low) const;

  AttentionBlockConfig config_;
  std::shared_ptr<Linear> q_proj_, k_proj_, v_proj_, f_a_, f_b_, b_proj_, g_a_, g_b_, c_proj_;
  std::shared_ptr<ShortConv> q_conv_, k_conv_, v_conv_;  // null without a conv
  std::shared_ptr<RmsNorm> o_norm_;
  Variable a_log_, dt_bias_;
  Tensor a_log_init_, dt_bias_init_;  // the constructor's draws, restored by init_variant_parameters
};

}  // namespace attnlab
