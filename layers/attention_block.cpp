#include "layers/attention_block.h"

#include <algorithm>
#include <cmath>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "layers/attention/affine/affine_attention.h"
#include "layers/attention/infsa/infsa_attention.h"
#include "layers/attention/linear_infsa/linear_infsa_attention.h"
#include "layers/attention/lla/lla_attention.h"
#include "layers/attention/sigmoid/sigmoid_attention.h"
#include "layers/attention/softmax/softmax_attention.h"
#include "layers/positions.h"

namespace attnlab {

void check_choice(std::string_view who, std::string_view field, const std::string& value,
                  const std::vector<std::string>& valid) {
  std::string names;
  for (const std::string& v : valid) {
    if (v == value) return;
    names += (names.empty() ? "" : ", ") + v;
  }
  AL_CHECK_CONFIG(false, who, ": ", field, " = '", value, "' is not known; valid: ", names);
}

namespace {

double logit(double p) { return std::log(p / (1.0 - p)); }

// The per-head values of a [H] tensor, on the host.
std::vector<double> host_values(const Tensor& t) { return t.to(Device::cpu()).to_vector<double>(); }

}  // namespace

const std::vector<std::string>& attention_variants() {
  static const std::vector<std::string> names{"softmax", "sigmoid", "affine", "infsa", "linear_infsa", "lla", "kda"};
  return names;
}

void AttentionOptions::validate(const std::string& attention) const {
  check_choice("attention option", "attention", attention, attention_variants());
  check_choice("attention option", "sigmoid.bias", sigmoid_bias, {"zero", "neglogn", "neglog_visible"});
  check_choice("attention option", "affine.phi", affine_phi, {"linear_clip", "sigmoid"});
  check_choice("attention option", "affine.bias_norm", affine_bias_norm, {"visible", "full"});
  AL_CHECK_CONFIG(affine_rho >= 0.0 && affine_rho < 1.0, "attention option affine.rho must be in [0, 1); got ",
                  affine_rho);
  check_choice("attention option", "linear_infsa.form", linear_infsa_form, {"linear", "prefix"});
  AL_CHECK_CONFIG(infsa_gamma > 0.0 && infsa_gamma < 1.0,
                  "attention option infsa.gamma (the initial discount) must be in (0, 1); got ", infsa_gamma);
  AL_CHECK_CONFIG(kda_conv >= 0 && kda_conv <= 64,
                  "attention option kda.conv (the short conv's kernel, 0 = none) must be in [0, 64]; got ", kda_conv);
  AL_CHECK_CONFIG(lla_lambda > 0.0 && std::isfinite(lla_lambda),
                  "attention option lla.lambda (the ridge) must be > 0; got ", lla_lambda);
}

CausalSelfAttention::CausalSelfAttention(const AttentionBlockConfig& config, Generator& gen, DType dtype)
    : config_(config) {
  AL_CHECK_CONFIG(config.d_model > 0 && config.heads > 0 && config.d_model % config.heads == 0,
                  "CausalSelfAttention: d_model must be a positive multiple of heads; got d_model=", config.d_model,
                  ", heads=", config.heads);
  AL_CHECK_CONFIG(!config.rope || head_dim() % 2 == 0,
                  "CausalSelfAttention: rotary positions need an even head dim; got ", head_dim(),
                  " (d_model=", config.d_model, ", heads=", config.heads, ")");
  config.options.validate(config.attention);
  AL_CHECK_CONFIG(
      config.attention != "kda",
      "CausalSelfAttention: kda is its own token mixer (KdaMixer, layers/kda_mixer.h), not an attention variant");
  const int64_t C = config.d_model, H = config.heads, D = head_dim();
  const MatmulPrecision mp = config.matmul_precision;
  c_attn_ = register_module("c_attn", std::make_shared<Linear>(C, 3 * C, config.bias, gen, dtype, mp));
  c_proj_ = register_module("c_proj", std::make_shared<Linear>(C, C, config.bias, gen, dtype, mp));
  if (config.options.qk_norm) {
    q_norm_ = register_module("q_norm", std::make_shared<RmsNorm>(D, dtype));
    k_norm_ = register_module("k_norm", std::make_shared<RmsNorm>(D, dtype));
  }
  const std::string& a = config.attention;
  if (a == "sigmoid" && config.options.sigmoid_bias == "neglogn")
    sigmoid_bias_ = register_parameter("sigmoid_bias", Tensor::zeros(Shape{H}, dtype));
  if (a == "affine") {
    alpha_ = register_module("alpha", std::make_shared<Linear>(C, H, /*bias=*/true, gen, dtype));
    alpha_mean_ = register_buffer("alpha_mean", Tensor::zeros(Shape{H}, dtype));
  }
  if (a == "infsa" || a == "linear_infsa") theta_ = register_parameter("theta", Tensor::zeros(Shape{H}, dtype));
  if (a == "lla" && config.options.lla_learn_lambda)
    log_lambda_ = register_parameter("log_lambda", Tensor::zeros(Shape{1}, dtype));
  init_variant_parameters();
}

void CausalSelfAttention::init_variant_parameters() {
  // Sigmoid (FlashSigmoid): b = -log n, n the training length, so a row's mass starts near 1.
  if (sigmoid_bias_.defined())
    sigmoid_bias_.mutable_data().fill_(-std::log(static_cast<double>(std::max<int64_t>(config_.context, 1))));
  // Affine: alpha = phi(0) = 0.5 for every token at the start; the running mean starts at 0 (spec 1.3).
  if (alpha_) {
    Variable w = alpha_->weight(), b = alpha_->bias();
    w.mutable_data().zero_();
    b.mutable_data().zero_();
    Variable m = alpha_mean_;
    m.mutable_data().zero_();
  }
  if (theta_.defined()) theta_.mutable_data().fill_(logit(config_.options.infsa_gamma));
  if (log_lambda_.defined()) log_lambda_.mutable_data().fill_(std::log(config_.options.lla_lambda));
  for (const auto& n : {q_norm_, k_norm_})
    if (n) {
      Variable w = n->weight();
      w.mutable_data().fill_(1.0);
    }
}

CausalSelfAttention::Qkv CausalSelfAttention::project(const Variable& x, int64_t offset) const {
  const int64_t C = config_.d_model;
  AL_CHECK_SHAPE(x.ndim() == 3 && x.size(2) == C, "CausalSelfAttention: x must be [B, T, ", C, "]; got x=", x.str());
  // One GEMM for q|k|v, then the heads as strided views of its [B, T, 3C] output (no copies;
  // attention reads them in place, and its gradients come back as one [B, T, 3C] buffer).
  const std::vector<Variable> h = split_heads(c_attn_->forward(x), 3, config_.heads);
  Variable q = h[0], k = h[1];
  if (q_norm_) {
    q = q_norm_->forward(q);
    k = k_norm_->forward(k);
  }
  if (!config_.rope) return {q, k, h[2]};
  return {rope(q, offset, config_.rope_base), rope(k, offset, config_.rope_base), h[2]};
}

Variable CausalSelfAttention::attend(const Variable& q, const Variable& k, const Variable& v, const Variable& x,
                                     KvSlot* slot, int64_t length, const AttentionMask& mask, Tensor* alpha) const {
  // Causal with offset: query i sits at position S - T + i, which covers the cache case too.
  const std::string& a = config_.attention;
  const AttentionOptions& o = config_.options;
  if (a == "sigmoid") {
    const SigmoidBias mode = o.sigmoid_bias == "neglogn"          ? SigmoidBias::per_head
                             : o.sigmoid_bias == "neglog_visible" ? SigmoidBias::neglog_visible
                                                                  : SigmoidBias::zero;
    return sigmoid_attention(q, k, v, mode, sigmoid_bias_, mask);
  }
  if (a == "affine") {
    AffineOptions ao;
    ao.phi = o.affine_phi == "sigmoid" ? AffinePhi::sigmoid : AffinePhi::linear_clip;
    ao.bias_norm = o.affine_bias_norm == "full" ? AffineBiasNorm::full : AffineBiasNorm::visible;
    // The op keeps the value it used for its backward: a copy, since the buffer moves below.
    const Tensor abar = alpha_mean_.data().clone();
    AffineAttentionResult r = affine_attention(q, k, v, x, alpha_->weight(), alpha_->bias(), abar, mask, ao);
    if (alpha) *alpha = r.alpha;
    // Updated after the step's forward, from this batch's alpha: no output depends on it.
    if (training() && GradMode::enabled()) {
      Variable m = alpha_mean_;
      m.mutable_data().copy_(affine_abar_update(abar, r.alpha, o.affine_rho));
    }
    return r.out;
  }
  if (a == "infsa") {
    const Tensor r0 = slot && length > 0 ? slot->r : Tensor();
    InfsaResult r = infsa_attention(q, k, v, theta_, mask, 0.0, r0);
    if (slot) slot->r = r.r;
    return r.out;
  }
  if (a == "linear_infsa") {
    const bool carried = slot && length > 0;
    const auto op = o.linear_infsa_form == "prefix" ? linear_infsa_prefix_attention : linear_infsa_attention;
    LinearInfsaResult r = op(q, k, v, theta_, mask, 0.0, carried ? slot->p : Tensor(), carried ? slot->n : Tensor());
    if (slot) {
      slot->p = r.p;
      slot->n = r.n;
    }
    return r.out;
  }
  if (a == "lla") return lla_attention(q, k, v, lla_lambda(q), mask, 0.0, o.lla_flashlla_grad);
  return softmax_attention(q, k, v, mask);
}

Variable CausalSelfAttention::lla_lambda(const Variable& q) const {
  if (log_lambda_.defined()) return exp(log_lambda_);
  return Variable(Tensor::full(Shape{1}, config_.options.lla_lambda, q.dtype(), q.device()));
}

Variable CausalSelfAttention::output(const Variable& y) const {
  const int64_t B = y.size(0), T = y.size(2);
  // reshape of the token-major permute is a view when attention wrote y token-major (softmax);
  // other layouts are copied once here.
  return c_proj_->forward(reshape(permute(y, {0, 2, 1, 3}), Shape{B, T, config_.d_model}));
}

Variable TokenMixer::forward_after(const Variable& x, const KvSlot&, int64_t start) const {
  throw ConfigError("token mixer " + kind() + " cannot attend over a frozen k, v prefix (x=" + x.str() + ", start " +
                    std::to_string(start) + "); test-time training needs softmax, sigmoid, affine or lla layers");
}

AttentionMass TokenMixer::attention_mass(const Variable&, const MassProbe&) const {
  AttentionMass m;
  m.kind = kind();
  return m;  // measured = false: no attention weights to probe
}

bool CausalSelfAttention::supports_prefix_mask() const { return config_.attention != "linear_infsa"; }

bool CausalSelfAttention::supports_frozen_prefix() const {
  // infsa and linear_infsa carry state computed from the earlier queries (the prefix energy, the
  // running mean query), which a k, v cache does not hold per position.
  const std::string& a = config_.attention;
  return a == "softmax" || a == "sigmoid" || a == "affine" || a == "lla";
}

Variable CausalSelfAttention::forward(const Variable& x, const AttentionMask& mask) const {
  AL_CHECK_CONFIG(mask.prefix == 0 || supports_prefix_mask(), "CausalSelfAttention: ", config_.attention,
                  " has no bidirectional-prefix mask (its kernels take the plain causal mask only); got prefix = ",
                  mask.prefix, " for x=", x.str());
  const Qkv p = project(x, 0);
  return output(attend(p.q, p.k, p.v, x, nullptr, 0, mask));
}

Variable CausalSelfAttention::forward_after(const Variable& x, const KvSlot& frozen, int64_t start) const {
  AL_CHECK_CONFIG(supports_frozen_prefix(), "CausalSelfAttention: ", config_.attention,
                  " cannot attend over a frozen k, v prefix (it carries state computed from the earlier queries); "
                  "test-time training needs softmax, sigmoid, affine or lla layers");
  AL_CHECK_SHAPE(x.ndim() == 3, "CausalSelfAttention: x must be [B, T, C]; got x=", x.str());
  const int64_t B = x.size(0), H = config_.heads, D = head_dim();
  AL_CHECK_SHAPE(frozen.k.defined() && frozen.v.defined() && frozen.k.ndim() == 4 && frozen.k.size(0) == B &&
                     frozen.k.size(1) == H && frozen.k.size(3) == D && frozen.v.shape() == frozen.k.shape() &&
                     start >= 0 && start <= frozen.k.size(2),
                 "CausalSelfAttention: the frozen cache must hold k and v [", B, ", ", H, ", S_max >= ", start, ", ", D,
                 "] for x=", x.str(), " at start ", start, "; got k=", frozen.k, ", v=", frozen.v);
  const Qkv p = project(x, start);
  if (start == 0) return output(attend(p.q, p.k, p.v, x, nullptr, 0, AttentionMask{}));
  // The prefix rows enter as constants: their gradient is never wanted and they are never written.
  const Variable k = concat({Variable(frozen.k.narrow(2, 0, start)), p.k}, 2);
  const Variable v = concat({Variable(frozen.v.narrow(2, 0, start)), p.v}, 2);
  return output(attend(p.q, k, v, x, nullptr, 0, AttentionMask{}));
}

AttentionMass CausalSelfAttention::attention_mass(const Variable& x, const MassProbe& probe) const {
  NoGradGuard no_grad;
  AttentionMass m;
  m.kind = config_.attention;
  const Qkv p = project(x, 0);
  const int64_t T = p.q.size(2), D = p.v.size(3);
  AL_CHECK_SHAPE(probe.first_query >= 0 && probe.first_query < probe.end_query && probe.end_query <= T &&
                     probe.context >= 0 && probe.context <= T,
                 "attention_mass: the probe's queries [", probe.first_query, ", ", probe.end_query, ") and context ",
                 probe.context, " must lie within the sequence of ", T, " positions");
  // Linear in v: column 0 = e_0 gives each query's weight on the sink, column 1 = the indicator of
  // [1, context) its summed weight on the rest of the context (head dims of 1: the sink only).
  Tensor ind = Tensor::zeros(p.v.shape(), p.v.dtype(), p.v.device());
  ind.narrow(2, 0, 1).narrow(3, 0, 1).fill_(1.0);
  if (D > 1 && probe.context > 1) ind.narrow(2, 1, probe.context - 1).narrow(3, 1, 1).fill_(1.0);
  const Tensor y = attend(p.q, p.k, Variable(ind), x, nullptr, 0, probe.mask)
                       .data()
                       .narrow(2, probe.first_query, probe.end_query - probe.first_query)
                       .to(Device::cpu())
                       .contiguous();
  const std::vector<double> w = y.to_vector<double>();
  double sink = 0, ctx = 0;
  const size_t rows = w.size() / static_cast<size_t>(D);
  for (size_t i = 0; i < w.size(); i += static_cast<size_t>(D)) {
    sink += w[i];
    if (D > 1) ctx += w[i + 1];
  }
  m.measured = true;
  m.sink = rows ? sink / static_cast<double>(rows) : 0.0;
  m.context = rows ? ctx / static_cast<double>(rows) : 0.0;
  return m;
}

Variable CausalSelfAttention::forward_cached(const Variable& x, KvSlot& slot, int64_t length) const {
  const int64_t H = config_.heads, D = head_dim();
  AL_CHECK_SHAPE(x.ndim() == 3, "CausalSelfAttention: x must be [B, T, C]; got x=", x.str());
  const int64_t B = x.size(0), T = x.size(1);
  AL_CHECK_SHAPE(slot.k.defined() && slot.v.defined() && slot.k.ndim() == 4 && slot.k.size(0) == B &&
                     slot.k.size(1) == H && slot.k.size(3) == D && slot.v.shape() == slot.k.shape(),
                 "CausalSelfAttention: the cache must hold k and v [", B, ", ", H, ", S_max, ", D, "] for x=", x.str(),
                 "; got k=", slot.k, ", v=", slot.v);
  AL_CHECK_SHAPE(length >= 0 && length + T <= slot.k.size(2), "CausalSelfAttention: ", T, " new positions after ",
                 length, " cached ones exceed the cache of ", slot.k.size(2), " positions (k=", slot.k, ")");
  const Qkv p = project(x, length);
  slot.k.narrow(2, length, T).copy_(p.k.data());
  slot.v.narrow(2, length, T).copy_(p.v.data());
  const Variable k(slot.k.narrow(2, 0, length + T)), v(slot.v.narrow(2, 0, length + T));
  return output(attend(p.q, k, v, x, &slot, length, AttentionMask{}));
}

AttentionDiagnostics CausalSelfAttention::diagnose(const Variable& x) const {
  NoGradGuard no_grad;
  AttentionDiagnostics d;
  d.kind = config_.attention;
  const Qkv p = project(x, 0);
  // Every variant is linear in v for fixed weights, so attending over v whose column 0 is e_0 (1 at
  // position 0, 0 elsewhere) and column 1 all ones returns each query's weight on the first
  // position and its total weight, whatever the variant. (Head dims of 1 get the weight only.)
  const int64_t D = p.v.size(3);
  Tensor probe = Tensor::zeros(p.v.shape(), p.v.dtype(), p.v.device());
  probe.narrow(2, 0, 1).narrow(3, 0, 1).fill_(1.0);
  if (D > 1) probe.narrow(3, 1, 1).fill_(1.0);
  Tensor alpha;  // affine's gate on this batch, from the same call
  const Tensor y =
      attend(p.q, p.k, Variable(probe), x, nullptr, 0, AttentionMask{}, &alpha).data().to(Device::cpu()).contiguous();
  const std::vector<double> w = y.to_vector<double>();
  double sum = 0, share = 0;
  int64_t rows = 0, shared_rows = 0;
  for (size_t i = 0; i < w.size(); i += static_cast<size_t>(D), ++rows) {
    sum += w[i];
    if (D > 1 && std::abs(w[i + 1]) > 1e-12) {
      share += w[i] / w[i + 1];
      ++shared_rows;
    }
  }
  d.sink = rows ? sum / static_cast<double>(rows) : 0.0;
  d.sink_share = shared_rows ? share / static_cast<double>(shared_rows) : d.sink;
  if (theta_.defined())
    for (double t : host_values(theta_.data())) d.gamma.push_back(1.0 / (1.0 + std::exp(-t)));
  if (alpha.defined()) {
    // alpha depends on x only, not on v: the probe call's alpha is the batch's.
    const std::vector<double> al = alpha.to(Device::cpu()).to_vector<double>();
    double s = 0, s2 = 0, lo = al.empty() ? 0.0 : al[0], hi = lo;
    for (double a : al) {
      s += a;
      s2 += a * a;
      lo = std::min(lo, a);
      hi = std::max(hi, a);
    }
    const double n = static_cast<double>(std::max<size_t>(al.size(), 1));
    d.alpha_mean = s / n;
    d.alpha_std = std::sqrt(std::max(0.0, s2 / n - d.alpha_mean * d.alpha_mean));
    d.alpha_min = lo;
    d.alpha_max = hi;
    d.alpha_running = host_values(alpha_mean_.data());
  }
  if (config_.attention == "lla") {
    const Tensor lam = lla_lambda(p.q).data();
    d.lla_lambda = host_values(lam)[0];
    const LlaConditioning c =
        lla_conditioning(p.q.data(), p.k.data(), lam, AttentionMask{.causal = true, .prefix = 0}, 0.0);
    d.lla_delta_ratio_min = c.delta_ratio_min;
    d.lla_delta_ratio_mean = c.delta_ratio_mean;
    d.lla_cond_mean = c.cond_mean;
    d.lla_cond_max = c.cond_max;
  }
  return d;
}

}  // namespace attnlab
