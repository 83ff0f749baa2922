// Autograd wiring of the routing op (attnres.h), its samples, misuses and registration.
#include "layers/residual/attnres/attnres.h"

#include <memory>
#include <string>

#include "autograd/op_helpers.h"
#include "autograd/ops/view/view.h"

namespace attnlab {

namespace {

std::string shapes(const std::vector<Tensor>& src) {
  std::string s = "[";
  for (size_t i = 0; i < src.size(); ++i) s += (i ? ", " : "") + src[i].str();
  return s + "]";
}

// The common body of both forms. `inputs` are the graph inputs standing for the sources (the
// stacked src, or one Variable per source); `src` their data as N contiguous [B, T, D] tensors.
AttnResResult run(const char* who, const std::vector<Variable>& inputs, const std::vector<Tensor>& src, bool stacked,
                  const Variable& r, const Variable& w, const Variable& g, const Variable& gate) {
  const Tensor rc = r.defined() ? r.data().contiguous() : Tensor();
  const Tensor wc = w.data().contiguous(), gc = g.data().contiguous();
  const Tensor gatec = gate.defined() ? gate.data().contiguous() : Tensor();
  AttnResOp::Forward f =
      op::on_device(who, src[0], [&](auto dev) { return AttnResOp::forward(dev, src, rc, wc, gc, gatec); });
  std::vector<Variable> in = inputs;
  const size_t n_src = inputs.size();
  const bool has_r = r.defined(), has_gate = gate.defined();
  if (has_r) in.push_back(r);
  in.push_back(w);
  in.push_back(g);
  if (has_gate) in.push_back(gate);
  const std::string name = who;
  Variable out = make_output(
      who, in, f.out,
      [name, src, wc, gc, gatec, a = f.a, rho = f.rho, n_src, stacked, has_r, has_gate](const Tensor& dout,
                                                                                       const GradMask& needs) {
        bool need_src = false;
        for (size_t i = 0; i < n_src; ++i) need_src = need_src || needs[i];
        size_t k = n_src + (has_r ? 1 : 0);
        const bool need_wg = needs[k] || needs[k + 1];
        const bool need_gate = has_gate && needs[k + 2];
        const Tensor G = dout.contiguous();
        AttnResOp::Grads gr = op::on_device(name, G, [&](auto dev) {
          return AttnResOp::backward(dev, src, wc, gc, gatec, a, rho, G, need_src, need_wg, need_gate);
        });
        std::vector<Tensor> grads;
        if (stacked) {
          grads.push_back(needs[0] ? gr.dsrc : Tensor());
        } else {
          const Shape s = src[0].shape();
          for (size_t i = 0; i < n_src; ++i)
            grads.push_back(needs[i] ? gr.dsrc.narrow(0, static_cast<int64_t>(i), 1).view(s) : Tensor());
        }
        if (has_r) grads.push_back(needs[n_src] ? G : Tensor());
        grads.push_back(needs[k] ? gr.dw : Tensor());
        grads.push_back(needs[k + 1] ? gr.dg : Tensor());
        if (has_gate) grads.push_back(need_gate ? gr.dgate : Tensor());
        return grads;
      });
  return {out, f.a};
}

void check_vars(const char* who, const Variable& w, const Variable& g) {
  op::check_defined(who, "w", w);
  op::check_defined(who, "g", g);
}

}  // namespace

void AttnResOp::check(const char* who, const std::vector<Tensor>& src, const Tensor& r, const Tensor& w,
                      const Tensor& g, const Tensor& gate) {
  AL_CHECK_SHAPE(!src.empty(), who, ": needs at least one source; got none (w=", w, ")");
  const Tensor& s0 = src[0];
  op::check_float(who, "src", s0);
  AL_CHECK_SHAPE(s0.ndim() == 3 && s0.numel() > 0, who, ": every source must be [B, T, D] with B, T, D >= 1; got ",
                 shapes(src));
  for (const Tensor& s : src) {
    AL_CHECK_SHAPE(s.shape() == s0.shape(), who, ": every source must have the first one's shape [B, T, D]; got ",
                   shapes(src));
    AL_CHECK_DTYPE(s.dtype() == s0.dtype(), who, ": every source must have the first one's dtype; got ", shapes(src));
    AL_CHECK_DEVICE(s.device() == s0.device(), who, ": every source must be on the first one's device; got ",
                    shapes(src));
  }
  const int64_t D = s0.size(2);
  auto same = [&](const char* arg, const Tensor& t) {
    AL_CHECK_DTYPE(t.dtype() == s0.dtype(), who, ": ", arg, " must have src's dtype; got ", arg, "=", t, ", src=", s0);
    AL_CHECK_DEVICE(t.device() == s0.device(), who, ": ", arg, " must be on src's device; got ", arg, "=", t,
                    ", src=", s0);
  };
  if (r.defined()) {
    AL_CHECK_SHAPE(r.shape() == s0.shape(), who, ": r (the residual stream) must be [B, T, D] like a source; got r=",
                   r, ", sources ", shapes(src));
    same("r", r);
  }
  AL_CHECK_SHAPE(w.ndim() == 1 && w.size(0) == D, who, ": w (the pseudo-query) must be [D] with D = ", D,
                 "; got w=", w, ", src=", s0);
  AL_CHECK_SHAPE(g.ndim() == 1 && g.size(0) == D, who, ": g (the key RMSNorm gain) must be [D] with D = ", D,
                 "; got g=", g, ", src=", s0);
  same("w", w);
  same("g", g);
  if (gate.defined()) {
    AL_CHECK_SHAPE(gate.numel() == 1 && gate.ndim() <= 1, who, ": gate must be a scalar, [] or [1]; got gate=", gate,
                   ", src=", s0);
    same("gate", gate);
  }
}

AttnResResult attnres_route(const std::vector<Variable>& sources, const Variable& r, const Variable& w,
                            const Variable& g, const Variable& gate) {
  const char* who = r.defined() ? "delta_attnres" : "attnres";
  check_vars(who, w, g);
  std::vector<Tensor> src;
  for (size_t i = 0; i < sources.size(); ++i) {
    op::check_defined(who, "source", sources[i]);
    src.push_back(sources[i].data());
  }
  AttnResOp::check(who, src, r.defined() ? r.data() : Tensor(), w.data(), g.data(),
                   gate.defined() ? gate.data() : Tensor());
  // A non-contiguous source is packed once here (the model hands over contiguous ones).
  for (Tensor& s : src) s = s.contiguous();
  return run(who, sources, src, /*stacked=*/false, r, w, g, gate);
}

namespace {

AttnResResult stacked(const char* who, const Variable& src, const Variable& r, const Variable& w, const Variable& g,
                      const Variable& gate) {
  op::check_defined(who, "src", src);
  check_vars(who, w, g);
  AL_CHECK_SHAPE(src.ndim() == 4 && src.numel() > 0, who,
                 ": src must be [N, B, T, D] (N sources) with every size >= 1; got src=", src.data());
  const Tensor sc = src.data().contiguous();
  const int64_t N = sc.size(0);
  const Shape s{sc.size(1), sc.size(2), sc.size(3)};
  std::vector<Tensor> views;
  for (int64_t i = 0; i < N; ++i) views.push_back(sc.narrow(0, i, 1).view(s));
  AttnResOp::check(who, views, r.defined() ? r.data() : Tensor(), w.data(), g.data(),
                   gate.defined() ? gate.data() : Tensor());
  return run(who, {src}, views, /*stacked=*/true, r, w, g, gate);
}

}  // namespace

AttnResResult delta_attnres(const Variable& src, const Variable& r, const Variable& w, const Variable& g,
                            const Variable& gate) {
  op::check_defined("delta_attnres", "r", r);
  return stacked("delta_attnres", src, r, w, g, gate);
}

AttnResResult attnres(const Variable& src, const Variable& w, const Variable& g, const Variable& gate) {
  return stacked("attnres", src, Variable(), w, g, gate);
}

// ---- samples, misuses, registration -----------------------------------------------------------

namespace {

// Inputs: src [N, B, T, D], (r [B, T, D],) w [D], g [D], (gate [1]).
OpSample make_sample(bool delta, int64_t N, int64_t B, int64_t T, int64_t D, bool with_gate, uint64_t seed,
                     bool list_form = false, bool with_a = false) {
  OpSample s;
  s.label = std::string(delta ? "delta_attnres" : "attnres") + " N=" + std::to_string(N) + " B=" + std::to_string(B) +
            " T=" + std::to_string(T) + " D=" + std::to_string(D) + (with_gate ? " gate" : "") +
            (list_form ? " (source list)" : "");
  s.inputs.push_back(sample_randn(Shape{N, B, T, D}, seed));
  if (delta) s.inputs.push_back(sample_randn(Shape{B, T, D}, seed + 1));
  // A pseudo-query large enough that the weights are far from uniform.
  s.inputs.push_back(sample_randn(Shape{D}, seed + 2, 0.8));
  s.inputs.push_back(sample_uniform(Shape{D}, seed + 3, 0.5, 1.5));
  if (with_gate) s.inputs.push_back(sample_uniform(Shape{1}, seed + 4, 0.3, 1.2));
  s.run = [delta, with_gate, list_form, with_a, N](const std::vector<Variable>& in) {
    size_t k = 0;
    const Variable src = in[k++];
    const Variable r = delta ? in[k++] : Variable();
    const Variable w = in[k++], g = in[k++];
    const Variable gate = with_gate ? in[k++] : Variable();
    AttnResResult res;
    if (list_form) {
      std::vector<Variable> sources;
      for (int64_t i = 0; i < N; ++i)
        sources.push_back(reshape(narrow(src, 0, i, 1), Shape{src.size(1), src.size(2), src.size(3)}));
      res = attnres_route(sources, r, w, g, gate);
    } else {
      res = delta ? delta_attnres(src, r, w, g, gate) : attnres(src, w, g, gate);
    }
    std::vector<Variable> outs{res.out};
    if (with_a) outs.emplace_back(res.a);
    return outs;
  };
  return s;
}

}  // namespace

std::vector<OpSample> AttnResOp::samples(bool delta) {
  return {
      make_sample(delta, 3, 2, 3, 4, false, 11),
      make_sample(delta, 3, 2, 3, 4, true, 21),
      make_sample(delta, 1, 1, 2, 5, true, 31),
      make_sample(delta, 5, 1, 2, 3, false, 41, /*list_form=*/true),
      make_sample(delta, 4, 2, 1, 6, true, 51, /*list_form=*/true),
  };
}

// Larger shapes for the CUDA parity test: several blocks of tokens (8 per block), ragged token
// counts and widths that are not multiples of the warp, many sources; a returned too.
std::vector<OpSample> AttnResOp::parity_samples(bool delta) {
  return {
      make_sample(delta, 7, 2, 37, 96, true, 61, false, true),
      make_sample(delta, 13, 1, 20, 130, false, 71, true, true),
      make_sample(delta, 25, 1, 41, 33, true, 81, false, true),
      make_sample(delta, 2, 3, 9, 7, true, 91, true, true),
  };
}

std::vector<OpMisuse> AttnResOp::misuses(bool delta) {
  auto t = [](const Shape& s, DType dt = DType::f32) { return Variable(Tensor::ones(s, dt)); };
  const Shape ss{3, 2, 4, 8}, rs{2, 4, 8}, ds{8};
  auto call = [delta](const Variable& src, const Variable& r, const Variable& w, const Variable& g,
                      const Variable& gate = {}) {
    if (delta)
      delta_attnres(src, r, w, g, gate);
    else
      attnres(src, w, g, gate);
  };
  std::vector<OpMisuse> m = {
      {"3-D src", [=] { call(t(rs), t(rs), t(ds), t(ds)); }},
      {"w [7] for D=8", [=] { call(t(ss), t(rs), t(Shape{7}), t(ds)); }},
      {"g [2, 8]", [=] { call(t(ss), t(rs), t(ds), t(Shape{2, 8})); }},
      {"w f64, src f32", [=] { call(t(ss), t(rs), t(ds, DType::f64), t(ds)); }},
      {"gate [2]", [=] { call(t(ss), t(rs), t(ds), t(ds), t(Shape{2})); }},
      {"i32 src", [=] { call(t(ss, DType::i32), t(rs, DType::i32), t(ds, DType::i32), t(ds, DType::i32)); }},
      {"empty source list", [=] { attnres_route({}, delta ? t(rs) : Variable(), t(ds), t(ds)); }},
      {"sources of two shapes", [=] { attnres_route({t(rs), t(Shape{2, 4, 7})}, delta ? t(rs) : Variable(), t(ds), t(ds)); }},
  };
  if (delta) {
    m.push_back({"r [2, 3, 8] for src [3, 2, 4, 8]", [=] { call(t(ss), t(Shape{2, 3, 8}), t(ds), t(ds)); }});
    m.push_back({"r f64, src f32", [=] { call(t(ss), t(rs, DType::f64), t(ds), t(ds)); }});
  }
  return m;
}

void register_residual_attnres(OpRegistry& ops) {
  ops.add(OpInfo{.name = "attnres",
                 .samples = [] { return AttnResOp::samples(false); },
                 .misuses = [] { return AttnResOp::misuses(false); },
                 .cuda = true,
                 .parity_samples = [] { return AttnResOp::parity_samples(false); }});
  ops.add(OpInfo{.name = "delta_attnres",
                 .samples = [] { return AttnResOp::samples(true); },
                 .misuses = [] { return AttnResOp::misuses(true); },
                 .cuda = true,
                 .parity_samples = [] { return AttnResOp::parity_samples(true); }});
}

}  // namespace attnlab
