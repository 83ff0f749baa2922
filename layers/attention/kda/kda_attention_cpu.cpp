// CPU forward and backward of the KDA core op (kda_attention.h), f32 and f64.
//
// Token-by-token form (spec A4/A5), per (b, h), state S [Dk, Dv] row-major, s the scale:
//   forward:  St = Diag(alpha_t) S;  e_t = v_t - St^T k_t;  S = St + beta_t k_t e_t^T;  o_t = s S^T q_t
//   backward: G = dstate; for t = T-1 .. 0:
//               G += s q_t do_t^T
//               dq_t = s S_t do_t = s (St do_t + beta_t k_t <e_t, do_t>)   (S_t is never stored)
//               de = beta_t G^T k_t;  dbeta_t = k_t^T G e_t;  dk_t = beta_t G e_t - St de;  dv_t = de
//               dSt = G - k_t de^T;  dg_t[i] = <dSt[i, :], St[i, :]>;  G = Diag(alpha_t) dSt
//             ds0 = G.
//   The backward never runs the recurrence backwards (that divides by alpha, unstable): the
//   forward states are checkpointed every kSeg = 64 steps (S before each segment), and each
//   segment is replayed forward from its checkpoint, keeping St and e per step, before its
//   reverse sweep. Scratch per (b, h): T / 64 checkpoints plus one segment: linear in T.
//
// Every (b, h) pair is one task (OpenMP via lib/cpu/parallel.h); a task owns its rows of every
// output, so the bits do not depend on the thread count. Accumulation is in the input's dtype.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "layers/attention/kda/kda_attention.h"
#include "lib/cpu/parallel.h"
#include "lib/error.h"

namespace attnlab {

namespace {

constexpr int64_t kSeg = 64;  // checkpoint interval of the recurrent backward

// A [B, H, T, D] tensor read through its strides (unit-stride last dim).
template <typename F>
struct Rows {
  const F* p = nullptr;
  int64_t sb = 0, sh = 0, st = 0;
  Rows() = default;
  explicit Rows(const Tensor& t)
      : p(t.data<F>()), sb(t.stride(0)), sh(t.stride(1)), st(t.stride(2)) {}
  const F* at(int64_t b, int64_t h, int64_t t) const { return p + b * sb + h * sh + t * st; }
};

struct Dims {
  int64_t B = 0, H = 0, T = 0, Dk = 0, Dv = 0;
  explicit Dims(const Tensor& q, const Tensor& v) : B(q.size(0)), H(q.size(1)), T(q.size(2)), Dk(q.size(3)), Dv(v.size(3)) {}
};

// The inputs of one call, typed.
template <typename F>
struct In {
  Rows<F> q, k, v, g;
  const F* beta = nullptr;  // [B, H, T] contiguous
  const F* s0 = nullptr;    // [B, H, Dk, Dv] contiguous or null
  In(const Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& g_, const Tensor& beta_, const Tensor& s0_)
      : q(q_), k(k_), v(v_), g(g_), beta(beta_.data<F>()), s0(s0_.defined() ? s0_.data<F>() : nullptr) {}
};

// One token of the recurrence on S [Dk, Dv]: decay, error against the decayed state, write.
// St (if non-null) receives the decayed state and e the error.
template <typename F>
inline void recurrent_step(F* S, F* St, F* e, const F* k, const F* v, const F* g, F beta, int64_t Dk, int64_t Dv) {
  for (int64_t j = 0; j < Dv; ++j) e[j] = v[j];
  for (int64_t i = 0; i < Dk; ++i) {
    const F a = std::exp(g[i]), ki = k[i];
    F* row = S + i * Dv;
    for (int64_t j = 0; j < Dv; ++j) {
      row[j] *= a;
      e[j] -= ki * row[j];
    }
  }
  if (St) std::copy(S, S + Dk * Dv, St);
  for (int64_t i = 0; i < Dk; ++i) {
    const F bk = beta * k[i];
    F* row = S + i * Dv;
    for (int64_t j = 0; j < Dv; ++j) row[j] += bk * e[j];
  }
}

template <typename F>
KdaAttentionOp::Forward recurrent_forward(const Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& g_,
                                          const Tensor& beta_, const Tensor& s0_, double scale) {
  const Dims d(q_, v_);
  const In<F> in(q_, k_, v_, g_, beta_, s0_);
  KdaAttentionOp::Forward f;
  f.out = Tensor::empty(Shape{d.B, d.H, d.T, d.Dv}, q_.dtype());
  f.state = Tensor::empty(Shape{d.B, d.H, d.Dk, d.Dv}, q_.dtype());
  F* out = f.out.data<F>();
  F* state = f.state.data<F>();
  const F c = static_cast<F>(scale);
  const int64_t SS = d.Dk * d.Dv;
  cpu::parallel_for(0, d.B * d.H, 1, [&](int64_t t0, int64_t t1) {
    std::vector<F> e(static_cast<size_t>(d.Dv));
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t b = task / d.H, h = task % d.H;
      F* S = state + task * SS;
      if (in.s0)
        std::copy(in.s0 + task * SS, in.s0 + (task + 1) * SS, S);
      else
        std::fill(S, S + SS, F(0));
      for (int64_t t = 0; t < d.T; ++t) {
        recurrent_step<F>(S, nullptr, e.data(), in.k.at(b, h, t), in.v.at(b, h, t), in.g.at(b, h, t),
                          in.beta[task * d.T + t], d.Dk, d.Dv);
        const F* q = in.q.at(b, h, t);
        F* o = out + (task * d.T + t) * d.Dv;
        std::fill(o, o + d.Dv, F(0));
        for (int64_t i = 0; i < d.Dk; ++i) {
          const F cq = c * q[i];
          const F* row = S + i * d.Dv;
          for (int64_t j = 0; j < d.Dv; ++j) o[j] += cq * row[j];
        }
      }
    }
  });
  return f;
}

template <typename F>
KdaAttentionOp::Grads recurrent_backward(const Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& g_,
                                         const Tensor& beta_, const Tensor& s0_, const Tensor& dout_,
                                         const Tensor& dstate_, double scale) {
  const Dims d(q_, v_);
  const In<F> in(q_, k_, v_, g_, beta_, s0_);
  const Rows<F> dout(dout_);
  const F* dstate = dstate_.defined() ? dstate_.data<F>() : nullptr;
  const DType dt = q_.dtype();
  KdaAttentionOp::Grads gr;
  gr.dq = Tensor::empty(Shape{d.B, d.H, d.T, d.Dk}, dt);
  gr.dk = Tensor::empty(Shape{d.B, d.H, d.T, d.Dk}, dt);
  gr.dv = Tensor::empty(Shape{d.B, d.H, d.T, d.Dv}, dt);
  gr.dg = Tensor::empty(Shape{d.B, d.H, d.T, d.Dk}, dt);
  gr.dbeta = Tensor::empty(Shape{d.B, d.H, d.T}, dt);
  gr.ds0 = Tensor::empty(Shape{d.B, d.H, d.Dk, d.Dv}, dt);
  F *dq = gr.dq.data<F>(), *dk = gr.dk.data<F>(), *dv = gr.dv.data<F>(), *dg = gr.dg.data<F>();
  F *dbeta = gr.dbeta.data<F>(), *ds0 = gr.ds0.data<F>();
  const F c = static_cast<F>(scale);
  const int64_t SS = d.Dk * d.Dv, nseg = (d.T + kSeg - 1) / kSeg;
  cpu::parallel_for(0, d.B * d.H, 1, [&](int64_t t0, int64_t t1) {
    std::vector<F> ck(static_cast<size_t>(nseg * SS)), S(static_cast<size_t>(SS));
    std::vector<F> St(static_cast<size_t>(kSeg * SS)), E(static_cast<size_t>(kSeg * d.Dv));
    std::vector<F> de(static_cast<size_t>(d.Dv)), ge(static_cast<size_t>(d.Dk));
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t b = task / d.H, h = task % d.H;
      const F* beta = in.beta + task * d.T;
      // Pass 1: the state entering each segment.
      if (in.s0)
        std::copy(in.s0 + task * SS, in.s0 + (task + 1) * SS, S.begin());
      else
        std::fill(S.begin(), S.end(), F(0));
      for (int64_t s = 0; s < nseg; ++s) {
        std::copy(S.begin(), S.end(), ck.begin() + s * SS);
        if (s + 1 == nseg) break;
        for (int64_t t = s * kSeg; t < (s + 1) * kSeg; ++t)
          recurrent_step<F>(S.data(), nullptr, de.data(), in.k.at(b, h, t), in.v.at(b, h, t), in.g.at(b, h, t),
                            beta[t], d.Dk, d.Dv);
      }
      // Pass 2: segments in reverse; replay each forward, then sweep it backwards.
      F* G = ds0 + task * SS;  // the running dL/dS_t, finally dL/dS_{-1}
      if (dstate)
        std::copy(dstate + task * SS, dstate + (task + 1) * SS, G);
      else
        std::fill(G, G + SS, F(0));
      for (int64_t s = nseg - 1; s >= 0; --s) {
        const int64_t ta = s * kSeg, tb = std::min(d.T, ta + kSeg);
        std::copy(ck.begin() + s * SS, ck.begin() + (s + 1) * SS, S.begin());
        for (int64_t t = ta; t < tb; ++t)
          recurrent_step<F>(S.data(), St.data() + (t - ta) * SS, E.data() + (t - ta) * d.Dv, in.k.at(b, h, t),
                            in.v.at(b, h, t), in.g.at(b, h, t), beta[t], d.Dk, d.Dv);
        for (int64_t t = tb - 1; t >= ta; --t) {
          const F* st = St.data() + (t - ta) * SS;
          const F* e = E.data() + (t - ta) * d.Dv;
          const F *q = in.q.at(b, h, t), *k = in.k.at(b, h, t), *g = in.g.at(b, h, t), *o = dout.at(b, h, t);
          const F bt = beta[t];
          const int64_t row = task * d.T + t;
          // G += s q do^T; de = beta G^T k; G e; <e, do>.
          F edo = 0;
          for (int64_t j = 0; j < d.Dv; ++j) edo += e[j] * o[j];
          std::fill(de.begin(), de.end(), F(0));
          for (int64_t i = 0; i < d.Dk; ++i) {
            const F cq = c * q[i], ki = k[i];
            F* Gi = G + i * d.Dv;
            F acc = 0;
            for (int64_t j = 0; j < d.Dv; ++j) {
              Gi[j] += cq * o[j];
              de[j] += ki * Gi[j];
              acc += Gi[j] * e[j];
            }
            ge[static_cast<size_t>(i)] = acc;
          }
          for (int64_t j = 0; j < d.Dv; ++j) de[j] *= bt;
          F db = 0;
          for (int64_t i = 0; i < d.Dk; ++i) {
            const F* sti = st + i * d.Dv;
            F sdo = 0, sde = 0;
            for (int64_t j = 0; j < d.Dv; ++j) {
              sdo += sti[j] * o[j];
              sde += sti[j] * de[j];
            }
            dq[row * d.Dk + i] = c * (sdo + bt * k[i] * edo);
            dk[row * d.Dk + i] = bt * ge[i] - sde;
            db += k[i] * ge[i];
          }
          dbeta[row] = db;
          for (int64_t j = 0; j < d.Dv; ++j) dv[row * d.Dv + j] = de[j];
          // dSt = G - k de^T; dg = rowsum(dSt o St); G = Diag(alpha) dSt.
          for (int64_t i = 0; i < d.Dk; ++i) {
            const F ki = k[i], a = std::exp(g[i]);
            const F* sti = st + i * d.Dv;
            F* Gi = G + i * d.Dv;
            F acc = 0;
            for (int64_t j = 0; j < d.Dv; ++j) {
              Gi[j] -= ki * de[j];
              acc += Gi[j] * sti[j];
              Gi[j] *= a;
            }
            dg[row * d.Dk + i] = acc;
          }
        }
      }
    }
  });
  return gr;
}

}  // namespace

KdaAttentionOp::Forward KdaAttentionOp::forward_recurrent(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                          const Tensor& g, const Tensor& beta, const Tensor& s0,
                                                          double scale) {
  return dispatch_float(q.dtype(), "kda_recurrent_attention",
                        [&](auto tag) { return recurrent_forward<decltype(tag)>(q, k, v, g, beta, s0, scale); });
}

KdaAttentionOp::Grads KdaAttentionOp::backward_recurrent(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                         const Tensor& g, const Tensor& beta, const Tensor& s0,
                                                         const Tensor& dout, const Tensor& dstate, double scale) {
  return dispatch_float(q.dtype(), "kda_recurrent_attention", [&](auto tag) {
    return recurrent_backward<decltype(tag)>(q, k, v, g, beta, s0, dout, dstate, scale);
  });
}

// Milestone 1: the chunkwise entry points run the recurrence (the chunkwise kernels replace them).
KdaAttentionOp::Forward KdaAttentionOp::forward(CpuTag dev, const Tensor& q, const Tensor& k, const Tensor& v,
                                                const Tensor& g, const Tensor& beta, const Tensor& s0, double scale) {
  return forward_recurrent(dev, q, k, v, g, beta, s0, scale);
}

KdaAttentionOp::Grads KdaAttentionOp::backward(CpuTag dev, const Tensor& q, const Tensor& k, const Tensor& v,
                                               const Tensor& g, const Tensor& beta, const Tensor& s0,
                                               const Tensor& dout, const Tensor& dstate, double scale) {
  return backward_recurrent(dev, q, k, v, g, beta, s0, dout, dstate, scale);
}

}  // namespace attnlab
