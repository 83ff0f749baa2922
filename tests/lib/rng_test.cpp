#include <gtest/gtest.h>

#include <cmath>

#include "lib/cpu/parallel.h"
#include "lib/rng.h"

namespace attnlab {
namespace {

TEST(Rng, PhiloxMatchesTheKnownAnswer) {
  // Known-answer vector of Philox-4x32-10 from the Random123 distribution's kat_vectors:
  // counter = 0, key = 0 -> 6627e8d5 e169c58d bc57ac4c 9b00dbd8.
  const Philox4x32 r = philox4x32_10(0, 0, 0);
  EXPECT_EQ(r.v[0], 0x6627e8d5u);
  EXPECT_EQ(r.v[1], 0xe169c58du);
  EXPECT_EQ(r.v[2], 0xbc57ac4cu);
  EXPECT_EQ(r.v[3], 0x9b00dbd8u);
  // counter = 243f6a88 85a308d3 13198a2e 03707344, key = a4093822 299f31d0 (digits of pi).
  const Philox4x32 p = philox4x32_10(0x85a308d3243f6a88ull, 0x0370734413198a2eull, 0x299f31d0a4093822ull);
  EXPECT_EQ(p.v[0], 0xd16cfe09u);
  EXPECT_EQ(p.v[1], 0x94fdccebu);
  EXPECT_EQ(p.v[2], 0x5001e420u);
  EXPECT_EQ(p.v[3], 0x24126ea1u);
}

TEST(Rng, SameSeedSameNumbersAndOffsetsAdvance) {
  Generator g1(42), g2(42);
  Tensor a = randn(Shape{1000}, g1), b = randn(Shape{1000}, g2);
  EXPECT_EQ(a.to_vector<float>(), b.to_vector<float>());
  Tensor c = randn(Shape{1000}, g1);
  EXPECT_NE(a.to_vector<float>(), c.to_vector<float>());
  EXPECT_EQ(g1.offset(), 500u);
  // Resuming from a saved (seed, offset) reproduces the stream.
  Generator g3(42, 250);
  EXPECT_EQ(randn(Shape{1000}, g3).to_vector<float>(), c.to_vector<float>());
}

TEST(Rng, IndependentOfThreadCount) {
  std::vector<float> with_all, with_one;
  {
    Generator g(7);
    with_all = randn(Shape{100003}, g).to_vector<float>();
  }
#ifdef _OPENMP
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
#endif
  {
    Generator g(7);
    with_one = randn(Shape{100003}, g).to_vector<float>();
  }
#ifdef _OPENMP
  omp_set_num_threads(saved);
#endif
  EXPECT_EQ(with_all, with_one);
}

TEST(Rng, MomentsAreRight) {
  Generator g(3);
  const std::vector<double> n = randn(Shape{200000}, g, DType::f64).to_vector<double>();
  const std::vector<double> u = rand(Shape{200000}, g, DType::f64).to_vector<double>();
  double mn = 0, vn = 0, mu = 0;
  for (double x : n) mn += x;
  mn /= n.size();
  for (double x : n) vn += (x - mn) * (x - mn);
  vn /= n.size();
  for (double x : u) {
    mu += x;
    ASSERT_GE(x, 0.0);
    ASSERT_LT(x, 1.0);
  }
  mu /= u.size();
  EXPECT_NEAR(mn, 0.0, 0.01);
  EXPECT_NEAR(vn, 1.0, 0.01);
  EXPECT_NEAR(mu, 0.5, 0.005);
}

}  // namespace
}  // namespace attnlab
