// cuda::gemm_strided_batched and cuda::matmul (lib/cuda/gemm.h) against plain loops in double.
// On the emulator the tiled kernel is the only engine; where cuBLAS is there (a GPU build) every
// case runs through both engines, so one checks the other.
//
// Shapes are ragged against the kernel's 64x64 tiles of C and 16-deep k-tiles; leading dims are
// padded past the matrix width and batch strides past the matrix size, so a kernel that ignores
// either reads the wrong elements.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <limits>
#include <vector>

#include "lib/cpu/gemm.h"
#include "lib/cuda/gemm.h"
#include "lib/cuda/runtime.h"
#include "lib/error.h"
#include "lib/rng.h"
#include "tests/support/cuda_test_util.h"

namespace attnlab {
namespace {

using cuda::GemmEngine;

using cuda_test::CudaTest;  // skips where the backend has no device
using cuda_test::to_cuda;
using cuda_test::to_host;
class CudaGemm : public CudaTest {};
class CudaMatmul : public CudaTest {};

// Engines to run each case through: tiled always, cuBLAS where it exists.
std::vector<GemmEngine> engines() {
  std::vector<GemmEngine> e{GemmEngine::tiled};
  if (cuda::has_cublas()) e.push_back(GemmEngine::cublas);
  return e;
}

// Deterministic values in [-2, 2] on a 1/512 grid (exact in bf16 for the small ones too).
template <typename T>
std::vector<T> values(size_t n, uint32_t seed) {
  std::vector<T> v(n);
  uint32_t s = seed * 2654435761u + 12345u;
  for (size_t i = 0; i < n; ++i) {
    s = s * 1664525u + 1013904223u;
    v[i] = static_cast<T>(static_cast<double>(static_cast<int>((s >> 8) % 2049u) - 1024) / 512.0);
  }
  return v;
}

// Device memory holding a copy of a host vector; freed with its owner.
template <typename T>
class DeviceVector {
 public:
  explicit DeviceVector(const std::vector<T>& host) : n_(host.size()) {
    ptr_ = static_cast<T*>(cuda::malloc(bytes(), 0));
    if (n_ > 0) cuda::copy_h2d(ptr_, host.data(), bytes());
  }
  ~DeviceVector() { cuda::free(ptr_, bytes(), 0); }
  DeviceVector(const DeviceVector&) = delete;
  DeviceVector& operator=(const DeviceVector&) = delete;
  T* get() { return ptr_; }
  std::vector<T> to_host() const {
    std::vector<T> host(n_);
    if (n_ > 0) cuda::copy_d2h(host.data(), ptr_, bytes());
    return host;
  }

 private:
  size_t bytes() const { return std::max<size_t>(1, n_) * sizeof(T); }
  size_t n_;
  T* ptr_ = nullptr;
};

double as_double(float x) { return x; }
double as_double(double x) { return x; }
double as_double(bf16 x) { return static_cast<float>(x); }

struct Case {
  bool ta, tb;
  int64_t M, N, K;
  int64_t batch = 1;
  double alpha = 1.0, beta = 0.0;
};

std::string describe(const Case& c, GemmEngine e) {
  std::ostringstream os;
  os << cuda::gemm_engine_name(e) << ": M=" << c.M << " N=" << c.N << " K=" << c.K << " batch=" << c.batch
     << " trans_a=" << c.ta << " trans_b=" << c.tb << " alpha=" << c.alpha << " beta=" << c.beta;
  return os.str();
}

// Runs one case with element types TIn (A, B) and TOut (C) and checks every element of C (the
// padding between rows and between batch entries included: it must be untouched).
template <typename TIn, typename TOut>
void check_case(const Case& c, GemmEngine engine, double tol) {
  SCOPED_TRACE(describe(c, engine));
  const int64_t rows_a = c.ta ? c.K : c.M, cols_a = c.ta ? c.M : c.K;
  const int64_t rows_b = c.tb ? c.N : c.K, cols_b = c.tb ? c.K : c.N;
  const int64_t lda = cols_a + 3, ldb = cols_b + 5, ldc = c.N + 2;
  const int64_t sa = rows_a * lda + 7, sb = rows_b * ldb + 1, sc = c.M * ldc + 3;
  const std::vector<TIn> ha = values<TIn>(static_cast<size_t>(sa * c.batch), 1);
  const std::vector<TIn> hb = values<TIn>(static_cast<size_t>(sb * c.batch), 2);
  const std::vector<TOut> hc = values<TOut>(static_cast<size_t>(sc * c.batch), 3);
  DeviceVector<TIn> da(ha), db(hb);
  DeviceVector<TOut> dc(hc);
  cuda::gemm_strided_batched(c.ta, c.tb, c.M, c.N, c.K, static_cast<TOut>(c.alpha), da.get(), lda, sa, db.get(), ldb,
                             sb, static_cast<TOut>(c.beta), dc.get(), ldc, sc, c.batch, engine);
  const std::vector<TOut> got = dc.to_host();

  std::vector<double> want(hc.size());
  for (size_t i = 0; i < hc.size(); ++i) want[i] = static_cast<double>(hc[i]);
  for (int64_t z = 0; z < c.batch; ++z)
    for (int64_t m = 0; m < c.M; ++m)
      for (int64_t n = 0; n < c.N; ++n) {
        double s = 0.0;
        for (int64_t k = 0; k < c.K; ++k) {
          const TIn a = ha[static_cast<size_t>(z * sa + (c.ta ? k * lda + m : m * lda + k))];
          const TIn b = hb[static_cast<size_t>(z * sb + (c.tb ? n * ldb + k : k * ldb + n))];
          s += as_double(a) * as_double(b);
        }
        double& w = want[static_cast<size_t>(z * sc + m * ldc + n)];
        w = c.alpha * s + (c.beta != 0.0 ? c.beta * w : 0.0);
      }
  for (size_t i = 0; i < want.size(); ++i)
    ASSERT_NEAR(static_cast<double>(got[i]), want[i], tol * (1.0 + std::abs(want[i]))) << "element " << i;
}

TEST_F(CudaGemm, RaggedShapesAllTransposesMatchTheLoop) {
  const std::vector<std::array<int64_t, 3>> shapes{{1, 1, 1}, {37, 65, 33}, {64, 64, 16}, {65, 130, 17}, {3, 200, 70}};
  for (GemmEngine e : engines())
    for (const auto& s : shapes)
      for (int t = 0; t < 4; ++t) check_case<float, float>({(t & 1) != 0, (t & 2) != 0, s[0], s[1], s[2]}, e, 1e-5);
}

TEST_F(CudaGemm, AlphaAndBetaScaleAndAccumulate) {
  for (GemmEngine e : engines()) {
    check_case<float, float>({false, true, 70, 33, 40, 1, 0.5, -1.5}, e, 1e-5);
    check_case<float, float>({true, false, 33, 70, 20, 1, -2.0, 1.0}, e, 1e-5);
    check_case<float, float>({false, false, 20, 20, 20, 1, 0.0, 0.25}, e, 1e-6);  // alpha 0: C = beta C
  }
}

TEST_F(CudaGemm, BatchesWithPaddedStrides) {
  for (GemmEngine e : engines()) {
    check_case<float, float>({false, false, 37, 33, 65, 3}, e, 1e-5);
    check_case<float, float>({true, true, 17, 70, 9, 4, 1.0, 0.5}, e, 1e-5);
  }
}

TEST_F(CudaGemm, BroadcastOperandWithStrideZero) {
  // One B for the whole batch (a linear layer's weight): stride_b = 0.
  for (GemmEngine e : engines()) {
    const int64_t M = 20, N = 30, K = 25, batch = 3;
    const std::vector<float> ha = values<float>(static_cast<size_t>(batch * M * K), 4);
    const std::vector<float> hb = values<float>(static_cast<size_t>(K * N), 5);
    DeviceVector<float> da(ha), db(hb), dc(std::vector<float>(static_cast<size_t>(batch * M * N), 0.0f));
    cuda::gemm_strided_batched(false, false, M, N, K, 1.0f, da.get(), K, M * K, db.get(), N, 0, 0.0f, dc.get(), N,
                               M * N, batch, e);
    const std::vector<float> got = dc.to_host();
    for (int64_t z = 0; z < batch; ++z)
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
          double s = 0.0;
          for (int64_t k = 0; k < K; ++k)
            s += double(ha[static_cast<size_t>(z * M * K + m * K + k)]) * hb[static_cast<size_t>(k * N + n)];
          ASSERT_NEAR(got[static_cast<size_t>(z * M * N + m * N + n)], s, 1e-5 * (1 + std::abs(s)));
        }
  }
}

TEST_F(CudaGemm, Float64IsExactToRounding) {
  for (GemmEngine e : engines())
    for (int t = 0; t < 4; ++t) check_case<double, double>({(t & 1) != 0, (t & 2) != 0, 37, 65, 33, 2, 1.5, 0.5}, e, 1e-13);
}

TEST_F(CudaGemm, Bf16InputsAccumulateInF32) {
  // A and B rounded to bf16; the reference uses the same rounded values, so only the f32
  // accumulation separates the two.
  for (GemmEngine e : engines())
    for (int t = 0; t < 4; ++t) check_case<bf16, float>({(t & 1) != 0, (t & 2) != 0, 37, 65, 33, 2, 1.0, 0.5}, e, 1e-5);
}

TEST_F(CudaGemm, BetaZeroNeverReadsC) {
  for (GemmEngine e : engines()) {
    const int64_t M = 5, N = 70, K = 3;
    DeviceVector<float> da(values<float>(M * K, 6)), db(values<float>(K * N, 7));
    DeviceVector<float> dc(std::vector<float>(M * N, std::numeric_limits<float>::quiet_NaN()));
    cuda::gemm_strided_batched(false, false, M, N, K, 1.0f, da.get(), K, 0, db.get(), N, 0, 0.0f, dc.get(), N, 0, 1, e);
    for (float v : dc.to_host()) ASSERT_TRUE(std::isfinite(v));
  }
}

TEST_F(CudaGemm, EmptyInnerDimensionScalesC) {
  for (GemmEngine e : engines()) {
    const std::vector<float> c0 = values<float>(6 * 7, 8);
    DeviceVector<float> da(std::vector<float>{}), db(std::vector<float>{}), dc(c0);
    cuda::gemm_strided_batched(false, false, 6, 7, 0, 1.0f, da.get(), 1, 0, db.get(), 7, 0, 2.0f, dc.get(), 7, 0, 1, e);
    const std::vector<float> got = dc.to_host();
    for (size_t i = 0; i < c0.size(); ++i) ASSERT_EQ(got[i], 2.0f * c0[i]);
  }
}

TEST_F(CudaGemm, BadArgumentsAreRefused) {
  DeviceVector<float> d(std::vector<float>(64, 0.0f));
  // lda shorter than a row of A [4, 8].
  EXPECT_THROW(cuda::gemm_strided_batched(false, false, 4, 4, 8, 1.0f, d.get(), 5, 0, d.get(), 4, 0, 0.0f, d.get(), 4,
                                          0, 1),
               ShapeError);
  EXPECT_THROW(cuda::gemm_strided_batched(false, false, -1, 4, 8, 1.0f, d.get(), 8, 0, d.get(), 4, 0, 0.0f, d.get(), 4,
                                          0, 1),
               ShapeError);
  if (!cuda::has_cublas()) {
    EXPECT_THROW(cuda::gemm_strided_batched(false, false, 2, 2, 2, 1.0f, d.get(), 2, 0, d.get(), 2, 0, 0.0f, d.get(),
                                            2, 0, 1, GemmEngine::cublas),
                 DeviceError);
    EXPECT_THROW(cuda::set_default_gemm_engine(GemmEngine::cublas), DeviceError);
    EXPECT_EQ(cuda::default_gemm_engine(), GemmEngine::tiled);
  }
}

// ---- cuda::matmul on tensors -------------------------------------------------------------

void expect_close(const Tensor& got, const Tensor& want, double tol) {
  ASSERT_EQ(got.shape(), want.shape());
  const std::vector<double> g = got.to_vector<double>(), w = want.to_vector<double>();
  for (size_t i = 0; i < g.size(); ++i) ASSERT_NEAR(g[i], w[i], tol * (1.0 + std::abs(w[i]))) << "element " << i;
}

TEST_F(CudaMatmul, BroadcastBatchesAndTransposedViewsMatchTheCpu) {
  Generator gen(11);
  struct M {
    Shape a, b;
    bool ta, tb;
  };
  const std::vector<M> cases{
      {Shape{37, 65}, Shape{65, 33}, false, false},
      {Shape{2, 1, 33, 17}, Shape{3, 66, 33}, true, true},
      {Shape{3, 67, 20}, Shape{3, 130, 20}, false, true},
      {Shape{40, 65}, Shape{2, 65, 70}, false, false},
      {Shape{2, 3, 5, 9}, Shape{2, 1, 9, 4}, false, false},
  };
  for (GemmEngine e : engines())
    for (const M& c : cases) {
      std::ostringstream label;
      label << c.a << (c.ta ? "^T" : "") << " @ " << c.b << (c.tb ? "^T" : "") << " " << cuda::gemm_engine_name(e);
      SCOPED_TRACE(label.str());
      const Tensor a = randn(c.a, gen), b = randn(c.b, gen);
      const Tensor want = cpu::matmul(a, b, c.ta, c.tb);
      expect_close(to_host(cuda::matmul(to_cuda(a), to_cuda(b), c.ta, c.tb, e)), want, 1e-5);
    }
}

TEST_F(CudaMatmul, StridedViewsAreReadInPlaceOrPacked) {
  Generator gen(12);
  const Tensor a = randn(Shape{33, 40}, gen), b = randn(Shape{40, 70}, gen);
  const Tensor want = cpu::matmul(a, b);
  const Tensor da = to_cuda(a), db = to_cuda(b);
  for (GemmEngine e : engines()) {
    // A column-major view (a transposed tensor read back transposed), and a sliced one.
    const Tensor at = to_cuda(a.transpose(0, 1).contiguous()).transpose(0, 1);
    expect_close(to_host(cuda::matmul(at, db, false, false, e)), want, 1e-5);
    const Tensor wide = to_cuda(randn(Shape{40, 140}, gen));
    const Tensor every_other = wide.slice(1, 0, 140, 2);  // [40, 70], column stride 2: packed
    expect_close(to_host(cuda::matmul(da, every_other, false, false, e)),
                 cpu::matmul(a, to_host(wide).slice(1, 0, 140, 2)), 1e-5);
  }
}

TEST_F(CudaMatmul, Bf16OperandsGiveF32AndIntoAccumulates) {
  Generator gen(13);
  const Tensor a = randn(Shape{2, 37, 20}, gen).to(DType::bf16), b = randn(Shape{20, 45}, gen).to(DType::bf16);
  const Tensor want = cpu::matmul(a.to(DType::f32), b.to(DType::f32));
  for (GemmEngine e : engines()) {
    const Tensor c = cuda::matmul(to_cuda(a), to_cuda(b), false, false, e);
    EXPECT_EQ(c.dtype(), DType::f32);
    expect_close(to_host(c), want, 1e-5);
    Tensor acc = to_cuda(want);
    cuda::matmul_into(acc, to_cuda(a), to_cuda(b), false, false, 1.0, e);  // acc = want + a @ b = 2 want
    const std::vector<float> got = to_host(acc).to_vector<float>(), w = want.to_vector<float>();
    for (size_t i = 0; i < w.size(); ++i) ASSERT_NEAR(got[i], 2.0f * w[i], 1e-5 * (1.0 + std::abs(2.0 * w[i])));
  }
}

}  // namespace
}  // namespace attnlab
