// Autograd wiring of the fused sigmoid attention, its samples, misuses and registration (three
// public forms: "sigmoid", "sigmoid_neglog_visible", "sigmoid_neglogn").
#include "layers/attention/sigmoid/sigmoid_attention.h"

#include <string>

#include "autograd/op_helpers.h"
#include "autograd/ops/view/view.h"
#include "layers/attention/variant_op.h"

namespace attnlab {

namespace {


}  // namespace

std::string_view SigmoidAttentionOp::name(SigmoidBias mode) {
  switch (mode) {
    case SigmoidBias::per_head:
      return "sigmoid_neglogn_attention";
    case SigmoidBias::neglog_visible:
      return "sigmoid_neglog_visible_attention";
    default:
      return "sigmoid_attention";
  }
}

void SigmoidAttentionOp::check(const Tensor& q, const Tensor& k, const Tensor& v, SigmoidBias mode, const Tensor& bias,
                               const AttentionMask& mask) {
  const std::string_view op = name(mode);
  check_attention_inputs(op, q, k, v);
  AL_CHECK_CONFIG(mask.prefix >= 0, op, ": mask.prefix must be >= 0; got prefix=", mask.prefix, " with q=", q,
                  ", k=", k, ", v=", v);
  if (mode == SigmoidBias::per_head) {
    AL_CHECK_CONFIG(bias.defined(), op, ": the per-head form needs its bias b [H]; got none with q=", q);
    AL_CHECK_SHAPE(bias.ndim() == 1 && bias.size(0) == q.size(1), op, ": b must be [H] with H=", q.size(1),
                   "; got b=", bias, ", q=", q);
    AL_CHECK_DTYPE(bias.dtype() == q.dtype(), op, ": b must have q's dtype; got b=", bias, ", q=", q);
    AL_CHECK_DEVICE(bias.device() == q.device(), op, ": b must be on q's device; got b=", bias, ", q=", q);
  } else {
    AL_CHECK_CONFIG(!bias.defined(), op, ": b [H] is read only by the per-head form (sigmoid_neglogn); got b=", bias,
                    " with q=", q);
  }
}

Variable sigmoid_attention(const Variable& q, const Variable& k, const Variable& v, SigmoidBias mode,
                           const Variable& bias, const AttentionMask& mask, double scale) {
  const std::string_view op = SigmoidAttentionOp::name(mode);
  op::check_defined(op, "q", q);
  op::check_defined(op, "k", k);
  op::check_defined(op, "v", v);
  SigmoidAttentionOp::check(q.data(), k.data(), v.data(), mode, bias.defined() ? bias.data() : Tensor(), mask);
  const double c = attention_scale(scale, q.size(3));
  const Tensor qc = unit_last_dim(q.data()), kc = unit_last_dim(k.data()), vc = unit_last_dim(v.data());
  const bool per_head = mode == SigmoidBias::per_head;
  const Tensor bc = per_head ? bias.data().contiguous() : Tensor();
  const Tensor out =
      op::on_device(op, qc, [&](auto dev) { return SigmoidAttentionOp::forward(dev, qc, kc, vc, mode, bc, mask, c); });
  std::vector<Variable> inputs{q, k, v};
  if (per_head) inputs.push_back(bias);
  return make_output(op, inputs, out, [qc, kc, vc, bc, mode, mask, c, op](const Tensor& dout, const GradMask& needs) {
    const Tensor dc = unit_last_dim(dout);
    const bool need_db = needs.size() > 3 && needs[3];
    SigmoidAttentionOp::Grads g = op::on_device(op, dc, [&](auto dev) {
      return SigmoidAttentionOp::backward(dev, qc, kc, vc, mode, bc, dc, mask, c, need_db);
    });
    std::vector<Tensor> grads{needs[0] ? g.dq : Tensor(), needs[1] ? g.dk : Tensor(), needs[2] ? g.dv : Tensor()};
    if (needs.size() > 3) grads.push_back(need_db ? g.db : Tensor());
    return grads;
  });
}

namespace {

// One registry sample of `mode`: q, k, v ~ N(0, 1) for [B, H, T, Dk], [B, H, S, Dk], [B, H, S, Dv]
// (given token-major, [B, T, H, D], and permuted to [B, H, T, D] views when `token_major`), then
// b [H] uniform in [-4, -1] (the registered test range) for the per-head form.
struct Shape6 {
  int64_t B, H, T, S, Dk, Dv;
};

OpSample sample(SigmoidBias mode, std::string label, Shape6 d, AttentionMask mask, uint64_t seed, double scale = 0.0,
                bool token_major = false) {
  OpSample s;
  s.label = std::move(label);
  if (token_major) {
    s.inputs = {sample_randn(Shape{d.B, d.T, d.H, d.Dk}, seed), sample_randn(Shape{d.B, d.S, d.H, d.Dk}, seed + 1),
                sample_randn(Shape{d.B, d.S, d.H, d.Dv}, seed + 2)};
  } else {
    s.inputs = {sample_randn(Shape{d.B, d.H, d.T, d.Dk}, seed), sample_randn(Shape{d.B, d.H, d.S, d.Dk}, seed + 1),
                sample_randn(Shape{d.B, d.H, d.S, d.Dv}, seed + 2)};
  }
  if (mode == SigmoidBias::per_head) s.inputs.push_back(sample_uniform(Shape{d.H}, seed + 3, -4.0, -1.0));
  s.run = [mode, mask, scale, token_major](const std::vector<Variable>& in) {
    auto heads = [token_major](const Variable& x) {
      return token_major ? permute(x, std::vector<int64_t>{0, 2, 1, 3}) : x;
    };
    const Variable b = mode == SigmoidBias::per_head ? in[3] : Variable();
    return std::vector<Variable>{sigmoid_attention(heads(in[0]), heads(in[1]), heads(in[2]), mode, b, mask, scale)};
  };
  return s;
}

const AttentionMask kCausal{true, 0}, kFull{false, 0};

// Small f64 shapes for the gradcheck: T <= 6, S > T (the causal offset), a prefix, not causal,
// Dk != Dv with an explicit scale.
std::vector<OpSample> small_samples(SigmoidBias mode) {
  return {
      sample(mode, "causal B=2 H=2 T=S=4 D=4", {2, 2, 4, 4, 4, 4}, kCausal, 301),
      sample(mode, "causal T=3 S=5 (offset) D=4", {1, 2, 3, 5, 4, 4}, kCausal, 311),
      sample(mode, "not causal T=3 S=5 D=4", {1, 2, 3, 5, 4, 4}, kFull, 321),
      sample(mode, "prefix=2 T=S=5 D=4", {1, 2, 5, 5, 4, 4}, AttentionMask{true, 2}, 331),
      sample(mode, "prefix=4 T=3 S=6 (offset) D=4", {1, 2, 3, 6, 4, 4}, AttentionMask{true, 4}, 341),
      sample(mode, "causal Dk=4 Dv=3 T=S=4 scale=0.7", {2, 3, 4, 4, 4, 3}, kCausal, 351, 0.7),
  };
}

// Larger shapes for the CUDA parity test: several query and key tiles of each kernel at every
// tile-shape class (padded head dim 32, 64, 128), ragged edges, T != S, a prefix, not causal and
// token-major (strided) inputs; each under ~30k elements (the emulator is slow).
std::vector<OpSample> parity_samples(SigmoidBias mode) {
  return {
      sample(mode, "causal B=2 H=3 T=S=70 D=24", {2, 3, 70, 70, 24, 24}, kCausal, 401),
      sample(mode, "causal B=1 H=2 T=S=130 D=16 scale=0.3", {1, 2, 130, 130, 16, 16}, kCausal, 411, 0.3),
      sample(mode, "causal T=5 S=37 (KV-cache offset) Dk=40 Dv=24", {2, 2, 5, 37, 40, 24}, kCausal, 421),
      sample(mode, "prefix=20 T=S=45 D=24", {1, 2, 45, 45, 24, 24}, AttentionMask{true, 20}, 431),
      sample(mode, "not causal T=33 S=50 D=72", {1, 2, 33, 50, 72, 72}, kFull, 441),
      sample(mode, "causal T=S=40 D=128", {1, 1, 40, 40, 128, 128}, kCausal, 451),
      sample(mode, "prefix=30 T=40 S=67 Dk=Dv=40, q k v token-major views", {1, 2, 40, 67, 40, 40},
             AttentionMask{true, 30}, 461, 0.0, true),
  };
}

}  // namespace

std::vector<OpMisuse> SigmoidAttentionOp::misuses(SigmoidBias mode) {
  auto t = [](const Shape& s, DType dt = DType::f32) { return Variable(Tensor::ones(s, dt)); };
  std::vector<OpMisuse> m;
  auto add = [&](std::string label, Variable q, Variable k, Variable v, Variable b, AttentionMask mask = {}) {
    m.push_back({std::move(label), [=] { sigmoid_attention(q, k, v, mode, b, mask); }});
  };
  // The bias the form expects: b [2] for H = 2 in the per-head form, none otherwise.
  const bool per_head = mode == SigmoidBias::per_head;
  const Variable b = per_head ? t(Shape{2}) : Variable();
  const Variable x = t(Shape{1, 2, 4, 4});  // q, k or v [B=1, H=2, 4, D=4]
  add("k with Dk=3, q with Dk=4", x, t(Shape{1, 2, 4, 3}), x, b);
  add("3-D q", t(Shape{2, 4, 4}), x, x, b);
  add("S=3 < T=5", t(Shape{1, 2, 5, 4}), t(Shape{1, 2, 3, 4}), t(Shape{1, 2, 3, 4}), b);
  add("q f32, k and v f64", x, t(Shape{1, 2, 4, 4}, DType::f64), t(Shape{1, 2, 4, 4}, DType::f64), b);
  add("i32 inputs", t(Shape{1, 2, 4, 4}, DType::i32), t(Shape{1, 2, 4, 4}, DType::i32),
      t(Shape{1, 2, 4, 4}, DType::i32), b);
  add("v with S=5, k with S=4", x, x, t(Shape{1, 2, 5, 4}), b);
  add("negative prefix", x, x, x, b, AttentionMask{true, -1});
  if (per_head) {
    add("b missing", x, x, x, Variable());
    add("b [3] for H=2", x, x, x, t(Shape{3}));
    add("b [1, 2] for H=2", x, x, x, t(Shape{1, 2}));
    add("b f64, q k v f32", x, x, x, t(Shape{2}, DType::f64));
  } else {
    add("b given to a form without a learnt bias", x, x, x, t(Shape{2}));
  }
  return m;
}

void register_attention_sigmoid(OpRegistry& ops, AttentionOpRegistry& attention) {
  auto form = [&](SigmoidBias mode, std::string name, std::string description, std::vector<AttnInputSpec> extras) {
    AttentionOpSpec spec{
        .name = std::move(name),
        .description = std::move(description),
        .extras = std::move(extras),
        .prefix_mask = true,
        .non_causal = true,
        .cuda = true,
        .fused =
            [mode](const AttnOpArgs& a) {
              const Variable b = a.extras.empty() ? Variable() : a.extras[0];
              return AttnOpResult{.out = sigmoid_attention(a.q, a.k, a.v, mode, b, a.mask)};
            },
        .reference =
            [mode](const AttnOpArgs& a) {
              const Variable b = a.extras.empty() ? Variable() : a.extras[0];
              return AttnOpResult{.out = sigmoid_attention_reference(a.q, a.k, a.v, mode, b, a.mask)};
            },
    };
    ops.add(attention_op_info(spec, small_samples(mode), parity_samples(mode), SigmoidAttentionOp::misuses(mode)));
    attention.add(std::move(spec));
  };
  form(SigmoidBias::zero, "sigmoid", "sigmoid(scale q k^T) on visible keys, times v; no normalisation; no extras", {});
  form(SigmoidBias::neglog_visible, "sigmoid_neglog_visible",
       "sigmoid(scale q k^T - log n_i) v, n_i = keys row i sees; no extras", {});
  form(SigmoidBias::per_head, "sigmoid_neglogn",
       "sigmoid(scale q k^T + b[h]) v; extra b [H], learnt (initialise to -log of the training length)",
       {AttnInputSpec{.name = "b",
                      .shape = [](const AttnDims& d) { return Shape{d.H}; },
                      .differentiable = true,
                      .query_axis = -1,
                      .low = -4.0,
                      .high = -1.0}});
}

}  // namespace attnlab
