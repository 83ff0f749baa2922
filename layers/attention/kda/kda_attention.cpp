// Autograd wiring of the Kimi Delta Attention core op (kda_attention.h), both forms (chunkwise
// "kda", token-by-token "kda_recurrent"), their samples, misuses and registration.
//
// The op has two differentiable outputs, out and the final state: one graph node returns both,
// and its backward receives (dout, dstate) (dstate zeros when the state is unused downstream).
#include "layers/attention/kda/kda_attention.h"

#include <cmath>

#include "autograd/op_helpers.h"
#include "layers/attention/variant_op.h"

namespace attnlab {

namespace {
constexpr std::string_view kName = "kda_attention";
constexpr std::string_view kRecurrentName = "kda_recurrent_attention";

Tensor packed(const Tensor& t) { return t.defined() ? t.contiguous() : t; }

// Every check of both forms, naming `op`. `cuda_limits`: the chunkwise form's CUDA kernels take
// f32 with Dk, Dv <= 128.
void check_inputs(std::string_view op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                  const Tensor& beta, const Tensor& s0, bool cuda_limits) {
  auto shapes = [&] {
    return detail::concat("; got q=", q, ", k=", k, ", v=", v, ", g=", g, ", beta=", beta,
                          s0.defined() ? detail::concat(", s0=", s0) : std::string());
  };
  AL_CHECK_SHAPE(q.ndim() == 4 && k.ndim() == 4 && v.ndim() == 4, op,
                 ": q, k, v must be [B, H, T, Dk], [B, H, T, Dk], [B, H, T, Dv]", shapes());
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), Dk = q.size(3), Dv = v.size(3);
  AL_CHECK_SHAPE(T >= 1 && Dk >= 1 && Dv >= 1, op, ": needs T, Dk, Dv >= 1", shapes());
  AL_CHECK_SHAPE(k.shape() == q.shape(), op,
                 ": k must be [B, H, T, Dk] like q (a recurrent op: keys follow the queries, no S != T)",
                 shapes());
  AL_CHECK_SHAPE(v.size(0) == B && v.size(1) == H && v.size(2) == T, op, ": v must be [B, H, T, Dv] with q's B, H, T",
                 shapes());
  AL_CHECK_SHAPE(g.ndim() == 4 && g.shape() == q.shape(), op, ": g (the log-decay) must be [B, H, T, Dk] like q",
                 shapes());
  AL_CHECK_SHAPE(beta.ndim() == 3 && beta.size(0) == B && beta.size(1) == H && beta.size(2) == T, op,
                 ": beta must be [B, H, T]", shapes());
  if (s0.defined())
    AL_CHECK_SHAPE(s0.ndim() == 4 && s0.size(0) == B && s0.size(1) == H && s0.size(2) == Dk && s0.size(3) == Dv, op,
                   ": s0 must be [B, H, Dk, Dv]", shapes());
  const bool same_dtype = k.dtype() == q.dtype() && v.dtype() == q.dtype() && g.dtype() == q.dtype() &&
                          beta.dtype() == q.dtype() && (!s0.defined() || s0.dtype() == q.dtype());
  AL_CHECK_DTYPE((q.dtype() == DType::f32 || q.dtype() == DType::f64) && same_dtype, op,
                 ": q, k, v, g, beta, s0 must share one dtype, f32 or f64", shapes());
  const bool same_device = k.device() == q.device() && v.device() == q.device() && g.device() == q.device() &&
                           beta.device() == q.device() && (!s0.defined() || s0.device() == q.device());
  AL_CHECK_DEVICE(same_device, op, ": q, k, v, g, beta, s0 must share a device", shapes());
  if (cuda_limits && q.device().is_cuda()) {
    AL_CHECK_DTYPE(q.dtype() == DType::f32, op, ": the CUDA kernels take f32", shapes());
    AL_CHECK_SHAPE(Dk <= 128 && Dv <= 128, op, ": the CUDA kernels take Dk, Dv <= 128", shapes());
  }
}

// Checks, packs, runs `fwd(q, k, v, g, beta, s0, c)` and wires `bwd(q, k, v, g, beta, s0, dout,
// dstate, c)` as the backward of (out, state) with respect to q, k, v, g, beta and s0.
template <typename Fwd, typename Bwd>
KdaResult run_op(std::string_view op, bool cuda_limits, const Variable& q, const Variable& k, const Variable& v,
                 const Variable& g, const Variable& beta, const Variable& s0, double scale, Fwd fwd, Bwd bwd) {
  op::check_defined(op, "q", q);
  op::check_defined(op, "k", k);
  op::check_defined(op, "v", v);
  op::check_defined(op, "g", g);
  op::check_defined(op, "beta", beta);
  check_inputs(op, q.data(), k.data(), v.data(), g.data(), beta.data(), s0.defined() ? s0.data() : Tensor(),
               cuda_limits);
  const double c = attention_scale(scale, q.size(3));
  const Tensor qc = unit_last_dim(q.data()), kc = unit_last_dim(k.data()), vc = unit_last_dim(v.data()), gc = unit_last_dim(g.data());
  const Tensor bc = beta.data().contiguous(), s0c = s0.defined() ? s0.data().contiguous() : Tensor();
  KdaAttentionOp::Forward f = fwd(qc, kc, vc, gc, bc, s0c, c);
  std::vector<Variable> inputs{q, k, v, g, beta};
  if (s0.defined()) inputs.push_back(s0);
  std::vector<Variable> outs = make_outputs(
      op, inputs, {f.out, f.state},
      [qc, kc, vc, gc, bc, s0c, c, bwd](const std::vector<Tensor>& douts, const GradMask& needs) {
        const Tensor dout = unit_last_dim(douts[0]), dstate = packed(douts[1]);
        KdaAttentionOp::Grads gr = bwd(qc, kc, vc, gc, bc, s0c, dout, dstate, c);
        std::vector<Tensor> r{needs[0] ? gr.dq : Tensor(), needs[1] ? gr.dk : Tensor(), needs[2] ? gr.dv : Tensor(),
                              needs[3] ? gr.dg : Tensor(), needs[4] ? gr.dbeta : Tensor()};
        if (needs.size() > 5) r.push_back(needs[5] ? gr.ds0 : Tensor());
        return r;
      });
  return {outs[0], outs[1]};
}

}  // namespace

void KdaAttentionOp::check(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& beta,
                           const Tensor& s0) {
  check_inputs(kName, q, k, v, g, beta, s0, true);
}

KdaResult kda_attention(const Variable& q, const Variable& k, const Variable& v, const Variable& g,
                        const Variable& beta, const Variable& s0, double scale) {
  using Op = KdaAttentionOp;
  return run_op(
      kName, true, q, k, v, g, beta, s0, scale,
      [](const Tensor& qc, const Tensor& kc, const Tensor& vc, const Tensor& gc, const Tensor& bc, const Tensor& s0c,
         double c) { return op::on_device(kName, qc, [&](auto dev) { return Op::forward(dev, qc, kc, vc, gc, bc, s0c, c); }); },
      [](const Tensor& qc, const Tensor& kc, const Tensor& vc, const Tensor& gc, const Tensor& bc, const Tensor& s0c,
         const Tensor& dout, const Tensor& dstate, double c) {
        return op::on_device(kName, dout,
                             [&](auto dev) { return Op::backward(dev, qc, kc, vc, gc, bc, s0c, dout, dstate, c); });
      });
}

// The token-by-token form has CPU kernels only: a CUDA tensor gets a DeviceError naming the op.
KdaResult kda_attention_recurrent(const Variable& q, const Variable& k, const Variable& v, const Variable& g,
                                  const Variable& beta, const Variable& s0, double scale) {
  using Op = KdaAttentionOp;
  return run_op(
      kRecurrentName, false, q, k, v, g, beta, s0, scale,
      [](const Tensor& qc, const Tensor& kc, const Tensor& vc, const Tensor& gc, const Tensor& bc, const Tensor& s0c,
         double c) {
        return op::on_device(kRecurrentName, qc,
                             [&](CpuTag dev) { return Op::forward_recurrent(dev, qc, kc, vc, gc, bc, s0c, c); });
      },
      [](const Tensor& qc, const Tensor& kc, const Tensor& vc, const Tensor& gc, const Tensor& bc, const Tensor& s0c,
         const Tensor& dout, const Tensor& dstate, double c) {
        return op::on_device(kRecurrentName, dout, [&](CpuTag dev) {
          return Op::backward_recurrent(dev, qc, kc, vc, gc, bc, s0c, dout, dstate, c);
        });
      });
}

namespace {

using KdaFn = KdaResult (*)(const Variable&, const Variable&, const Variable&, const Variable&, const Variable&,
                            const Variable&, double);

// Random test rows of q and k scaled to unit length, as the layer feeds them (spec A2 step 2): a
// key of norm r makes I - beta k k^T expand the state by |1 - beta r^2| per step, so N(0, 1) keys
// of width 64 would overflow within a few dozen tokens. The op itself is exact for any input.
void normalise_rows(Variable& x) {
  if (!x.defined()) return;
  Tensor t = x.data().contiguous().clone();
  dispatch_float(t.dtype(), "kda", [&](auto tag) {
    using F = decltype(tag);
    F* p = t.data<F>();
    const int64_t n = t.size(3), rows = t.numel() / std::max<int64_t>(1, n);
    for (int64_t r = 0; r < rows; ++r) {
      double ss = 0;
      for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(p[r * n + i]) * static_cast<double>(p[r * n + i]);
      const double inv = 1.0 / std::sqrt(ss + 1e-6);
      for (int64_t i = 0; i < n; ++i) p[r * n + i] = static_cast<F>(static_cast<double>(p[r * n + i]) * inv);
    }
  });
  x = Variable(t, x.requires_grad());
}

// extras g [B, H, T, Dk], beta [B, H, T] (both indexed by token), s0 [B, H, Dk, Dv] (optional,
// carried from the output "state"); the differentiable output "state".
AttentionOpSpec make_spec(std::string name, std::string description, bool cuda, KdaFn fused, KdaFn reference) {
  AttentionOpSpec spec{
      .name = std::move(name),
      .description = std::move(description),
      .extras = {{.name = "g",
                  .shape = [](const AttnDims& d) { return Shape{d.B, d.H, d.T, d.Dk}; },
                  .query_axis = 2,
                  .low = -1.5,
                  .high = -0.02},
                 {.name = "beta",
                  .shape = [](const AttnDims& d) { return Shape{d.B, d.H, d.T}; },
                  .query_axis = 2,
                  .low = 0.05,
                  .high = 0.95},
                 {.name = "s0",
                  .shape = [](const AttnDims& d) { return Shape{d.B, d.H, d.Dk, d.Dv}; },
                  .low = -0.5,
                  .high = 0.5,
                  .optional = true}},
      .carried = {{"s0", "state"}},
      .options = {"scale: the readout scale s (default 1/sqrt(Dk))"},
      .prefix_mask = false,
      .non_causal = false,
      .cuda = cuda,
      .recurrent = true,
      .outputs = {"state"},
      .adjust_random_args = [](AttnOpArgs& a) {
        normalise_rows(a.q);
        normalise_rows(a.k);
      },
  };
  const std::string op = spec.name + "_attention";
  auto call = [op](KdaFn fn, const AttnOpArgs& a) {
    // No mask: the op is causal by construction; anything but the default plain causal mask is refused.
    AL_CHECK_CONFIG(a.mask.causal && a.mask.prefix == 0, op,
                    ": takes no mask (causal by construction; the state carries the past); got causal = ",
                    a.mask.causal ? "true" : "false", ", prefix = ", a.mask.prefix, " with q=", a.q.data());
    auto extra = [&](size_t i) { return i < a.extras.size() && a.extras[i].defined() ? a.extras[i] : Variable(); };
    const double scale = a.number(op, "scale", 0.0);
    const KdaResult r = fn(a.q, a.k, a.v, extra(0), extra(1), extra(2), scale);
    return AttnOpResult{.out = r.out, .outputs = {{"state", r.state}}};
  };
  spec.fused = [fused, call](const AttnOpArgs& a) { return call(fused, a); };
  spec.reference = [reference, call](const AttnOpArgs& a) { return call(reference, a); };
  return spec;
}

AttnDims dims(int64_t B, int64_t H, int64_t T, int64_t Dk, int64_t Dv) {
  AttnDims d;
  d.B = B, d.H = H, d.T = d.S = T, d.Dk = Dk, d.Dv = Dv;
  return d;
}

// A sample without s0 (a zero initial state, no ds0).
OpSample without_s0(OpSample s) {
  s.inputs.pop_back();
  s.grad_inputs.pop_back();
  s.label += " no s0";
  return s;
}

// f64 gradcheck samples: T <= 6 with and without s0, Dk != Dv, T = 1; for the chunkwise form
// also one that crosses a chunk edge (projections).
std::vector<OpSample> small_samples(const AttentionOpSpec& spec, bool long_one) {
  const AttentionMask causal{true, 0};
  std::vector<OpSample> s = {
      attention_op_sample(spec, dims(2, 2, 4, 4, 4), causal, 601),
      attention_op_sample(spec, dims(1, 2, 5, 4, 3), causal, 611),
      without_s0(attention_op_sample(spec, dims(1, 1, 6, 3, 2), causal, 621)),
      attention_op_sample(spec, dims(1, 2, 1, 5, 4), causal, 631),
  };
  if (long_one) s.push_back(attention_op_sample(spec, dims(1, 1, 70, 3, 2), causal, 641));
  return s;
}

std::vector<OpMisuse> misuses(KdaFn fn) {
  auto t = [](const Shape& sh, DType dt = DType::f32) { return Variable(Tensor::ones(sh, dt)); };
  const Shape x{1, 2, 4, 4}, bt{1, 2, 4};
  return {
      {"k with Dk=3, q with Dk=4", [=] { fn(t(x), t(Shape{1, 2, 4, 3}), t(x), t(x), t(bt), {}, 0.0); }},
      {"k with 5 rows, q with 4", [=] { fn(t(x), t(Shape{1, 2, 5, 4}), t(Shape{1, 2, 5, 4}), t(x), t(bt), {}, 0.0); }},
      {"v with 3 rows", [=] { fn(t(x), t(x), t(Shape{1, 2, 3, 4}), t(x), t(bt), {}, 0.0); }},
      {"g [1, 2, 4] (per head, not per channel)", [=] { fn(t(x), t(x), t(x), t(bt), t(bt), {}, 0.0); }},
      {"g [1, 2, 4, 3] for Dk=4", [=] { fn(t(x), t(x), t(x), t(Shape{1, 2, 4, 3}), t(bt), {}, 0.0); }},
      {"beta [1, 2, 4, 1]", [=] { fn(t(x), t(x), t(x), t(x), t(Shape{1, 2, 4, 1}), {}, 0.0); }},
      {"beta f64, q f32", [=] { fn(t(x), t(x), t(x), t(x), t(bt, DType::f64), {}, 0.0); }},
      {"s0 [1, 2, 3, 4] for Dk=4, Dv=4", [=] { fn(t(x), t(x), t(x), t(x), t(bt), t(Shape{1, 2, 3, 4}), 0.0); }},
      {"s0 f64, q f32", [=] { fn(t(x), t(x), t(x), t(x), t(bt), t(Shape{1, 2, 4, 4}, DType::f64), 0.0); }},
      {"q 3-D", [=] { fn(t(Shape{2, 4, 4}), t(x), t(x), t(x), t(bt), {}, 0.0); }},
      {"i32 inputs", [=] {
         fn(t(x, DType::i32), t(x, DType::i32), t(x, DType::i32), t(x, DType::i32), t(bt, DType::i32), {}, 0.0);
       }},
  };
}

}  // namespace

void register_attention_kda(OpRegistry& ops, AttentionOpRegistry& attention) {
  const AttentionMask causal{true, 0};
  const AttentionOpSpec chunked = make_spec(
      "kda",
      "Kimi Delta Attention, chunkwise: S_t = (I - beta_t k_t k_t^T) Diag(exp(g_t)) S_{t-1} + beta_t k_t v_t^T, "
      "out_t = S_t^T (s q_t); k, v have T rows; extras g [B, H, T, Dk] (log-decay), beta [B, H, T], carried s0 "
      "[B, H, Dk, Dv]; differentiable output state [B, H, Dk, Dv]",
      true, &kda_attention, &kda_attention_reference);
  // CUDA parity: several chunks with ragged last ones, Dk != Dv, the head-dim limits.
  std::vector<OpSample> parity = {
      attention_op_sample(chunked, dims(1, 2, 70, 16, 16), causal, 651),
      attention_op_sample(chunked, dims(1, 1, 130, 24, 20), causal, 661),
      attention_op_sample(chunked, dims(2, 1, 37, 16, 24), causal, 671),
      without_s0(attention_op_sample(chunked, dims(1, 1, 65, 64, 64), causal, 681)),
      attention_op_sample(chunked, dims(1, 1, 33, 128, 96), causal, 691),
  };
  attention.add(chunked);
  ops.add(attention_op_info(chunked, small_samples(chunked, true), std::move(parity), misuses(&kda_attention)));

  const AttentionOpSpec recurrent = make_spec(
      "kda_recurrent",
      "Kimi Delta Attention, token-by-token recurrence with backward through time (the same function as kda); "
      "extras g [B, H, T, Dk], beta [B, H, T], carried s0 [B, H, Dk, Dv]; differentiable output state; CPU only",
      false, &kda_attention_recurrent, &kda_attention_reference);
  attention.add(recurrent);
  ops.add(attention_op_info(recurrent, small_samples(recurrent, false), {}, misuses(&kda_attention_recurrent)));
}

}  // namespace attnlab
