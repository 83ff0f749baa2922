// The generic suite every attention variant passes, driven by its AttentionOpSpecs
// (layers/attention/variant_op.h), so a new variant folder is covered without a new test:
//   - fused vs composed reference: out, aux outputs, differentiable extra outputs and the
//     gradient of every differentiable input (for upstream gradients on out and on every extra
//     output), in f64 (to 1e-9 relative) and in f32 (at most 2x the f32 reference's own error
//     against f64, plus a floor of a few ulps), over shapes that cross kernel tiles and chunks,
//     with every mask the spec supports and every option set it lists;
//   - no future leak: changing q, k, v (and inputs indexed by query position) at positions >= t
//     leaves the outputs at positions < t bit-identical, and does change position t;
//   - S > T with the causal offset: running [0, S - T) and then [S - T, S) (state carried through
//     the spec's `carried` pairs) equals one call over [0, S); a recurrent spec (k, v with T rows,
//     no mask) splits q, k, v and every query-indexed extra at the same row instead;
//   - bit-identical results on 1 and 2 threads;
//   - a mask the spec does not support is refused with an attnlab error, not computed wrongly.
// The f64 gradcheck of each fused op runs in test_ops over the samples its OpInfo registers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "autograd/ops.h"
#include "layers/all_ops.h"
#include "lib/error.h"
#include "tests/support/tensor_compare.h"

namespace attnlab {
namespace {

using test::max_abs;
using test::max_diff;
using test::bit_equal;

struct Case {
  AttnDims dims;
  AttentionMask mask;
};

// Shapes crossing the usual tile and chunk sizes (16, 32, 64, 96) with ragged ends, S > T,
// several heads and batches, Dk != Dv.
std::vector<Case> cases(const AttentionOpSpec& spec) {
  auto d = [](int64_t B, int64_t H, int64_t T, int64_t S, int64_t Dk, int64_t Dv) {
    AttnDims x;
    x.B = B, x.H = H, x.T = T, x.S = S, x.Dk = Dk, x.Dv = Dv, x.Dm = 12;
    return x;
  };
  if (spec.recurrent) {
    // Keys follow queries: the S > T cases become longer T ones (chunk edges 63/64/65, 97, 130).
    return {{d(1, 2, 1, 1, 8, 8), AttentionMask{true, 0}},    {d(2, 2, 5, 5, 4, 3), AttentionMask{true, 0}},
            {d(1, 2, 33, 33, 16, 16), AttentionMask{true, 0}}, {d(1, 2, 65, 65, 16, 8), AttentionMask{true, 0}},
            {d(1, 1, 130, 130, 32, 32), AttentionMask{true, 0}}, {d(1, 2, 63, 63, 8, 12), AttentionMask{true, 0}},
            {d(2, 1, 97, 97, 16, 16), AttentionMask{true, 0}}, {d(1, 1, 100, 100, 64, 64), AttentionMask{true, 0}}};
  }
  const AttentionMask causal{true, 0};
  std::vector<Case> cs = {
      {d(1, 2, 1, 1, 8, 8), causal},      {d(2, 2, 5, 5, 4, 3), causal},      {d(1, 2, 33, 33, 16, 16), causal},
      {d(1, 2, 65, 65, 16, 8), causal},   {d(1, 1, 130, 130, 32, 32), causal}, {d(1, 2, 7, 40, 8, 8), causal},
      {d(2, 1, 64, 97, 16, 16), causal},  {d(1, 1, 100, 100, 64, 64), causal},
  };
  if (spec.prefix_mask) {
    cs.push_back({d(1, 2, 40, 40, 8, 8), AttentionMask{true, 17}});
    cs.push_back({d(1, 2, 20, 45, 8, 8), AttentionMask{true, 30}});
  }
  if (spec.non_causal) cs.push_back({d(1, 2, 30, 50, 8, 8), AttentionMask{false, 0}});
  return cs;
}

std::vector<const AttentionOpSpec*> specs() {
  std::vector<const AttentionOpSpec*> out;
  for (const AttentionOpSpec& s : attention_ops().specs()) out.push_back(&s);
  return out;
}

std::string spec_name(const ::testing::TestParamInfo<const AttentionOpSpec*>& i) { return i.param->name; }

std::string options_str(const std::map<std::string, std::string>& o) {
  std::string s;
  for (const auto& [k, v] : o) s += " " + k + "=" + v;
  return s;
}

AttnOpArgs cast(const AttnOpArgs& a, DType dt) {
  AttnOpArgs c = a;
  auto to = [dt](const Variable& v) { return v.defined() ? Variable(v.data().to(dt)) : v; };
  c.q = to(a.q), c.k = to(a.k), c.v = to(a.v);
  for (Variable& e : c.extras) e = to(e);
  return c;
}

// out, then every aux output (sorted by name), then every differentiable extra output (sorted by
// name), then the gradients of q, k, v and the differentiable extras for upstream gradient `dout`
// on out and a fixed random one on each extra output.
struct Results {
  std::vector<std::string> names;
  std::vector<Tensor> values;
};

Results run(const AttentionOpSpec& spec, bool fused, const AttnOpArgs& in, const Tensor& dout) {
  AttnOpArgs a = in;
  auto leaf = [](const Variable& v, bool grad) { return v.defined() ? Variable(v.data(), grad) : v; };
  a.q = leaf(in.q, true), a.k = leaf(in.k, true), a.v = leaf(in.v, true);
  for (size_t i = 0; i < a.extras.size(); ++i) a.extras[i] = leaf(in.extras[i], spec.extras[i].differentiable);
  const AttnOpResult r = fused ? spec.fused(a) : spec.reference(a);
  Results res;
  res.names.push_back("out");
  res.values.push_back(r.out.data());
  for (const auto& [name, t] : r.aux) {
    res.names.push_back(name);
    res.values.push_back(t);
  }
  std::vector<Variable> roots{r.out};
  std::vector<Tensor> grads{dout.to(r.out.dtype())};
  std::vector<std::string> output_names;
  uint64_t seed = 1000;
  for (const auto& [name, v] : r.outputs) {
    output_names.push_back(name);
    res.names.push_back(name);
    res.values.push_back(v.data());
    roots.push_back(v);
    grads.push_back(sample_randn(v.shape(), seed++).to(v.dtype()));
  }
  EXPECT_EQ(output_names, spec.outputs) << spec.name << ": the extra outputs differ from the spec's list";
  backward(roots, grads);
  res.names.insert(res.names.end(), {"dq", "dk", "dv"});
  res.values.insert(res.values.end(), {a.q.grad(), a.k.grad(), a.v.grad()});
  for (size_t i = 0; i < a.extras.size(); ++i) {
    if (!spec.extras[i].differentiable || !a.extras[i].defined()) continue;
    res.names.push_back("d" + spec.extras[i].name);
    res.values.push_back(a.extras[i].grad());
  }
  return res;
}

Tensor dout_for(const AttnDims& d, uint64_t seed) { return sample_randn(Shape{d.B, d.H, d.T, d.Dv}, seed); }

class AttentionVariant : public ::testing::TestWithParam<const AttentionOpSpec*> {};

TEST_P(AttentionVariant, FusedMatchesReferenceFloat64) {
  const AttentionOpSpec& spec = *GetParam();
  for (const auto& opts : spec.test_options) {
    for (const Case& c : cases(spec)) {
      const AttnOpArgs in = random_attention_args(spec, c.dims, c.mask, 7, opts);
      const Tensor dout = dout_for(c.dims, 8);
      const Results f = run(spec, true, in, dout), r = run(spec, false, in, dout);
      ASSERT_EQ(f.names, r.names) << spec.name << " " << c.dims.str();
      for (size_t i = 0; i < f.values.size(); ++i) {
        const double tol = 1e-9 * std::max(1.0, max_abs(r.values[i]));
        EXPECT_LE(max_diff(f.values[i], r.values[i]), tol)
            << spec.name << options_str(opts) << " " << c.dims.str() << " prefix=" << c.mask.prefix
            << (c.mask.causal ? " causal " : " full ") << f.names[i];
      }
    }
  }
}

TEST_P(AttentionVariant, FusedMatchesReferenceFloat32) {
  const AttentionOpSpec& spec = *GetParam();
  double worst_ratio = 0;
  for (const auto& opts : spec.test_options) {
    for (const Case& c : cases(spec)) {
      const AttnOpArgs in32 = cast(random_attention_args(spec, c.dims, c.mask, 11, opts), DType::f32);
      const AttnOpArgs in64 = cast(in32, DType::f64);  // the same f32-rounded inputs
      const Tensor dout = dout_for(c.dims, 12).to(DType::f32);
      const Results exact = run(spec, false, in64, dout), ref32 = run(spec, false, in32, dout),
                    fused32 = run(spec, true, in32, dout);
      ASSERT_EQ(fused32.names, exact.names);
      for (size_t i = 0; i < exact.values.size(); ++i) {
        EXPECT_EQ(fused32.values[i].dtype(), DType::f32) << spec.name << " " << exact.names[i];
        const double mag = std::max(1.0, max_abs(exact.values[i]));
        const double e_fused = max_diff(fused32.values[i], exact.values[i]);
        const double e_ref = max_diff(ref32.values[i], exact.values[i]);
        const double floor = 16 * std::numeric_limits<float>::epsilon() * mag;
        EXPECT_LE(e_fused, 2 * e_ref + floor)
            << spec.name << options_str(opts) << " " << c.dims.str() << " " << exact.names[i] << ": fused f32 error "
            << e_fused << ", reference f32 error " << e_ref;
        worst_ratio = std::max(worst_ratio, e_fused / std::max(e_ref, floor / 16));
      }
    }
  }
  std::printf("%s f32: worst fused/reference error ratio %.2f\n", spec.name.c_str(), worst_ratio);
}

// Causal, T = S: changing every input at positions >= t must leave rows < t bit-identical.
TEST_P(AttentionVariant, NoFutureLeak) {
  const AttentionOpSpec& spec = *GetParam();
  AttnDims d;
  d.B = 2, d.H = 2, d.T = d.S = 97, d.Dk = d.Dv = 16, d.Dm = 12;
  for (const auto& opts : spec.test_options) {
    for (DType dt : {DType::f64, DType::f32}) {
      const AttnOpArgs base = cast(random_attention_args(spec, d, AttentionMask{true, 0}, 21, opts), dt);
      const Tensor out0 = spec.fused(base).out.data();
      for (int64_t t : {1, 31, 64, 65, 96}) {
        const AttnOpArgs noise = cast(random_attention_args(spec, d, AttentionMask{true, 0}, 99 + t, opts), dt);
        AttnOpArgs changed = base;
        auto replace = [t](const Variable& from, const Variable& noise_v, int axis) {
          Tensor x = from.data().clone();
          const int64_t n = x.size(axis) - t;
          x.narrow(axis, t, n).copy_(noise_v.data().narrow(axis, t, n));
          return Variable(x);
        };
        changed.q = replace(base.q, noise.q, 2);
        changed.k = replace(base.k, noise.k, 2);
        changed.v = replace(base.v, noise.v, 2);
        for (size_t i = 0; i < spec.extras.size(); ++i)
          if (spec.extras[i].query_axis >= 0)
            changed.extras[i] = replace(base.extras[i], noise.extras[i], spec.extras[i].query_axis);
        const Tensor out1 = spec.fused(changed).out.data();
        EXPECT_TRUE(bit_equal(out0.narrow(2, 0, t), out1.narrow(2, 0, t)))
            << spec.name << options_str(opts) << " " << dtype_name(dt) << ": rows before " << t
            << " changed when only positions >= " << t << " did";
        EXPECT_FALSE(bit_equal(out0.narrow(2, t, 1), out1.narrow(2, t, 1)))
            << spec.name << ": row " << t << " did not change (the test would be vacuous)";
      }
    }
  }
}

// Positions [0, S - T) first, then the last T queries against all S keys with the carried
// state: the same rows as one call over [0, S).
TEST_P(AttentionVariant, CausalOffsetWithCarriedState) {
  const AttentionOpSpec& spec = *GetParam();
  for (const auto& opts : spec.test_options) {
    for (int64_t split : {1, 30, 64, 71}) {
      AttnDims full;
      full.B = 2, full.H = 2, full.T = full.S = 100, full.Dk = 16, full.Dv = 8, full.Dm = 12;
      const AttnOpArgs all = random_attention_args(spec, full, AttentionMask{true, 0}, 31, opts);
      const AttnOpResult whole = spec.fused(all);

      AttnOpArgs first = all, second = all;
      first.q = Variable(all.q.data().narrow(2, 0, split));
      first.k = Variable(all.k.data().narrow(2, 0, split));
      first.v = Variable(all.v.data().narrow(2, 0, split));
      second.q = Variable(all.q.data().narrow(2, split, full.T - split));
      if (spec.recurrent) {
        // No key axis of its own: the second call sees only its own rows and the carried state.
        second.k = Variable(all.k.data().narrow(2, split, full.T - split));
        second.v = Variable(all.v.data().narrow(2, split, full.T - split));
      }
      for (size_t i = 0; i < spec.extras.size(); ++i) {
        const int axis = spec.extras[i].query_axis;
        if (axis < 0) continue;
        first.extras[i] = Variable(all.extras[i].data().narrow(axis, 0, split));
        second.extras[i] = Variable(all.extras[i].data().narrow(axis, split, full.T - split));
      }
      const AttnOpResult head = spec.fused(first);
      for (const auto& [input, output] : spec.carried) {
        ASSERT_TRUE(head.aux.count(output) || head.outputs.count(output))
            << spec.name << " returned no '" << output << "'";
        second.extras[spec.index_of(input)] = Variable(head.carried(output));
      }
      const Tensor tail = spec.fused(second).out.data();
      const Tensor expect = whole.out.data().narrow(2, split, full.T - split);
      EXPECT_LE(max_diff(tail, expect), 1e-10 * std::max(1.0, max_abs(expect)))
          << spec.name << options_str(opts) << ": split at " << split;
      for (const auto& [input, output] : spec.carried)
        EXPECT_LE(max_diff(spec.fused(second).carried(output), whole.carried(output)), 1e-9)
            << spec.name << ": carried '" << output << "' after the second piece differs from one call's";
    }
  }
}

#ifdef _OPENMP
TEST_P(AttentionVariant, BitIdenticalOnOneAndTwoThreads) {
  const AttentionOpSpec& spec = *GetParam();
  const int saved = omp_get_max_threads();
  AttnDims d;
  d.B = 2, d.H = 3, d.T = d.S = 130, d.Dk = d.Dv = 32, d.Dm = 12;
  for (DType dt : {DType::f32, DType::f64}) {
    const AttnOpArgs in = cast(random_attention_args(spec, d, AttentionMask{true, 0}, 41), dt);
    const Tensor dout = dout_for(d, 42);
    Results r[2];
    for (int threads : {1, 2}) {
      omp_set_num_threads(threads);
      r[threads - 1] = run(spec, true, in, dout);
    }
    omp_set_num_threads(saved);
    for (size_t i = 0; i < r[0].values.size(); ++i)
      EXPECT_TRUE(bit_equal(r[0].values[i], r[1].values[i])) << spec.name << " " << r[0].names[i];
  }
}
#endif

TEST_P(AttentionVariant, RefusesMasksItDoesNotSupport) {
  const AttentionOpSpec& spec = *GetParam();
  AttnDims d;
  d.B = 1, d.H = 2, d.T = d.S = 6, d.Dk = d.Dv = 4, d.Dm = 12;
  if (!spec.prefix_mask) {
    const AttnOpArgs a = random_attention_args(spec, d, AttentionMask{true, 3}, 51);
    EXPECT_THROW(spec.fused(a), Error) << spec.name << " accepted a bidirectional prefix";
  }
  if (!spec.non_causal) {
    const AttnOpArgs a = random_attention_args(spec, d, AttentionMask{false, 0}, 52);
    EXPECT_THROW(spec.fused(a), Error) << spec.name << " accepted a non-causal mask";
  }
  // Bad shapes are refused by every variant with an attnlab error.
  AttnOpArgs bad = random_attention_args(spec, d, AttentionMask{true, 0}, 53);
  bad.k = Variable(sample_randn(Shape{1, 2, 6, 3}, 54));
  EXPECT_THROW(spec.fused(bad), Error) << spec.name << " accepted k with Dk=3 for q with Dk=4";
}

INSTANTIATE_TEST_SUITE_P(Registry, AttentionVariant, ::testing::ValuesIn(specs()), spec_name);

// The variants the issue names are all registered (a lost folder would only shrink the suite).
TEST(AttentionVariants, EveryPublicFormIsRegistered) {
  for (const char* name : {"softmax", "sigmoid", "sigmoid_neglog_visible", "sigmoid_neglogn", "affine", "infsa", "linear_infsa",
                           "linear_infsa_prefix", "kda", "kda_recurrent"})
    EXPECT_NO_THROW(attention_ops().get(name)) << name;
}

}  // namespace
}  // namespace attnlab
