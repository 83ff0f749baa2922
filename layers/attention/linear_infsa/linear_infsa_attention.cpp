// Autograd wiring of the fused linear-InfSA attention, forms B (chunked, CPU and CUDA) and A (exact
// prefix, CPU), their samples, misuses and registration as the attention ops "linear_infsa" and
// "linear_infsa_prefix".
#include "layers/attention/linear_infsa/linear_infsa_attention.h"

#include "autograd/op_helpers.h"
#include "layers/attention/variant_op.h"

namespace attnlab {

namespace {
constexpr std::string_view kName = "linear_infsa_attention";
constexpr std::string_view kPrefixName = "linear_infsa_prefix_attention";

Tensor packed(const Tensor& t) { return t.defined() ? t.contiguous() : t; }

// The checks of both forms, naming `op`.
void check_inputs(std::string_view op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& theta,
                  const AttentionMask& mask, const Tensor& p0, const Tensor& n0) {
  check_attention_inputs(op, q, k, v);
  // The running mean query is a causal prefix over query positions and the state carries keys in
  // order: a bidirectional prefix or a non-causal mask has no meaning here.
  AL_CHECK_CONFIG(mask.causal && mask.prefix == 0, op,
                  ": supports only the plain causal mask (causal = true, prefix = 0); got causal = ",
                  mask.causal ? "true" : "false", ", prefix = ", mask.prefix, " with q=", q, ", k=", k, ", v=", v);
  const int64_t B = q.size(0), H = q.size(1), Dk = q.size(3);
  AL_CHECK_SHAPE(theta.defined() && theta.ndim() == 1 && theta.size(0) == H, op,
                 ": theta must be [H] (one logit per head); got theta=", theta, " for q=", q);
  AL_CHECK_DTYPE(theta.dtype() == q.dtype(), op, ": theta must have q's dtype; got theta=", theta, ", q=", q);
  AL_CHECK_DEVICE(theta.device() == q.device(), op, ": theta must be on q's device; got theta=", theta, ", q=", q);
  if (p0.defined()) {
    AL_CHECK_SHAPE(p0.ndim() == 3 && p0.size(0) == B && p0.size(1) == H && p0.size(2) == Dk, op,
                   ": p0 must be [B, H, Dk]; got p0=", p0, " for q=", q);
    AL_CHECK_DTYPE(p0.dtype() == q.dtype(), op, ": p0 must have q's dtype; got p0=", p0, ", q=", q);
    AL_CHECK_DEVICE(p0.device() == q.device(), op, ": p0 must be on q's device; got p0=", p0, ", q=", q);
  }
  if (n0.defined()) {
    AL_CHECK_SHAPE(n0.ndim() == 2 && n0.size(0) == B && n0.size(1) == H, op, ": n0 must be [B, H]; got n0=", n0,
                   " for q=", q);
    AL_CHECK_DTYPE(n0.dtype() == q.dtype(), op, ": n0 must have q's dtype; got n0=", n0, ", q=", q);
    AL_CHECK_DEVICE(n0.device() == q.device(), op, ": n0 must be on q's device; got n0=", n0, ", q=", q);
  }
}

// Checks, packs, runs `fwd(q, k, v, theta, p0, n0, c)` and wires `bwd(q, k, v, theta, p0, n0, out, den, dout, c)`
// as the backward of out with respect to q, k, v, theta.
template <typename Fwd, typename Bwd>
LinearInfsaResult run_op(std::string_view op, const Variable& q, const Variable& k, const Variable& v,
                         const Variable& theta, const AttentionMask& mask, double scale, const Tensor& p0,
                         const Tensor& n0, Fwd fwd, Bwd bwd) {
  op::check_defined(op, "q", q);
  op::check_defined(op, "k", k);
  op::check_defined(op, "v", v);
  op::check_defined(op, "theta", theta);
  check_inputs(op, q.data(), k.data(), v.data(), theta.data(), mask, p0, n0);
  const double c = attention_scale(scale, q.size(3));
  const Tensor qc = unit_last_dim(q.data()), kc = unit_last_dim(k.data()), vc = unit_last_dim(v.data());
  const Tensor th = theta.data().contiguous(), p0c = packed(p0), n0c = packed(n0);
  LinearInfsaAttentionOp::Forward f = fwd(qc, kc, vc, th, p0c, n0c, c);
  Variable out = make_output(
      op, {q, k, v, theta}, f.out,
      [qc, kc, vc, th, p0c, n0c, out = f.out, den = f.den, c, bwd](const Tensor& dout, const GradMask& needs) {
        LinearInfsaAttentionOp::Grads g = bwd(qc, kc, vc, th, p0c, n0c, out, den, unit_last_dim(dout), c);
        return std::vector<Tensor>{needs[0] ? g.dq : Tensor(), needs[1] ? g.dk : Tensor(), needs[2] ? g.dv : Tensor(),
                                   needs[3] ? g.dtheta : Tensor()};
      });
  return {out, f.p, f.n};
}

}  // namespace

void LinearInfsaAttentionOp::check(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& theta,
                                   const AttentionMask& mask, const Tensor& p0, const Tensor& n0) {
  check_inputs(kName, q, k, v, theta, mask, p0, n0);
}

void LinearInfsaPrefixOp::check(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& theta,
                                const AttentionMask& mask, const Tensor& p0, const Tensor& n0) {
  check_inputs(kPrefixName, q, k, v, theta, mask, p0, n0);
}

LinearInfsaResult linear_infsa_attention(const Variable& q, const Variable& k, const Variable& v,
                                         const Variable& theta, const AttentionMask& mask, double scale,
                                         const Tensor& p0, const Tensor& n0) {
  using Op = LinearInfsaAttentionOp;
  return run_op(
      kName, q, k, v, theta, mask, scale, p0, n0,
      [](const Tensor& qc, const Tensor& kc, const Tensor& vc, const Tensor& th, const Tensor& p0c, const Tensor& n0c,
         double c) { return op::on_device(kName, qc, [&](auto dev) { return Op::forward(dev, qc, kc, vc, th, p0c, n0c, c); }); },
      [](const Tensor& qc, const Tensor& kc, const Tensor& vc, const Tensor& th, const Tensor& p0c, const Tensor& n0c,
         const Tensor& out, const Tensor& den, const Tensor& dout, double c) {
        return op::on_device(kName, dout,
                             [&](auto dev) { return Op::backward(dev, qc, kc, vc, th, p0c, n0c, out, den, dout, c); });
      });
}

// Form (A) has CPU kernels only: a CUDA tensor gets a DeviceError naming the op.
LinearInfsaResult linear_infsa_prefix_attention(const Variable& q, const Variable& k, const Variable& v,
                                                const Variable& theta, const AttentionMask& mask, double scale,
                                                const Tensor& p0, const Tensor& n0) {
  using Op = LinearInfsaPrefixOp;
  return run_op(
      kPrefixName, q, k, v, theta, mask, scale, p0, n0,
      [](const Tensor& qc, const Tensor& kc, const Tensor& vc, const Tensor& th, const Tensor& p0c, const Tensor& n0c,
         double c) {
        return op::on_device(kPrefixName, qc,
                             [&](CpuTag dev) { return Op::forward(dev, qc, kc, vc, th, p0c, n0c, c); });
      },
      [](const Tensor& qc, const Tensor& kc, const Tensor& vc, const Tensor& th, const Tensor& p0c, const Tensor& n0c,
         const Tensor& out, const Tensor& den, const Tensor& dout, double c) {
        return op::on_device(kPrefixName, dout,
                             [&](CpuTag dev) { return Op::backward(dev, qc, kc, vc, th, p0c, n0c, out, den, dout, c); });
      });
}

namespace {

using LinearInfsaFn = LinearInfsaResult (*)(const Variable&, const Variable&, const Variable&, const Variable&,
                                            const AttentionMask&, double, const Tensor&, const Tensor&);

// The spec of one form: extras theta [H] (learnable), and the carried query prefix p0 [B, H, Dk],
// n0 [B, H] (optional, no gradient); the plain causal mask only.
AttentionOpSpec make_spec(std::string name, std::string description, bool cuda, LinearInfsaFn fused,
                          LinearInfsaFn reference) {
  AttentionOpSpec spec{
      .name = std::move(name),
      .description = std::move(description),
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
      .cuda = cuda,
  };
  // The extras are at fixed places: theta, p0, n0 (an undefined Variable when left out).
  auto call = [](LinearInfsaFn fn, const AttnOpArgs& a) {
    auto extra = [&](size_t i) { return i < a.extras.size() && a.extras[i].defined() ? a.extras[i] : Variable(); };
    const Variable theta = extra(0), p0 = extra(1), n0 = extra(2);
    const LinearInfsaResult r = fn(a.q, a.k, a.v, theta, a.mask, 0.0, p0.defined() ? p0.data() : Tensor(),
                                   n0.defined() ? n0.data() : Tensor());
    return AttnOpResult{.out = r.out, .aux = {{"p", r.p}, {"n", r.n}}};
  };
  spec.fused = [fused, call](const AttnOpArgs& a) { return call(fused, a); };
  spec.reference = [reference, call](const AttnOpArgs& a) { return call(reference, a); };
  return spec;
}

AttnDims dims(int64_t B, int64_t H, int64_t T, int64_t S, int64_t Dk, int64_t Dv) {
  AttnDims d;
  d.B = B, d.H = H, d.T = T, d.S = S, d.Dk = Dk, d.Dv = Dv;
  return d;
}

std::vector<OpMisuse> misuses(LinearInfsaFn fn) {
  auto t = [](const Shape& s, DType dt = DType::f32) { return Variable(Tensor::ones(s, dt)); };
  const Shape x{1, 2, 4, 4};
  return {
      {"k with Dk=3, q with Dk=4", [=] { fn(t(x), t(Shape{1, 2, 4, 3}), t(x), t(Shape{2}), {}, 0.0, {}, {}); }},
      {"S=3 < T=4", [=] { fn(t(x), t(Shape{1, 2, 3, 4}), t(Shape{1, 2, 3, 4}), t(Shape{2}), {}, 0.0, {}, {}); }},
      {"theta [3] for H=2", [=] { fn(t(x), t(x), t(x), t(Shape{3}), {}, 0.0, {}, {}); }},
      {"theta f64, q f32", [=] { fn(t(x), t(x), t(x), t(Shape{2}, DType::f64), {}, 0.0, {}, {}); }},
      {"p0 [1, 2, 3] for Dk=4", [=] { fn(t(x), t(x), t(x), t(Shape{2}), {}, 0.0, Tensor::zeros(Shape{1, 2, 3}), {}); }},
      {"n0 [2] for B=1, H=2",
       [=] { fn(t(x), t(x), t(x), t(Shape{2}), {}, 0.0, Tensor::zeros(Shape{1, 2, 4}), Tensor::ones(Shape{2})); }},
      {"bidirectional prefix", [=] { fn(t(x), t(x), t(x), t(Shape{2}), AttentionMask{true, 2}, 0.0, {}, {}); }},
      {"not causal", [=] { fn(t(x), t(x), t(x), t(Shape{2}), AttentionMask{false, 0}, 0.0, {}, {}); }},
      {"i32 inputs",
       [=] { fn(t(x, DType::i32), t(x, DType::i32), t(x, DType::i32), t(Shape{2}, DType::i32), {}, 0.0, {}, {}); }},
  };
}

// f64 gradcheck samples: T <= 6, an S > T (carried p0, n0) case, Dk != Dv.
std::vector<OpSample> small_samples(const AttentionOpSpec& spec) {
  const AttentionMask causal{true, 0};
  return {
      attention_op_sample(spec, dims(2, 2, 4, 4, 4, 4), causal, 501),
      attention_op_sample(spec, dims(1, 2, 3, 5, 4, 3), causal, 511),
      attention_op_sample(spec, dims(1, 1, 6, 6, 3, 2), causal, 521),
      attention_op_sample(spec, dims(1, 2, 1, 4, 5, 4), causal, 531),
  };
}

}  // namespace

void register_attention_linear_infsa(OpRegistry& ops, AttentionOpRegistry& attention) {
  const AttentionMask causal{true, 0};
  const AttentionOpSpec linear = make_spec(
      "linear_infsa",
      "causal linear InfSA (form B): gamma relu(qbar_t)^T S_t / (relu(qbar_t)^T z_t + eps), qbar_t the running "
      "energy-weighted mean query, S_t = sum_{j<=t} relu(c k_j) v_j^T; extras theta [H], carried p0 [B, H, Dk], "
      "n0 [B, H]",
      true, &linear_infsa_attention, &linear_infsa_reference);
  // CUDA parity: several chunks with a ragged last one, S > T, both head-dim classes, Dv slices.
  std::vector<OpSample> parity = {
      attention_op_sample(linear, dims(1, 2, 70, 70, 16, 16), causal, 541),
      attention_op_sample(linear, dims(1, 1, 130, 130, 24, 20), causal, 551),
      attention_op_sample(linear, dims(2, 1, 37, 100, 16, 24), causal, 561),
      attention_op_sample(linear, dims(1, 1, 45, 45, 64, 64), causal, 571),
      attention_op_sample(linear, dims(1, 1, 33, 33, 128, 96), causal, 581),
  };
  attention.add(linear);
  ops.add(attention_op_info(linear, small_samples(linear), std::move(parity), misuses(&linear_infsa_attention)));

  const AttentionOpSpec prefix = make_spec(
      "linear_infsa_prefix",
      "causal linear InfSA, exact prefix form (A): gamma sum_{j<=t} relu(<qbar_t, c k_j>) v_j / (sum_{j<=t} "
      "relu(<qbar_t, c k_j>) + eps), quadratic; extras theta [H], carried p0 [B, H, Dk], n0 [B, H]; CPU only",
      false, &linear_infsa_prefix_attention, &linear_infsa_prefix_reference);
  attention.add(prefix);
  ops.add(attention_op_info(prefix, small_samples(prefix), {}, misuses(&linear_infsa_prefix_attention)));
}

}  // namespace attnlab
