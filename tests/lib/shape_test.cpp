#include <gtest/gtest.h>

#include "lib/error.h"
#include "lib/shape.h"

namespace attnlab {
namespace {

TEST(Shape, NumelStridesAndPrinting) {
  Shape s{2, 3, 4};
  EXPECT_EQ(s.numel(), 24);
  EXPECT_EQ(s.contiguous_strides(), (std::vector<int64_t>{12, 4, 1}));
  EXPECT_EQ(Shape{}.numel(), 1);
  std::ostringstream os;
  os << s;
  EXPECT_EQ(os.str(), "[2, 3, 4]");
  EXPECT_EQ(s.at(-1), 4);
}

TEST(Shape, BroadcastAlignsRight) {
  EXPECT_EQ(broadcast_shapes(Shape{2, 1, 4}, Shape{3, 1}, "t"), (Shape{2, 3, 4}));
  EXPECT_EQ(broadcast_shapes(Shape{}, Shape{5}, "t"), (Shape{5}));
}

TEST(Shape, BroadcastMismatchNamesOpAndShapes) {
  try {
    broadcast_shapes(Shape{2, 3}, Shape{4}, "myop");
    FAIL() << "expected ShapeError";
  } catch (const ShapeError& e) {
    EXPECT_STREQ(e.what(), "myop: shapes do not broadcast; got a=[2, 3], b=[4]");
  }
}

TEST(Shape, NormalizeDim) {
  EXPECT_EQ(normalize_dim(-1, 3, "t"), 2);
  EXPECT_THROW(normalize_dim(3, 3, "t"), ShapeError);
  EXPECT_THROW(normalize_dim(-4, 3, "t"), ShapeError);
}

}  // namespace
}  // namespace attnlab
