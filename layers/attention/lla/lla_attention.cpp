// Autograd wiring of local linear attention (lla_attention.h): checks, device dispatch, the
// backward closure, the registry entry "lla" with its gradcheck samples, CUDA parity samples and
// misuses.
#include "layers/attention/lla/lla_attention.h"

#include <cmath>
#include <memory>
#include <string>

#include "autograd/op_helpers.h"
#include "autograd/ops/view/view.h"
#include "layers/attention/variant_op.h"

namespace attnlab {

namespace {
constexpr std::string_view kName = "lla_attention";

}  // namespace

void LlaAttentionOp::check(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lam,
                           const AttentionMask& mask) {
  check_attention_inputs(kName, q, k, v);
  AL_CHECK_CONFIG(mask.prefix >= 0, kName, ": mask.prefix must be >= 0; got prefix=", mask.prefix, " with q=", q,
                  ", k=", k, ", v=", v);
  AL_CHECK(lam.defined(), kName, ": lam (the ridge, [1]) is undefined; got q=", q);
  AL_CHECK_SHAPE(lam.ndim() == 1 && lam.size(0) == 1, kName,
                 ": lam (the ridge strength) must be [1], one value for every head and row; got lam=", lam,
                 ", q=", q);
  AL_CHECK_DTYPE(lam.dtype() == q.dtype(), kName, ": lam must have q's dtype; got lam=", lam, ", q=", q);
  AL_CHECK_DEVICE(lam.device() == q.device(), kName, ": lam must be on q's device; got lam=", lam, ", q=", q);
  // The ridge lam omega_i I is what makes Sigma_i positive definite (a row with fewer than Dk + 1
  // visible keys has a singular covariance), so lam must be positive. NaN fails this too.
  const double value = lam.to(Device::cpu()).to_vector<double>()[0];
  AL_CHECK_CONFIG(value > 0.0, kName, ": lam must be > 0 (the ridge lam * omega_i on the slope keeps Sigma_i ",
                  "positive definite); got lam=", value, " (", lam, "), q=", q);
}

Variable lla_attention(const Variable& q, const Variable& k, const Variable& v, const Variable& lam,
                       const AttentionMask& mask, double scale, bool flashlla_grad) {
  op::check_defined(kName, "q", q);
  op::check_defined(kName, "k", k);
  op::check_defined(kName, "v", v);
  AL_CHECK(lam.defined(), kName, ": lam (the ridge, [1]) is an undefined Variable; got q=", q.data());
  LlaAttentionOp::check(q.data(), k.data(), v.data(), lam.data(), mask);
  const double c = attention_scale(scale, q.size(3));
  const Tensor qc = unit_last_dim(q.data()), kc = unit_last_dim(k.data()), vc = unit_last_dim(v.data());
  const Tensor lc = lam.data().contiguous();
  LlaAttentionOp::Forward f =
      op::on_device(kName, qc, [&](auto dev) { return LlaAttentionOp::forward(dev, qc, kc, vc, lc, mask, c); });
  const Tensor out = f.out;
  auto saved = std::make_shared<const LlaAttentionOp::Forward>(std::move(f));
  return make_output(kName, {q, k, v, lam}, out,
                     [qc, kc, vc, lc, saved, mask, c, flashlla_grad](const Tensor& dout, const GradMask& needs) {
                       const Tensor dc = unit_last_dim(dout);
                       LlaAttentionOp::Grads g = op::on_device(kName, dc, [&](auto dev) {
                         return LlaAttentionOp::backward(dev, qc, kc, vc, lc, *saved, dc, mask, c, flashlla_grad);
                       });
                       return std::vector<Tensor>{needs[0] ? g.dq : Tensor(), needs[1] ? g.dk : Tensor(),
                                                  needs[2] ? g.dv : Tensor(), needs[3] ? g.dlam : Tensor()};
                     });
}

namespace {

// Option "flashlla_grad": "true" or "false" (default false), anything else refused.
bool flashlla_option(const AttnOpArgs& a) {
  const std::string s = a.text("flashlla_grad", "false");
  AL_CHECK_CONFIG(s == "true" || s == "false", "lla: option flashlla_grad must be true or false; got '", s, "'");
  return s == "true";
}

AttnOpResult run_spec(const AttnOpArgs& a, bool fused) {
  const Variable lam = a.extras.empty() ? Variable() : a.extras[0];
  const bool fl = flashlla_option(a);
  return AttnOpResult{.out = fused ? lla_attention(a.q, a.k, a.v, lam, a.mask, 0.0, fl)
                                   : lla_attention_reference(a.q, a.k, a.v, lam, a.mask, 0.0, fl),
                      .aux = {}};
}

AttentionOpSpec lla_spec() {
  return {
      .name = "lla",
      .description = "local linear attention: out_i = intercept of the ridge-regularised (lam omega_i, slope "
                     "only) local linear fit of v on k - q_i with weights exp(c q_i.k_j); extra lam [1]",
      .extras = {{.name = "lam", .shape = [](const AttnDims&) { return Shape{1}; }, .low = 0.5, .high = 20.0}},
      .carried = {},
      .options = {"flashlla_grad: true = FlashLLA's published backward, the ridge lam*omega treated as constant "
                  "(false)"},
      .test_options = {{}, {{"flashlla_grad", "true"}}},
      .prefix_mask = true,
      .non_causal = true,
      .cuda = true,
      .fused = [](const AttnOpArgs& a) { return run_spec(a, true); },
      .reference = [](const AttnOpArgs& a) { return run_spec(a, false); },
  };
}

AttnDims dims(int64_t B, int64_t H, int64_t T, int64_t S, int64_t Dk, int64_t Dv) {
  AttnDims d;
  d.B = B, d.H = H, d.T = T, d.S = S, d.Dk = Dk, d.Dv = Dv;
  return d;
}

}  // namespace

// Gradcheck samples, exact gradient only (the FlashLLA mode is not the gradient of the forward:
// the generic suite compares it with its stop-gradient reference instead). lam is drawn from
// [0.5, 20]: small lam makes the solve matter, large lam approaches softmax.
std::vector<OpSample> LlaAttentionOp::samples() {
  const AttentionOpSpec spec = lla_spec();
  const AttentionMask causal{true, 0}, full{false, 0};
  std::vector<OpSample> s = {
      attention_op_sample(spec, dims(2, 2, 4, 4, 4, 4), causal, 601),
      attention_op_sample(spec, dims(1, 2, 3, 5, 4, 4), causal, 611),
      attention_op_sample(spec, dims(1, 2, 3, 5, 4, 3), full, 621),
      attention_op_sample(spec, dims(1, 2, 5, 5, 3, 4), AttentionMask{true, 2}, 631),
      attention_op_sample(spec, dims(1, 2, 3, 5, 4, 4), AttentionMask{true, 4}, 641),
      attention_op_sample(spec, dims(1, 3, 6, 6, 2, 2), causal, 651),
  };
  // Small lam (0.05): the regression, not the softmax part, dominates.
  OpSample small = attention_op_sample(spec, dims(1, 2, 5, 5, 3, 3), causal, 661);
  small.inputs[3] = Tensor::full(Shape{1}, 0.05, DType::f64);
  small.label += " lam=0.05";
  s.push_back(std::move(small));
  // An explicit scale, through the Variable-level function.
  OpSample scaled = attention_op_sample(spec, dims(1, 2, 4, 4, 4, 4), causal, 671);
  scaled.label += " scale=0.7";
  scaled.run = [](const std::vector<Variable>& in) {
    return std::vector<Variable>{lla_attention(in[0], in[1], in[2], in[3], AttentionMask{}, 0.7)};
  };
  s.push_back(std::move(scaled));
  return s;
}

std::vector<OpMisuse> LlaAttentionOp::misuses() {
  auto t = [](const Shape& s, DType dt = DType::f32) { return Variable(Tensor::ones(s, dt)); };
  auto lam = [](double x, DType dt = DType::f32) { return Variable(Tensor::full(Shape{1}, x, dt)); };
  const Shape qs{1, 2, 4, 4};
  return {
      {"k with Dk=3, q with Dk=4", [=] { lla_attention(t(qs), t(Shape{1, 2, 4, 3}), t(qs), lam(1)); }},
      {"3-D q", [=] { lla_attention(t(Shape{2, 4, 4}), t(qs), t(qs), lam(1)); }},
      {"S=3 < T=5", [=] { lla_attention(t(Shape{1, 2, 5, 4}), t(Shape{1, 2, 3, 4}), t(Shape{1, 2, 3, 4}), lam(1)); }},
      {"lam [2]", [=] { lla_attention(t(qs), t(qs), t(qs), t(Shape{2})); }},
      {"lam [1, 1]", [=] { lla_attention(t(qs), t(qs), t(qs), t(Shape{1, 1})); }},
      {"lam scalar []", [=] { lla_attention(t(qs), t(qs), t(qs), Variable(Tensor::scalar(1.0))); }},
      {"lam f64, q f32", [=] { lla_attention(t(qs), t(qs), t(qs), lam(1, DType::f64)); }},
      {"lam = 0", [=] { lla_attention(t(qs), t(qs), t(qs), lam(0)); }},
      {"lam = -1", [=] { lla_attention(t(qs), t(qs), t(qs), lam(-1)); }},
      {"lam = NaN", [=] { lla_attention(t(qs), t(qs), t(qs), lam(std::nan(""))); }},
      {"undefined lam", [=] { lla_attention(t(qs), t(qs), t(qs), Variable()); }},
      {"q f32, k and v f64", [=] { lla_attention(t(qs), t(qs, DType::f64), t(qs, DType::f64), lam(1)); }},
      {"i32 inputs",
       [=] { lla_attention(t(qs, DType::i32), t(qs, DType::i32), t(qs, DType::i32), t(Shape{1}, DType::i32)); }},
      {"negative prefix", [=] { lla_attention(t(qs), t(qs), t(qs), lam(1), AttentionMask{true, -1}); }},
  };
}

// Larger shapes for the CUDA parity test (each under ~30k elements: the emulator is slow): several
// query and key tiles with ragged edges, T != S, a prefix, not causal, Dk != Dv, both gradient modes,
// and token-major (strided) inputs.
std::vector<OpSample> LlaAttentionOp::parity_samples() {
  const AttentionOpSpec spec = lla_spec();
  const AttentionMask causal{true, 0}, full{false, 0};
  std::vector<OpSample> s = {
      attention_op_sample(spec, dims(2, 2, 70, 70, 16, 16), causal, 701),
      attention_op_sample(spec, dims(1, 2, 130, 130, 8, 8), causal, 711),
      attention_op_sample(spec, dims(1, 2, 5, 37, 32, 24), causal, 721),
      attention_op_sample(spec, dims(1, 2, 45, 45, 16, 16), AttentionMask{true, 20}, 731),
      attention_op_sample(spec, dims(1, 2, 33, 50, 16, 40), full, 741),
      attention_op_sample(spec, dims(1, 1, 40, 40, 64, 64), causal, 751),
      attention_op_sample(spec, dims(1, 2, 70, 70, 16, 16), causal, 761, {{"flashlla_grad", "true"}}),
  };
  OpSample tm;
  tm.label = "prefix=30 T=40 S=67 Dk=Dv=16, q k v token-major views";
  tm.inputs = {sample_randn(Shape{1, 40, 2, 16}, 771), sample_randn(Shape{1, 67, 2, 16}, 772),
               sample_randn(Shape{1, 67, 2, 16}, 773), sample_uniform(Shape{1}, 774, 0.5, 20.0)};
  tm.grad_inputs = {true, true, true, true};
  tm.run = [](const std::vector<Variable>& in) {
    const std::vector<int64_t> bhtd{0, 2, 1, 3};
    return std::vector<Variable>{lla_attention(permute(in[0], bhtd), permute(in[1], bhtd), permute(in[2], bhtd),
                                               in[3], AttentionMask{true, 30})};
  };
  s.push_back(std::move(tm));
  return s;
}

void register_attention_lla(OpRegistry& ops, AttentionOpRegistry& attention) {
  AttentionOpSpec spec = lla_spec();
  ops.add(attention_op_info(spec, LlaAttentionOp::samples(), LlaAttentionOp::parity_samples(),
                            LlaAttentionOp::misuses()));
  attention.add(std::move(spec));
}

}  // namespace attnlab
