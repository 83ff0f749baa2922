// The fused softmax attention against its composed reference: values and the three gradients in
// f64 and f32 over shapes that cross the kernel's tiles, masks (causal, offset S > T,
// bidirectional prefix, not causal), gradcheck, causality, the saved log-sum-exp, bit-identical
// results on 1 and 2 threads, empty queries, and a timing print (never an assertion).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "autograd/gradcheck.h"
#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "layers/attention/softmax/softmax_attention.h"
#include "lib/cpu/parallel.h"
#include "lib/error.h"
#include "lib/rng.h"
#include "tests/support/tensor_compare.h"

namespace attnlab {

namespace {

using test::max_abs;
using test::max_diff;
using test::bit_equal;

struct Case {
  int64_t B, H, T, S, Dk, Dv;
  AttentionMask mask;
  double scale = 0.0;

  std::string str() const {
    char buf[160];
    std::snprintf(buf, sizeof buf, "B=%lld H=%lld T=%lld S=%lld Dk=%lld Dv=%lld %s prefix=%lld scale=%g",
                  static_cast<long long>(B), static_cast<long long>(H), static_cast<long long>(T),
                  static_cast<long long>(S), static_cast<long long>(Dk), static_cast<long long>(Dv),
                  mask.causal ? "causal" : "full", static_cast<long long>(mask.prefix), scale);
    return buf;
  }
};

const AttentionMask kCausal{true, 0};
const AttentionMask kFull{false, 0};
AttentionMask prefix(int64_t p) { return {true, p}; }

// Shapes that cross tile edges (63, 64, 65, 95, 96, 97, 130, 193), offsets S > T, D = 1..64 (some
// not a multiple of the vector width), every mask.
std::vector<Case> cases() {
  return {
      {1, 2, 1, 1, 16, 16, kCausal},      {1, 2, 63, 63, 16, 16, kCausal},     {1, 2, 64, 64, 64, 64, kCausal},
      {2, 2, 65, 65, 16, 16, kCausal},    {1, 2, 130, 130, 64, 64, kCausal},   {1, 2, 1, 130, 64, 64, kCausal},
      {1, 2, 63, 130, 16, 16, kCausal},   {1, 1, 65, 129, 1, 1, kCausal},      {1, 2, 130, 130, 64, 32, kCausal},
      {1, 2, 64, 65, 16, 16, kCausal},    {1, 2, 65, 65, 1, 1, kFull},         {1, 2, 130, 130, 16, 16, kFull},
      {1, 2, 63, 64, 16, 8, kFull},       {1, 2, 1, 65, 16, 16, kFull},        {1, 2, 130, 130, 16, 16, prefix(70)},
      {1, 2, 65, 130, 16, 16, prefix(100)}, {1, 2, 64, 64, 64, 64, prefix(64)}, {1, 2, 5, 5, 4, 4, prefix(9)},
      {1, 2, 130, 130, 16, 16, prefix(1)}, {1, 2, 65, 65, 16, 16, kCausal, 0.37},
      // The CPU kernel's tiles are 96 x 96 (in chunks of 12 on the diagonal): cross those too.
      {1, 2, 97, 97, 64, 64, kCausal},    {1, 1, 96, 193, 64, 48, kCausal},    {1, 1, 193, 193, 32, 32, prefix(100)},
      {1, 1, 95, 191, 24, 40, kFull},
  };
}

Tensor rnd(const Shape& s, uint64_t seed, DType dt) {
  Generator g(seed);
  return randn(s, g, DType::f64).to(dt);
}

struct Inputs {
  Tensor q, k, v, dout;
};

Inputs make_inputs(const Case& c, DType dt, uint64_t seed = 17) {
  return {rnd(Shape{c.B, c.H, c.T, c.Dk}, seed, dt), rnd(Shape{c.B, c.H, c.S, c.Dk}, seed + 1, dt),
          rnd(Shape{c.B, c.H, c.S, c.Dv}, seed + 2, dt), rnd(Shape{c.B, c.H, c.T, c.Dv}, seed + 3, dt)};
}

Inputs to(const Inputs& in, DType dt) { return {in.q.to(dt), in.k.to(dt), in.v.to(dt), in.dout.to(dt)}; }

// out, dq, dk, dv.
struct Results {
  Tensor r[4];
};

Results run(bool fused, const Inputs& in, const Case& c) {
  Variable q(in.q, true), k(in.k, true), v(in.v, true);
  const Variable out = fused ? softmax_attention(q, k, v, c.mask, c.scale)
                             : softmax_attention_reference(q, k, v, c.mask, c.scale);
  out.backward(in.dout);
  return {{out.data(), q.grad(), k.grad(), v.grad()}};
}

const char* kNames[4] = {"out", "dq", "dk", "dv"};

TEST(SoftmaxAttention, FusedMatchesReferenceFloat64) {
  for (const Case& c : cases()) {
    const Inputs in = make_inputs(c, DType::f64);
    const Results f = run(true, in, c), r = run(false, in, c);
    for (int i = 0; i < 4; ++i) {
      const double tol = 1e-10 * std::max(1.0, max_abs(r.r[i]));
      EXPECT_LE(max_diff(f.r[i], r.r[i]), tol) << c.str() << " " << kNames[i];
    }
  }
}

// f32 against the f64 reference, at most 2x the error of the reference itself run in f32 (plus a
// floor of a few f32 ulps of the result's magnitude, for results the f32 reference gets exactly).
TEST(SoftmaxAttention, FusedMatchesReferenceFloat32) {
  double worst_ratio = 0;
  for (const Case& c : cases()) {
    const Inputs in32 = make_inputs(c, DType::f32);
    const Inputs in64 = to(in32, DType::f64);  // the same (f32-rounded) inputs
    const Results exact = run(false, in64, c), ref32 = run(false, in32, c), fused32 = run(true, in32, c);
    std::string line = c.str();
    for (int i = 0; i < 4; ++i) {
      const double mag = std::max(1.0, max_abs(exact.r[i]));
      const double e_fused = max_diff(fused32.r[i], exact.r[i]);
      const double e_ref = max_diff(ref32.r[i], exact.r[i]);
      const double floor = 8 * std::numeric_limits<float>::epsilon() * mag;
      EXPECT_LE(e_fused, 2 * e_ref + floor) << c.str() << " " << kNames[i] << ": fused f32 error " << e_fused
                                            << ", reference f32 error " << e_ref;
      worst_ratio = std::max(worst_ratio, e_fused / std::max(e_ref, floor / 8));
      char buf[96];
      std::snprintf(buf, sizeof buf, " | %s fused %.1e ref %.1e (rel %.1e)", kNames[i], e_fused, e_ref, e_fused / mag);
      line += buf;
    }
    std::printf("f32 errors vs f64: %s\n", line.c_str());
  }
  std::printf("f32: worst fused/reference error ratio %.2f\n", worst_ratio);
}

TEST(SoftmaxAttention, GradcheckFloat64) {
  const std::vector<Case> small = {
      {1, 2, 3, 3, 4, 4, kCausal}, {1, 1, 3, 5, 4, 3, kCausal},  {2, 1, 4, 4, 2, 2, kFull},
      {1, 2, 4, 5, 3, 3, prefix(3)}, {1, 1, 2, 2, 1, 1, kCausal, 0.5},
  };
  for (const Case& c : small) {
    const Inputs in = make_inputs(c, DType::f64, 5);
    const OpFn f = [c](const std::vector<Variable>& x) {
      return std::vector<Variable>{softmax_attention(x[0], x[1], x[2], c.mask, c.scale)};
    };
    const GradcheckResult res = gradcheck(f, {in.q, in.k, in.v});
    EXPECT_TRUE(res.ok) << c.str() << ": " << res.worst;
    EXPECT_LT(res.max_abs_err, 1e-7) << c.str();
  }
}

// The first n_i keys are the ones query i sees; changing keys and values from position j on must
// leave every query with n_i <= j bit-identical.
TEST(SoftmaxAttention, OutputIgnoresKeysOutsideTheMask) {
  const std::vector<Case> cs = {{1, 2, 130, 130, 16, 16, kCausal},
                                {1, 2, 65, 130, 64, 64, kCausal},
                                {1, 2, 130, 130, 16, 16, prefix(70)}};
  for (DType dt : {DType::f32, DType::f64}) {
    for (const Case& c : cs) {
      const Inputs in = make_inputs(c, dt);
      const Tensor base = run(true, in, c).r[0];
      for (int64_t j : {1, 40, 64, 65, 100, 129}) {
        Inputs changed = {in.q, in.k.clone(), in.v.clone(), in.dout};
        changed.k.narrow(2, j, c.S - j).copy_(rnd(Shape{c.B, c.H, c.S - j, c.Dk}, 99, dt));
        changed.v.narrow(2, j, c.S - j).copy_(rnd(Shape{c.B, c.H, c.S - j, c.Dv}, 98, dt));
        const Tensor out = run(true, changed, c).r[0];
        int64_t unchanged_rows = 0;
        for (int64_t i = 0; i < c.T; ++i) {
          const int64_t p = c.S - c.T + i;
          int64_t n = std::max(p + 1, p < c.mask.prefix ? c.mask.prefix : 0);
          if (n > j) continue;
          ++unchanged_rows;
          EXPECT_TRUE(bit_equal(out.narrow(2, i, 1), base.narrow(2, i, 1)))
              << c.str() << ": query " << i << " changed with keys from " << j;
        }
        // The rows that do see the change must move (the test would be vacuous otherwise).
        if (unchanged_rows < c.T) {
          EXPECT_FALSE(bit_equal(out.narrow(2, unchanged_rows, 1), base.narrow(2, unchanged_rows, 1)))
              << c.str() << " j=" << j;
        }
      }
    }
  }
}

TEST(SoftmaxAttention, SavesTheLogSumExp) {
  for (const Case& c : {Case{1, 2, 130, 130, 16, 16, kCausal}, Case{2, 1, 65, 100, 64, 64, prefix(50)},
                        Case{1, 2, 63, 65, 16, 16, kFull, 0.3}}) {
    for (DType dt : {DType::f32, DType::f64}) {
      const Inputs in = make_inputs(c, dt);
      const SoftmaxAttentionOp::Forward f = SoftmaxAttentionOp::forward(CpuTag{}, in.q, in.k, in.v, c.mask, c.scale);
      ASSERT_EQ(f.lse.shape(), (Shape{c.B, c.H, c.T}));
      const std::vector<double> q = in.q.to_vector<double>(), k = in.k.to_vector<double>(),
                                lse = f.lse.to_vector<double>();
      const double scale = attention_scale(c.scale, c.Dk);
      double worst = 0;
      for (int64_t bh = 0; bh < c.B * c.H; ++bh)
        for (int64_t i = 0; i < c.T; ++i) {
          std::vector<double> s;
          for (int64_t j = 0; j < c.S; ++j) {
            if (!c.mask.visible(c.S - c.T + i, j)) continue;
            double dot = 0;
            for (int64_t d = 0; d < c.Dk; ++d) dot += q[(bh * c.T + i) * c.Dk + d] * k[(bh * c.S + j) * c.Dk + d];
            s.push_back(scale * dot);
          }
          const double m = *std::max_element(s.begin(), s.end());
          double sum = 0;
          for (double x : s) sum += std::exp(x - m);
          worst = std::max(worst, std::abs(lse[bh * c.T + i] - (m + std::log(sum))));
        }
      EXPECT_LT(worst, dt == DType::f64 ? 1e-12 : 2e-5) << c.str();
    }
  }
}

#ifdef _OPENMP
TEST(SoftmaxAttention, BitIdenticalOnOneAndTwoThreads) {
  const int saved = omp_get_max_threads();
  for (const Case& c : {Case{2, 3, 130, 130, 64, 64, kCausal}, Case{1, 1, 130, 200, 64, 64, prefix(90)},
                        Case{1, 1, 257, 257, 64, 64, kCausal}}) {
    for (DType dt : {DType::f32, DType::f64}) {
      const Inputs in = make_inputs(c, dt);
      Results r[2];
      for (int threads : {1, 2}) {
        omp_set_num_threads(threads);
        r[threads - 1] = run(true, in, c);
      }
      omp_set_num_threads(saved);
      for (int i = 0; i < 4; ++i) EXPECT_TRUE(bit_equal(r[0].r[i], r[1].r[i])) << c.str() << " " << kNames[i];
    }
  }
}
#endif

// Strided inputs (q as a transposed [B, T, H, D] view) and gradients for a subset of inputs.
TEST(SoftmaxAttention, StridedInputsAndPartialGradients) {
  const Case c{2, 3, 70, 70, 16, 16, kCausal};
  const Inputs in = make_inputs(c, DType::f64);
  const Tensor q_bthd = in.q.transpose(1, 2).contiguous();
  Variable qs(q_bthd.transpose(1, 2), true), k(in.k, false), v(in.v, true);
  ASSERT_FALSE(qs.data().is_contiguous());
  const Variable out = softmax_attention(qs, k, v, c.mask);
  out.backward(in.dout);
  const Results r = run(false, in, c);
  EXPECT_LE(max_diff(out.data(), r.r[0]), 1e-10);
  EXPECT_LE(max_diff(qs.grad(), r.r[1]), 1e-10);
  EXPECT_LE(max_diff(v.grad(), r.r[3]), 1e-10);
  EXPECT_FALSE(k.grad().defined());
  {
    NoGradGuard ng;
    EXPECT_FALSE(softmax_attention(Variable(in.q, true), k, v).requires_grad());
  }
}

// A fused [B, T, 3 * H * D] projection split into heads (strided views, no copy), through the fused
// kernel: the same values and input gradient as packed copies through the reference. The
// kernel's dq, dk, dv share one [B, T, 3, H, D] buffer, which split_heads' backward returns as
// the projection's gradient without a copy; its output is token-major, so merging is a view.
TEST(SoftmaxAttention, SplitHeadsOfAFusedProjection) {
  const int64_t B = 2, T = 70, H = 3, D = 16;
  const Tensor x0 = rnd(Shape{B, T, 3 * H * D}, 5, DType::f64), dout = rnd(Shape{B, H, T, D}, 6, DType::f64);
  Variable x(x0, true), xr(x0, true);
  const std::vector<Variable> p = split_heads(x, 3, H);
  ASSERT_FALSE(p[0].data().is_contiguous());
  EXPECT_TRUE(p[1].data().shares_storage_with(x.data()));
  const Variable out = softmax_attention(p[0], p[1], p[2], kCausal);
  EXPECT_TRUE(out.data().permute({0, 2, 1, 3}).is_contiguous());
  out.backward(dout);
  const std::vector<Variable> pr = split_heads(xr, 3, H);
  const Variable ref = softmax_attention_reference(contiguous(pr[0]), contiguous(pr[1]), contiguous(pr[2]), kCausal);
  ref.backward(dout);
  EXPECT_LE(max_diff(out.data(), ref.data()), 1e-10);
  EXPECT_LE(max_diff(x.grad(), xr.grad()), 1e-10);

  const SoftmaxAttentionOp::Forward f = SoftmaxAttentionOp::forward(CpuTag{}, p[0].data(), p[1].data(), p[2].data(), kCausal, 0.0);
  const SoftmaxAttentionOp::Grads g = SoftmaxAttentionOp::backward(CpuTag{}, p[0].data(), p[1].data(), p[2].data(), f.out,
                                                                   f.lse, dout, kCausal, 0.0);
  const Tensor dx = SplitHeadsOp::backward(CpuTag{}, x.shape(), {g.dq, g.dk, g.dv});
  EXPECT_TRUE(dx.shares_storage_with(g.dq));
  EXPECT_TRUE(dx.is_contiguous());
  // Gradients that are not one such buffer are copied into place.
  const Tensor copied = SplitHeadsOp::backward(CpuTag{}, x.shape(), {g.dq.contiguous(), g.dk, g.dv});
  EXPECT_FALSE(copied.shares_storage_with(g.dq));
  EXPECT_TRUE(bit_equal(copied, dx));
}

TEST(SoftmaxAttention, EmptyQueries) {
  const Tensor q = Tensor::zeros(Shape{1, 2, 0, 4}), k = rnd(Shape{1, 2, 3, 4}, 1, DType::f32),
               v = rnd(Shape{1, 2, 3, 5}, 2, DType::f32);
  const SoftmaxAttentionOp::Forward f = SoftmaxAttentionOp::forward(CpuTag{}, q, k, v, kCausal, 0.0);
  EXPECT_EQ(f.out.shape(), (Shape{1, 2, 0, 5}));
  EXPECT_EQ(f.lse.shape(), (Shape{1, 2, 0}));
  const SoftmaxAttentionOp::Grads g =
      SoftmaxAttentionOp::backward(CpuTag{}, q, k, v, f.out, f.lse, Tensor::zeros(Shape{1, 2, 0, 5}), kCausal, 0.0);
  EXPECT_EQ(g.dq.shape(), q.shape());
  EXPECT_EQ(max_abs(g.dk), 0.0);
  EXPECT_EQ(max_abs(g.dv), 0.0);
}

double seconds_of(const std::function<void()>& fn, int reps) {
  fn();  // warm up
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

// Not an assertion: a line in the test output (DESIGN.md section 7: tests never assert a time).
TEST(SoftmaxAttention, TimingPrint) {
  for (const Case& c : {Case{8, 4, 128, 128, 64, 64, kCausal}, Case{2, 4, 512, 512, 64, 64, kCausal}}) {
    const Inputs in = make_inputs(c, DType::f32);
    auto step = [&](bool fused, bool backward) {
      return [&, fused, backward] {
        Variable q(in.q, true), k(in.k, true), v(in.v, true);
        const Variable out = fused ? softmax_attention(q, k, v, c.mask) : softmax_attention_reference(q, k, v, c.mask);
        if (backward) out.backward(in.dout);
      };
    };
    const int reps = c.T > 256 ? 3 : 10;
    const double ff = seconds_of(step(true, false), reps), rf = seconds_of(step(false, false), reps);
    const double fb = seconds_of(step(true, true), reps), rb = seconds_of(step(false, true), reps);
    std::printf("timing f32 %s, %d threads: forward fused %.2f ms, reference %.2f ms (x%.1f); "
                "forward+backward fused %.2f ms, reference %.2f ms (x%.1f)\n",
                c.str().c_str(), cpu::max_threads(), ff * 1e3, rf * 1e3, rf / ff, fb * 1e3, rb * 1e3, rb / fb);
  }
}

TEST(SoftmaxAttention, ShapeErrorsPrintEveryShape) {
  const Variable q(Tensor::zeros(Shape{1, 2, 4, 4}, DType::f64)), k(Tensor::zeros(Shape{1, 2, 4, 3}, DType::f64)),
      v(Tensor::zeros(Shape{1, 2, 4, 4}, DType::f64));
  try {
    softmax_attention(q, k, v);
    FAIL() << "a k with another Dk was accepted";
  } catch (const ShapeError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("softmax_attention"), std::string::npos) << msg;
    EXPECT_NE(msg.find("q=[1, 2, 4, 4]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("k=[1, 2, 4, 3]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("v=[1, 2, 4, 4]"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace attnlab
