#include <gtest/gtest.h>

#include "lib/error.h"
#include "lib/tensor.h"

namespace attnlab {
namespace {

Tensor iota(const Shape& s) {
  std::vector<float> v(static_cast<size_t>(s.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
  return Tensor::from_vector(s, v);
}

TEST(Tensor, CreationAndDtypes) {
  Tensor z = Tensor::zeros(Shape{2, 3}, DType::f64);
  EXPECT_EQ(z.str(), "[2, 3] f64 cpu");
  EXPECT_TRUE(z.is_contiguous());
  EXPECT_EQ(z.to_vector<double>(), std::vector<double>(6, 0.0));
  EXPECT_EQ(Tensor::full(Shape{2}, 3.5, DType::bf16).to_vector<float>(), (std::vector<float>{3.5f, 3.5f}));
  EXPECT_EQ(Tensor::arange(4, DType::i32).to_vector<int32_t>(), (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(z.raw_data()) % Storage::kAlignment, 0u);
  EXPECT_THROW(z.data<float>(), DTypeError);
}

TEST(Tensor, Bf16RoundsToNearestEven) {
  EXPECT_EQ(static_cast<float>(bf16(1.0f)), 1.0f);
  // 1 + 2^-8 is halfway between two bf16 values (1 and 1 + 2^-7): ties go to even (1).
  EXPECT_EQ(static_cast<float>(bf16(1.0f + 1.0f / 256)), 1.0f);
  EXPECT_EQ(static_cast<float>(bf16(1.0f + 3.0f / 256)), 1.0f + 1.0f / 64);
}

TEST(Tensor, TransposeIsAViewAndContiguousCopies) {
  Tensor a = iota(Shape{2, 3});
  Tensor t = a.transpose(0, 1);
  EXPECT_EQ(t.shape(), (Shape{3, 2}));
  EXPECT_FALSE(t.is_contiguous());
  EXPECT_TRUE(t.shares_storage_with(a));
  EXPECT_EQ(t.to_vector<float>(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  Tensor c = t.contiguous();
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_FALSE(c.shares_storage_with(a));
  EXPECT_EQ(c.to_vector<float>(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
}

TEST(Tensor, ReshapeViewsWhenItCanAndCopiesWhenItMust) {
  Tensor a = iota(Shape{2, 3, 4});
  Tensor r = a.reshape(Shape{6, -1});
  EXPECT_EQ(r.shape(), (Shape{6, 4}));
  EXPECT_TRUE(r.shares_storage_with(a));
  // A permuted tensor whose trailing dims are still contiguous can merge them without a copy.
  Tensor p = a.permute({1, 0, 2});  // [3, 2, 4]
  Tensor v = a.narrow(0, 1, 1).reshape(Shape{12});
  EXPECT_TRUE(v.shares_storage_with(a));
  EXPECT_EQ(v.to_vector<float>()[0], 12.0f);
  Tensor q = p.reshape(Shape{6, 4});  // needs a copy
  EXPECT_EQ(q.to_vector<float>()[4], 12.0f);
  EXPECT_THROW(p.view(Shape{24}), ShapeError);
  EXPECT_EQ(p.view(Shape{3, 2, 2, 2}).shape(), (Shape{3, 2, 2, 2}));
  EXPECT_THROW(a.reshape(Shape{5, -1}), ShapeError);
}

TEST(Tensor, NarrowSliceExpandUnsqueeze) {
  Tensor a = iota(Shape{4, 3});
  EXPECT_EQ(a.narrow(0, 1, 2).to_vector<float>(), (std::vector<float>{3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(a.slice(1, 0, 3, 2).to_vector<float>(), (std::vector<float>{0, 2, 3, 5, 6, 8, 9, 11}));
  EXPECT_EQ(a.slice(0, -1, 4).to_vector<float>(), (std::vector<float>{9, 10, 11}));
  Tensor row = iota(Shape{3}).unsqueeze(0);
  EXPECT_EQ(row.shape(), (Shape{1, 3}));
  EXPECT_EQ(row.expand(Shape{2, 3}).to_vector<float>(), (std::vector<float>{0, 1, 2, 0, 1, 2}));
  EXPECT_THROW(a.narrow(0, 3, 2), ShapeError);
  EXPECT_THROW(row.expand(Shape{2, 4}), ShapeError);
}

TEST(Tensor, CopyConvertsAndBroadcasts) {
  Tensor dst = Tensor::empty(Shape{2, 3}, DType::f64);
  dst.copy_(iota(Shape{3}));
  EXPECT_EQ(dst.to_vector<double>(), (std::vector<double>{0, 1, 2, 0, 1, 2}));
  Tensor t = Tensor::zeros(Shape{3, 2});
  t.transpose(0, 1).copy_(iota(Shape{2, 3}));
  EXPECT_EQ(t.to_vector<float>(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  EXPECT_THROW(dst.copy_(iota(Shape{4})), ShapeError);
  EXPECT_EQ(Tensor::scalar(2.5).item<double>(), 2.5);
  EXPECT_THROW(dst.item<double>(), ShapeError);
}

}  // namespace
}  // namespace attnlab
