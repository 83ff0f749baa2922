// Autograd wiring of the fused affine-scaled attention, the abar EMA, samples, misuses and the
// registration of the "affine" attention op.
#include "layers/attention/affine/affine_attention.h"

#include <cmath>
#include <cstdio>
#include <string>
#include <utility>

#include "autograd/grad_mode.h"
#include "autograd/op_helpers.h"
#include "autograd/ops.h"
#include "layers/attention/variant_op.h"

namespace attnlab {

namespace {
constexpr std::string_view kName = "affine_attention";

Tensor packed(const Tensor& t) { return t.defined() ? t.contiguous() : t; }
}  // namespace

void AffineAttentionOp::check(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& x, const Tensor& w_a,
                              const Tensor& c_a, const Tensor& abar, const AttentionMask& mask) {
  check_attention_inputs(kName, q, k, v);
  auto got = [&] { return detail::concat("; got q=", q, ", x=", x, ", w_a=", w_a, ", c_a=", c_a, ", abar=", abar); };
  AL_CHECK_CONFIG(mask.prefix >= 0, kName, ": mask.prefix must be >= 0; got prefix=", mask.prefix, " with q=", q);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2);
  AL_CHECK_SHAPE(x.defined() && x.ndim() == 3 && x.size(0) == B && x.size(1) == T, kName,
                 ": x must be [B, T, Dm] with q's B and T (the query tokens' hidden states)", got());
  AL_CHECK_SHAPE(w_a.defined() && w_a.ndim() == 2 && w_a.size(0) == H && w_a.size(1) == x.size(2), kName,
                 ": w_a must be [H, Dm] with q's H and x's Dm", got());
  AL_CHECK_SHAPE(!c_a.defined() || (c_a.ndim() == 1 && c_a.size(0) == H), kName, ": c_a must be [H] (or left out)",
                 got());
  AL_CHECK_SHAPE(abar.defined() && abar.ndim() == 1 && abar.size(0) == H, kName, ": abar must be [H]", got());
  for (const Tensor* t : {&x, &w_a, &c_a, &abar}) {
    if (!t->defined()) continue;
    AL_CHECK_DTYPE(t->dtype() == q.dtype(), kName, ": x, w_a, c_a and abar must have q's dtype", got());
    AL_CHECK_DEVICE(t->device() == q.device(), kName, ": x, w_a, c_a and abar must be on q's device", got());
  }
}

AffineAttentionResult affine_attention(const Variable& q, const Variable& k, const Variable& v, const Variable& x,
                                       const Variable& w_a, const Variable& c_a, const Tensor& abar,
                                       const AttentionMask& mask, const AffineOptions& options, double scale) {
  op::check_defined(kName, "q", q);
  op::check_defined(kName, "k", k);
  op::check_defined(kName, "v", v);
  op::check_defined(kName, "x", x);
  op::check_defined(kName, "w_a", w_a);
  const bool has_c = c_a.defined();
  AffineAttentionOp::check(q.data(), k.data(), v.data(), x.data(), w_a.data(), has_c ? c_a.data() : Tensor(), abar,
                           mask);
  const double c = attention_scale(scale, q.size(3));
  const Tensor qc = unit_last_dim(q.data()), kc = unit_last_dim(k.data()), vc = unit_last_dim(v.data());
  const Tensor xc = x.data().contiguous(), wc = w_a.data().contiguous();
  const Tensor cc = has_c ? packed(c_a.data()) : Tensor(), ac = abar.contiguous();
  AffineAttentionOp::Forward f = op::on_device(kName, qc, [&](auto dev) {
    return AffineAttentionOp::forward(dev, qc, kc, vc, xc, wc, cc, ac, mask, options, c);
  });
  std::vector<Variable> inputs{q, k, v, x, w_a};
  if (has_c) inputs.push_back(c_a);
  AffineAttentionResult r;
  r.alpha = f.saved.alpha.clone();  // the caller's copy: the saved one must stay as backward needs it
  r.out = make_output(
      kName, inputs, f.out,
      [qc, kc, vc, xc, wc, saved = f.saved, mask, options, c, has_c](const Tensor& dout, const GradMask& needs) {
        AffineAttentionOp::Needs need;
        need.qkv = needs[0] || needs[1] || needs[2];
        need.x = needs[3];
        need.w_a = needs[4];
        need.c_a = has_c && needs[5];
        const Tensor dc = unit_last_dim(dout);
        AffineAttentionOp::Grads g = op::on_device(kName, dc, [&](auto dev) {
          return AffineAttentionOp::backward(dev, qc, kc, vc, xc, wc, saved, dc, mask, options, c, need);
        });
        std::vector<Tensor> grads{needs[0] ? g.dq : Tensor(), needs[1] ? g.dk : Tensor(), needs[2] ? g.dv : Tensor(),
                                  g.dx, g.dw_a};
        if (has_c) grads.push_back(g.dc_a);
        return grads;
      });
  return r;
}

Tensor affine_abar_update(const Tensor& abar, const Tensor& alpha, double rho) {
  constexpr std::string_view op = "affine_abar_update";
  AL_CHECK_SHAPE(
      abar.defined() && alpha.defined() && abar.ndim() == 1 && alpha.ndim() == 3 && alpha.size(1) == abar.size(0), op,
      ": abar must be [H] and alpha [B, H, T] with the same H; got abar=", abar, ", alpha=", alpha);
  AL_CHECK_DTYPE((abar.dtype() == DType::f32 || abar.dtype() == DType::f64) && alpha.dtype() == abar.dtype(), op,
                 ": abar and alpha must share one dtype, f32 or f64; got abar=", abar, ", alpha=", alpha);
  AL_CHECK_DEVICE(alpha.device() == abar.device(), op, ": abar and alpha must share a device; got abar=", abar,
                  ", alpha=", alpha);
  AL_CHECK_CONFIG(rho >= 0.0 && rho <= 1.0, op, ": rho must be in [0, 1]; got rho=", rho, " with abar=", abar);
  // No (b, t) to average over: nothing was seen, the buffer stays as it was.
  if (alpha.size(0) * alpha.size(2) == 0) return abar.clone();
  NoGradGuard no_grad;
  const Variable m = mean(Variable(alpha), {0, 2});  // [H]
  return add(mul_scalar(Variable(abar), rho), mul_scalar(m, 1.0 - rho)).data();
}

// ---- samples ------------------------------------------------------------------------------------

namespace {

// One sample's setting. q, k, v ~ N(0, 1); x, w_a, c_a, abar uniform in the ranges the "affine"
// spec registers ([-1, 1], [-3, 3], [-1, 1], [0.2, 0.8]).
struct Case {
  std::string label;
  AttnDims dims;
  AttentionMask mask;
  AffineOptions options;
  bool bias = true;          // pass c_a
  double scale = 0.0;        // attention scale (0: 1 / sqrt(Dk))
  bool token_major = false;  // q, k, v given as [B, T, H, D] and permuted to [B, H, T, D] views
};

// Central differences across a kink of the linear clip (z = +-5) do not match the one-sided slope
// the op uses, so every sample's z stays at least this far from both kinks: the gradcheck's step
// (1e-6 on x or w_a) moves z by a few 1e-6 at most, and f32 CUDA vs CPU differ by far less. The
// seed is advanced until that holds; for the linear clip it must also put some z inside (-5, 5)
// and some beyond, so both slopes are exercised.
constexpr double kKinkMargin = 1e-3;

bool gate_ok(const Tensor& x, const Tensor& w, const Tensor& c, bool bias, bool want_both) {
  const int64_t B = x.size(0), T = x.size(1), Dm = x.size(2), H = w.size(0);
  const std::vector<double> xs = x.to_vector<double>(), ws = w.to_vector<double>(), cs = c.to_vector<double>();
  bool inside = false, outside = false;
  for (int64_t r = 0; r < B * T; ++r)
    for (int64_t h = 0; h < H; ++h) {
      double z = bias ? cs[static_cast<size_t>(h)] : 0.0;
      for (int64_t m = 0; m < Dm; ++m) z += xs[static_cast<size_t>(r * Dm + m)] * ws[static_cast<size_t>(h * Dm + m)];
      if (std::abs(std::abs(z) - 5.0) < kKinkMargin) return false;
      (std::abs(z) < 5.0 ? inside : outside) = true;
    }
  return !want_both || (inside && outside);
}

OpSample make_sample(const Case& cs, uint64_t seed) {
  const AttnDims& d = cs.dims;
  Tensor x, w, c;
  bool found = false;
  for (int attempt = 0; attempt < 500 && !found; ++attempt, seed += 97) {
    x = sample_uniform(Shape{d.B, d.T, d.Dm}, seed + 3, -1.0, 1.0);
    w = sample_uniform(Shape{d.H, d.Dm}, seed + 4, -3.0, 3.0);
    c = sample_uniform(Shape{d.H}, seed + 5, -1.0, 1.0);
    found = gate_ok(x, w, c, cs.bias, cs.options.phi == AffinePhi::linear_clip);
  }
  AL_ASSERT(found, kName, ": no seed keeps the sample '", cs.label, "' away from the clip's kinks");
  OpSample s;
  s.label = cs.label;
  const Shape qs = cs.token_major ? Shape{d.B, d.T, d.H, d.Dk} : Shape{d.B, d.H, d.T, d.Dk};
  const Shape ks = cs.token_major ? Shape{d.B, d.S, d.H, d.Dk} : Shape{d.B, d.H, d.S, d.Dk};
  const Shape vs = cs.token_major ? Shape{d.B, d.S, d.H, d.Dv} : Shape{d.B, d.H, d.S, d.Dv};
  s.inputs = {sample_randn(qs, seed), sample_randn(ks, seed + 1), sample_randn(vs, seed + 2), x, w};
  if (cs.bias) s.inputs.push_back(c);
  s.inputs.push_back(sample_uniform(Shape{d.H}, seed + 6, 0.2, 0.8));  // abar
  s.grad_inputs = std::vector<bool>(s.inputs.size(), true);
  s.grad_inputs.back() = false;
  s.run = [cs](const std::vector<Variable>& in) {
    auto heads = [&](const Variable& t) { return cs.token_major ? permute(t, {0, 2, 1, 3}) : t; };
    const Variable c_a = cs.bias ? in[5] : Variable();
    return std::vector<Variable>{affine_attention(heads(in[0]), heads(in[1]), heads(in[2]), in[3], in[4], c_a,
                                                  in.back().data(), cs.mask, cs.options, cs.scale)
                                     .out};
  };
  return s;
}

AttnDims dims(int64_t B, int64_t H, int64_t T, int64_t S, int64_t Dk, int64_t Dv, int64_t Dm) {
  AttnDims d;
  d.B = B, d.H = H, d.T = T, d.S = S, d.Dk = Dk, d.Dv = Dv, d.Dm = Dm;
  return d;
}

constexpr AffineOptions kSigmoid{AffinePhi::sigmoid, AffineBiasNorm::visible};
constexpr AffineOptions kFull{AffinePhi::linear_clip, AffineBiasNorm::full};
constexpr AffineOptions kSigmoidFull{AffinePhi::sigmoid, AffineBiasNorm::full};

}  // namespace

std::vector<OpSample> AffineAttentionOp::samples() {
  const AttentionMask causal{true, 0}, full{false, 0}, prefix{true, 2};
  const std::vector<std::pair<Case, uint64_t>> cases = {
      {{"causal B=2 H=2 T=S=4 D=4 Dm=5", dims(2, 2, 4, 4, 4, 4, 5), causal, {}}, 701},
      {{"causal T=3 S=5 (offset) Dk=4 Dv=3 sigmoid", dims(1, 2, 3, 5, 4, 3, 6), causal, kSigmoid}, 711},
      {{"not causal T=3 S=5 bias_norm=full", dims(1, 2, 3, 5, 4, 4, 5), full, kFull}, 721},
      {{"prefix=2 T=S=5", dims(1, 2, 5, 5, 4, 4, 4), prefix, {}}, 731},
      {{"prefix=2 T=3 S=5 (offset) sigmoid, bias_norm=full", dims(1, 2, 3, 5, 4, 4, 5), prefix, kSigmoidFull}, 741},
      {{"causal T=S=5 no c_a, scale=0.7", dims(2, 2, 5, 5, 4, 4, 5), causal, {}, false, 0.7}, 751},
  };
  std::vector<OpSample> out;
  for (const auto& [c, seed] : cases) out.push_back(make_sample(c, seed));
  return out;
}

// Several query / key tiles and chunks of 64 with ragged ends, T != S, a prefix, no mask,
// both phis and norms, no c_a, and token-major q, k, v views; each under ~30k elements.
std::vector<OpSample> AffineAttentionOp::parity_samples() {
  const AttentionMask causal{true, 0}, full{false, 0};
  const std::vector<std::pair<Case, uint64_t>> cases = {
      {{"causal B=2 H=3 T=S=70 D=24 Dm=20", dims(2, 3, 70, 70, 24, 24, 20), causal, {}}, 801},
      {{"causal B=1 H=2 T=S=150 D=16 Dm=12 sigmoid", dims(1, 2, 150, 150, 16, 16, 12), causal, kSigmoid}, 811},
      {{"causal T=5 S=140 (KV-cache offset) Dk=40 Dv=24 full", dims(2, 2, 5, 140, 40, 24, 16), causal, kFull}, 821},
      {{"prefix=70 T=S=100 D=24", dims(1, 2, 100, 100, 24, 24, 16), AttentionMask{true, 70}, {}}, 831},
      {{"not causal T=33 S=80 D=72 no c_a", dims(1, 2, 33, 80, 72, 72, 40), full, {}, false}, 841},
      {{"prefix=30 T=40 S=67 Dk=Dv=40 token-major, sigmoid full", dims(1, 2, 40, 67, 40, 40, 8),
        AttentionMask{true, 30}, kSigmoidFull, true, 0.0, true},
       851},
  };
  std::vector<OpSample> out;
  for (const auto& [c, seed] : cases) out.push_back(make_sample(c, seed));
  return out;
}

std::vector<OpMisuse> AffineAttentionOp::misuses() {
  auto t = [](const Shape& s, DType dt = DType::f32) { return Variable(Tensor::ones(s, dt)); };
  auto abar = [](int64_t H, DType dt = DType::f32) { return Tensor::full(Shape{H}, 0.5, dt); };
  // q, k, v [1, 2, 4, 4]; x [1, 4, 6]; w_a [2, 6]; c_a [2]; abar [2] unless a case changes one.
  const Shape qs{1, 2, 4, 4};
  return {
      {"x with T=3, q with T=4",
       [=] {
         affine_attention(t(qs), t(qs), t(qs), t(Shape{1, 3, 6}), t(Shape{2, 6}), t(Shape{2}), abar(2));
       }},
      {"2-D x",
       [=] {
         affine_attention(t(qs), t(qs), t(qs), t(Shape{4, 6}), t(Shape{2, 6}), t(Shape{2}), abar(2));
       }},
      {"w_a [2, 5] for x with Dm=6",
       [=] {
         affine_attention(t(qs), t(qs), t(qs), t(Shape{1, 4, 6}), t(Shape{2, 5}), t(Shape{2}), abar(2));
       }},
      {"w_a [3, 6] for H=2",
       [=] {
         affine_attention(t(qs), t(qs), t(qs), t(Shape{1, 4, 6}), t(Shape{3, 6}), t(Shape{2}), abar(2));
       }},
      {"c_a [3] for H=2",
       [=] {
         affine_attention(t(qs), t(qs), t(qs), t(Shape{1, 4, 6}), t(Shape{2, 6}), t(Shape{3}), abar(2));
       }},
      {"abar [3] for H=2",
       [=] {
         affine_attention(t(qs), t(qs), t(qs), t(Shape{1, 4, 6}), t(Shape{2, 6}), t(Shape{2}), abar(3));
       }},
      {"abar undefined",
       [=] {
         affine_attention(t(qs), t(qs), t(qs), t(Shape{1, 4, 6}), t(Shape{2, 6}), t(Shape{2}), Tensor());
       }},
      {"x f64, q f32",
       [=] {
         affine_attention(t(qs), t(qs), t(qs), t(Shape{1, 4, 6}, DType::f64), t(Shape{2, 6}), t(Shape{2}), abar(2));
       }},
      {"abar f64, q f32",
       [=] {
         affine_attention(t(qs), t(qs), t(qs), t(Shape{1, 4, 6}), t(Shape{2, 6}), t(Shape{2}), abar(2, DType::f64));
       }},
      {"k with Dk=3, q with Dk=4",
       [=] {
         affine_attention(t(qs), t(Shape{1, 2, 4, 3}), t(qs), t(Shape{1, 4, 6}), t(Shape{2, 6}), t(Shape{2}), abar(2));
       }},
      {"S=3 < T=4",
       [=] {
         affine_attention(t(qs), t(Shape{1, 2, 3, 4}), t(Shape{1, 2, 3, 4}), t(Shape{1, 4, 6}), t(Shape{2, 6}),
                          t(Shape{2}), abar(2));
       }},
      {"negative prefix",
       [=] {
         affine_attention(t(qs), t(qs), t(qs), t(Shape{1, 4, 6}), t(Shape{2, 6}), t(Shape{2}), abar(2),
                          AttentionMask{true, -1});
       }},
  };
}

// ---- registration -------------------------------------------------------------------------------

namespace {

AffineOptions parse_options(const AttnOpArgs& a) {
  AffineOptions o;
  const std::string phi = a.text("phi", "linear_clip"), norm = a.text("bias_norm", "visible");
  AL_CHECK_CONFIG(phi == "linear_clip" || phi == "sigmoid", "affine: option phi must be linear_clip or sigmoid; got '",
                  phi, "'");
  AL_CHECK_CONFIG(norm == "visible" || norm == "full", "affine: option bias_norm must be visible or full; got '", norm,
                  "'");
  o.phi = phi == "sigmoid" ? AffinePhi::sigmoid : AffinePhi::linear_clip;
  o.bias_norm = norm == "full" ? AffineBiasNorm::full : AffineBiasNorm::visible;
  return o;
}

// extras: x, w_a, c_a, abar (the spec's order); c_a may be left out.
const Variable& extra_at(const AttnOpArgs& a, size_t i) {
  static const Variable kAbsent;
  return i < a.extras.size() ? a.extras[i] : kAbsent;
}

template <typename Fn>
AttnOpResult run_affine(const AttnOpArgs& a, Fn&& fn) {
  const AffineOptions o = parse_options(a);
  const double training = a.number("affine", "training", 0.0), rho = a.number("affine", "rho", 0.9);
  AL_CHECK_CONFIG(training == 0.0 || training == 1.0, "affine: option training must be 0 or 1; got ", training);
  const Variable& abar = extra_at(a, 3);
  AL_CHECK_CONFIG(abar.defined(), "affine: the input abar [H] is required; got q=", a.q.data());
  const AffineAttentionResult r =
      fn(a.q, a.k, a.v, extra_at(a, 0), extra_at(a, 1), extra_at(a, 2), abar.data(), a.mask, o, 0.0);
  AttnOpResult res;
  res.out = r.out;
  if (training == 1.0) res.aux["abar_next"] = affine_abar_update(abar.data(), r.alpha, rho);
  return res;
}

}  // namespace

void register_attention_affine(OpRegistry& ops, AttentionOpRegistry& attention) {
  AttentionOpSpec spec;
  spec.name = "affine";
  spec.description =
      "alpha O^sm + beta C: alpha = phi(x w_a^T + c_a) per query, beta = (abar - alpha) / n on the visible keys, "
      "C = their sum of v; extras x [B, T, Dm], w_a [H, Dm], c_a [H], abar [H] (buffer)";
  auto tokens = [](const AttnDims& d) { return Shape{d.B, d.T, d.Dm}; };
  auto per_head_row = [](const AttnDims& d) { return Shape{d.H, d.Dm}; };
  auto per_head = [](const AttnDims& d) { return Shape{d.H}; };
  spec.extras = {
      {.name = "x", .shape = tokens, .differentiable = true, .query_axis = 1, .low = -1.0, .high = 1.0},
      // [-3, 3] so that alpha spans the clip's kinks and its interior.
      {.name = "w_a", .shape = per_head_row, .differentiable = true, .low = -3.0, .high = 3.0},
      {.name = "c_a", .shape = per_head, .differentiable = true, .low = -1.0, .high = 1.0, .optional = true},
      {.name = "abar", .shape = per_head, .differentiable = false, .low = 0.2, .high = 0.8},
  };
  spec.options = {"phi: linear_clip|sigmoid (linear_clip)", "bias_norm: visible|full (visible)",
                  "training: 1 also returns aux abar_next = the EMA update (0)", "rho: EMA factor (0.9)"};
  spec.test_options = {{}, {{"phi", "sigmoid"}}, {{"bias_norm", "full"}}};
  spec.prefix_mask = true;
  spec.non_causal = true;
  spec.cuda = true;
  spec.fused = [](const AttnOpArgs& a) {
    return run_affine(a, [](auto&&... args) { return affine_attention(args...); });
  };
  spec.reference = [](const AttnOpArgs& a) {
    return run_affine(a, [](auto&&... args) { return affine_attention_reference(args...); });
  };
  ops.add(attention_op_info(spec, AffineAttentionOp::samples(), AffineAttentionOp::parity_samples(),
                            AffineAttentionOp::misuses()));
  attention.add(std::move(spec));
}

}  // namespace attnlab
