// bf16 mixed precision in linear (MatmulPrecision::bf16, autograd/ops/linear/linear.h) and in
// the layers that pass it down (Linear, the MLPs, attention, Gpt). The op rounds, so the
// registry's f64 gradcheck has nothing to say about it; these tests check instead:
//   (a) y, dx, dw, db against f64 maths on the same bf16-rounded operands (x, w, dy), to the
//       error bound of f32 accumulation: the op rounds where it says and nowhere else;
//   (b) against the exact product of the unrounded inputs: at most 2x as wrong as the f64
//       product of the bf16-rounded inputs (DESIGN.md section 7), and within twice the bf16
//       rounding bound of the f32 linear (db, from the unrounded dy, equal to f32's);
//   (c) what backward keeps: bf16 copies of x and w (2 bytes an element) and nothing else,
//       through the allocators' documented in-use counters, on the CPU and on CUDA;
//   (d) CUDA (the emulator here, a GPU in the _gpu build) against the CPU, forward and
//       gradients, on ragged shapes and a long K;
//   (e) the layers: every Linear of the MLPs and attention gets the precision, Gpt passes it on,
//       a bf16 Gpt stays close to the f32 one, trains, and agrees between CPU and CUDA.
// Error bounds: a sum of n products accumulated in f32 is within (n + 2) u32 sum |terms| of the
// exact sum, u32 = 2^-24 (any order, FMA or not); the tests allow twice that. Rounding both
// factors to bf16 (u16 = 2^-8) moves a product by at most (2 u16 + u16^2) |product|.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "layers/attention_block.h"
#include "layers/gpt.h"
#include "layers/linear.h"
#include "layers/mlp.h"
#include "layers/norm.h"
#include "lib/error.h"
#include "lib/rng.h"
#include "lib/storage.h"

#if ATTNLAB_WITH_CUDA
#include "lib/cuda/runtime.h"
#endif

namespace attnlab {
namespace {

constexpr double kU32 = 1.0 / (1 << 24);   // unit roundoff of f32
constexpr double kU16 = 1.0 / (1 << 8);    // unit roundoff of bf16 (8 significant bits)
constexpr double kBf16Product = 2 * kU16 + kU16 * kU16;

// The CUDA tests skip without a device: in a build without the CUDA backend, and in the real
// backend's _gpu build on a machine without a GPU (the emulated build runs them there).
#if ATTNLAB_WITH_CUDA
bool have_cuda() { return cuda::device_count() > 0; }
#else
bool have_cuda() { return false; }
#endif
const char* kNoCuda = "no CUDA device here (no CUDA backend in this build, or the _gpu build without a GPU)";

// ---- inputs, runs and the f64 reference -------------------------------------------------------

struct Inputs {
  Tensor x, w, b, dy;  // f32 on the CPU; b may be undefined
  int64_t R = 0, K = 0, N = 0;
};

Inputs make_inputs(const Shape& x_shape, int64_t N, bool bias, uint64_t seed) {
  Generator gen(seed);
  Inputs in;
  in.x = randn(x_shape, gen);
  in.K = x_shape[x_shape.ndim() - 1];
  in.R = in.x.numel() / in.K;
  in.N = N;
  in.w = randn(Shape{N, in.K}, gen);
  if (bias) in.b = randn(Shape{N}, gen);
  std::vector<int64_t> y_dims = x_shape.dims();
  y_dims.back() = N;
  in.dy = randn(Shape(y_dims), gen);
  return in;
}

struct Result {
  std::vector<double> y, dx, dw, db;  // db empty without a bias
};

Result run_linear(const Inputs& in, MatmulPrecision precision, Device device) {
  Variable x(in.x.to(device), true), w(in.w.to(device), true);
  Variable b = in.b.defined() ? Variable(in.b.to(device), true) : Variable();
  const Variable y = linear(x, w, b, precision);
  EXPECT_EQ(y.dtype(), DType::f32);
  EXPECT_EQ(y.device(), device);
  y.backward(in.dy.to(device));
  for (const Variable* v : {&x, &w, &b}) {
    if (!v->defined()) continue;
    EXPECT_EQ(v->grad().dtype(), DType::f32) << "gradients of f32 inputs stay f32";
    EXPECT_EQ(v->grad().device(), device);
  }
  auto host = [](const Tensor& t) { return t.to(Device::cpu()).to_vector<double>(); };
  Result r{host(y.data()), host(x.grad()), host(w.grad()), {}};
  if (b.defined()) r.db = host(b.grad());
  return r;
}

// Values and, per element, the sum of the absolute values of its terms (for error bounds).
struct Reference {
  Result value, abs;
};

// f64 maths on x, w, dy as given, or rounded to bf16 first; b and db's dy never rounded.
Reference reference(const Inputs& in, bool round) {
  auto vals = [&](const Tensor& t) { return (round ? t.to(DType::bf16) : t).to_vector<double>(); };
  const std::vector<double> x = vals(in.x), w = vals(in.w), dy = vals(in.dy), dy_raw = in.dy.to_vector<double>();
  const std::vector<double> b = in.b.defined() ? in.b.to_vector<double>() : std::vector<double>();
  const int64_t R = in.R, K = in.K, N = in.N;
  Reference ref;
  Result &v = ref.value, &a = ref.abs;
  v.y.assign(R * N, 0.0), a.y.assign(R * N, 0.0);
  v.dx.assign(R * K, 0.0), a.dx.assign(R * K, 0.0);
  v.dw.assign(N * K, 0.0), a.dw.assign(N * K, 0.0);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t n = 0; n < N; ++n) {
      double s = b.empty() ? 0.0 : b[n], sa = b.empty() ? 0.0 : std::abs(b[n]);
      for (int64_t k = 0; k < K; ++k) {
        s += x[r * K + k] * w[n * K + k];
        sa += std::abs(x[r * K + k] * w[n * K + k]);
      }
      v.y[r * N + n] = s, a.y[r * N + n] = sa;
    }
  for (int64_t r = 0; r < R; ++r)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        const double g = dy[r * N + n];
        v.dx[r * K + k] += g * w[n * K + k], a.dx[r * K + k] += std::abs(g * w[n * K + k]);
        v.dw[n * K + k] += g * x[r * K + k], a.dw[n * K + k] += std::abs(g * x[r * K + k]);
      }
  if (!b.empty()) {
    v.db.assign(N, 0.0), a.db.assign(N, 0.0);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t n = 0; n < N; ++n) v.db[n] += dy_raw[r * N + n], a.db[n] += std::abs(dy_raw[r * N + n]);
  }
  return ref;
}

// Every |got - want| <= rel * abs (+ a denormal-sized floor); reports the count and the first.
void expect_within(const std::string& what, const std::vector<double>& got, const std::vector<double>& want,
                   const std::vector<double>& abs, double rel) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0, first = 0;
  double worst = 0;  // in units of the tolerance
  for (size_t i = 0; i < got.size(); ++i) {
    const double tol = rel * abs[i] + 1e-30;
    const double ratio = std::abs(got[i] - want[i]) / tol;
    if (!(ratio <= 1.0) && bad++ == 0) first = i;
    worst = std::max(worst, ratio);
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements outside the bound (first at "
                     << first << ": got " << got[first] << ", want " << want[first] << ", tolerance "
                     << rel * abs[first] << "); worst error " << worst << "x the tolerance";
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

double rms_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += (a[i] - b[i]) * (a[i] - b[i]);
  return std::sqrt(s / static_cast<double>(std::max<size_t>(1, a.size())));
}

struct Case {
  const char* label;
  Shape x;
  int64_t N;
  bool bias;
};

// Ragged against the CUDA GEMM's 64x64 tiles and 16-deep k-tiles; the last has a long K.
const std::vector<Case>& cases() {
  static const std::vector<Case> c{
      {"x [3, 4], w [5, 4], b", Shape{3, 4}, 5, true},
      {"x [2, 37, 65], w [33, 65], b", Shape{2, 37, 65}, 33, true},
      {"x [130, 20], w [70, 20], no bias", Shape{130, 20}, 70, false},
      {"x [7], w [9, 7], b", Shape{7}, 9, true},
      {"x [48, 300], w [50, 300], b", Shape{48, 300}, 50, true},
  };
  return c;
}

// (a) on one device: the op against f64 maths on the same rounded operands.
void check_against_rounded_reference(Device device) {
  for (size_t i = 0; i < cases().size(); ++i) {
    const Case& c = cases()[i];
    SCOPED_TRACE(std::string(c.label) + " on " + (device.is_cpu() ? "cpu" : "cuda"));
    const Inputs in = make_inputs(c.x, c.N, c.bias, 100 + i);
    const Result got = run_linear(in, MatmulPrecision::bf16, device);
    const Reference ref = reference(in, /*round=*/true);
    expect_within("y", got.y, ref.value.y, ref.abs.y, 2 * (in.K + 3) * kU32);
    expect_within("dx", got.dx, ref.value.dx, ref.abs.dx, 2 * (in.N + 2) * kU32);
    expect_within("dw", got.dw, ref.value.dw, ref.abs.dw, 2 * (in.R + 2) * kU32);
    if (c.bias) expect_within("db", got.db, ref.value.db, ref.abs.db, 2 * kU32);
  }
}

// ---- (a) ----------------------------------------------------------------------------------

TEST(LinearBf16, CpuMatchesF64OnTheRoundedOperands) { check_against_rounded_reference(Device::cpu()); }

TEST(LinearBf16, CudaMatchesF64OnTheRoundedOperands) {
  if (!have_cuda()) GTEST_SKIP() << kNoCuda;
  check_against_rounded_reference(Device::cuda(0));
}

// The rounding really happens (to bf16, nearest even), not just a cast of the result: operands
// exactly representable in bf16 give the f32 answer; one ulp of f32 off them does not matter.
TEST(LinearBf16, RoundsOperandsToNearestEvenBf16) {
  // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: nearest even is 1.
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: nearest even is 1 + 2^-6.
  const Tensor x = Tensor::from_vector<float>(Shape{1, 2}, {1.0f + 1.0f / 256, 1.0f + 3.0f / 256});
  const Tensor w = Tensor::from_vector<float>(Shape{1, 2}, {1.0f, 1.0f});
  const Variable y = linear(Variable(x), Variable(w), Variable(), MatmulPrecision::bf16);
  EXPECT_EQ(y.data().to_vector<double>()[0], 1.0 + (1.0 + 1.0 / 64));
  const Variable y32 = linear(Variable(x), Variable(w), Variable());
  EXPECT_EQ(y32.data().to_vector<double>()[0], 2.0 + 4.0 / 256);
}

// ---- (b) ----------------------------------------------------------------------------------

TEST(LinearBf16, AtMostTwiceAsWrongAsTheBf16ReferenceAndCloseToF32) {
  for (size_t i = 0; i < cases().size(); ++i) {
    const Case& c = cases()[i];
    SCOPED_TRACE(c.label);
    const Inputs in = make_inputs(c.x, c.N, c.bias, 200 + i);
    const Result ours = run_linear(in, MatmulPrecision::bf16, Device::cpu());
    const Result f32 = run_linear(in, MatmulPrecision::f32, Device::cpu());
    const Reference exact = reference(in, /*round=*/false), bf16_ref = reference(in, /*round=*/true);
    const std::vector<std::pair<const char*, std::vector<double> Result::*>> parts{
        {"y", &Result::y}, {"dx", &Result::dx}, {"dw", &Result::dw}};
    for (const auto& [name, field] : parts) {
      const std::vector<double>& want = exact.value.*field;
      // The bf16 reference's own error is > 0 here (random inputs are not bf16 values).
      const double ref_max = max_abs_diff(bf16_ref.value.*field, want), ref_rms = rms_diff(bf16_ref.value.*field, want);
      ASSERT_GT(ref_max, 0.0) << name;
      EXPECT_LE(max_abs_diff(ours.*field, want), 2 * ref_max) << name << " (max |error|)";
      EXPECT_LE(rms_diff(ours.*field, want), 2 * ref_rms) << name << " (rms error)";
      // Against the f32 op: twice the bound of the bf16 operand rounding, plus both sides' f32 sums.
      const double terms = static_cast<double>(name == std::string("y") ? in.K : name == std::string("dx") ? in.N : in.R);
      expect_within(std::string(name) + " vs f32 linear", ours.*field, f32.*field, exact.abs.*field,
                    2 * kBf16Product + 4 * (terms + 3) * kU32);
      // ... and it is a different computation (the rounding is not skipped).
      EXPECT_GT(max_abs_diff(ours.*field, f32.*field), 0.0) << name;
    }
    if (c.bias) {
      EXPECT_EQ(ours.db, f32.db) << "db sums the unrounded dy, as the f32 op does";
    }
  }
}

// ---- (c) ----------------------------------------------------------------------------------

// Bytes the graph of y = linear(x, w) holds beyond x, w and y: the tensors saved for backward.
// Sizes are multiples of the allocators' granules (4 KiB host blocks of >= 64 KiB, 512 B device
// blocks below 1 MiB), and the caches are emptied first, so every block is fresh and exact.
template <typename InUse, typename Empty>
void check_saved_bytes(Device device, InUse in_use, Empty empty_cache) {
  const int64_t R = 512, K = 128, N = 256;  // x 256 KiB, w 128 KiB, y 512 KiB in f32
  Generator gen(5);
  Variable x(randn(Shape{R, K}, gen).to(device), true), w(randn(Shape{N, K}, gen).to(device), true);
  const size_t y_bytes = sizeof(float) * R * N;
  for (MatmulPrecision p : {MatmulPrecision::f32, MatmulPrecision::bf16}) {
    SCOPED_TRACE(std::string(matmul_precision_name(p)));
    empty_cache();
    const size_t before = in_use();
    {
      Variable y = linear(x, w, Variable(), p);
      const size_t held = in_use() - before - y_bytes;
      // f32 saves x and w themselves (no bytes); bf16 saves their bf16 copies, 2 bytes an
      // element (f32 copies would be 4, recomputing them in backward 0).
      const size_t want = p == MatmulPrecision::bf16 ? sizeof(uint16_t) * (R * K + N * K) : 0;
      EXPECT_EQ(held, want) << "bytes saved for backward";
      y.backward(Tensor::ones(Shape{R, N}, DType::f32, device));
      EXPECT_EQ(x.grad().dtype(), DType::f32);
    }
    x.zero_grad();
    w.zero_grad();
    EXPECT_EQ(in_use(), before) << "the saved copies go with the graph";
  }
}

TEST(LinearBf16, SavesBf16CopiesOfXAndWOnTheCpu) {
  check_saved_bytes(
      Device::cpu(), [] { return host_cache_stats().in_use_bytes; }, [] { host_cache_empty(); });
}

TEST(LinearBf16, SavesBf16CopiesOfXAndWOnCuda) {
  if (!have_cuda()) GTEST_SKIP() << kNoCuda;
#if ATTNLAB_WITH_CUDA
  check_saved_bytes(
      Device::cuda(0), [] { return cuda::cache_stats().in_use_bytes; }, [] { cuda::cache_empty(); });
#endif
}

// Without a graph (no grad mode), nothing is kept at all.
TEST(LinearBf16, NoGradModeKeepsNothing) {
  Generator gen(6);
  const Variable x(randn(Shape{512, 128}, gen), true), w(randn(Shape{256, 128}, gen), true);
  host_cache_empty();
  const size_t before = host_cache_stats().in_use_bytes;
  NoGradGuard ng;
  const Variable y = linear(x, w, Variable(), MatmulPrecision::bf16);
  EXPECT_FALSE(y.requires_grad());
  EXPECT_EQ(host_cache_stats().in_use_bytes - before, sizeof(float) * 512 * 256);
}

// ---- (d) ----------------------------------------------------------------------------------

TEST(LinearBf16, CudaMatchesCpu) {
  if (!have_cuda()) GTEST_SKIP() << kNoCuda;
  for (size_t i = 0; i < cases().size(); ++i) {
    const Case& c = cases()[i];
    SCOPED_TRACE(c.label);
    const Inputs in = make_inputs(c.x, c.N, c.bias, 300 + i);
    const Result cpu = run_linear(in, MatmulPrecision::bf16, Device::cpu());
    const Result gpu = run_linear(in, MatmulPrecision::bf16, Device::cuda(0));
    // Same rounded operands and exact products on both: only the order of f32 sums differs, so
    // each is within the f32 bound of the rounded reference and they are within twice it.
    const Reference ref = reference(in, /*round=*/true);
    expect_within("y", gpu.y, cpu.y, ref.abs.y, 4 * (in.K + 3) * kU32);
    expect_within("dx", gpu.dx, cpu.dx, ref.abs.dx, 4 * (in.N + 2) * kU32);
    expect_within("dw", gpu.dw, cpu.dw, ref.abs.dw, 4 * (in.R + 2) * kU32);
    if (c.bias) expect_within("db", gpu.db, cpu.db, ref.abs.db, 4 * kU32);
  }
}

// ---- checks and names ---------------------------------------------------------------------

TEST(LinearBf16, NeedsF32Inputs) {
  const Variable x64(Tensor::ones(Shape{2, 3}, DType::f64)), w64(Tensor::ones(Shape{4, 3}, DType::f64));
  try {
    linear(x64, w64, Variable(), MatmulPrecision::bf16);
    ADD_FAILURE() << "f64 inputs in bf16 precision did not throw";
  } catch (const DTypeError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("linear"), std::string::npos) << msg;
    EXPECT_NE(msg.find("bf16"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[2, 3] f64"), std::string::npos) << msg;
  }
  Generator gen(1);
  EXPECT_THROW(Linear(3, 4, true, gen, DType::f64, MatmulPrecision::bf16), DTypeError);
}

TEST(LinearBf16, PrecisionNames) {
  for (MatmulPrecision p : {MatmulPrecision::f32, MatmulPrecision::bf16})
    EXPECT_EQ(parse_matmul_precision(matmul_precision_name(p)), p);
  EXPECT_EQ(matmul_precision_name(MatmulPrecision::f32), "f32");
  EXPECT_EQ(matmul_precision_name(MatmulPrecision::bf16), "bf16");
  try {
    parse_matmul_precision("fp16");
    ADD_FAILURE() << "fp16 was accepted";
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("fp16"), std::string::npos) << msg;
    EXPECT_NE(msg.find("f32, bf16"), std::string::npos) << msg;
  }
}

// ---- (e) layers ---------------------------------------------------------------------------

TEST(LinearBf16Layers, LinearUsesItsPrecision) {
  Generator gen(7);
  const Linear f32(6, 5, true, gen), bf16(6, 5, true, gen, DType::f32, MatmulPrecision::bf16);
  EXPECT_EQ(f32.precision(), MatmulPrecision::f32);
  EXPECT_EQ(bf16.precision(), MatmulPrecision::bf16);
  const Variable x(randn(Shape{3, 6}, gen));
  EXPECT_EQ(bf16.forward(x).data().to_vector<float>(),
            linear(x, bf16.weight(), bf16.bias(), MatmulPrecision::bf16).data().to_vector<float>());
  EXPECT_EQ(f32.forward(x).data().to_vector<float>(),
            linear(x, f32.weight(), f32.bias()).data().to_vector<float>());
}

TEST(LinearBf16Layers, MlpAndAttentionPassItToEveryLinear) {
  for (MatmulPrecision p : {MatmulPrecision::f32, MatmulPrecision::bf16}) {
    Generator gen(8);
    for (const char* kind : {"gelu", "swiglu"}) {
      const auto mlp = make_mlp(kind, 8, 16, true, gen, DType::f32, p);
      const Linear* fc = nullptr;
      const Linear* proj = nullptr;
      if (auto* g = dynamic_cast<const GeluMlp*>(mlp.get())) fc = &g->c_fc(), proj = &g->c_proj();
      if (auto* s = dynamic_cast<const SwiGluMlp*>(mlp.get())) fc = &s->c_fc(), proj = &s->c_proj();
      ASSERT_TRUE(fc && proj) << kind;
      EXPECT_EQ(fc->precision(), p) << kind;
      EXPECT_EQ(proj->precision(), p) << kind;
    }
    AttentionBlockConfig ac;
    ac.d_model = 8;
    ac.heads = 2;
    ac.matmul_precision = p;
    const CausalSelfAttention attn(ac, gen);
    EXPECT_EQ(attn.c_attn().precision(), p);
    EXPECT_EQ(attn.c_proj().precision(), p);
    GptConfig gc;
    gc.vocab_size = 11, gc.context = 8, gc.layers = 1, gc.d_model = 8, gc.heads = 2;
    gc.matmul_precision = p;
    const GptBlock block(gc, gen);
    const auto* block_attn = dynamic_cast<const CausalSelfAttention*>(&block.attn());
    ASSERT_NE(block_attn, nullptr) << "a softmax model's block mixes tokens with CausalSelfAttention";
    EXPECT_EQ(block_attn->c_attn().precision(), p);
    EXPECT_EQ(block_attn->c_proj().precision(), p);
  }
  EXPECT_EQ(GptConfig().matmul_precision, MatmulPrecision::f32) << "f32 stays the default";
}

GptConfig tiny_gpt(bool tied, MatmulPrecision p) {
  GptConfig c;
  c.vocab_size = 11;
  c.vocab_pad = 8;  // Vp = 16
  c.context = 8;
  c.layers = 2;
  c.d_model = 16;
  c.heads = 2;
  c.tie_embeddings = tied;
  c.matmul_precision = p;
  return c;
}

struct GptRun {
  std::vector<double> logits;
  double loss = 0;
  std::vector<std::vector<double>> grads;  // per parameter, in order
};

GptRun run_gpt(const Gpt& model, Device device) {
  Generator gen(9);
  const Tensor ids = randint(Shape{2, 8}, 11, gen), targets = randint(Shape{2, 8}, 11, gen);
  const Variable logits = model.forward(Variable(ids.to(device)));
  const Variable loss = cross_entropy(logits, Variable(targets.to(device)));
  loss.backward();
  GptRun r;
  r.logits = logits.data().to(Device::cpu()).to_vector<double>();
  r.loss = loss.data().to(Device::cpu()).item<double>();
  for (const auto& [name, p] : model.named_parameters()) {
    EXPECT_TRUE(p.grad().defined()) << name;
    EXPECT_EQ(p.grad().dtype(), DType::f32) << name;
    r.grads.push_back(p.grad().to(Device::cpu()).to_vector<double>());
  }
  return r;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

TEST(LinearBf16Layers, Bf16GptIsCloseToF32AndDiffers) {
  for (bool tied : {true, false}) {
    SCOPED_TRACE(tied ? "tied head" : "lm_head");
    Generator g1(3), g2(3);
    const Gpt f32(tiny_gpt(tied, MatmulPrecision::f32), g1), bf16(tiny_gpt(tied, MatmulPrecision::bf16), g2);
    const GptRun a = run_gpt(f32, Device::cpu()), b = run_gpt(bf16, Device::cpu());
    // Same parameters (the precision draws nothing), so the difference is the rounding: a few
    // bf16 ulps of the logits' scale, and not zero.
    const double scale = max_abs(a.logits);
    EXPECT_GT(max_abs_diff(a.logits, b.logits), 0.0);
    EXPECT_LE(max_abs_diff(a.logits, b.logits), 8 * kU16 * scale);
    EXPECT_NEAR(a.loss, b.loss, 8 * kU16 * std::abs(a.loss));
    ASSERT_EQ(a.grads.size(), b.grads.size());
    for (size_t i = 0; i < a.grads.size(); ++i)
      EXPECT_LE(max_abs_diff(a.grads[i], b.grads[i]), 0.05 * max_abs(a.grads[i]) + 1e-7) << "parameter " << i;
  }
  Generator gen(1);
  EXPECT_THROW(Gpt(tiny_gpt(true, MatmulPrecision::bf16), gen, DType::f64), DTypeError);
}

// The head in particular, tied (the linear op on wte.weight) and untied (lm_head): with every
// c_proj zeroed the blocks add exact zeros, so the logits are head(ln_f(wte[ids])), which the
// test rebuilds from the ops: bit-equal to the bf16 product, and not equal to the f32 one.
TEST(LinearBf16Layers, GptHeadUsesThePrecision) {
  for (bool tied : {true, false}) {
    SCOPED_TRACE(tied ? "tied head" : "lm_head");
    GptConfig c = tiny_gpt(tied, MatmulPrecision::bf16);
    c.positions = "rope";  // no learned positions: the input is wte[ids] alone
    Generator gen(12);
    Gpt model(c, gen);
    std::map<std::string, Tensor> state = model.state_dict();
    for (auto& [name, t] : state)
      if (name.find("c_proj.") != std::string::npos) t.zero_();
    const Tensor ids = randint(Shape{2, 8}, c.vocab_size, gen);
    const std::vector<float> got = model.forward(Variable(ids)).data().to_vector<float>();
    const LayerNorm ln_f(c.d_model, true);  // the model's ln_f at init: weight 1, bias 0
    const Variable h = ln_f.forward(embedding(Variable(state.at("wte.weight")), Variable(ids)));
    const Variable head(state.at(tied ? "wte.weight" : "lm_head.weight"));
    EXPECT_EQ(got, linear(h, head, Variable(), MatmulPrecision::bf16).data().to_vector<float>());
    EXPECT_NE(got, linear(h, head, Variable(), MatmulPrecision::f32).data().to_vector<float>());
  }
}

// A few plain SGD steps on one batch: bf16 trains like f32.
TEST(LinearBf16Layers, Bf16GptTrains) {
  Generator gen(4);
  Gpt model(tiny_gpt(false, MatmulPrecision::bf16), gen);
  double first = 0, last = 0;
  for (int step = 0; step < 30; ++step) {
    model.zero_grad();
    const GptRun r = run_gpt(model, Device::cpu());
    if (step == 0) first = r.loss;
    last = r.loss;
    ASSERT_TRUE(std::isfinite(r.loss)) << "step " << step;
    size_t i = 0;
    for (auto& [name, p] : model.named_parameters()) {
      std::vector<float> v = p.data().to_vector<float>();
      for (size_t j = 0; j < v.size(); ++j) v[j] -= static_cast<float>(0.5 * r.grads[i][j]);
      p.mutable_data().copy_(Tensor::from_vector<float>(p.shape(), v));
      ++i;
    }
  }
  EXPECT_LT(last, first - 0.5) << "loss " << first << " -> " << last;
}

// Whole model in bf16 on CUDA against the CPU. Each layer's sums differ in order only, but the
// next layer rounds its input to bf16 again, so an f32 ulp can move an element by a bf16 ulp:
// the tolerance is bf16's, not f32's.
TEST(LinearBf16Layers, Bf16GptCudaMatchesCpu) {
  if (!have_cuda()) GTEST_SKIP() << kNoCuda;
  for (bool tied : {true, false}) {
    SCOPED_TRACE(tied ? "tied head" : "lm_head");
    Generator g1(3), g2(3);
    const Gpt cpu_model(tiny_gpt(tied, MatmulPrecision::bf16), g1);
    Gpt gpu_model(tiny_gpt(tied, MatmulPrecision::bf16), g2);
    gpu_model.to(Device::cuda(0));
    const GptRun a = run_gpt(cpu_model, Device::cpu()), b = run_gpt(gpu_model, Device::cuda(0));
    EXPECT_LE(max_abs_diff(a.logits, b.logits), 4 * kU16 * max_abs(a.logits));
    EXPECT_NEAR(a.loss, b.loss, 4 * kU16 * std::abs(a.loss));
    ASSERT_EQ(a.grads.size(), b.grads.size());
    for (size_t i = 0; i < a.grads.size(); ++i)
      EXPECT_LE(max_abs_diff(a.grads[i], b.grads[i]), 0.02 * max_abs(a.grads[i]) + 1e-7) << "parameter " << i;
  }
}

}  // namespace
}  // namespace attnlab
