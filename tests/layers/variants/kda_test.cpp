// Kimi Delta Attention (layers/attention/kda/): the chunkwise form ("kda") against the token-by-
// token recurrence ("kda_recurrent") in f64 and f32 for every output and gradient across chunk
// edges, the GDN (g shared by the channels) and DeltaNet (g = 0) special cases against their
// closed forms at T = 2, stability under a strong decay, continuation through the carried state
// with gradients flowing through it, strided inputs, thread-count independence and the misuse
// messages. The generic suite (generic_test.cpp) covers fused vs composed reference, causality,
// the carried state and threads for both registered forms.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "autograd/ops.h"
#include "layers/attention/kda/kda_attention.h"
#include "lib/error.h"
#include "tests/support/tensor_compare.h"

namespace attnlab {
namespace {

using test::bit_equal;
using test::max_diff;

// The largest magnitude (0 for an undefined tensor, e.g. ds0 without s0).
double max_abs(const Tensor& t) { return t.defined() ? test::max_abs(t) : 0.0; }

// Rows of x [.., D] scaled to unit length (the layer L2-normalises q and k before the op).
Tensor unit_rows(const Tensor& x) {
  Tensor t = x.contiguous().clone();
  double* p = t.data<double>();
  const int64_t n = t.size(-1);
  for (int64_t r = 0; r < t.numel() / n; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += p[r * n + i] * p[r * n + i];
    for (int64_t i = 0; i < n; ++i) p[r * n + i] /= std::sqrt(ss);
  }
  return t;
}

struct Inputs {
  Tensor q, k, v, g, beta, s0;  // f64; s0 may be undefined
};

Inputs random_inputs(int64_t B, int64_t H, int64_t T, int64_t Dk, int64_t Dv, uint64_t seed, bool with_s0,
                     double g_low = -1.5, double g_high = -0.02) {
  Inputs in;
  in.q = unit_rows(sample_randn(Shape{B, H, T, Dk}, seed));
  in.k = unit_rows(sample_randn(Shape{B, H, T, Dk}, seed + 1));
  in.v = sample_randn(Shape{B, H, T, Dv}, seed + 2);
  in.g = sample_uniform(Shape{B, H, T, Dk}, seed + 3, g_low, g_high);
  in.beta = sample_uniform(Shape{B, H, T}, seed + 4, 0.05, 0.95);
  if (with_s0) in.s0 = sample_uniform(Shape{B, H, Dk, Dv}, seed + 5, -0.5, 0.5);
  return in;
}

Inputs cast(const Inputs& a, DType dt) {
  auto to = [dt](const Tensor& t) { return t.defined() ? t.to(dt) : t; };
  return {to(a.q), to(a.k), to(a.v), to(a.g), to(a.beta), to(a.s0)};
}

enum class Form { chunkwise, recurrent, reference };

KdaResult call(Form f, const Variable& q, const Variable& k, const Variable& v, const Variable& g, const Variable& beta,
               const Variable& s0) {
  switch (f) {
    case Form::chunkwise: return kda_attention(q, k, v, g, beta, s0);
    case Form::recurrent: return kda_attention_recurrent(q, k, v, g, beta, s0);
    default: return kda_attention_reference(q, k, v, g, beta, s0);
  }
}

const char* kNames[] = {"out", "state", "dq", "dk", "dv", "dg", "dbeta", "ds0"};

// out, state, then dq, dk, dv, dg, dbeta, ds0 for upstream gradients dout and dstate.
std::vector<Tensor> run(Form f, const Inputs& in, const Tensor& dout, const Tensor& dstate) {
  Variable q(in.q, true), k(in.k, true), v(in.v, true), g(in.g, true), beta(in.beta, true);
  Variable s0 = in.s0.defined() ? Variable(in.s0, true) : Variable();
  const KdaResult r = call(f, q, k, v, g, beta, s0);
  backward({r.out, r.state}, {dout.to(in.q.dtype()), dstate.to(in.q.dtype())});
  return {r.out.data(), r.state.data(), q.grad(), k.grad(), v.grad(), g.grad(), beta.grad(),
          s0.defined() ? s0.grad() : Tensor()};
}

struct Upstream {
  Tensor dout, dstate;
};
Upstream upstream(const Inputs& in, uint64_t seed) {
  const int64_t B = in.q.size(0), H = in.q.size(1), T = in.q.size(2), Dk = in.q.size(3), Dv = in.v.size(3);
  return {sample_randn(Shape{B, H, T, Dv}, seed), sample_randn(Shape{B, H, Dk, Dv}, seed + 1)};
}

// The chunkwise form equals the recurrence in f64: out, state and every gradient, with T on both
// sides of one and three chunk edges, T = 1, Dk != Dv, with and without s0.
TEST(Kda, ChunkwiseMatchesRecurrentFloat64) {
  struct C {
    int64_t B, H, T, Dk, Dv;
    bool s0;
  };
  for (const C& c : {C{2, 2, 1, 8, 8, true}, C{1, 2, 63, 16, 12, true}, C{2, 1, 64, 12, 16, false},
                     C{1, 2, 65, 16, 12, true}, C{1, 1, 200, 24, 20, true}, C{1, 1, 130, 64, 32, false}}) {
    const Inputs in = random_inputs(c.B, c.H, c.T, c.Dk, c.Dv, 100 + static_cast<uint64_t>(c.T), c.s0);
    const Upstream u = upstream(in, 7);
    const std::vector<Tensor> a = run(Form::chunkwise, in, u.dout, u.dstate);
    const std::vector<Tensor> b = run(Form::recurrent, in, u.dout, u.dstate);
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_LE(max_diff(a[i], b[i]), 1e-10 * std::max(1.0, max_abs(b[i])))
          << "T=" << c.T << " Dk=" << c.Dk << " Dv=" << c.Dv << (c.s0 ? " s0 " : " ") << kNames[i];
  }
}

// The op is exact for any log-decay, not only g <= 0 (growth factors alpha > 1 inside a chunk):
// chunkwise == recurrent with g of both signs, and with g = 0 on some channels only.
TEST(Kda, ChunkwiseMatchesRecurrentForAnyLogDecay) {
  Inputs in = random_inputs(1, 2, 150, 16, 8, 150, true, -0.3, 0.2);
  const Upstream u = upstream(in, 14);
  std::vector<Tensor> a = run(Form::chunkwise, in, u.dout, u.dstate), b = run(Form::recurrent, in, u.dout, u.dstate);
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_LE(max_diff(a[i], b[i]), 1e-10 * std::max(1.0, max_abs(b[i]))) << "mixed-sign g " << kNames[i];
  double* g = in.g.data<double>();
  for (int64_t i = 0; i < in.g.numel(); i += 3) g[i] = 0.0;  // every third channel never decays
  a = run(Form::chunkwise, in, u.dout, u.dstate), b = run(Form::recurrent, in, u.dout, u.dstate);
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_LE(max_diff(a[i], b[i]), 1e-10 * std::max(1.0, max_abs(b[i]))) << "partly zero g " << kNames[i];
}

// The recurrent form against the composed reference (the generic suite does this at its shapes;
// here across two checkpoint segments, so the replay from a checkpoint is exercised).
TEST(Kda, RecurrentMatchesReferenceAcrossCheckpoints) {
  const Inputs in = random_inputs(1, 2, 140, 8, 6, 300, true);
  const Upstream u = upstream(in, 8);
  const std::vector<Tensor> a = run(Form::recurrent, in, u.dout, u.dstate);
  const std::vector<Tensor> b = run(Form::reference, in, u.dout, u.dstate);
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_LE(max_diff(a[i], b[i]), 1e-10 * std::max(1.0, max_abs(b[i]))) << kNames[i];
}

// f32 chunkwise against the f64 recurrence on the same rounded inputs: relative error < 5e-3
// (spec A8.7's tolerance), for every output and gradient.
TEST(Kda, ChunkwiseFloat32AgreesWithRecurrentFloat64) {
  for (int64_t T : {100, 257}) {
    const Inputs in32 = cast(random_inputs(2, 2, T, 64, 64, 400 + static_cast<uint64_t>(T), true), DType::f32);
    const Inputs in64 = cast(in32, DType::f64);
    const Upstream u = upstream(in64, 9);
    const std::vector<Tensor> a = run(Form::chunkwise, in32, u.dout.to(DType::f32).to(DType::f64),
                                      u.dstate.to(DType::f32).to(DType::f64));
    const std::vector<Tensor> b = run(Form::recurrent, in64, u.dout.to(DType::f32).to(DType::f64),
                                      u.dstate.to(DType::f32).to(DType::f64));
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].dtype(), DType::f32) << kNames[i];
      EXPECT_LE(max_diff(a[i], b[i]), 5e-3 * max_abs(b[i])) << "T=" << T << " " << kNames[i];
    }
  }
}

// T = 2, Dk = 2, Dv = 1 by hand. With one decay a_t per token (GDN; DeltaNet: a_t = 1):
//   S_0 = b0 k0 v0,  o_0 = s b0 <q0, k0> v0
//   e_1 = v1 - a1 b0 <k0, k1> v0,  S_1 = a1 b0 k0 v0 + b1 k1 e_1,  o_1 = s <q1, S_1>.
TEST(Kda, GatedDeltaNetAndDeltaNetClosedForms) {
  const double q0[2] = {0.6, 0.8}, q1[2] = {-0.28, 0.96}, k0[2] = {1.0, 0.0}, k1[2] = {0.8, -0.6};
  const double v0 = 1.5, v1 = -0.7, b0 = 0.3, b1 = 0.8, s = 1.0 / std::sqrt(2.0);
  for (double gamma : {0.0, -0.4}) {  // DeltaNet, then GDN with log-decay -0.4 on both channels
    const double a1 = std::exp(gamma);
    const double e1 = v1 - a1 * b0 * (k0[0] * k1[0] + k0[1] * k1[1]) * v0;
    const double S1[2] = {a1 * b0 * k0[0] * v0 + b1 * k1[0] * e1, a1 * b0 * k0[1] * v0 + b1 * k1[1] * e1};
    const double o0 = s * b0 * (q0[0] * k0[0] + q0[1] * k0[1]) * v0, o1 = s * (q1[0] * S1[0] + q1[1] * S1[1]);
    auto t = [](const std::vector<double>& x, const Shape& sh) { return Variable(Tensor::from_vector(sh, x)); };
    const Variable q = t({q0[0], q0[1], q1[0], q1[1]}, Shape{1, 1, 2, 2});
    const Variable k = t({k0[0], k0[1], k1[0], k1[1]}, Shape{1, 1, 2, 2});
    const Variable v = t({v0, v1}, Shape{1, 1, 2, 1});
    const Variable g = t({gamma, gamma, gamma, gamma}, Shape{1, 1, 2, 2});
    const Variable beta = t({b0, b1}, Shape{1, 1, 2});
    for (Form f : {Form::chunkwise, Form::recurrent, Form::reference}) {
      const KdaResult r = call(f, q, k, v, g, beta, {});
      const std::vector<double> out = r.out.data().to_vector<double>(), st = r.state.data().to_vector<double>();
      EXPECT_NEAR(out[0], o0, 1e-14) << "gamma " << gamma;
      EXPECT_NEAR(out[1], o1, 1e-14) << "gamma " << gamma;
      EXPECT_NEAR(st[0], S1[0], 1e-14) << "gamma " << gamma;
      EXPECT_NEAR(st[1], S1[1], 1e-14) << "gamma " << gamma;
    }
  }
}

// A per-step log-decay of -5 on every channel for 200 steps: exp(+G) over a 64-chunk would be
// e^320 (f32 and f64 overflow); the chunkwise form must stay finite and equal the recurrence.
TEST(Kda, StrongDecayStaysFinite) {
  for (DType dt : {DType::f64, DType::f32}) {
    Inputs in = random_inputs(1, 2, 200, 16, 16, 500, true);
    in.g = Tensor::full(in.g.shape(), -5.0, DType::f64);
    const Inputs x = cast(in, dt);
    const Upstream u = upstream(in, 10);
    const std::vector<Tensor> a = run(Form::chunkwise, x, u.dout, u.dstate);
    const std::vector<Tensor> b = run(Form::recurrent, cast(in, DType::f64), u.dout, u.dstate);
    for (size_t i = 0; i < a.size(); ++i) {
      for (double y : a[i].to_vector<double>()) ASSERT_TRUE(std::isfinite(y)) << dtype_name(dt) << " " << kNames[i];
      const double tol = (dt == DType::f64 ? 1e-10 : 1e-4) * std::max(1.0, max_abs(b[i]));
      EXPECT_LE(max_diff(a[i], b[i]), tol) << dtype_name(dt) << " " << kNames[i];
    }
  }
}

// Two calls chained through the state equal one call, values and gradients: the second call's
// s0 is the first call's (differentiable) state, so the gradients of the first piece's inputs
// flow through it.
TEST(Kda, TwoCallsThroughTheStateEqualOne) {
  for (Form f : {Form::chunkwise, Form::recurrent}) {
    for (int64_t split : {1, 30, 64, 71}) {
      const int64_t T = 100;
      const Inputs in = random_inputs(2, 2, T, 16, 8, 600, true);
      const Upstream u = upstream(in, 11);
      const std::vector<Tensor> one = run(f, in, u.dout, u.dstate);

      Variable q(in.q, true), k(in.k, true), v(in.v, true), g(in.g, true), beta(in.beta, true), s0(in.s0, true);
      auto part = [&](const Variable& x, int64_t a, int64_t n) { return narrow(x, 2, a, n); };
      const int64_t n2 = T - split;
      const KdaResult r1 = call(f, part(q, 0, split), part(k, 0, split), part(v, 0, split), part(g, 0, split),
                                part(beta, 0, split), s0);
      const KdaResult r2 = call(f, part(q, split, n2), part(k, split, n2), part(v, split, n2), part(g, split, n2),
                                part(beta, split, n2), r1.state);
      backward({r1.out, r2.out, r2.state}, {u.dout.narrow(2, 0, split).contiguous(),
                                            u.dout.narrow(2, split, n2).contiguous(), u.dstate});
      const Tensor out = concat({r1.out, r2.out}, 2).data();
      const std::vector<Tensor> two = {out, r2.state.data(), q.grad(), k.grad(), v.grad(), g.grad(), beta.grad(),
                                       s0.grad()};
      for (size_t i = 0; i < one.size(); ++i)
        EXPECT_LE(max_diff(two[i], one[i]), 1e-10 * std::max(1.0, max_abs(one[i])))
            << (f == Form::chunkwise ? "kda" : "kda_recurrent") << " split " << split << " " << kNames[i];
    }
  }
}

// q, k, v, g as token-major views ([B, T, H, D] memory, permuted): the kernels read the strides.
TEST(Kda, StridedInputsMatchContiguous) {
  const int64_t B = 2, H = 3, T = 70, Dk = 16, Dv = 8;
  const Inputs in = random_inputs(B, H, T, Dk, Dv, 700, true);
  auto token_major = [](const Tensor& x) { return x.permute({0, 2, 1, 3}).contiguous().permute({0, 2, 1, 3}); };
  Inputs strided = in;
  strided.q = token_major(in.q), strided.k = token_major(in.k), strided.v = token_major(in.v),
  strided.g = token_major(in.g);
  ASSERT_FALSE(strided.q.is_contiguous());
  const Upstream u = upstream(in, 12);
  for (Form f : {Form::chunkwise, Form::recurrent}) {
    const std::vector<Tensor> a = run(f, strided, token_major(u.dout), u.dstate), b = run(f, in, u.dout, u.dstate);
    for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(bit_equal(a[i].contiguous(), b[i].contiguous())) << kNames[i];
  }
}

#ifdef _OPENMP
TEST(Kda, BitIdenticalOnOneAndTwoThreads) {
  const int saved = omp_get_max_threads();
  for (DType dt : {DType::f32, DType::f64}) {
    const Inputs in = cast(random_inputs(2, 3, 150, 32, 24, 800, true), dt);
    const Upstream u = upstream(in, 13);
    for (Form f : {Form::chunkwise, Form::recurrent}) {
      std::vector<Tensor> r[2];
      for (int threads : {1, 2}) {
        omp_set_num_threads(threads);
        r[threads - 1] = run(f, in, u.dout, u.dstate);
      }
      omp_set_num_threads(saved);
      for (size_t i = 0; i < r[0].size(); ++i)
        EXPECT_TRUE(bit_equal(r[0][i], r[1][i])) << dtype_name(dt) << " " << kNames[i];
    }
  }
}
#endif

// Misuse: the error names the op and prints the shapes.
TEST(Kda, MisuseMessagesNameTheOpAndShapes) {
  auto t = [](const Shape& sh, DType dt = DType::f32) { return Variable(Tensor::ones(sh, dt)); };
  const Shape x{1, 2, 4, 4}, bt{1, 2, 4};
  auto expect = [](auto fn, const std::string& name, const std::string& needle) {
    try {
      fn();
      ADD_FAILURE() << name << ": no error";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(name), std::string::npos) << msg;
      EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    }
  };
  expect([&] { kda_attention(t(x), t(Shape{1, 2, 4, 3}), t(x), t(x), t(bt)); }, "kda_attention", "k=[1, 2, 4, 3]");
  expect([&] { kda_attention_recurrent(t(x), t(x), t(x), t(Shape{1, 2, 4}), t(bt)); }, "kda_recurrent_attention",
         "g=[1, 2, 4]");
  expect([&] { kda_attention(t(x), t(x), t(x), t(x), t(bt, DType::f64)); }, "kda_attention", "beta=[1, 2, 4] f64");
  expect([&] { kda_attention(t(x), t(x), t(x), t(x), t(bt), t(Shape{1, 2, 4, 5})); }, "kda_attention",
         "s0=[1, 2, 4, 5]");
  expect([&] { kda_attention_reference(t(x), t(x), t(Shape{1, 2, 5, 4}), t(x), t(bt)); }, "kda", "v=[1, 2, 5, 4]");
  EXPECT_THROW(kda_attention(t(x), t(x), t(x), t(x), t(Shape{2, 4})), ShapeError);
  EXPECT_THROW(kda_attention(t(x), t(x), t(x), t(x, DType::f64), t(bt)), DTypeError);
}

}  // namespace
}  // namespace attnlab
