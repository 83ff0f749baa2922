#include "layers/gpt.h"

#include <cmath>

#include "autograd/grad_mode.h"
#include "autograd/op_helpers.h"
#include "autograd/ops.h"
#include "layers/kda_mixer.h"

namespace attnlab {

namespace {

// The container behind "h.<i>": numbered children and nothing else.
class ModuleList : public Module {
 public:
  template <typename M>
  std::shared_ptr<M> add(std::shared_ptr<M> module) {
    return register_module(std::to_string(size_++), std::move(module));
  }

 private:
  int64_t size_ = 0;
};

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

// ---- config ---------------------------------------------------------------------------------

void GptConfig::validate() const {
  auto positive = [](const char* field, int64_t v) {
    AL_CHECK_CONFIG(v > 0, "GptConfig: ", field, " must be > 0; got ", v);
  };
  AL_CHECK_CONFIG(input_dim >= 0 && output_dim >= 0 && (input_dim > 0) == (output_dim > 0),
                  "GptConfig: input_dim and output_dim must both be 0 (token ids in, vocabulary logits out) or both "
                  "> 0 (vector mode); got input_dim = ",
                  input_dim, ", output_dim = ", output_dim);
  if (!vector_mode()) positive("vocab_size", vocab_size);
  AL_CHECK_CONFIG(vocab_size >= 0, "GptConfig: vocab_size must be >= 0; got ", vocab_size);
  positive("vocab_pad", vocab_pad);
  positive("context", context);
  positive("layers", layers);
  positive("d_model", d_model);
  positive("heads", heads);
  AL_CHECK_CONFIG(mlp_hidden >= 0, "GptConfig: mlp_hidden must be >= 0 (0 = 4 * d_model); got ", mlp_hidden);
  AL_CHECK_CONFIG(d_model % heads == 0, "GptConfig: d_model = ", d_model, " must be a multiple of heads = ", heads,
                  " (head dim = d_model / heads)");
  check_choice("GptConfig", "norm", norm, {"layernorm", "rmsnorm"});
  check_choice("GptConfig", "mlp", mlp, {"gelu", "swiglu"});
  check_choice("GptConfig", "positions", positions, {"learned", "rope"});
  check_choice("GptConfig", "attention", attention, attention_variants());
  attention_options.validate(attention);
  const std::vector<std::string> pattern = parse_layer_pattern(layer_pattern);
  for (const std::string& name : pattern) check_choice("GptConfig", "layer_pattern entry", name, attention_variants());
  AL_CHECK_CONFIG(static_cast<int64_t>(pattern.size()) <= layers, "GptConfig: layer_pattern = '", layer_pattern,
                  "' names ", pattern.size(), " layers but the model has layers = ", layers);
  if (positions == "rope") {
    AL_CHECK_CONFIG(head_dim() % 2 == 0,
                    "GptConfig: positions = rope needs an even head dim; got d_model / heads = ", d_model, " / ", heads,
                    " = ", head_dim());
    AL_CHECK_CONFIG(rope_base > 0 && std::isfinite(rope_base), "GptConfig: rope_base must be > 0; got ", rope_base);
  }
  residual.validate(layers);
  // Written so that NaN fails too.
  AL_CHECK_CONFIG(dropout >= 0.0 && dropout < 1.0, "GptConfig: dropout must be in [0, 1); got ", dropout);
}

std::vector<std::string> parse_layer_pattern(const std::string& pattern) {
  std::vector<std::string> names;
  if (pattern.find_first_not_of(" \t") == std::string::npos) return names;
  size_t at = 0;
  while (true) {
    const size_t comma = pattern.find(',', at);
    const std::string item = pattern.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    const size_t b = item.find_first_not_of(" \t"), e = item.find_last_not_of(" \t");
    AL_CHECK_CONFIG(b != std::string::npos, "GptConfig: layer_pattern = '", pattern,
                    "' has an empty entry (expected a comma list of attention names, e.g. kda,kda,kda,softmax)");
    names.push_back(item.substr(b, e - b + 1));
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  return names;
}

std::string GptConfig::layer_attention(int64_t i) const {
  const std::vector<std::string> pattern = parse_layer_pattern(layer_pattern);
  if (pattern.empty()) return attention;
  return pattern[static_cast<size_t>(i % static_cast<int64_t>(pattern.size()))];
}

int64_t GptConfig::padded_vocab() const {
  const int64_t pad = vocab_pad > 0 ? vocab_pad : 1;
  return (vocab_size + pad - 1) / pad * pad;
}

// ---- block ----------------------------------------------------------------------------------

GptBlock::GptBlock(const GptConfig& c, Generator& gen, DType dtype, int64_t layer) : dropout_(c.dropout) {
  AttentionBlockConfig ac;
  ac.d_model = c.d_model;
  ac.heads = c.heads;
  ac.bias = c.bias;
  ac.rope = c.positions == "rope";
  ac.rope_base = c.rope_base;
  ac.attention = c.layer_attention(layer);
  ac.options = c.attention_options;
  ac.context = c.context;
  ac.matmul_precision = c.matmul_precision;
  // Registration order is the peer's (and so the checkpoint's): ln_1, attn, ln_2, mlp.
  ln_1_ = register_module("ln_1", make_norm(c.norm, c.d_model, c.bias, dtype));
  if (ac.attention == "kda")
    attn_ = register_module("attn", std::make_shared<KdaMixer>(ac, gen, dtype));
  else
    attn_ = register_module("attn", std::make_shared<CausalSelfAttention>(ac, gen, dtype));
  ln_2_ = register_module("ln_2", make_norm(c.norm, c.d_model, c.bias, dtype));
  mlp_ = register_module("mlp", make_mlp(c.mlp, c.d_model, c.hidden(), c.bias, gen, dtype, c.matmul_precision));
}

Variable GptBlock::forward(const Variable& x, const LayerPass& pass, int64_t layer) const {
  const Variable h = add(x, attn_branch(x, pass, layer));
  return add(h, mlp_branch(h, pass.dropout()));
}

Variable GptBlock::attn_branch(const Variable& x, const LayerPass& pass, int64_t layer) const {
  const auto i = static_cast<size_t>(layer);
  const Variable y = ln_1_->forward(x);
  if (pass.diagnostics) (*pass.diagnostics)[i] = attn_->diagnose(y);
  if (pass.masses) (*pass.masses)[i] = attn_->attention_mass(y, *pass.probe);
  if (pass.cache) return attn_->forward_cached(y, pass.cache->layers_[i], pass.cache->length_);
  if (pass.frozen) return attn_->forward_after(y, pass.frozen->layer(layer), pass.start);
  const Variable u = attn_->forward(y, pass.mask);
  return pass.dropout() && dropout_ > 0 ? dropout(u, dropout_, *pass.dropout()) : u;
}

Variable GptBlock::mlp_branch(const Variable& x, Generator* gen) const {
  const Variable u = mlp_->forward(ln_2_->forward(x));
  return gen && dropout_ > 0 ? dropout(u, dropout_, *gen) : u;
}

// ---- model ----------------------------------------------------------------------------------

Gpt::Gpt(const GptConfig& config, Generator& gen, DType dtype) : config_(config), dtype_(dtype) {
  config.validate();
  AL_CHECK_DTYPE(dtype == DType::f32 || dtype == DType::f64, "Gpt: dtype must be f32 or f64; got ", dtype);
  AL_CHECK_DTYPE(config.matmul_precision == MatmulPrecision::f32 || dtype == DType::f32,
                 "Gpt: matmul_precision = bf16 is mixed precision over f32 parameters; got dtype ", dtype);
  const int64_t C = config.d_model, Vp = config.padded_vocab();
  // The layers draw their own default init from a scratch stream; the GPT-2 init below is the
  // only thing drawn from `gen`, so a model is a function of (config, gen) alone.
  Generator scratch(gen.seed() ^ 0x9E3779B97F4A7C15ull, 0);
  // Vector mode: the projection takes wte's place in the parameter order (and the output head
  // lm_head's), so the init below draws the blocks' weights in the same sequence.
  if (config.vector_mode())
    input_proj_ = register_module("input_proj", std::make_shared<Linear>(config.input_dim, C, /*bias=*/true, scratch,
                                                                         dtype, config.matmul_precision));
  else
    wte_ = register_module("wte", std::make_shared<Embedding>(Vp, C, scratch, dtype));
  if (config.positions == "learned")
    wpe_ = register_module("wpe", std::make_shared<LearnedPositions>(config.context, C, scratch, dtype));
  auto h = register_module("h", std::make_shared<ModuleList>());
  for (int64_t i = 0; i < config.layers; ++i)
    blocks_.push_back(h->add(std::make_shared<GptBlock>(config, scratch, dtype, i)));
  ln_f_ = register_module("ln_f", make_norm(config.norm, C, config.bias, dtype));
  if (config.vector_mode())
    output_head_ = register_module("output_head", std::make_shared<Linear>(C, config.output_dim, /*bias=*/true, scratch,
                                                                           dtype, config.matmul_precision));
  else if (!config.tie_embeddings)
    lm_head_ = register_module(
        "lm_head", std::make_shared<Linear>(C, Vp, /*bias=*/false, scratch, dtype, config.matmul_precision));

  const double proj_std = 0.02 / std::sqrt(2.0 * static_cast<double>(config.layers));
  for (auto& [name, p] : named_parameters()) {
    Tensor& t = p.mutable_data();
    if (ends_with(name, "c_proj.weight"))
      fill_normal(t, gen, 0.0, proj_std);
    else if (t.ndim() == 2)  // every other Linear and Embedding weight
      fill_normal(t, gen, 0.0, 0.02);
    else if (ends_with(name, ".bias"))
      t.zero_();
    else  // norm weights
      t.fill_(1.0);
  }
  // The attention variants' own parameters (zero alpha map, theta, the sigmoid bias) follow their spec.
  for (auto& block : blocks_) block->init_attention_parameters();
  // Registered last, so a standard model's parameters keep their order and values (the router
  // draws nothing from `gen`).
  if (config.residual.routed()) {
    router_ = register_module("res", std::make_shared<ResidualRouter>(config.residual, config.layers, C, dtype));
    router_->init_parameters(gen.seed() ^ 0x5A17F00Dull);
  }
}

Variable Gpt::sublayer(int64_t s, const Variable& h, const LayerPass& pass) const {
  const GptBlock& b = *blocks_[static_cast<size_t>(s / 2)];
  if (s % 2) return b.mlp_branch(h, pass.dropout());
  return b.attn_branch(h, pass, s / 2);
}

Variable Gpt::run_layers(const Variable& x, const LayerPass& pass) const {
  // Routing is over depth, per token, so every pass (decoding and span passes too) routes the
  // positions it runs over their own sources.
  if (router_) return router_->run(x, [&](int64_t s, const Variable& h) { return sublayer(s, h, pass); });
  Variable h = x;
  for (size_t i = 0; i < blocks_.size(); ++i) h = blocks_[i]->forward(h, pass, static_cast<int64_t>(i));
  return h;
}

Variable Gpt::embed(const Variable& ids, int64_t offset, const char* who) const {
  if (config_.vector_mode()) {
    AL_CHECK_DTYPE(ids.defined() && (ids.dtype() == DType::f32 || ids.dtype() == DType::f64), who,
                   ": this model is in vector mode (input_dim = ", config_.input_dim, "): x must be f32 or f64 [B, T, ",
                   config_.input_dim, "]; got x=", ids.defined() ? ids.str() : std::string("undefined"));
    AL_CHECK_SHAPE(ids.ndim() == 3 && ids.size(0) > 0 && ids.size(1) > 0 && ids.size(2) == config_.input_dim, who,
                   ": x must be [B, T, ", config_.input_dim, "] with B, T >= 1 (vector mode); got x=", ids.str());
    const int64_t T = ids.size(1);
    AL_CHECK_SHAPE(offset + T <= config_.context, who, ": positions [", offset, ", ", offset + T,
                   ") do not fit the context of ", config_.context, " (x=", ids.str(), ")");
    // The inputs are data, never trained: a dtype conversion needs no gradient.
    const Variable in = ids.dtype() == dtype_ ? ids : Variable(ids.data().to(dtype_));
    Variable x = input_proj_->forward(in);  // [B, T, C]
    if (wpe_) x = add(x, wpe_->forward(offset, T));
    return x;
  }
  AL_CHECK_DTYPE(ids.defined() && ids.dtype() == DType::i32, who,
                 ": ids must be i32 [B, T]; got ids=", ids.defined() ? ids.str() : std::string("undefined"));
  AL_CHECK_SHAPE(ids.ndim() == 2 && ids.size(0) > 0 && ids.size(1) > 0, who,
                 ": ids must be [B, T] with B, T >= 1; got ids=", ids.str());
  const int64_t T = ids.size(1);
  AL_CHECK_SHAPE(offset + T <= config_.context, who, ": positions [", offset, ", ", offset + T,
                 ") do not fit the context of ", config_.context, " (ids=", ids.str(),
                 offset > 0 ? ", after the cached positions" : "", ")");
  // Padded ids would be accepted by the table; they are not tokens.
  // On the ids' device: a CUDA tensor's data pointer is not readable from the host on a GPU.
  const Tensor flat = ids.data().contiguous();
  const BadIndex bad =
      op::on_device(who, flat, [&](auto dev) { return IndexSelectOp::find_bad_index(dev, flat, config_.vocab_size); });
  AL_CHECK_SHAPE(!bad.found(), who, ": token id ", bad.value, " at position ", bad.pos,
                 " is outside the vocabulary [0, ", config_.vocab_size, ") for ids=", ids.str());
  Variable x = wte_->forward(ids);  // [B, T, C]
  if (wpe_) x = add(x, wpe_->forward(offset, T));
  return x;
}

Variable Gpt::head(const Variable& x) const {
  const Variable y = ln_f_->forward(x);
  if (output_head_) return output_head_->forward(y);
  if (lm_head_) return lm_head_->forward(y);
  // The tied head is y wte^T: the linear op does it in bf16 (no bias); f32 keeps its matmul.
  if (config_.matmul_precision != MatmulPrecision::f32)
    return linear(y, wte_->weight(), Variable(), config_.matmul_precision);
  const int64_t B = y.size(0), T = y.size(1), C = config_.d_model;
  const Variable logits = matmul(reshape(y, Shape{B * T, C}), wte_->weight(), /*trans_a=*/false, /*trans_b=*/true);
  return reshape(logits, Shape{B, T, config_.padded_vocab()});
}

Variable Gpt::forward(const Variable& ids, Generator* gen, int64_t prefix) const {
  LayerPass pass;
  pass.gen = config_.dropout > 0 && training() ? gen : nullptr;
  if (prefix > 0) {
    AL_CHECK_SHAPE(ids.defined() && ids.ndim() >= 2 && prefix <= ids.size(1), "Gpt::forward: the bidirectional prefix ",
                   prefix, " must not exceed the sequence (ids=", ids.defined() ? ids.str() : std::string("undefined"),
                   ")");
    const std::string why = prefix_mask_unsupported();
    AL_CHECK_CONFIG(why.empty(), "Gpt::forward: a bidirectional prefix of ", prefix, " positions was asked for, but ",
                    why);
    pass.mask.prefix = prefix;
  }
  AL_CHECK_SHAPE(prefix >= 0, "Gpt::forward: the bidirectional prefix must be >= 0; got ", prefix);
  Variable x = embed(ids, 0, "Gpt::forward");
  if (pass.gen) x = dropout(x, config_.dropout, *pass.gen);
  return head(run_layers(x, pass));
}

Variable Gpt::forward_cached(const Variable& ids, KvCache& cache) const {
  AL_CHECK_CONFIG(!config_.vector_mode(),
                  "Gpt::forward_cached: incremental decoding is for token models; this "
                  "model is in vector mode (input_dim = ",
                  config_.input_dim, ")");
  NoGradGuard no_grad;
  check_cache(cache, "Gpt::forward_cached");
  AL_CHECK_SHAPE(ids.ndim() == 2 && ids.size(0) == cache.batch(), "Gpt::forward_cached: ids must be [", cache.batch(),
                 ", t] (the cache's batch); got ids=", ids.str());
  LayerPass pass;
  pass.cache = &cache;
  const Variable x = embed(ids, cache.length(), "Gpt::forward_cached");
  const Variable out = head(run_layers(x, pass));
  cache.length_ += ids.size(1);
  return out;
}

Variable Gpt::forward_after(const Variable& ids, const KvCache& cache, int64_t start) const {
  AL_CHECK_CONFIG(
      !config_.vector_mode(),
      "Gpt::forward_after: test-time training is for token models; this model is in vector mode (input_dim = ",
      config_.input_dim, ")");
  const std::string why = frozen_prefix_unsupported();
  AL_CHECK_CONFIG(why.empty(), "Gpt::forward_after: ", why);
  check_cache(cache, "Gpt::forward_after");
  AL_CHECK_SHAPE(ids.ndim() == 2 && ids.size(0) == cache.batch(), "Gpt::forward_after: ids must be [", cache.batch(),
                 ", t] (the cache's batch); got ids=", ids.str());
  AL_CHECK_SHAPE(start >= 0 && start <= cache.length(), "Gpt::forward_after: start ", start,
                 " must lie within the cache's ", cache.length(), " filled positions");
  LayerPass pass;
  pass.frozen = &cache;
  pass.start = start;
  return head(run_layers(embed(ids, start, "Gpt::forward_after"), pass));
}

std::string Gpt::prefix_mask_unsupported() const {
  for (size_t i = 0; i < blocks_.size(); ++i)
    if (!blocks_[i]->attn().supports_prefix_mask())
      return "layer " + std::to_string(i) + " (" + blocks_[i]->attn().kind() +
             ") has no bidirectional-prefix mask: use softmax, sigmoid, affine, infsa or lla layers, or a causal mask";
  return "";
}

std::string Gpt::frozen_prefix_unsupported() const {
  for (size_t i = 0; i < blocks_.size(); ++i)
    if (!blocks_[i]->attn().supports_frozen_prefix())
      return "layer " + std::to_string(i) + " (" + blocks_[i]->attn().kind() +
             ") cannot attend over a frozen k, v prefix (its state depends on the earlier queries): test-time "
             "training needs softmax, sigmoid, affine or lla layers";
  return "";
}

std::vector<AttentionMass> Gpt::attention_mass(const Variable& ids, const MassProbe& probe) const {
  NoGradGuard no_grad;
  if (probe.mask.prefix > 0) {
    const std::string why = prefix_mask_unsupported();
    AL_CHECK_CONFIG(why.empty(), "Gpt::attention_mass: the probe's mask has a bidirectional prefix, but ", why);
  }
  std::vector<AttentionMass> out(blocks_.size());
  LayerPass pass;
  pass.mask = probe.mask;
  pass.probe = &probe;
  pass.masses = &out;
  run_layers(embed(ids, 0, "Gpt::attention_mass"), pass);
  return out;
}

std::vector<AttentionDiagnostics> Gpt::attention_diagnostics(const Variable& ids) const {
  NoGradGuard no_grad;
  std::vector<AttentionDiagnostics> out(blocks_.size());
  LayerPass pass;
  pass.diagnostics = &out;
  run_layers(embed(ids, 0, "Gpt::attention_diagnostics"), pass);
  return out;
}

std::vector<RoutingStats> Gpt::routing_diagnostics(const Variable& ids) const {
  std::vector<RoutingStats> stats;
  if (!router_) return stats;
  NoGradGuard no_grad;
  const Variable x = embed(ids, 0, "Gpt::routing_diagnostics");
  const LayerPass pass;
  router_->run(
      x, [&](int64_t s, const Variable& h) { return sublayer(s, h, pass); }, &stats);
  return stats;
}

void Gpt::check_cache(const KvCache& cache, const char* who) const {
  const int64_t H = config_.heads, D = config_.head_dim();
  // Layers with k, v rows have them [B, H, context, D] in the model's dtype; KDA layers have none.
  bool fits = cache.num_layers() == config_.layers && cache.capacity() == config_.context;
  for (int64_t i = 0; fits && i < config_.layers; ++i) {
    const Tensor& k = cache.layer(i).k;
    fits = blocks_[static_cast<size_t>(i)]->attn().uses_kv_rows()
               ? k.defined() && k.size(1) == H && k.size(3) == D && k.dtype() == dtype_
               : !k.defined();
  }
  AL_CHECK_SHAPE(fits, who, ": the cache was not made by this model's make_cache (model: ", config_.layers,
                 " layers, k [B, ", H, ", ", config_.context, ", ", D, "] ", dtype_, ")");
}

KvCache Gpt::make_cache(int64_t batch) const {
  AL_CHECK_CONFIG(!config_.vector_mode(),
                  "Gpt::make_cache: incremental decoding (and sampling) is for token "
                  "models; this model is in vector mode (input_dim = ",
                  config_.input_dim, ")");
  AL_CHECK_CONFIG(batch > 0, "Gpt::make_cache: batch must be >= 1; got ", batch);
  KvCache cache;
  cache.batch_ = batch;
  cache.capacity_ = config_.context;
  const Shape shape{batch, config_.heads, config_.context, config_.head_dim()};
  for (int64_t i = 0; i < config_.layers; ++i) {
    KvSlot slot;  // KDA layers fill their O(1) state on first use
    if (blocks_[static_cast<size_t>(i)]->attn().uses_kv_rows()) {
      slot.k = Tensor::zeros(shape, dtype_, device());
      slot.v = Tensor::zeros(shape, dtype_, device());
    }
    cache.layers_.push_back(std::move(slot));
  }
  return cache;
}

bool is_no_decay_parameter(const std::string& name) {
  return ends_with(name, ".bias") || name.find("ln_") != std::string::npos || name.find("norm") != std::string::npos ||
         ends_with(name, "wte.weight") || ends_with(name, "wpe.weight") || ends_with(name, "input_proj.weight") ||
         ends_with(name, ".theta") || ends_with(name, ".sigmoid_bias") || ends_with(name, ".log_lambda") ||
         ends_with(name, ".A_log") || ends_with(name, ".dt_bias") || is_routing_parameter(name);
}

}  // namespace attnlab
