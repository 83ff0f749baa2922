// The sgemm and softmax kernels of kernels.h against double-precision CPU loops, under whatever
// schedule ctest set (ATTNLAB_SIMT_SCHEDULE), at tile-aligned and ragged shapes, with OpenMP over
// blocks and sequentially.
#include <gtest/gtest.h>

#include <cstdlib>

#include "lib/simt/compat.h"
#include "tests/simt/kernels.h"

namespace simt = attnlab::simt;

namespace {

void check_sgemm(int m, int n, int k) {
  const auto a = simt_test::random_vector(static_cast<size_t>(m) * k, 1);
  const auto b = simt_test::random_vector(static_cast<size_t>(k) * n, 2);
  std::vector<float> c(static_cast<size_t>(m) * n, -7.0f);
  ASSERT_EQ(simt_test::sgemm(a.data(), b.data(), c.data(), m, n, k), cudaSuccess) << simt::take_last_error();
  EXPECT_LT(simt_test::max_abs_diff(c, simt_test::sgemm_reference(a, b, m, n, k)), 1e-4 * k)
      << m << "x" << n << "x" << k << " under " << simt::current_schedule().name();
}

TEST(SimtKernels, SgemmTileAligned) { check_sgemm(64, 48, 32); }
TEST(SimtKernels, SgemmRagged) { check_sgemm(33, 47, 61); }
TEST(SimtKernels, SgemmThin) { check_sgemm(1, 200, 17); }

TEST(SimtKernels, Sgemm128Cubed) { check_sgemm(128, 128, 128); }

void check_softmax(int rows, int cols) {
  const auto x = simt_test::random_vector(static_cast<size_t>(rows) * cols, 3, -4.0f, 4.0f);
  std::vector<float> y(x.size(), -7.0f);
  ASSERT_EQ(simt_test::softmax(x.data(), y.data(), rows, cols), cudaSuccess) << simt::take_last_error();
  EXPECT_LT(simt_test::max_abs_diff(y, simt_test::softmax_reference(x, rows, cols)), 1e-6)
      << rows << "x" << cols << " under " << simt::current_schedule().name();
}

TEST(SimtKernels, SoftmaxRagged) {
  check_softmax(3, 7);
  check_softmax(5, 1000);
}

TEST(SimtKernels, Softmax64x1024) { check_softmax(64, 1024); }

TEST(SimtKernels, SequentialMatchesParallel) {
  const int m = 40, n = 70, k = 50;
  const auto a = simt_test::random_vector(static_cast<size_t>(m) * k, 4);
  const auto b = simt_test::random_vector(static_cast<size_t>(k) * n, 5);
  std::vector<float> parallel(static_cast<size_t>(m) * n), sequential(parallel.size());
  ASSERT_EQ(simt_test::sgemm(a.data(), b.data(), parallel.data(), m, n, k), cudaSuccess);
  setenv("ATTNLAB_SIMT_THREADS", "1", 1);
  ASSERT_EQ(simt_test::sgemm(a.data(), b.data(), sequential.data(), m, n, k), cudaSuccess);
  unsetenv("ATTNLAB_SIMT_THREADS");
  EXPECT_EQ(parallel, sequential);  // bit for bit: a block's arithmetic does not depend on threads
}

}  // namespace
