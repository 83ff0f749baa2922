// Autograd wiring of the fused linear-InfSA attention (form B), its samples, misuses and
// registration as the attention op "linear_infsa".
#include "layers/attention/linear_infsa/linear_infsa_attention.h"

#include "autograd/op_helpers.h"
#include "layers/attention/variant_op.h"

namespace attnlab {

namespace {
constexpr std::string_view kName = "linear_infsa_attention";

// The kernels read any strides but the last: a tensor whose last dim is not unit-stride is packed.
Tensor unit_last(const Tensor& t) { return t.ndim() == 4 && (t.size(3) <= 1 || t.stride(3) == 1) ? t : t.contiguous(); }
Tensor packed(const Tensor& t) { return t.defined() ? t.contiguous() : t; }
}  // namespace

void LinearInfsaAttentionOp::check(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& theta,
                                   const AttentionMask& mask, const Tensor& p0, const Tensor& n0) {
  check_attention_inputs(kName, q, k, v);
  // The running mean query is a causal prefix over query positions and the state carries keys in
  // order: a bidirectional prefix or a non-causal mask has no meaning here.
  AL_CHECK_CONFIG(mask.causal && mask.prefix == 0, kName,
                  ": supports only the plain causal mask (causal = true, prefix = 0); got causal = ",
                  mask.causal ? "true" : "false", ", prefix = ", mask.prefix, " with q=", q, ", k=", k, ", v=", v);
  const int64_t B = q.size(0), H = q.size(1), Dk = q.size(3);
  AL_CHECK_SHAPE(theta.defined() && theta.ndim() == 1 && theta.size(0) == H, kName,
                 ": theta must be [H] (one logit per head); got theta=", theta, " for q=", q);
  AL_CHECK_DTYPE(theta.dtype() == q.dtype(), kName, ": theta must have q's dtype; got theta=", theta, ", q=", q);
  AL_CHECK_DEVICE(theta.device() == q.device(), kName, ": theta must be on q's device; got theta=", theta, ", q=", q);
  if (p0.defined()) {
    AL_CHECK_SHAPE(p0.ndim() == 3 && p0.size(0) == B && p0.size(1) == H && p0.size(2) == Dk, kName,
                   ": p0 must be [B, H, Dk]; got p0=", p0, " for q=", q);
    AL_CHECK_DTYPE(p0.dtype() == q.dtype(), kName, ": p0 must have q's dtype; got p0=", p0, ", q=", q);
    AL_CHECK_DEVICE(p0.device() == q.device(), kName, ": p0 must be on q's device; got p0=", p0, ", q=", q);
  }
  if (n0.defined()) {
    AL_CHECK_SHAPE(n0.ndim() == 2 && n0.size(0) == B && n0.size(1) == H, kName, ": n0 must be [B, H]; got n0=", n0,
                   " for q=", q);
    AL_CHECK_DTYPE(n0.dtype() == q.dtype(), kName, ": n0 must have q's dtype; got n0=", n0, ", q=", q);
    AL_CHECK_DEVICE(n0.device() == q.device(), kName, ": n0 must be on q's device; got n0=", n0, ", q=", q);
  }
}

LinearInfsaResult linear_infsa_attention(const Variable& q, const Variable& k, const Variable& v,
                                         const Variable& theta, const AttentionMask& mask, double scale,
                                         const Tensor& p0, const Tensor& n0) {
  op::check_defined(kName, "q", q);
  op::check_defined(kName, "k", k);
  op::check_defined(kName, "v", v);
  op::check_defined(kName, "theta", theta);
  LinearInfsaAttentionOp::check(q.data(), k.data(), v.data(), theta.data(), mask, p0, n0);
  const double c = attention_scale(scale, q.size(3));
  const Tensor qc = unit_last(q.data()), kc = unit_last(k.data()), vc = unit_last(v.data());
  const Tensor th = theta.data().contiguous(), p0c = packed(p0), n0c = packed(n0);
  LinearInfsaAttentionOp::Forward f = op::on_device(
      kName, qc, [&](auto dev) { return LinearInfsaAttentionOp::forward(dev, qc, kc, vc, th, p0c, n0c, c); });
  Variable out = make_output(
      kName, {q, k, v, theta}, f.out,
      [qc, kc, vc, th, p0c, n0c, out = f.out, den = f.den, c](const Tensor& dout, const GradMask& needs) {
        const Tensor dc = unit_last(dout);
        LinearInfsaAttentionOp::Grads g = op::on_device(kName, dc, [&](auto dev) {
          return LinearInfsaAttentionOp::backward(dev, qc, kc, vc, th, p0c, n0c, out, den, dc, c);
        });
        return std::vector<Tensor>{needs[0] ? g.dq : Tensor(), needs[1] ? g.dk : Tensor(), needs[2] ? g.dv : Tensor(),
                                   needs[3] ? g.dtheta : Tensor()};
      });
  return {out, f.p, f.n};
}

namespace {

AttentionOpSpec linear_infsa_spec() {
  auto call = [](const AttnOpArgs& a, const AttentionOpSpec& spec, bool fused) {
    const Variable& p0 = a.extra(spec, "p0");
    const Variable& n0 = a.extra(spec, "n0");
    const Tensor p0t = p0.defined() ? p0.data() : Tensor(), n0t = n0.defined() ? n0.data() : Tensor();
    const LinearInfsaResult r =
        fused ? linear_infsa_attention(a.q, a.k, a.v, a.extra(spec, "theta"), a.mask, 0.0, p0t, n0t)
              : linear_infsa_reference(a.q, a.k, a.v, a.extra(spec, "theta"), a.mask, 0.0, p0t, n0t);
    return AttnOpResult{.out = r.out, .aux = {{"p", r.p}, {"n", r.n}}};
  };
  AttentionOpSpec spec{
      .name = "linear_infsa",
      .description = "causal linear InfSA (form B): gamma relu(qbar_t)^T S_t / (relu(qbar_t)^T z_t + eps), qbar_t the "
                     "running energy-weighted mean query, S_t = sum_{j<=t} relu(c k_j) v_j^T; extras theta [H], "
                     "carried p0 [B, H, Dk], n0 [B, H]",
      .extras = {{.name = "theta", .shape = [](const AttnDims& d) { return Shape{d.H}; }, .low = 0.5, .high = 3.0},
                 {.name = "p0",
                  .shape = [](const AttnDims& d) { return Shape{d.B, d.H, d.Dk}; },
                  .differentiable = false,
                  .low = -1.0,
                  .high = 1.0,
                  .optional = true},
                 {.name = "n0",
                  .shape = [](const AttnDims& d) { return Shape{d.B, d.H}; },
                  .differentiable = false,
                  .low = 0.5,
                  .high = 3.0,
                  .optional = true}},
      .carried = {{"p0", "p"}, {"n0", "n"}},
      .prefix_mask = false,
      .non_causal = false,
      .cuda = true,
  };
  // The lambdas hold their own copy of the spec's extras list (through `self`), so a copied spec
  // stays valid.
  const auto self = std::make_shared<const AttentionOpSpec>(spec);
  spec.fused = [self, call](const AttnOpArgs& a) { return call(a, *self, true); };
  spec.reference = [self, call](const AttnOpArgs& a) { return call(a, *self, false); };
  return spec;
}

AttnDims dims(int64_t B, int64_t H, int64_t T, int64_t S, int64_t Dk, int64_t Dv) {
  AttnDims d;
  d.B = B, d.H = H, d.T = T, d.S = S, d.Dk = Dk, d.Dv = Dv;
  return d;
}

std::vector<OpMisuse> misuses() {
  auto t = [](const Shape& s, DType dt = DType::f32) { return Variable(Tensor::ones(s, dt)); };
  const Shape x{1, 2, 4, 4};
  return {
      {"k with Dk=3, q with Dk=4", [=] { linear_infsa_attention(t(x), t(Shape{1, 2, 4, 3}), t(x), t(Shape{2})); }},
      {"S=3 < T=4", [=] { linear_infsa_attention(t(x), t(Shape{1, 2, 3, 4}), t(Shape{1, 2, 3, 4}), t(Shape{2})); }},
      {"theta [3] for H=2", [=] { linear_infsa_attention(t(x), t(x), t(x), t(Shape{3})); }},
      {"theta f64, q f32", [=] { linear_infsa_attention(t(x), t(x), t(x), t(Shape{2}, DType::f64)); }},
      {"p0 [1, 2, 3] for Dk=4",
       [=] { linear_infsa_attention(t(x), t(x), t(x), t(Shape{2}), {}, 0.0, Tensor::zeros(Shape{1, 2, 3})); }},
      {"n0 [2] for B=1, H=2",
       [=] {
         linear_infsa_attention(t(x), t(x), t(x), t(Shape{2}), {}, 0.0, Tensor::zeros(Shape{1, 2, 4}),
                                Tensor::ones(Shape{2}));
       }},
      {"bidirectional prefix", [=] { linear_infsa_attention(t(x), t(x), t(x), t(Shape{2}), AttentionMask{true, 2}); }},
      {"not causal", [=] { linear_infsa_attention(t(x), t(x), t(x), t(Shape{2}), AttentionMask{false, 0}); }},
      {"i32 inputs",
       [=] {
         linear_infsa_attention(t(x, DType::i32), t(x, DType::i32), t(x, DType::i32), t(Shape{2}, DType::i32));
       }},
  };
}

}  // namespace

void register_attention_linear_infsa(OpRegistry& ops, AttentionOpRegistry& attention) {
  const AttentionOpSpec spec = linear_infsa_spec();
  const AttentionMask causal{true, 0};
  // f64 gradcheck: T <= 6, an S > T (carried p0, n0) case, Dk != Dv.
  std::vector<OpSample> small = {
      attention_op_sample(spec, dims(2, 2, 4, 4, 4, 4), causal, 501),
      attention_op_sample(spec, dims(1, 2, 3, 5, 4, 3), causal, 511),
      attention_op_sample(spec, dims(1, 1, 6, 6, 3, 2), causal, 521),
      attention_op_sample(spec, dims(1, 2, 1, 4, 5, 4), causal, 531),
  };
  // CUDA parity: several chunks with a ragged last one, S > T, every head-dim class.
  std::vector<OpSample> parity = {
      attention_op_sample(spec, dims(1, 2, 70, 70, 16, 16), causal, 541),
      attention_op_sample(spec, dims(1, 1, 130, 130, 24, 20), causal, 551),
      attention_op_sample(spec, dims(2, 1, 37, 100, 16, 24), causal, 561),
      attention_op_sample(spec, dims(1, 1, 45, 45, 64, 64), causal, 571),
      attention_op_sample(spec, dims(1, 1, 33, 33, 128, 96), causal, 581),
  };
  attention.add(spec);
  ops.add(attention_op_info(spec, std::move(small), std::move(parity), misuses()));
}

}  // namespace attnlab
