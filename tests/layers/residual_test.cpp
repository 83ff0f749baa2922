// Residual routing (layers/residual/): the fused routing op against its composed reference in
// f64 (both forms, with and without a gate, stacked and source-list forms), bits independent of
// the thread count, memory that does not grow with the number of sources, and the routed Gpt:
// a gate-zero delta_attnres model equals the standard model exactly (both granularities), the
// clean block deltas sum to the stream, diagnostics at init, gradients through every mode, and
// activation memory linear in depth.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "layers/gpt.h"
#include "layers/residual/attnres/attnres.h"
#include "lib/cpu/parallel.h"
#include "lib/rng.h"
#include "lib/storage.h"
#include "tests/support/tensor_compare.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace attnlab {
namespace {

double max_abs_diff(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = a.to(DType::f64).to_vector<double>(), y = b.to(DType::f64).to_vector<double>();
  EXPECT_EQ(x.size(), y.size());
  double d = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) d = std::max(d, std::abs(x[i] - y[i]));
  return d;
}

bool bit_equal(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = a.to(DType::f64).to_vector<double>(), y = b.to(DType::f64).to_vector<double>();
  return x == y;
}

struct Case {
  bool delta;
  int64_t N, B, T, D;
  bool gate;
};

struct CaseRun {
  std::vector<Tensor> values;  // out, a, dsrc, (dr), dw, dg, (dgate)
};

// One call with a fixed upstream gradient; fused or reference.
CaseRun run_case(const Case& c, bool fused, uint64_t seed, DType dt = DType::f64) {
  Variable src(sample_randn(Shape{c.N, c.B, c.T, c.D}, seed).to(dt), true);
  Variable r(sample_randn(Shape{c.B, c.T, c.D}, seed + 1).to(dt), true);
  Variable w(sample_randn(Shape{c.D}, seed + 2, 0.7).to(dt), true);
  Variable g(sample_uniform(Shape{c.D}, seed + 3, 0.5, 1.5).to(dt), true);
  Variable gate = c.gate ? Variable(sample_uniform(Shape{1}, seed + 4, 0.2, 1.0).to(dt), true) : Variable();
  const Variable rr = c.delta ? r : Variable();
  AttnResResult res = fused ? (c.delta ? delta_attnres(src, rr, w, g, gate) : attnres(src, w, g, gate))
                            : (c.delta ? delta_attnres_reference(src, rr, w, g, gate)
                                       : attnres_reference(src, w, g, gate));
  res.out.backward(sample_randn(Shape{c.B, c.T, c.D}, seed + 5).to(dt));
  CaseRun out;
  out.values = {res.out.data(), res.a, src.grad(), w.grad(), g.grad()};
  if (c.delta) out.values.push_back(r.grad());
  if (c.gate) out.values.push_back(gate.grad());
  return out;
}

const std::vector<Case>& cases() {
  static const std::vector<Case> cs = {
      {true, 1, 1, 3, 4, false},  {true, 3, 2, 5, 8, true},   {true, 9, 2, 7, 33, false},
      {true, 17, 1, 4, 16, true}, {false, 1, 2, 3, 4, true},  {false, 4, 2, 6, 12, false},
      {false, 9, 1, 5, 33, true}, {false, 25, 1, 3, 7, false},
  };
  return cs;
}

TEST(AttnResRouting, FusedMatchesReferenceInFloat64) {
  uint64_t seed = 100;
  for (const Case& c : cases()) {
    const CaseRun f = run_case(c, true, seed), r = run_case(c, false, seed);
    ASSERT_EQ(f.values.size(), r.values.size());
    for (size_t k = 0; k < f.values.size(); ++k)
      EXPECT_LT(max_abs_diff(f.values[k], r.values[k]), 1e-11)
          << (c.delta ? "delta" : "attnres") << " N=" << c.N << " D=" << c.D << " value " << k;
    seed += 10;
  }
}

TEST(AttnResRouting, FusedMatchesReferenceInFloat32) {
  uint64_t seed = 300;
  for (const Case& c : cases()) {
    const CaseRun f = run_case(c, true, seed, DType::f32), r = run_case(c, false, seed, DType::f64);
    for (size_t k = 0; k < f.values.size(); ++k)
      EXPECT_LT(max_abs_diff(f.values[k], r.values[k]), 2e-4 * std::max(1.0, static_cast<double>(c.N)))
          << (c.delta ? "delta" : "attnres") << " N=" << c.N << " value " << k;
    seed += 10;
  }
}

// Routing weights sum to 1 per token and are positive; with w = 0 they are uniform.
TEST(AttnResRouting, WeightsAreASoftmaxOverSources) {
  const Case c{true, 5, 2, 3, 8, false};
  const CaseRun f = run_case(c, true, 7);
  const std::vector<double> a = f.values[1].to_vector<double>();
  for (int64_t t = 0; t < c.B * c.T; ++t) {
    double s = 0;
    for (int64_t i = 0; i < c.N; ++i) {
      EXPECT_GT(a[i * c.B * c.T + t], 0.0);
      s += a[i * c.B * c.T + t];
    }
    EXPECT_NEAR(s, 1.0, 1e-12);
  }
  const Variable src(sample_randn(Shape{4, 1, 2, 6}, 9)), r(sample_randn(Shape{1, 2, 6}, 10));
  const AttnResResult u = delta_attnres(src, r, Variable(Tensor::zeros(Shape{6}, DType::f64)),
                                        Variable(Tensor::ones(Shape{6}, DType::f64)));
  for (double x : u.a.to_vector<double>()) EXPECT_NEAR(x, 0.25, 1e-15);
  // out = r + mean of the sources (w = 0 is not the identity: spec 1.3.3).
  const Tensor want = add(r, mean(src, {0})).data();
  EXPECT_LT(max_abs_diff(u.out.data(), want), 1e-14);
}

// A gate of zero gives out = r bit for bit (the conversion's exactness rests on it).
TEST(AttnResRouting, ZeroGateReturnsTheStreamExactly) {
  for (DType dt : {DType::f32, DType::f64}) {
    const Variable src(sample_randn(Shape{3, 2, 4, 8}, 21).to(dt)), r(sample_randn(Shape{2, 4, 8}, 22).to(dt));
    const Variable w(sample_randn(Shape{8}, 23).to(dt)), g(sample_randn(Shape{8}, 24).to(dt));
    const AttnResResult u = delta_attnres(src, r, w, g, Variable(Tensor::zeros(Shape{1}, dt)));
    EXPECT_TRUE(bit_equal(u.out.data(), r.data()));
  }
}

#ifdef _OPENMP
TEST(AttnResRouting, BitsIndependentOfTheThreadCount) {
  const Case c{true, 7, 4, 64, 48, true};
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const CaseRun one = run_case(c, true, 55, DType::f32);
  omp_set_num_threads(2);
  const CaseRun two = run_case(c, true, 55, DType::f32);
  omp_set_num_threads(3);
  const CaseRun three = run_case(c, true, 55, DType::f32);
  omp_set_num_threads(saved);
  for (size_t k = 0; k < one.values.size(); ++k) {
    EXPECT_TRUE(bit_equal(one.values[k], two.values[k])) << "value " << k;
    EXPECT_TRUE(bit_equal(one.values[k], three.values[k])) << "value " << k;
  }
}
#endif

// Sources stored once: the op keeps references to its sources, so routing over N sources adds
// one [B, T, D] output to the memory in use, whatever N (a stacked copy would add N of them).
TEST(AttnResRouting, SourceListFormStoresNoCopyOfTheSources) {
  const Shape s{2, 64, 256};  // 128 KiB per source in f32: counted by the host block cache
  const int64_t bytes = s.numel() * 4;
  std::vector<Variable> sources;
  Generator gen(1);
  for (int i = 0; i < 12; ++i) sources.emplace_back(randn(s, gen, DType::f32), true);
  const Variable r(Tensor::zeros(s), true);
  const Variable w(Tensor::zeros(Shape{256}), true), g(Tensor::ones(Shape{256}), true);
  const size_t before = host_cache_stats().in_use_bytes;
  AttnResResult res = attnres_route(sources, r, w, g);
  const size_t after = host_cache_stats().in_use_bytes;
  EXPECT_LE(static_cast<int64_t>(after - before), bytes + bytes / 2) << "12 sources of " << bytes << " bytes";
}

// ---- the routed model ----------------------------------------------------------------------

GptConfig small_config(const std::string& mode, const std::string& granularity = "sublayer", int64_t layers = 4) {
  GptConfig c;
  c.vocab_size = 50;
  c.context = 16;
  c.layers = layers;
  c.d_model = 32;
  c.heads = 2;
  c.residual.mode = mode;
  c.residual.granularity = granularity;
  c.residual.block_size = 2;
  c.residual.gate = mode == "delta_attnres";
  return c;
}

Variable ids(int64_t B, int64_t T, uint64_t seed) {
  std::vector<int32_t> v(static_cast<size_t>(B * T));
  Generator gen(seed);
  const std::vector<double> u = sample_uniform(Shape{B * T}, seed, 0.0, 50.0).to_vector<double>();
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::min<int32_t>(49, static_cast<int32_t>(u[i]));
  return Variable(Tensor::from_vector(Shape{B, T}, v));
}

// Copies every parameter `to` shares by name with `from` (the conversion's non-strict load).
void copy_shared(const Gpt& from, Gpt& to) {
  const auto src = from.state_dict();
  NoGradGuard ng;
  for (auto& [name, t] : to.state_dict()) {
    const auto it = src.find(name);
    if (it != src.end()) const_cast<Tensor&>(t).copy_(it->second);
  }
}

TEST(ResidualModel, GateZeroDeltaModelEqualsTheStandardModelExactly) {
  for (const char* gran : {"sublayer", "block"}) {
    Generator g1(5), g2(6);
    const Gpt standard(small_config("standard"), g1);
    Gpt delta(small_config("delta_attnres", gran), g2);
    copy_shared(standard, delta);
    const Variable x = ids(2, 12, 3);
    EXPECT_TRUE(bit_equal(standard.forward(x).data(), delta.forward(x).data())) << gran;
    // And the routing parameters are there, at their init.
    int64_t routing = 0;
    for (const auto& [name, p] : delta.named_parameters()) {
      if (!is_routing_parameter(name)) continue;
      ++routing;
      const std::vector<double> v = p.data().to_vector<double>();
      if (name.find("query") != std::string::npos) {
        // Small random queries (a zero query under a zero gate would never move).
        double ss = 0;
        for (double y : v) ss += y * y;
        EXPECT_GT(ss, 0.0) << name;
        EXPECT_LT(std::sqrt(ss / static_cast<double>(v.size())), 0.05) << name;
        continue;
      }
      const double want = name.find("key_gain") != std::string::npos ? 1.0 : 0.0;
      for (double y : v) EXPECT_EQ(y, want) << name;
    }
    EXPECT_EQ(routing, 3 * (2 * 4 - 1)) << gran << ": query, key gain, gate for every sublayer but the first";
  }
}

// The standard model's parameters (names, order, init) are those of a model without routing.
TEST(ResidualModel, RoutingParametersComeLastAndLeaveTheBaseInitAlone) {
  Generator g1(9), g2(9);
  const Gpt standard(small_config("standard"), g1);
  const Gpt routed(small_config("attnres"), g2);
  const auto a = standard.named_parameters(), b = routed.named_parameters();
  ASSERT_GT(b.size(), a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_TRUE(bit_equal(a[i].second.data(), b[i].second.data())) << a[i].first;
  }
  for (size_t i = a.size(); i < b.size(); ++i) EXPECT_TRUE(is_routing_parameter(b[i].first)) << b[i].first;
  EXPECT_TRUE(std::any_of(b.begin(), b.end(), [](const auto& p) { return p.first == "res.final.query"; }));
}

// With w = 0 every routing op averages its sources: max weight 1/N, entropy log N.
TEST(ResidualModel, DiagnosticsAtInit) {
  struct Want {
    const char* mode;
    const char* gran;
    std::vector<int64_t> sources;  // per routing op, in order
  };
  // 4 layers = 8 sublayers, blocks of 2 layers (4 sublayers).
  const std::vector<Want> wants = {
      {"delta_attnres", "sublayer", {2, 3, 4, 5, 6, 7, 8}},
      // block 0 pushes e after the first attention; block 1's first attention still sees [e].
      {"delta_attnres", "block", {1, 1, 1, 1, 2, 2, 2}},
      {"attnres", "sublayer", {1, 2, 3, 4, 5, 6, 7, 8, 9}},
      // [e], [e, p], [e, p], [e, p], then [e, b1], [e, b1, p] x3, final [e, b1, b2].
      {"attnres", "block", {1, 2, 2, 2, 2, 3, 3, 3, 3}},
  };
  for (const Want& w : wants) {
    Generator gen(3);
    GptConfig c = small_config(w.mode, w.gran);
    c.residual.gate = false;  // zero queries (a gated model draws small random ones)
    const Gpt model(c, gen);
    const std::vector<RoutingStats> st = model.routing_diagnostics(ids(2, 8, 4));
    ASSERT_EQ(st.size(), w.sources.size()) << w.mode << " " << w.gran;
    for (size_t k = 0; k < st.size(); ++k) {
      const double n = static_cast<double>(w.sources[k]);
      EXPECT_EQ(st[k].sources, w.sources[k]) << w.mode << " " << w.gran << " op " << k;
      EXPECT_NEAR(st[k].max_weight, 1.0 / n, 1e-6) << w.mode << " " << w.gran << " op " << k;
      EXPECT_NEAR(st[k].entropy, std::log(n), 1e-5) << w.mode << " " << w.gran << " op " << k;
    }
    EXPECT_EQ(st.back().kind, std::string(w.mode) == "attnres" ? "final" : "mlp");
  }
}

// Every mode and granularity: the loss reaches every parameter, routing ones included (after
// one step away from the gate's zero for delta_attnres), and a KV-cache decode matches the full
// forward.
TEST(ResidualModel, GradientsReachTheRoutingAndDecodingMatches) {
  for (const char* mode : {"attnres", "delta_attnres"}) {
    for (const char* gran : {"sublayer", "block"}) {
      Generator gen(11);
      Gpt model(small_config(mode, gran, 3), gen);
      // Move the routing off its init so every gradient path is live.
      {
        NoGradGuard ng;
        Generator p(12);
        for (auto& [name, v] : model.named_parameters())
        if (is_routing_parameter(name)) {
          Tensor t = Tensor::empty(v.shape(), DType::f32);
          fill_normal(t, p, 0.0, 0.5);
          v.mutable_data().copy_(t);
          }
      }
      const Variable x = ids(2, 10, 5);
      // Ops over a single source have weight 1 whatever w and g: those get no gradient.
      std::map<std::string, int64_t> sources;
      for (const RoutingStats& st : model.routing_diagnostics(x)) sources["res." + st.name + "."] = st.sources;
      const Variable logits = model.forward(x);
      const Variable loss = cross_entropy(reshape(narrow(logits, 1, 0, 9), Shape{18, 50}),
                                          Variable(reshape(narrow(x, 1, 1, 9), Shape{18}).data().contiguous()));
      loss.backward();
      for (const auto& [name, p] : model.named_parameters()) {
        ASSERT_TRUE(p.grad().defined()) << mode << " " << gran << " " << name;
        double s = 0;
        for (double v : p.grad().to_vector<double>()) s += std::abs(v);
        const std::string op = name.substr(0, name.rfind('.') + 1);
        if (is_routing_parameter(name) && (sources.at(op) > 1 || name.find("gate") != std::string::npos)) {
          EXPECT_GT(s, 0.0) << mode << " " << gran << " " << name;
        }
      }
      NoGradGuard ng;
      model.set_training(false);
      KvCache cache = model.make_cache(2);
      const Variable a = model.forward_cached(narrow(x, 1, 0, 6), cache);
      const Variable b = model.forward_cached(narrow(x, 1, 6, 4), cache);
      const Tensor full = model.forward(x).data();
      EXPECT_LT(max_abs_diff(concat({a, b}, 1).data(), full), 1e-4) << mode << " " << gran;
    }
  }
}

// Activation memory grows linearly with depth: the extra memory a routed model holds after its
// forward (graph alive) over the standard model's, at 4 layers, is about twice that at 2 layers
// (a per-sublayer stack of the sources would make it about four times).
TEST(ResidualModel, ActivationMemoryIsLinearInDepth) {
  auto held = [](const GptConfig& c) {
    Generator gen(1);
    const Gpt model(c, gen);
    std::vector<int32_t> v(2 * 32);
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<int32_t>(i % 50);
    const Variable x(Tensor::from_vector(Shape{2, 32}, v));
    const size_t before = host_cache_stats().in_use_bytes;
    const Variable y = model.forward(x);
    return static_cast<double>(host_cache_stats().in_use_bytes - before);
  };
  for (const char* mode : {"attnres", "delta_attnres"}) {
    auto cfg = [&](const std::string& m, int64_t L) {
      GptConfig c = small_config(m, "sublayer", L);
      c.d_model = 256;  // [2, 32, 256] f32 = 64 KiB: tracked by the host block cache
      c.heads = 4;
      c.context = 32;
      return c;
    };
    const double extra3 = held(cfg(mode, 2)) - held(cfg("standard", 2));
    const double extra6 = held(cfg(mode, 4)) - held(cfg("standard", 4));
    EXPECT_GT(extra3, 0.0) << mode;
    EXPECT_LT(extra6, 2.6 * extra3) << mode << ": extra bytes at 2 layers " << extra3 << ", at 4 layers " << extra6;
  }
}

// Spec 1.10 test 4: the clean block deltas. With w = 0 and gate 1 every routed term is the mean
// of the sources, and once block b has pushed its source, sum(Src) = e + Delta_0 + ... +
// Delta_{b-1} = r(start of block b). Blocks of one layer, f64, sublayer outputs chosen by the test.
TEST(ResidualModel, CleanBlockDeltasSumToTheStream) {
  ResidualConfig rc;
  rc.mode = "delta_attnres";
  rc.granularity = "block";
  rc.block_size = 1;
  rc.gate = true;
  const int64_t L = 4, D = 6;
  ResidualRouter router(rc, L, D, DType::f64);
  {
    NoGradGuard ng;
    for (auto& [name, p] : router.named_parameters())
      if (name.find("gate") != std::string::npos) p.mutable_data().fill_(1.0);
  }
  const Variable e(sample_randn(Shape{1, 3, D}, 1));
  std::vector<Tensor> u, h;
  router.run(e, [&](int64_t s, const Variable& hs) {
    h.push_back(hs.data());
    u.push_back(sample_randn(Shape{1, 3, D}, 10 + static_cast<uint64_t>(s)));
    return Variable(u.back());
  });
  // r[s]: the stream before sublayer s.
  std::vector<Tensor> r{e.data()};
  for (int64_t s = 0; s < 2 * L; ++s) r.push_back(add(Variable(r.back()), Variable(u[s])).data());
  for (int64_t s = 1; s < 2 * L; ++s) {
    const int64_t l = s / 2;
    // attention of layer l >= 1 (before its push): [e, D_0 .. D_{l-2}], sum r(start of block l-1);
    // MLP of layer l: [e, D_0 .. D_{l-1}], sum r(start of block l).
    const int64_t n = s % 2 ? l + 1 : l;
    const Tensor sum_src = r[static_cast<size_t>(2 * (n - 1))];
    const Tensor want = add(Variable(r[s]), mul_scalar(Variable(sum_src), 1.0 / static_cast<double>(n))).data();
    EXPECT_LT(max_abs_diff(h[s], want), 1e-12) << "sublayer " << s;
  }
  EXPECT_TRUE(bit_equal(h[0], e.data())) << "the first attention reads the embedding";
}

TEST(ResidualModel, ConfigErrorsNameTheField) {
  auto expect_error = [](GptConfig c, const std::string& needle) {
    try {
      c.validate();
      ADD_FAILURE() << "no error for " << needle;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  GptConfig c = small_config("delta_attnres");
  c.residual.mode = "attn_res";
  expect_error(c, "residual");
  c = small_config("delta_attnres");
  c.residual.granularity = "layer";
  expect_error(c, "residual.granularity");
  c = small_config("delta_attnres");
  c.residual.block_size = 9;
  expect_error(c, "residual.block_size");
  c = small_config("attnres");
  c.residual.gate = true;
  expect_error(c, "residual.gate");
}

}  // namespace
}  // namespace attnlab
