#include <gtest/gtest.h>

#include <cstring>
#include <tuple>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "lib/cpu/gemm.h"
#include "lib/error.h"
#include "lib/rng.h"

namespace attnlab {
namespace {

// The obvious triple loop, in double.
Tensor naive_matmul(const Tensor& a, const Tensor& b) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  const std::vector<double> va = a.to_vector<double>(), vb = b.to_vector<double>();
  std::vector<double> c(static_cast<size_t>(M * N), 0.0);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < N; ++j) c[static_cast<size_t>(i * N + j)] += va[static_cast<size_t>(i * K + k)] * vb[static_cast<size_t>(k * N + j)];
  return Tensor::from_vector(Shape{M, N}, c);
}

void expect_close(const Tensor& a, const Tensor& b, double tol) {
  ASSERT_EQ(a.shape(), b.shape());
  const auto va = a.to_vector<double>(), vb = b.to_vector<double>();
  for (size_t i = 0; i < va.size(); ++i) ASSERT_NEAR(va[i], vb[i], tol) << "element " << i;
}

TEST(Gemm, AllTransposeCombinationsMatchTheTripleLoop) {
  Generator g(1);
  const Tensor a = randn(Shape{37, 19}, g, DType::f64), b = randn(Shape{19, 23}, g, DType::f64);
  const Tensor want = naive_matmul(a, b);
  expect_close(cpu::matmul(a, b), want, 1e-12);
  expect_close(cpu::matmul(a.transpose(0, 1).contiguous(), b, true, false), want, 1e-12);
  expect_close(cpu::matmul(a, b.transpose(0, 1).contiguous(), false, true), want, 1e-12);
  expect_close(cpu::matmul(a.transpose(0, 1).contiguous(), b.transpose(0, 1).contiguous(), true, true), want, 1e-12);
  // Strided views are read in place (a transposed view is a transposed operand).
  expect_close(cpu::matmul(a.transpose(0, 1), b, true, false), naive_matmul(a.transpose(0, 1).contiguous().transpose(0, 1).contiguous(), b), 1e-12);
  expect_close(cpu::matmul(a.to(DType::f32), b.to(DType::f32)), want, 1e-4);
}

TEST(Gemm, BatchedWithBroadcastBatchDims) {
  Generator g(2);
  const Tensor a = randn(Shape{3, 1, 5, 4}, g, DType::f64), b = randn(Shape{2, 4, 6}, g, DType::f64);
  const Tensor c = cpu::matmul(a, b);
  ASSERT_EQ(c.shape(), (Shape{3, 2, 5, 6}));
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 2; ++j)
      expect_close(c.narrow(0, i, 1).narrow(1, j, 1).reshape(Shape{5, 6}),
                   naive_matmul(a.narrow(0, i, 1).reshape(Shape{5, 4}), b.narrow(0, j, 1).reshape(Shape{4, 6})), 1e-12);
}

TEST(Gemm, BetaAccumulates) {
  Generator g(3);
  const Tensor a = randn(Shape{4, 3}, g, DType::f64), b = randn(Shape{3, 5}, g, DType::f64);
  Tensor c = Tensor::ones(Shape{4, 5}, DType::f64);
  cpu::matmul_into(c, a, b, false, false, 2.0);
  Tensor want = naive_matmul(a, b);
  std::vector<double> w = want.to_vector<double>();
  for (double& x : w) x += 2.0;
  expect_close(c, Tensor::from_vector(Shape{4, 5}, w), 1e-12);
}

// Products large enough that gemm cuts C into tiles (by rows, by columns, into 4), with every
// transpose and a beta that accumulates.
TEST(Gemm, TiledProductsMatchTheTripleLoop) {
  Generator g(4);
  for (const auto& [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{300, 200, 70}, {100, 500, 40}, {2048, 64, 512}}) {
    const Tensor a = randn(Shape{M, K}, g, DType::f64), b = randn(Shape{K, N}, g, DType::f64);
    const Tensor want = naive_matmul(a, b);
    expect_close(cpu::matmul(a, b), want, 1e-10);
    expect_close(cpu::matmul(a.transpose(0, 1).contiguous(), b.transpose(0, 1).contiguous(), true, true), want, 1e-10);
    Tensor c = Tensor::ones(Shape{M, N}, DType::f64);
    cpu::matmul_into(c, a, b.transpose(0, 1).contiguous(), false, true, 1.0);
    std::vector<double> w = want.to_vector<double>();
    for (double& x : w) x += 1.0;
    expect_close(c, Tensor::from_vector(Shape{M, N}, w), 1e-10);
  }
}

#ifdef _OPENMP
// A BLAS splits a product by its thread count and gets different bits for each; gemm's own tiles
// depend on the shape only, so f32 products are bit-identical on 1, 2 and 3 threads.
TEST(Gemm, BitIdenticalOnAnyThreadCount) {
  Generator g(5);
  const int saved = omp_get_max_threads();
  for (const auto& [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1024, 256, 768}, {256, 3072, 768}, {64, 40, 30}}) {
    const Tensor a = randn(Shape{M, K}, g), b = randn(Shape{N, K}, g);
    std::vector<Tensor> got;
    for (int threads : {1, 2, 3}) {
      omp_set_num_threads(threads);
      got.push_back(cpu::matmul(a, b, false, true));
    }
    omp_set_num_threads(saved);
    for (size_t i = 1; i < got.size(); ++i)
      EXPECT_EQ(std::memcmp(got[0].data<float>(), got[i].data<float>(), static_cast<size_t>(M * N) * sizeof(float)), 0)
          << M << "x" << N << "x" << K << " on " << i + 1 << " threads";
  }
}
#endif

TEST(Gemm, ShapeErrorsPrintBothOperands) {
  const Tensor a = Tensor::zeros(Shape{2, 3}), b = Tensor::zeros(Shape{4, 5});
  try {
    cpu::matmul(a, b);
    FAIL();
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("a=[2, 3] f32 cpu, b=[4, 5] f32 cpu"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace attnlab
