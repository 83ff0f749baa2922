#include <gtest/gtest.h>

#include <memory>

#include "data/bpe.h"
#include "data/byte_tokenizer.h"
#include "data_test_util.h"

namespace attnlab {
namespace {

TEST(ByteTokenizer, RoundTripsEveryByte) {
  const ByteTokenizer tok;
  std::string all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
  const std::vector<int32_t> ids = tok.encode(all);
  ASSERT_EQ(ids.size(), 256u);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(ids[static_cast<size_t>(i)], i);
  EXPECT_EQ(tok.decode(ids), all);
  EXPECT_EQ(tok.vocab_size(), 256);
  EXPECT_EQ(tok.kind(), "byte");
  EXPECT_THROW(tok.decode({256}), Error);
  EXPECT_THROW(tok.decode({-1}), Error);
}

TEST(Tokenizer, TensorHelpersAndPolymorphicUse) {
  std::vector<std::unique_ptr<Tokenizer>> toks;
  toks.push_back(std::make_unique<ByteTokenizer>());
  toks.push_back(std::make_unique<BpeTokenizer>(BpeTokenizer::train("the cat the hat the bat the", 270)));
  for (const auto& tok : toks) {
    const Tensor t = tok->encode_tensor("the cat");
    EXPECT_EQ(t.dtype(), DType::i32);
    EXPECT_EQ(t.ndim(), 1);
    EXPECT_EQ(tok->decode_tensor(t), "the cat");
    EXPECT_EQ(tok->decode_tensor(t.reshape(Shape{1, t.numel()})), "the cat");
    EXPECT_THROW(tok->decode_tensor(Tensor::zeros(Shape{2})), DTypeError);
  }
  EXPECT_EQ(tokens_to_tensor({3, 4}).to_vector<int32_t>(), (std::vector<int32_t>{3, 4}));
}

TEST(ReadTextFile, MissingAndEmptyFilesAreIoErrors) {
  test::TempDir dir;
  test::expect_io_error([&] { read_text_file(dir.file("nope.txt")); }, {"nope.txt"});
  test::write_bytes(dir.file("e.txt"), "");
  test::expect_io_error([&] { read_text_file(dir.file("e.txt")); }, {"e.txt", "empty"});
}

}  // namespace
}  // namespace attnlab
