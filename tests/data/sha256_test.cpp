#include "data/sha256.h"

#include <gtest/gtest.h>

#include <string>

namespace attnlab {
namespace {

TEST(Sha256, FipsTestVectors) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(
      sha256_hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrs"
                 "mnopqrstnopqrstu"),
      "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  EXPECT_EQ(sha256_hex(std::string(1000000, 'a')), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, IncrementalMatchesOneShotAtEveryBoundary) {
  std::string msg;
  for (int i = 0; i < 300; ++i) msg.push_back(static_cast<char>((i * 131 + 7) & 0xFF));
  const std::string whole = sha256_hex(msg);
  for (size_t split : {0u, 1u, 55u, 56u, 63u, 64u, 65u, 119u, 128u, 299u, 300u}) {
    Sha256 h;
    h.update(std::string_view(msg).substr(0, split));
    h.update(std::string_view(msg).substr(split));
    EXPECT_EQ(to_hex(h.digest()), whole) << "split at " << split;
  }
  // Byte by byte, across the 55/56/64-byte padding boundaries.
  for (size_t len : {55u, 56u, 57u, 63u, 64u, 65u}) {
    Sha256 h;
    for (size_t i = 0; i < len; ++i) h.update(std::string_view(msg).substr(i, 1));
    EXPECT_EQ(to_hex(h.digest()), sha256_hex(std::string_view(msg).substr(0, len))) << "length " << len;
  }
}

}  // namespace
}  // namespace attnlab
