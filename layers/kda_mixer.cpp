#include "layers/kda_mixer.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "layers/attention/kda/kda_attention.h"

namespace attnlab {

namespace {

constexpr double kNormEps = 1e-5;  // the output RMSNorm's eps (spec A2 step 6; "Defaults")
constexpr double kL2Eps = 1e-6;    // q and k's L2 norm eps, inside the square root

double mean_of(const Tensor& t) {
  const std::vector<double> v = t.to(Device::cpu()).contiguous().to_vector<double>();
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0.0 : s / static_cast<double>(v.size());
}

}  // namespace

// A causal depthwise conv's weight [channels, W] under "<name>.weight" (fla's q_conv1d.weight,
// there [channels, 1, W]). Default init U(-1/sqrt(W), 1/sqrt(W)); the model's init replaces it.
class KdaMixer::ShortConv : public Module {
 public:
  ShortConv(int64_t channels, int64_t kernel, Generator& gen, DType dtype) {
    Tensor w = Tensor::empty(Shape{channels, kernel}, dtype);
    const double bound = 1.0 / std::sqrt(static_cast<double>(kernel));
    fill_uniform(w, gen, -bound, bound);
    weight_ = register_parameter("weight", w);
  }
  const Variable& weight() const { return weight_; }

 private:
  Variable weight_;
};

KdaMixer::KdaMixer(const AttentionBlockConfig& config, Generator& gen, DType dtype) : config_(config) {
  AL_CHECK_CONFIG(config.attention == "kda", "KdaMixer: config.attention must be kda; got '", config.attention, "'");
  AL_CHECK_CONFIG(config.d_model > 0 && config.heads > 0 && config.d_model % config.heads == 0,
                  "KdaMixer: d_model must be a positive multiple of heads; got d_model=", config.d_model,
                  ", heads=", config.heads);
  config.options.validate(config.attention);
  const int64_t C = config.d_model, H = config.heads, D = head_dim(), W = conv_size();
  const MatmulPrecision mp = config.matmul_precision;
  auto linear = [&](const char* name, int64_t in, int64_t out, bool bias = false) {
    return register_module(name, std::make_shared<Linear>(in, out, bias, gen, dtype, mp));
  };
  // Registration order fixes the parameter order (and so the order of the model's init draws).
  q_proj_ = linear("q_proj", C, C);
  k_proj_ = linear("k_proj", C, C);
  v_proj_ = linear("v_proj", C, C);
  if (W > 0) {
    q_conv_ = register_module("q_conv1d", std::make_shared<ShortConv>(C, W, gen, dtype));
    k_conv_ = register_module("k_conv1d", std::make_shared<ShortConv>(C, W, gen, dtype));
    v_conv_ = register_module("v_conv1d", std::make_shared<ShortConv>(C, W, gen, dtype));
  }
  f_a_ = linear("f_a_proj", C, D);
  f_b_ = linear("f_b_proj", D, C);
  b_proj_ = linear("b_proj", C, H);
  // A_log = log U(1, 16) per head; dt_bias = softplus^-1(dt), dt log-uniform in [1e-3, 1e-1],
  // clamped >= 1e-4 (Mamba's init): the initial per-step decay exp(-exp(A_log) dt) is mild.
  a_log_init_ = rand(Shape{H}, gen, DType::f64);
  dt_bias_init_ = rand(Shape{C}, gen, DType::f64);
  {
    std::vector<double> a = a_log_init_.to_vector<double>(), d = dt_bias_init_.to_vector<double>();
    for (double& u : a) u = std::log(1.0 + 15.0 * u);
    for (double& u : d) {
      const double dt = std::max(1e-4, std::exp(std::log(1e-3) + u * (std::log(1e-1) - std::log(1e-3))));
      u = dt + std::log(-std::expm1(-dt));
    }
    a_log_init_ = Tensor::from_vector(Shape{H}, a).to(dtype);
    dt_bias_init_ = Tensor::from_vector(Shape{C}, d).to(dtype);
  }
  a_log_ = register_parameter("A_log", a_log_init_.clone());
  dt_bias_ = register_parameter("dt_bias", dt_bias_init_.clone());
  g_a_ = linear("g_a_proj", C, D);
  g_b_ = linear("g_b_proj", D, C, /*bias=*/true);
  o_norm_ = register_module("o_norm", std::make_shared<RmsNorm>(D, dtype, kNormEps));
  c_proj_ = linear("c_proj", C, C);
  init_variant_parameters();
}

void KdaMixer::init_variant_parameters() {
  Variable a = a_log_, d = dt_bias_, n = o_norm_->weight(), b = g_b_->bias();
  a.mutable_data().copy_(a_log_init_.to(a.device()));
  d.mutable_data().copy_(dt_bias_init_.to(d.device()));
  n.mutable_data().fill_(1.0);
  b.mutable_data().zero_();
}

KdaMixer::Streams KdaMixer::streams(const Variable& x, const Tensor& history, Tensor* next_history) const {
  const int64_t C = config_.d_model, H = config_.heads, D = head_dim(), W = conv_size();
  AL_CHECK_SHAPE(x.ndim() == 3 && x.size(2) == C, "KdaMixer: x must be [B, T, ", C, "]; got x=", x.str());
  const int64_t B = x.size(0), T = x.size(1);
  // Two GEMMs, their weights stacked from the named parameters for this call (a small copy; the
  // backward splits the weight gradient back): q | k | v before the conv [3C], and the low-rank
  // inputs of the decay [D] and of the output gate [D] with beta's logit [H].
  const MatmulPrecision mp = config_.matmul_precision;
  const Variable pre =
      linear(x, concat({q_proj_->weight(), k_proj_->weight(), v_proj_->weight()}, 0), Variable(), mp);  // [B, T, 3C]
  const Variable low = linear(x, concat({f_a_->weight(), g_a_->weight(), b_proj_->weight()}, 0), Variable(), mp);
  Variable qkv;  // SiLU(conv(pre)) [B, T, 3C]
  if (W == 0) {
    qkv = silu(pre);
  } else {
    // The three depthwise convs as one over 3C channels.
    const Variable cw = concat({q_conv_->weight(), k_conv_->weight(), v_conv_->weight()}, 0);  // [3C, W]
    if (W > 1 && (history.defined() || next_history)) {
      // Decoding: the conv reads the W - 1 inputs before x; prepend them and keep the outputs of x.
      const Variable before(history.defined() ? history : Tensor::zeros(Shape{B, W - 1, 3 * C}, x.dtype(), x.device()));
      const Variable full = concat({before, pre}, 1);  // [B, W - 1 + T, 3C]
      if (next_history) *next_history = narrow(full, 1, T, W - 1).data().contiguous();
      qkv = contiguous(narrow(silu(causal_conv1d(full, cw, Variable())), 1, W - 1, T));
    } else {
      qkv = silu(causal_conv1d(pre, cw, Variable()));
    }
  }
  // Heads as views of the [B, T, 3C] buffer (one gradient buffer back, no scatter per part).
  const std::vector<Variable> parts = split_heads(qkv, 3, H);  // 3 x [B, H, T, D]
  Streams r;
  r.q = l2_normalize(parts[0], kL2Eps);
  r.k = l2_normalize(parts[1], kL2Eps);
  r.v = parts[2];
  // g = -exp(A_log[h]) softplus(f + dt_bias) per head h over its D channels; dt_bias rides on
  // f_b_proj's product as its bias, the per-head rate is expanded to the C channels (tiny).
  const Variable u = linear(narrow(low, 2, 0, D), f_b_->weight(), dt_bias_, mp);  // [B, T, C]
  const Variable rate =
      reshape(mul(reshape(neg(exp(a_log_)), Shape{H, 1}), Variable(Tensor::ones(Shape{1, D}, x.dtype(), x.device()))),
              Shape{C});
  r.g = split_heads(mul(softplus(u), rate), 1, H)[0];
  r.gate_low = narrow(low, 2, D, D);
  r.beta = permute(sigmoid(narrow(low, 2, 2 * D, H)), {0, 2, 1});  // [B, H, T]
  return r;
}

Variable KdaMixer::output(const Variable& o, const Variable& gate_low) const {
  const int64_t C = config_.d_model, H = config_.heads, D = head_dim();
  const int64_t B = o.size(0), T = o.size(2);
  const Variable n = o_norm_->forward(permute(o, {0, 2, 1, 3}));  // [B, T, H, D], per head
  const Variable z = reshape(g_b_->forward(gate_low), Shape{B, T, H, D});
  return c_proj_->forward(reshape(mul(n, sigmoid(z)), Shape{B, T, C}));
}

Variable KdaMixer::forward(const Variable& x, const AttentionMask& mask) const {
  AL_CHECK_CONFIG(mask.causal && mask.prefix == 0,
                  "kda: a recurrent mixer is causal by construction and has no bidirectional prefix; got causal = ",
                  mask.causal ? "true" : "false", ", prefix = ", mask.prefix, " for x=", x.str());
  const Streams s = streams(x);
  return output(kda_attention(s.q, s.k, s.v, s.g, s.beta).out, s.gate_low);
}

Variable KdaMixer::forward_cached(const Variable& x, KvSlot& slot, int64_t length) const {
  const int64_t C = config_.d_model, H = config_.heads, D = head_dim(), W = conv_size();
  AL_CHECK_SHAPE(x.ndim() == 3 && x.size(2) == C, "KdaMixer: x must be [B, T, ", C, "]; got x=", x.str());
  const int64_t B = x.size(0);
  AL_CHECK_SHAPE(length >= 0, "KdaMixer: length must be >= 0; got ", length);
  const bool carried = length > 0;
  if (carried) {
    AL_CHECK_SHAPE(slot.state.defined() && slot.state.shape() == (Shape{B, H, D, D}) &&
                       (W <= 1 || (slot.conv.defined() && slot.conv.shape() == (Shape{B, W - 1, 3 * C}))),
                   "KdaMixer: after ", length, " positions the slot must carry state [", B, ", ", H, ", ", D, ", ", D,
                   "] and conv [", B, ", ", W - 1, ", ", 3 * C, "] (the layer's earlier calls); got state=", slot.state,
                   ", conv=", slot.conv);
  }
  NoGradGuard no_grad;
  Tensor next_conv;
  const Streams s = streams(x, carried ? slot.conv : Tensor(), &next_conv);
  const KdaResult r = kda_attention(s.q, s.k, s.v, s.g, s.beta, carried ? Variable(slot.state) : Variable());
  slot.state = r.state.data().contiguous();
  slot.conv = next_conv;
  return output(r.out, s.gate_low);
}

AttentionDiagnostics KdaMixer::diagnose(const Variable& x) const {
  NoGradGuard no_grad;
  AttentionDiagnostics d;
  d.kind = "kda";
  d.has_sink = false;
  const Streams s = streams(x);
  d.kda_decay_mean = mean_of(exp(s.g).data());
  d.kda_beta_mean = mean_of(s.beta.data());
  return d;
}

}  // namespace attnlab
