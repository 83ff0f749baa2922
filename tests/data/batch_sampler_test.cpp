#include "data/batch_sampler.h"

#include <gtest/gtest.h>

#include <set>

#include "lib/error.h"

namespace attnlab {
namespace {

// Token i has value i % 30000, so a window's start is readable from its first element.
Tensor stream(int64_t n) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<int32_t>(i % 30000);
  return Tensor::from_vector(Shape{n}, v);
}

TEST(BatchSampler, TargetsAreInputsShiftedByOne) {
  BatchSampler s(stream(5000), 6, 32, 42);
  for (int k = 0; k < 5; ++k) {
    const Batch b = s.next();
    ASSERT_EQ(b.x.shape(), (Shape{6, 32}));
    ASSERT_EQ(b.y.shape(), (Shape{6, 32}));
    EXPECT_EQ(b.x.dtype(), DType::i32);
    const std::vector<int32_t> x = b.x.to_vector<int32_t>(), y = b.y.to_vector<int32_t>();
    for (int r = 0; r < 6; ++r)
      for (int t = 0; t < 32; ++t) {
        EXPECT_EQ(x[static_cast<size_t>(r * 32 + t)], x[static_cast<size_t>(r * 32)] + t);
        EXPECT_EQ(y[static_cast<size_t>(r * 32 + t)], x[static_cast<size_t>(r * 32 + t)] + 1);
      }
  }
  EXPECT_EQ(s.step(), 5u);
}

TEST(BatchSampler, DeterministicAndResumable) {
  const Tensor tokens = stream(10000);
  BatchSampler a(tokens, 5, 16, 7), b(tokens, 5, 16, 7), other_seed(tokens, 5, 16, 8);
  std::vector<Batch> run;
  for (int k = 0; k < 20; ++k) run.push_back(a.next());
  bool differs = false;
  for (int k = 0; k < 20; ++k) {
    const Batch bb = b.next(), oo = other_seed.next();
    EXPECT_EQ(bb.x.to_vector<int32_t>(), run[static_cast<size_t>(k)].x.to_vector<int32_t>());
    differs |= oo.x.to_vector<int32_t>() != run[static_cast<size_t>(k)].x.to_vector<int32_t>();
  }
  EXPECT_TRUE(differs);
  // A fresh sampler set to step k draws exactly what the uninterrupted run drew at k.
  for (uint64_t k : {0u, 1u, 7u, 13u, 19u}) {
    BatchSampler resumed(tokens, 5, 16, 7);
    resumed.set_step(k);
    EXPECT_EQ(resumed.step(), k);
    const Batch r = resumed.next();
    EXPECT_EQ(r.x.to_vector<int32_t>(), run[k].x.to_vector<int32_t>()) << "step " << k;
    EXPECT_EQ(r.y.to_vector<int32_t>(), run[k].y.to_vector<int32_t>()) << "step " << k;
    EXPECT_EQ(resumed.step(), k + 1);
  }
  // Consecutive batches differ.
  EXPECT_NE(run[0].x.to_vector<int32_t>(), run[1].x.to_vector<int32_t>());
}

TEST(BatchSampler, StartsCoverTheWholeRangeAndStayInBounds) {
  // N = 20, T = 4: starts in [0, 15], all of them reachable, the last window ends at token 19.
  BatchSampler s(stream(20), 8, 4, 3);
  std::set<int64_t> seen;
  for (int k = 0; k < 200; ++k) {
    for (int64_t st : s.starts(s.step())) {
      EXPECT_GE(st, 0);
      EXPECT_LE(st, 15);
      seen.insert(st);
    }
    const Batch b = s.next();
    for (int32_t v : b.y.to_vector<int32_t>()) EXPECT_LE(v, 19);
  }
  EXPECT_EQ(seen.size(), 16u);
  // The smallest stream: exactly T + 1 tokens, every window is the whole stream.
  BatchSampler tiny(stream(5), 3, 4, 0);
  const Batch t = tiny.next();
  EXPECT_EQ(t.x.to_vector<int32_t>(), (std::vector<int32_t>{0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3}));
  EXPECT_EQ(t.y.to_vector<int32_t>(), (std::vector<int32_t>{1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4}));
}

TEST(BatchSampler, RejectsBadArguments) {
  EXPECT_THROW(BatchSampler(stream(4), 2, 4, 0), ConfigError);
  EXPECT_THROW(BatchSampler(stream(100), 0, 4, 0), ConfigError);
  EXPECT_THROW(BatchSampler(stream(100), 2, 0, 0), ConfigError);
  EXPECT_THROW(BatchSampler(Tensor::zeros(Shape{100}), 2, 4, 0), DTypeError);
  EXPECT_THROW(BatchSampler(stream(100).reshape(Shape{10, 10}), 2, 4, 0), ShapeError);
}

TEST(SequentialBatches, CoverTheStreamInOrderOnce) {
  // N = 103, T = 10: windows start at 0, 10, ..., 90 (10 windows; the last ends at token 100).
  const std::vector<Batch> all = sequential_batches(stream(103), 3, 10);
  ASSERT_EQ(all.size(), 3u);  // 9 windows in 3 batches; the 10th does not fill a batch
  int64_t expect_start = 0;
  for (const Batch& b : all) {
    ASSERT_EQ(b.x.shape(), (Shape{3, 10}));
    const std::vector<int32_t> x = b.x.to_vector<int32_t>(), y = b.y.to_vector<int32_t>();
    for (int r = 0; r < 3; ++r, expect_start += 10)
      for (int t = 0; t < 10; ++t) {
        EXPECT_EQ(x[static_cast<size_t>(r * 10 + t)], expect_start + t);
        EXPECT_EQ(y[static_cast<size_t>(r * 10 + t)], expect_start + t + 1);
      }
  }
  // Exactly filling: N = 1 + B * T * k uses every token.
  const std::vector<Batch> exact = sequential_batches(stream(1 + 2 * 5 * 4), 2, 5);
  ASSERT_EQ(exact.size(), 4u);
  EXPECT_EQ(exact.back().y.to_vector<int32_t>().back(), 40);
  EXPECT_EQ(sequential_batches(stream(103), 3, 10, 2).size(), 2u);
  EXPECT_EQ(sequential_batches(stream(103), 3, 10, 50).size(), 3u);
  EXPECT_EQ(sequential_batches(stream(11), 1, 10).size(), 1u);
  EXPECT_THROW(sequential_batches(stream(30), 3, 10), ConfigError);  // 2 windows < 1 batch
  EXPECT_THROW(sequential_batches(stream(10), 1, 10), ConfigError);
  EXPECT_THROW(sequential_batches(stream(103), 3, 10, 0), ConfigError);
}

}  // namespace
}  // namespace attnlab
