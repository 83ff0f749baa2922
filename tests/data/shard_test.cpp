#include "data/shard.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "data_test_util.h"
#include "lib/rng.h"

namespace attnlab {
namespace {

std::string le(uint64_t v, int bytes) {
  std::string s;
  for (int i = 0; i < bytes; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  return s;
}

std::string header(uint64_t version, uint64_t width, uint64_t vocab, uint64_t count) {
  return "ALTOKENS" + le(version, 4) + le(width, 4) + le(vocab, 8) + le(count, 8);
}

TEST(Shard, RoundTripsU16AndI32Payloads) {
  test::TempDir dir;
  Generator gen(1);
  for (int64_t vocab : {1, 256, 2048, 65536, 65537, 100000}) {
    const Tensor tokens = randint(Shape{1000}, vocab, gen);
    const std::string path = dir.file("s" + std::to_string(vocab) + ".tok");
    write_token_shard(path, tokens, vocab);
    const int64_t width = vocab <= 65536 ? 2 : 4;
    EXPECT_EQ(static_cast<int64_t>(std::filesystem::file_size(path)), kShardHeaderBytes + 1000 * width);
    int64_t got_vocab = 0;
    const Tensor back = read_token_shard(path, &got_vocab);
    EXPECT_EQ(got_vocab, vocab);
    EXPECT_EQ(back.dtype(), DType::i32);
    EXPECT_EQ(back.shape(), Shape{1000});
    EXPECT_EQ(back.to_vector<int32_t>(), tokens.to_vector<int32_t>());
  }
  // The largest u16 token, an empty shard, a non-contiguous input.
  const std::string path = dir.file("edge.tok");
  write_token_shard(path, Tensor::from_vector(Shape{2}, std::vector<int32_t>{65535, 0}), 65536);
  EXPECT_EQ(read_token_shard(path).to_vector<int32_t>(), (std::vector<int32_t>{65535, 0}));
  write_token_shard(path, Tensor::empty(Shape{0}, DType::i32), 300);
  EXPECT_EQ(read_token_shard(path).numel(), 0);
  const Tensor grid = Tensor::arange(12, DType::i32).reshape(Shape{3, 4}).transpose(0, 1);
  write_token_shard(path, grid.contiguous().reshape(Shape{12}).slice(0, 0, 12, 2), 50);
  EXPECT_EQ(read_token_shard(path).to_vector<int32_t>(), (std::vector<int32_t>{0, 8, 5, 2, 10, 7}));
  // The header layout is what the format says.
  write_token_shard(path, Tensor::from_vector(Shape{2}, std::vector<int32_t>{7, 300}), 2048);
  EXPECT_EQ(test::read_bytes(path), header(1, 2, 2048, 2) + le(7, 2) + le(300, 2));
}

TEST(Shard, WriterRejectsBadArguments) {
  test::TempDir dir;
  const std::string path = dir.file("bad.tok");
  EXPECT_THROW(write_token_shard(path, Tensor::from_vector(Shape{2}, std::vector<int32_t>{1, 5}), 5), ConfigError);
  EXPECT_THROW(write_token_shard(path, Tensor::from_vector(Shape{1}, std::vector<int32_t>{-1}), 5), ConfigError);
  EXPECT_THROW(write_token_shard(path, Tensor::zeros(Shape{3}), 5), DTypeError);
  EXPECT_THROW(write_token_shard(path, Tensor::zeros(Shape{2, 2}, DType::i32), 5), ShapeError);
  EXPECT_THROW(write_token_shard(path, Tensor::zeros(Shape{2}, DType::i32), 0), ConfigError);
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_THROW(write_token_shard(dir.file("no/such/dir.tok"), Tensor::zeros(Shape{2}, DType::i32), 5), IoError);
}

TEST(Shard, ReaderRejectsCorruptFiles) {
  test::TempDir dir;
  const std::string path = dir.file("c.tok");
  const auto rejected = [&](const std::string& bytes, const std::vector<std::string>& fragments) {
    test::write_bytes(path, bytes);
    std::vector<std::string> f = fragments;
    f.push_back("c.tok");
    test::expect_io_error([&] { read_token_shard(path); }, f);
  };
  const std::string payload = le(1, 2) + le(2, 2) + le(3, 2);
  rejected("", {"truncated", "header"});
  rejected(header(1, 2, 10, 3).substr(0, 20), {"truncated", "header"});
  rejected("ALTOKENZ" + header(1, 2, 10, 3).substr(8) + payload, {"bad magic"});
  rejected(header(2, 2, 10, 3) + payload, {"unsupported version 2"});
  rejected(header(1, 4, 10, 3) + payload, {"element width 4"});
  rejected(header(1, 2, 70000, 3) + payload, {"element width 2"});
  rejected(header(1, 2, 0, 3) + payload, {"vocabulary size 0"});
  rejected(header(1, 2, 10, 3) + payload.substr(0, 5), {"truncated"});
  rejected(header(1, 2, 10, 2) + payload, {"extra bytes"});
  rejected(header(1, 2, 10, 4) + payload, {"truncated"});
  rejected(header(1, 2, 10, uint64_t{1} << 62) + payload, {"truncated"});
  rejected(header(1, 2, 10, UINT64_MAX) + payload, {"truncated"});
  rejected(header(1, 2, 3, 3) + payload, {"token 3 at index 2", "[0, 3)"});
  rejected(header(1, 4, 100000, 1) + le(0xFFFFFFFFu, 4), {"token -1 at index 0"});
  test::expect_io_error([&] { read_token_shard(dir.file("missing.tok")); }, {"missing.tok"});
}

}  // namespace
}  // namespace attnlab
