// Causal multi-head self-attention, GPT-2 layout:
//   qkv = c_attn(x)                 x [B, T, C] -> [B, T, 3C]  (c_attn.weight [3C, C]: q, k, v rows)
//   q, k, v = split_heads(qkv)      3 x [B, H, T, D], strided views of qkv (no copy)
//   q, k = rope(q), rope(k)         when positions are rotary (positions offset + t)
//   y = attention(q, k, v, causal)  [B, H, T, D]   (query i at position S - T + i)
//   out = c_proj(merge(y))          [B, H, T, D] -> [B, T, C] -> [B, T, C]
// Parameter names c_attn.weight/.bias, c_proj.weight/.bias, as in GPT-2 and the PyTorch peer.
//
// The attention variant (config.attention, one recipe line) picks the core op and adds its own
// parameters under the same prefix (../shared/specs/attention_softmax_family.md):
//   softmax       none
//   sigmoid       sigmoid_bias [H] when options.sigmoid_bias = neglogn (learnable, init -log context)
//   affine        alpha.weight [H, C] (init 0), alpha.bias [H] (init 0); buffer alpha_mean [H]
//                 (EMA of alpha, rho; read before the step, updated after it in training)
//   infsa         theta [H] (gamma = sigmoid(theta), init gamma = options.infsa_gamma)
//   linear_infsa  theta [H] likewise (options.linear_infsa_form: linear = spec 3.8 (B), prefix = (A))
//   lla           log_lambda [1] when options.lla_learn_lambda (lam = exp(log_lambda), init
//                 log(options.lla_lambda)); else the ridge is the constant options.lla_lambda
//                 (../shared/specs/attention_kda_lla.md, Part B)
// and with options.qk_norm, q_norm.weight [D] and k_norm.weight [D] (RMSNorm of q and k per head,
// FlashSigmoid's stabiliser; usable with any variant).
// (`kda` is not a variant of this block: it is its own token mixer, KdaMixer in layers/kda_mixer.h,
// registered under the same h.<i>.attn prefix.)
//
// With a KV cache (generation), the new positions' k and v are written into the layer's
// preallocated slot after the cached ones and the queries attend over all of them; no graph is
// recorded (the caller holds a NoGradGuard).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "layers/attention/common.h"
#include "layers/linear.h"
#include "layers/module.h"
#include "layers/norm.h"
#include "lib/rng.h"

namespace attnlab {

// ConfigError "<who>: <field> = '<value>' is not known; valid: a, b, c" unless value is in valid.
void check_choice(std::string_view who, std::string_view field, const std::string& value,
                  const std::vector<std::string>& valid);

// The attention variants a model may name.
const std::vector<std::string>& attention_variants();

// The variant-specific choices of the recipe's [model] section (model.sigmoid.bias, ...).
struct AttentionOptions {
  std::string sigmoid_bias = "zero";         // zero | neglogn (learned per head) | neglog_visible
  bool qk_norm = false;                      // RMSNorm q and k over D, learned gains
  std::string affine_phi = "linear_clip";    // linear_clip | sigmoid
  std::string affine_bias_norm = "visible";  // visible | full
  double affine_rho = 0.9;                   // EMA factor of alpha_mean
  double infsa_gamma = 0.95;                 // initial gamma = sigmoid(theta), infsa and linear_infsa
  std::string linear_infsa_form = "linear";  // linear (spec 3.8 B, linear in T) | prefix (3.8 A, exact, quadratic)
  int64_t kda_conv = 4;                      // KDA's short causal conv kernel on q, k, v (0: no conv)
  double lla_lambda = 10.0;                  // LLA's ridge lam (> 0); the initial value when learned
  bool lla_learn_lambda = false;             // LLA: a learned log_lambda [1] per layer
  bool lla_flashlla_grad = false;            // LLA: FlashLLA's published backward (ridge as a constant)
  void validate(const std::string& attention) const;  // ConfigError naming the bad field
};

struct AttentionBlockConfig {
  int64_t d_model = 0;
  int64_t heads = 0;
  bool bias = true;
  bool rope = false;  // rotate q and k (else the model adds learned positions to its input)
  double rope_base = 10000.0;
  std::string attention = "softmax";
  AttentionOptions options;
  int64_t context = 1024;  // the training length (sigmoid_bias = neglogn starts at -log context)
  // c_attn's and c_proj's matmul precision (bf16: mixed precision, layers/linear.h); the
  // attention core runs in the parameters' dtype either way.
  MatmulPrecision matmul_precision = MatmulPrecision::f32;
};

// One layer's cache: k and v [B, H, S_max, D]; rows [0, length) hold the cached positions.
// Variants whose rows depend on earlier rows carry that state too (empty until first used):
// r [B, H] (infsa's prefix energy), p [B, H, D] and n [B, H] (linear_infsa's running query).
// KDA layers (KdaMixer) keep no k, v rows at all, only O(1) state per sequence: the delta-rule
// state [B, H, Dk, Dv] and conv [B, kernel - 1, 3C], the last pre-conv inputs of q | k | v.
struct KvSlot {
  Tensor k = {}, v = {};
  Tensor r = {}, p = {}, n = {};
  Tensor state = {}, conv = {};
};

// What one layer's attention looks like on a batch (training runs log it at eval steps).
struct AttentionDiagnostics {
  std::string kind;      // the layer's variant: softmax, ..., lla, kda
  bool has_sink = true;  // false for kda (no attention weights to probe)
  double sink = 0.0;     // mean weight of a query on the first position (over B, H, T)
  // The same weight as a share of the query's total weight (sum over its keys), averaged over
  // queries whose total is not ~0: equal to `sink` for softmax, comparable across variants
  // whose rows are not normalised (sigmoid, InfSA).
  double sink_share = 0.0;
  std::vector<double> gamma;                                                   // per head (infsa, linear_infsa)
  double alpha_mean = 0.0, alpha_std = 0.0, alpha_min = 0.0, alpha_max = 0.0;  // affine
  std::vector<double> alpha_running;                                           // affine: the alpha_mean buffer per head
  double kda_decay_mean = 0.0;  // kda: mean of the per-step decay exp(g) over (B, T, H, Dk)
  double kda_beta_mean = 0.0;   // kda: mean write strength beta over (B, T, H)
  // lla: the ridge, and its solves' conditioning on the batch (lla_conditioning): delta / omega
  // (min, mean over query rows; small = extrapolating queries) and cond(Sigma / omega) (mean, max).
  double lla_lambda = 0.0;
  double lla_delta_ratio_min = 0.0, lla_delta_ratio_mean = 0.0, lla_cond_mean = 0.0, lla_cond_max = 0.0;
};

// Attention-sink mass and context engagement (../shared/specs/residuals_focusft_qttt.md 2.8),
// measured for sequences laid out as a context (positions [0, context)) then an answer.
struct MassProbe {
  AttentionMask mask = {};  // the mask the model runs under (causal, or a bidirectional prefix)
  int64_t context = 0;      // context keys are positions [1, context); position 0 is the sink
  // The queries averaged over: positions [first_query, end_query) (the answer's predicting
  // positions: context - 1 up to the second-to-last answer token).
  int64_t first_query = 0, end_query = 0;
};
// One layer's: sink = mean over batch, heads and probed queries of the attention weight on
// position 0; context = the same of the summed weight on positions [1, context). Every variant is
// linear in v for fixed weights, so both come from attending over indicator columns (exact
// probabilities for softmax; the raw weights of sigmoid, InfSA, ...). measured = false for
// mixers without attention weights (kda).
struct AttentionMass {
  std::string kind;
  bool measured = false;
  double sink = 0.0, context = 0.0;
};

// What a block's token mixer (h.<i>.attn) does, whichever it is: CausalSelfAttention (the
// attention variants) or KdaMixer (layers/kda_mixer.h).
class TokenMixer : public Module {
 public:
  // x [B, T, C] at positions [0, T) -> [B, T, C], causal.
  Variable forward(const Variable& x) const { return forward(x, AttentionMask{}); }
  // The same under `mask` (a bidirectional prefix needs supports_prefix_mask(); else ConfigError).
  virtual Variable forward(const Variable& x, const AttentionMask& mask) const = 0;
  // x [B, T, C] at positions [length, length + T), with the layer's cache slot; no graph.
  virtual Variable forward_cached(const Variable& x, KvSlot& slot, int64_t length) const = 0;
  // x [B, t, C] at positions [start, start + t), attending to `frozen`'s k, v rows [0, start) as
  // constants and causally to its own fresh k, v; differentiable, the slot unchanged. ConfigError
  // unless supports_frozen_prefix().
  virtual Variable forward_after(const Variable& x, const KvSlot& frozen, int64_t start) const;
  // The attention mass of this layer's queries for block input x [B, T, C]; no graph.
  virtual AttentionMass attention_mass(const Variable& x, const MassProbe& probe) const;
  virtual bool supports_prefix_mask() const { return true; }
  virtual bool supports_frozen_prefix() const { return false; }
  // The variant's name as a recipe writes it (softmax, ..., kda).
  virtual const std::string& kind() const = 0;
  // Sets the mixer's own parameters to their initial values after the model's generic init.
  virtual void init_variant_parameters() = 0;
  // Diagnostics of this layer for the block input x [B, T, C] (no graph, no buffer update).
  virtual AttentionDiagnostics diagnose(const Variable& x) const = 0;
  // Whether decoding needs the cache's k and v rows (false: the mixer carries O(1) state).
  virtual bool uses_kv_rows() const { return true; }
};

class CausalSelfAttention : public TokenMixer {
 public:
  CausalSelfAttention(const AttentionBlockConfig& config, Generator& gen, DType dtype = DType::f32);

  using TokenMixer::forward;
  // x [B, T, C] at positions [0, T) -> [B, T, C] under `mask`.
  Variable forward(const Variable& x, const AttentionMask& mask) const override;
  // x [B, T, C] at positions [length, length + T): writes its k, v into slot rows
  // [length, length + T) and attends over rows [0, length + T). Does not advance any length
  // (the model does, once every layer has run). ShapeError when the slot is too short.
  Variable forward_cached(const Variable& x, KvSlot& slot, int64_t length) const override;
  // Variants whose only cache is k, v rows: softmax, sigmoid, affine, lla.
  Variable forward_after(const Variable& x, const KvSlot& frozen, int64_t start) const override;
  AttentionMass attention_mass(const Variable& x, const MassProbe& probe) const override;
  // Every variant of this block except linear_infsa (its kernels take the plain causal mask only).
  bool supports_prefix_mask() const override;
  bool supports_frozen_prefix() const override;
  const std::string& kind() const override { return config_.attention; }

  const Linear& c_attn() const { return *c_attn_; }
  const Linear& c_proj() const { return *c_proj_; }
  int64_t heads() const { return config_.heads; }
  int64_t head_dim() const { return config_.d_model / config_.heads; }
  const AttentionBlockConfig& config() const { return config_; }

  // Sets the variant's parameters to their initial values (the model's generic init covers
  // only c_attn and c_proj); the model calls it after its own init.
  void init_variant_parameters() override;
  // Diagnostics of this layer for the block input x [B, T, C] (no graph, no buffer update).
  AttentionDiagnostics diagnose(const Variable& x) const override;

 private:
  struct Qkv {
    Variable q, k, v;
  };
  // q, k, v [B, H, T, D], q and k rotated from `offset` when rotary.
  Qkv project(const Variable& x, int64_t offset) const;
  // The core attention op of the configured variant on q [B, H, T, D], k, v [B, H, S, D] with x
  // [B, T, C] the block input of the T queries; `slot` (decoding) supplies and receives carried
  // state, `length` the cached positions before these. Updates affine's alpha_mean in training;
  // `alpha` (affine only, may be null) receives the step's alpha [B, H, T] for diagnostics.
  Variable attend(const Variable& q, const Variable& k, const Variable& v, const Variable& x, KvSlot* slot,
                  int64_t length, const AttentionMask& mask, Tensor* alpha = nullptr) const;
  // lla's ridge lam [1] in q's dtype and device: exp(log_lambda) when learned, else the constant.
  Variable lla_lambda(const Variable& q) const;
  // y [B, H, T, D] -> c_proj(y as [B, T, C]).
  Variable output(const Variable& y) const;

  AttentionBlockConfig config_;
  std::shared_ptr<Linear> c_attn_, c_proj_;
  std::shared_ptr<Linear> alpha_;               // affine
  std::shared_ptr<RmsNorm> q_norm_, k_norm_;    // qk_norm
  Variable sigmoid_bias_, theta_, alpha_mean_;  // per head; alpha_mean_ is a buffer
  Variable log_lambda_;                         // lla with learn_lambda, [1]
};

}  // namespace attnlab
