// Autograd wiring of the fused InfSA attention, its samples, misuses and registration.
#include "layers/attention/infsa/infsa_attention.h"

#include <memory>

#include "autograd/op_helpers.h"
#include "autograd/ops/view/view.h"
#include "layers/attention/variant_op.h"

namespace attnlab {

namespace {
constexpr std::string_view kName = "infsa_attention";

}  // namespace

void InfsaAttentionOp::check(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& theta,
                             const AttentionMask& mask, const Tensor& r0) {
  check_attention_inputs(kName, q, k, v);
  AL_CHECK_CONFIG(mask.prefix >= 0, kName, ": mask.prefix must be >= 0; got prefix=", mask.prefix, " with q=", q,
                  ", k=", k, ", v=", v);
  const int64_t B = q.size(0), H = q.size(1);
  AL_CHECK(theta.defined(), kName, ": theta [H] is undefined; got q=", q);
  AL_CHECK_SHAPE(theta.ndim() == 1 && theta.size(0) == H, kName, ": theta must be [H] with H = ", H,
                 " (one gate logit per head); got theta=", theta, ", q=", q);
  AL_CHECK_DTYPE(theta.dtype() == q.dtype(), kName, ": theta must have q's dtype; got theta=", theta, ", q=", q);
  AL_CHECK_DEVICE(theta.device() == q.device(), kName, ": theta must be on q's device; got theta=", theta, ", q=", q);
  if (!r0.defined()) return;
  AL_CHECK_SHAPE(r0.ndim() == 2 && r0.size(0) == B && r0.size(1) == H, kName,
                 ": r0 (the energy carried from earlier rows) must be [B, H]; got r0=", r0, ", q=", q);
  AL_CHECK_DTYPE(r0.dtype() == q.dtype(), kName, ": r0 must have q's dtype; got r0=", r0, ", q=", q);
  AL_CHECK_DEVICE(r0.device() == q.device(), kName, ": r0 must be on q's device; got r0=", r0, ", q=", q);
}

InfsaResult infsa_attention(const Variable& q, const Variable& k, const Variable& v, const Variable& theta,
                            const AttentionMask& mask, double scale, const Tensor& r0) {
  op::check_defined(kName, "q", q);
  op::check_defined(kName, "k", k);
  op::check_defined(kName, "v", v);
  AL_CHECK(theta.defined(), kName, ": theta (one gate logit per head, [H]) is an undefined Variable; got q=", q.data());
  InfsaAttentionOp::check(q.data(), k.data(), v.data(), theta.data(), mask, r0);
  const double c = attention_scale(scale, q.size(3));
  const Tensor qc = unit_last_dim(q.data()), kc = unit_last_dim(k.data()), vc = unit_last_dim(v.data());
  const Tensor th = theta.data().contiguous();
  const Tensor r0c = r0.defined() ? r0.contiguous() : Tensor();
  InfsaAttentionOp::Forward f = op::on_device(
      kName, qc, [&](auto dev) { return InfsaAttentionOp::forward(dev, qc, kc, vc, th, mask, c, r0c); });
  Variable out = make_output(
      kName, {q, k, v, theta}, f.out,
      [qc, kc, vc, th, out = f.out, F = f.F, mask, c](const Tensor& dout, const GradMask& needs) {
        const Tensor dc = unit_last_dim(dout);
        InfsaAttentionOp::Grads g = op::on_device(
            kName, dc, [&](auto dev) { return InfsaAttentionOp::backward(dev, qc, kc, vc, th, out, F, dc, mask, c); });
        return std::vector<Tensor>{needs[0] ? g.dq : Tensor(), needs[1] ? g.dk : Tensor(),
                                   needs[2] ? g.dv : Tensor(), needs[3] ? g.dtheta : Tensor()};
      });
  return {out, f.r};
}

namespace {

AttnOpResult run_spec(const AttnOpArgs& a, bool fused) {
  const Variable theta = a.extras.empty() ? Variable() : a.extras[0];
  const Tensor r0 = a.extras.size() > 1 && a.extras[1].defined() ? a.extras[1].data() : Tensor();
  const InfsaResult r = fused ? infsa_attention(a.q, a.k, a.v, theta, a.mask, 0.0, r0)
                              : infsa_attention_reference(a.q, a.k, a.v, theta, a.mask, 0.0, r0);
  return AttnOpResult{.out = r.out, .aux = {{"r", r.r}}};
}

AttentionOpSpec infsa_spec() {
  return {
      .name = "infsa",
      .description = "gamma_h relu(c q k^T) v / sqrt(R_i + eps^2), R_i = r0 + prefix sum of the visible rows' "
                     "energies sum_j relu(c q k^T)^2; extras theta [H] (gamma = sigmoid(theta)), r0 [B, H]",
      .extras = {{.name = "theta", .shape = [](const AttnDims& d) { return Shape{d.H}; }, .low = 0.5, .high = 3.0},
                 {.name = "r0",
                  .shape = [](const AttnDims& d) { return Shape{d.B, d.H}; },
                  .differentiable = false,
                  .low = 0.0,
                  .high = 4.0,
                  .optional = true}},
      .carried = {{"r0", "r"}},
      .prefix_mask = true,
      .non_causal = true,
      .cuda = true,
      .fused = [](const AttnOpArgs& a) { return run_spec(a, true); },
      .reference = [](const AttnOpArgs& a) { return run_spec(a, false); },
  };
}

// A sample without r0 (the op's "nothing before position 0" default).
OpSample without_r0(OpSample s) {
  s.inputs.pop_back();
  s.grad_inputs.pop_back();
  s.label += " no r0";
  return s;
}

// The sample's call with the carried energy r as a second output (no gradient), so the CUDA
// parity test compares it too.
OpSample with_r(OpSample s, AttentionMask mask) {
  s.run = [mask](const std::vector<Variable>& in) {
    const InfsaResult r =
        infsa_attention(in[0], in[1], in[2], in[3], mask, 0.0, in.size() > 4 ? in[4].data() : Tensor());
    return std::vector<Variable>{r.out, Variable(r.r)};
  };
  return s;
}

AttnDims dims(int64_t B, int64_t H, int64_t T, int64_t S, int64_t Dk, int64_t Dv) {
  AttnDims d;
  d.B = B, d.H = H, d.T = T, d.S = S, d.Dk = Dk, d.Dv = Dv;
  return d;
}

}  // namespace

// Central differences step the inputs by 1e-6, so a score within ~1e-5 of relu's kink at 0 would
// make the numeric gradient meaningless there. These seeds give every score |c <q, k>| > 1e-3,
// masked or not (tests/layers/variants/infsa_test.cpp, GradcheckSamplesStayClearOfTheReluKink,
// checks it).
std::vector<OpSample> InfsaAttentionOp::samples() {
  const AttentionOpSpec spec = infsa_spec();
  const AttentionMask causal{true, 0}, full{false, 0};
  std::vector<OpSample> s = {
      attention_op_sample(spec, dims(2, 2, 4, 4, 4, 4), causal, 301),
      attention_op_sample(spec, dims(1, 2, 3, 5, 4, 4), causal, 311),
      attention_op_sample(spec, dims(1, 2, 3, 5, 4, 4), full, 321),
      attention_op_sample(spec, dims(1, 2, 5, 5, 4, 4), AttentionMask{true, 2}, 331),
      attention_op_sample(spec, dims(1, 2, 3, 5, 4, 4), AttentionMask{true, 4}, 341),
      attention_op_sample(spec, dims(2, 2, 4, 4, 4, 3), causal, 351),
      without_r0(attention_op_sample(spec, dims(1, 3, 6, 6, 4, 2), causal, 361)),
  };
  // An explicit scale, through the Variable-level function.
  OpSample scaled = attention_op_sample(spec, dims(1, 2, 4, 4, 4, 4), causal, 371);
  scaled.label += " scale=0.7";
  scaled.run = [](const std::vector<Variable>& in) {
    return std::vector<Variable>{infsa_attention(in[0], in[1], in[2], in[3], AttentionMask{}, 0.7, in[4].data()).out};
  };
  s.push_back(std::move(scaled));
  return s;
}

std::vector<OpMisuse> InfsaAttentionOp::misuses() {
  auto t = [](const Shape& s, DType dt = DType::f32) { return Variable(Tensor::ones(s, dt)); };
  const Shape qs{1, 2, 4, 4};
  return {
      {"k with Dk=3, q with Dk=4", [=] { infsa_attention(t(qs), t(Shape{1, 2, 4, 3}), t(qs), t(Shape{2})); }},
      {"3-D q", [=] { infsa_attention(t(Shape{2, 4, 4}), t(qs), t(qs), t(Shape{2})); }},
      {"S=3 < T=5", [=] { infsa_attention(t(Shape{1, 2, 5, 4}), t(Shape{1, 2, 3, 4}), t(Shape{1, 2, 3, 4}), t(Shape{2})); }},
      {"theta [3] for H=2", [=] { infsa_attention(t(qs), t(qs), t(qs), t(Shape{3})); }},
      {"theta [1, 2]", [=] { infsa_attention(t(qs), t(qs), t(qs), t(Shape{1, 2})); }},
      {"theta f64, q f32", [=] { infsa_attention(t(qs), t(qs), t(qs), t(Shape{2}, DType::f64)); }},
      {"undefined theta", [=] { infsa_attention(t(qs), t(qs), t(qs), Variable()); }},
      {"r0 [2] for B=1, H=2",
       [=] { infsa_attention(t(qs), t(qs), t(qs), t(Shape{2}), AttentionMask{}, 0.0, Tensor::zeros(Shape{2})); }},
      {"r0 [2, 2] for B=1",
       [=] { infsa_attention(t(qs), t(qs), t(qs), t(Shape{2}), AttentionMask{}, 0.0, Tensor::zeros(Shape{2, 2})); }},
      {"r0 f64, q f32",
       [=] {
         infsa_attention(t(qs), t(qs), t(qs), t(Shape{2}), AttentionMask{}, 0.0,
                         Tensor::zeros(Shape{1, 2}, DType::f64));
       }},
      {"q f32, k and v f64",
       [=] { infsa_attention(t(qs), t(qs, DType::f64), t(qs, DType::f64), t(Shape{2})); }},
      {"i32 inputs",
       [=] { infsa_attention(t(qs, DType::i32), t(qs, DType::i32), t(qs, DType::i32), t(Shape{2}, DType::i32)); }},
      {"negative prefix", [=] { infsa_attention(t(qs), t(qs), t(qs), t(Shape{2}), AttentionMask{true, -1}); }},
  };
}

// Larger shapes for the CUDA parity test: several query and key tiles at every tile-shape class
// of the kernels (padded head dim 32, 64, 128), ragged edges, T != S with a carried r0, a prefix,
// not causal, and strided (token-major) inputs.
std::vector<OpSample> InfsaAttentionOp::parity_samples() {
  const AttentionOpSpec spec = infsa_spec();
  const AttentionMask causal{true, 0}, full{false, 0};
  std::vector<OpSample> s = {
      with_r(attention_op_sample(spec, dims(2, 3, 70, 70, 24, 24), causal, 401), causal),
      with_r(without_r0(attention_op_sample(spec, dims(1, 2, 130, 130, 16, 16), causal, 411)), causal),
      with_r(attention_op_sample(spec, dims(2, 2, 5, 37, 40, 24), causal, 421), causal),
      with_r(attention_op_sample(spec, dims(1, 2, 45, 45, 24, 24), AttentionMask{true, 20}, 431),
             AttentionMask{true, 20}),
      with_r(attention_op_sample(spec, dims(1, 2, 33, 50, 72, 72), full, 441), full),
      with_r(attention_op_sample(spec, dims(1, 1, 40, 40, 128, 128), causal, 451), causal),
  };
  // Inputs given token-major, [B, T, H, D], and permuted to [B, H, T, D] views (row stride H * D).
  OpSample tm;
  tm.label = "prefix=30 T=40 S=67 Dk=Dv=40, q k v token-major views";
  tm.inputs = {sample_randn(Shape{1, 40, 2, 40}, 461), sample_randn(Shape{1, 67, 2, 40}, 462),
               sample_randn(Shape{1, 67, 2, 40}, 463), sample_uniform(Shape{2}, 464, 0.5, 3.0),
               sample_uniform(Shape{1, 2}, 465, 0.0, 4.0)};
  tm.grad_inputs = {true, true, true, true, false};
  tm.run = [](const std::vector<Variable>& in) {
    const std::vector<int64_t> bhtd{0, 2, 1, 3};
    const InfsaResult r = infsa_attention(permute(in[0], bhtd), permute(in[1], bhtd), permute(in[2], bhtd), in[3],
                                          AttentionMask{true, 30}, 0.0, in[4].data());
    return std::vector<Variable>{r.out, Variable(r.r)};
  };
  s.push_back(std::move(tm));
  return s;
}

void register_attention_infsa(OpRegistry& ops, AttentionOpRegistry& attention) {
  AttentionOpSpec spec = infsa_spec();
  ops.add(attention_op_info(spec, InfsaAttentionOp::samples(), InfsaAttentionOp::parity_samples(),
                            InfsaAttentionOp::misuses()));
  attention.add(std::move(spec));
}

}  // namespace attnlab
