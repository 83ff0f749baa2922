// A GPT language model (GPT-2 architecture by default, the function of the PyTorch peer
// ../shared/peers/torch_gpt.py):
//   x = wte(ids) + wpe(positions)                [B, T, C]   (wpe only for learned positions)
//   x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))  per block h.<i>, pre-norm
//   logits = ln_f(x) wte^T                       [B, T, Vp]  (tied; lm_head when untied)
// Variants by config: norm layernorm | rmsnorm, mlp gelu | swiglu, positions learned | rope.
//
// Vector mode (config.input_dim > 0, for the synthetic regression tasks, data/synthetic/task.h):
// the input is f32/f64 x [B, T, input_dim] instead of ids, and
//   x = input_proj(x) + wpe(positions)           input_proj: Linear(input_dim -> C, bias)
//   out = output_head(ln_f(x))                   [B, T, output_dim], Linear(C -> output_dim, bias)
// in place of wte and the vocabulary head; the blocks, positions and residual routing are the
// same. Incremental decoding (forward_cached, make_cache) and so sampling are token-only.
//
// Vocabulary padding: wte (and lm_head) have Vp = padded_vocab() rows, so logits have Vp
// columns. Ids >= vocab_size are rejected; the padded columns are never targets, so training
// pushes them down, and a sampler takes logits[..., :vocab_size] so it never emits a padded id.
//
// Dropout (config.dropout > 0, training mode, a Generator given), as GPT-2: on the embeddings
// and on the output of each attention and MLP branch before the residual add. (GPT-2 also drops
// attention probabilities; the fused attention kernels have no such hook, so that one is not
// done.)
//
// Matmul precision (config.matmul_precision): f32, or bf16 mixed precision in every linear
// layer: h.<i>.attn.c_attn/.c_proj, h.<i>.mlp.c_fc/.c_proj and the head (lm_head, or the tied
// product with wte.weight). Their inputs and weights are rounded to bf16 for the products, sums
// and outputs stay f32 (autograd/ops/linear/linear.h); parameters, gradients, embeddings, norms,
// attention, the loss and the optimizer stay f32. bf16 needs the model's dtype f32.
//
// Initialisation (GPT-2): every Linear and Embedding weight ~ normal(0, 0.02), the residual
// projections (*.c_proj.weight) ~ normal(0, 0.02 / sqrt(2 layers)), biases 0, norm weights 1;
// drawn from `gen` in parameter order.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "layers/attention_block.h"
#include "layers/embedding.h"
#include "layers/linear.h"
#include "layers/mlp.h"
#include "layers/module.h"
#include "layers/norm.h"
#include "layers/positions.h"
#include "layers/residual/routing.h"
#include "lib/rng.h"

namespace attnlab {

struct GptConfig {
  int64_t vocab_size = 256;  // real vocabulary (token mode; unused, and may be 0, in vector mode)
  int64_t vocab_pad = 1;     // embedding/head rows padded to a multiple of this (peer uses 128)
  int64_t context = 256;     // max sequence length (rows of wpe)
  int64_t layers = 4, d_model = 256, heads = 4;
  int64_t mlp_hidden = 0;             // 0 = 4 * d_model
  std::string norm = "layernorm";     // layernorm | rmsnorm
  std::string mlp = "gelu";           // gelu | swiglu
  std::string positions = "learned";  // learned | rope
  std::string attention = "softmax";  // softmax | sigmoid | affine | infsa | linear_infsa | lla | kda
  // Per-layer token mixers: a comma list of attention names tiled cyclically over the layers
  // ("kda,kda,kda,softmax": layers 0-2 kda, 3 softmax, 4-6 kda, ...); empty = every layer uses
  // `attention`. At most `layers` names.
  std::string layer_pattern;
  AttentionOptions attention_options;  // the variants' own choices (attention_block.h)
  bool bias = true;                    // biases on linears and layer norms
  bool tie_embeddings = true;
  double dropout = 0.0;
  double rope_base = 10000.0;
  // Products of every linear layer and the head: f32, or bf16 mixed precision (see above).
  MatmulPrecision matmul_precision = MatmulPrecision::f32;
  // Residual routing (layers/residual/routing.h): standard, attnres or delta_attnres.
  ResidualConfig residual;
  // Vector mode (see above): features per input position and per output position; both 0 (token
  // ids in, vocabulary logits out, the default) or both > 0.
  int64_t input_dim = 0;
  int64_t output_dim = 0;

  bool vector_mode() const { return input_dim > 0; }
  void validate() const;  // ConfigError naming the bad field and what is valid
  int64_t padded_vocab() const;
  int64_t head_dim() const { return heads > 0 ? d_model / heads : 0; }
  int64_t hidden() const { return mlp_hidden > 0 ? mlp_hidden : 4 * d_model; }
  // The attention name of layer i: layer_pattern's (cyclically), else `attention`.
  std::string layer_attention(int64_t i) const;
};

// The names of a layer pattern "a,b,c" (spaces around names ignored; "" gives none). ConfigError
// for an empty name ("a,,b", a trailing comma); names are not checked here (GptConfig::validate does).
std::vector<std::string> parse_layer_pattern(const std::string& pattern);

// Per-layer k and v for incremental decoding: for each layer, k and v [B, H, context, D]
// preallocated, of which rows [0, length()) hold the positions seen so far. KDA layers get no
// rows: their slot carries the recurrent state and the conv's last inputs (O(1) per sequence).
class KvCache {
 public:
  KvCache() = default;
  int64_t batch() const { return batch_; }
  int64_t length() const { return length_; }
  int64_t capacity() const { return capacity_; }
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  // Forgets every position (keeps the memory).
  void reset() { length_ = 0; }
  const KvSlot& layer(int64_t i) const { return layers_.at(static_cast<size_t>(i)); }

 private:
  friend class Gpt;
  friend class GptBlock;
  std::vector<KvSlot> layers_;
  int64_t batch_ = 0, length_ = 0, capacity_ = 0;
};

// One pass through the layers: what each attention sublayer does (internal to Gpt and its
// blocks; the public passes are Gpt's methods).
struct LayerPass {
  Generator* gen = nullptr;         // dropout on the branch outputs (plain forward only)
  AttentionMask mask = {};          // causal, with an optional bidirectional prefix
  KvCache* cache = nullptr;         // decoding: write k, v at the cache's length and attend over it
  const KvCache* frozen = nullptr;  // span pass: attend to frozen rows [0, start) of this cache
  int64_t start = 0;
  std::vector<AttentionDiagnostics>* diagnostics = nullptr;  // per layer, filled when given
  const MassProbe* probe = nullptr;                          // with `masses`: attention mass per layer
  std::vector<AttentionMass>* masses = nullptr;

  // The generator that drives dropout on the branches: only plain forward passes drop out.
  Generator* dropout() const { return cache || frozen ? nullptr : gen; }
};

// One pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)). attn is the token
// mixer of config.layer_attention(layer): CausalSelfAttention, or KdaMixer for kda.
class GptBlock : public Module {
 public:
  GptBlock(const GptConfig& config, Generator& gen, DType dtype = DType::f32, int64_t layer = 0);
  // x + attn(ln_1(x)), then + mlp(ln_2(.)), the attention run as `pass` says for `layer`.
  Variable forward(const Variable& x, const LayerPass& pass, int64_t layer) const;

  // The two sublayers' branch outputs alone, for residual routing (layers/residual/routing.h):
  // attn(ln_1(x)) and mlp(ln_2(x)), dropped out when the pass has a generator (dropout applies
  // to plain forward passes only).
  Variable attn_branch(const Variable& x, const LayerPass& pass, int64_t layer) const;
  Variable mlp_branch(const Variable& x, Generator* gen) const;

  const TokenMixer& attn() const { return *attn_; }
  void init_attention_parameters() { attn_->init_variant_parameters(); }

 private:
  std::shared_ptr<Norm> ln_1_, ln_2_;
  std::shared_ptr<TokenMixer> attn_;
  std::shared_ptr<Mlp> mlp_;
  double dropout_;
};

class Gpt : public Module {
 public:
  // GPT-2 init (normal 0.02, scaled c_proj). `dtype` f64 is for gradient checks.
  Gpt(const GptConfig& config, Generator& gen, DType dtype = DType::f32);
  const GptConfig& config() const { return config_; }
  DType dtype() const { return dtype_; }

  // ids i32 [B, T] (1 <= T <= context) -> logits [B, T, padded_vocab]; `gen` drives dropout
  // (training mode only; no Generator, no dropout). Vector mode: x f32/f64 [B, T, input_dim]
  // (converted to the model's dtype) -> [B, T, output_dim]. DTypeError/ShapeError naming what
  // was expected for any other input.
  // `prefix` > 0: positions [0, prefix) attend to each other both ways and the rest causally
  // (FocuSFT's mask: a bidirectional context, causal answers; prefix <= T). ConfigError when a
  // layer's variant has no such mask (prefix_mask_unsupported()).
  Variable forward(const Variable& ids, Generator* gen = nullptr, int64_t prefix = 0) const;
  // Test-time training's span pass: ids [B, t] at positions [start, start + t), attending to the
  // cache's rows [0, start) as constants (no gradient, never rewritten: the frozen prefill) and
  // causally to their own fresh k and v. Differentiable (in grad mode) through everything computed
  // from ids, so gradients reach any parameter or override used; the cache is not changed.
  // Needs cache.length() >= start and start + t <= context; ConfigError when a layer carries
  // state besides k and v (frozen_prefix_unsupported()).
  Variable forward_after(const Variable& ids, const KvCache& cache, int64_t start) const;
  // "" when every layer takes a bidirectional prefix, else a sentence naming the first layer and
  // variant that does not (the recurrent kda and linear_infsa).
  std::string prefix_mask_unsupported() const;
  // "" when every layer can attend over a frozen k, v prefix (forward_after), else a sentence
  // naming the first that cannot (kda, infsa and linear_infsa carry state that depends on the
  // earlier queries).
  std::string frozen_prefix_unsupported() const;
  // Attention-sink mass and context engagement (spec 2.8) per layer on ids [B, T] under the
  // probe's mask; no graph.
  std::vector<AttentionMass> attention_mass(const Variable& ids, const MassProbe& probe) const;
  // Incremental decoding: ids [B, t] appended after the cache's positions; returns logits
  // [B, t, Vp] and advances the cache by t. Records no graph, applies no dropout. ShapeError when
  // the cache would pass the context or was made for another batch size or model. Token mode
  // only: ConfigError for a vector-mode model.
  Variable forward_cached(const Variable& ids, KvCache& cache) const;
  KvCache make_cache(int64_t batch) const;
  // Per layer, what its attention does on ids [B, T] (or vector-mode x; sink mass, gamma, alpha
  // statistics).
  std::vector<AttentionDiagnostics> attention_diagnostics(const Variable& ids) const;
  // Per routing op, how it routes on ids [B, T] (or vector-mode x; empty for the standard residual).
  std::vector<RoutingStats> routing_diagnostics(const Variable& ids) const;
  // The router (null for the standard residual).
  const ResidualRouter* router() const { return router_.get(); }

 private:
  // ids i32 [B, T] (vector mode: x [B, T, input_dim]) at positions [offset, offset + T) ->
  // embeddings [B, T, C].
  Variable embed(const Variable& ids, int64_t offset, const char* who) const;
  // x [B, T, C] -> logits [B, T, Vp] through ln_f and the (tied) head (vector mode: the output head).
  Variable head(const Variable& x) const;

  GptConfig config_;
  DType dtype_;
  std::shared_ptr<Embedding> wte_;         // null in vector mode
  std::shared_ptr<Linear> input_proj_;     // vector mode only
  std::shared_ptr<Linear> output_head_;    // vector mode only
  std::shared_ptr<LearnedPositions> wpe_;  // null for rotary positions
  std::vector<std::shared_ptr<GptBlock>> blocks_;
  std::shared_ptr<Norm> ln_f_;
  std::shared_ptr<Linear> lm_head_;         // null when tied
  std::shared_ptr<ResidualRouter> router_;  // "res", null for the standard residual
  // ShapeError naming `who` unless this model's make_cache made `cache`.
  void check_cache(const KvCache& cache, const char* who) const;
  // Runs the layers on embeddings x, directly or through the router, the attention sublayers as
  // `pass` says.
  Variable run_layers(const Variable& x, const LayerPass& pass) const;
  // Sublayer s (layer s / 2: attention when s is even, else MLP) on its input h.
  Variable sublayer(int64_t s, const Variable& h, const LayerPass& pass) const;
};

// Parameter names match the PyTorch peer (../shared/peers/torch_gpt.py) so its state_dict loads ours:
//   wte.weight [Vp, C], wpe.weight [context, C] (learned positions only), h.<i>.ln_1.weight/.bias,
//   h.<i>.attn.c_attn.weight [3C, C] /.bias, h.<i>.attn.c_proj.weight [C, C] /.bias,
//   h.<i>.ln_2.weight/.bias, h.<i>.mlp.c_fc.weight [4C, C] /.bias, h.<i>.mlp.c_proj.weight /.bias,
//   ln_f.weight/.bias; lm_head.weight only when tie_embeddings is false.
//   SwiGLU: h.<i>.mlp.c_fc.weight [2*hidden, C] (gate and up stacked), c_proj [C, hidden].
//   KDA layers: h.<i>.attn.* as layers/kda_mixer.h lists (q_proj, ..., A_log, dt_bias, o_norm, c_proj).
// Vector mode: input_proj.weight [C, input_dim] /.bias [C] in place of wte.weight, and
//   output_head.weight [output_dim, C] /.bias [output_dim] after ln_f (no lm_head).
// (PyTorch's own state_dict of the tied peer also lists lm_head.weight, the same tensor as
// wte.weight: load ours with strict=False, or copy wte.weight into it.)
// Parameters that must not get weight decay: names ending in ".bias", norm weights (ln_*, *norm*),
// wte, wpe, input_proj.weight (vector mode's embedding, treated as wte; output_head.weight is a
// head matrix like lm_head and decays), the attention variants' per-head scalars (theta, sigmoid_bias, lla's
// log_lambda), KDA's decay parameters (A_log, dt_bias), and the residual routing parameters (res.*: spec 1.6 suggests
// no decay on them).
bool is_no_decay_parameter(const std::string& name);

}  // namespace attnlab
