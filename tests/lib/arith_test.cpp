// cpu::sum_dims and sum_to over leading dims (a bias gradient) take the column-sum kernel:
// against a plain loop in double, and bit-identical on 1 and 2 threads.
#include <gtest/gtest.h>

#include <cstring>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "lib/cpu/arith.h"
#include "lib/rng.h"

namespace attnlab {
namespace {

std::vector<double> naive_column_sums(const Tensor& x, int64_t rows, int64_t cols) {
  const std::vector<double> v = x.to_vector<double>();
  std::vector<double> s(static_cast<size_t>(cols), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) s[static_cast<size_t>(c)] += v[static_cast<size_t>(r * cols + c)];
  return s;
}

TEST(Arith, SumToOverLeadingDimsIsAColumnSum) {
  Generator g(1);
  for (const Shape& shape : {Shape{300, 70}, Shape{4, 33, 130}, Shape{1, 1, 5}, Shape{0, 7}}) {
    const Tensor x = randn(shape, g, DType::f64);
    const int64_t cols = shape[shape.ndim() - 1], rows = x.numel() / cols;
    const Tensor s = cpu::sum_to(x, Shape{cols});
    ASSERT_EQ(s.shape(), Shape{cols});
    const std::vector<double> got = s.to_vector<double>(), want = naive_column_sums(x, rows, cols);
    for (int64_t c = 0; c < cols; ++c) EXPECT_NEAR(got[static_cast<size_t>(c)], want[static_cast<size_t>(c)], 1e-12);
  }
  // Trailing dims kept together: [2, 3, 4] -> [1, 3, 4].
  const Tensor x = randn(Shape{2, 3, 4}, g, DType::f64);
  const std::vector<double> got = cpu::sum_dims(x, {true, false, false}).to_vector<double>();
  const std::vector<double> want = naive_column_sums(x, 2, 12);
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-12);
}

#ifdef _OPENMP
TEST(Arith, ColumnSumsBitIdenticalOnOneAndTwoThreads) {
  Generator g(2);
  const Tensor x = randn(Shape{1024, 777}, g);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const Tensor a = cpu::sum_to(x, Shape{777});
  omp_set_num_threads(2);
  const Tensor b = cpu::sum_to(x, Shape{777});
  omp_set_num_threads(saved);
  EXPECT_EQ(std::memcmp(a.data<float>(), b.data<float>(), 777 * sizeof(float)), 0);
}
#endif

}  // namespace
}  // namespace attnlab
