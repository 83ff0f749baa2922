// SHA-256 (FIPS 180-4), for checking corpora and other downloaded bytes.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace attnlab {

// Incremental hashing: update() any number of times, then digest() once.
class Sha256 {
 public:
  Sha256();
  void update(std::string_view bytes);
  // The 32-byte digest. The object is finished afterwards; a further update() is an error.
  std::array<uint8_t, 32> digest();

 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
  bool finished_ = false;
};

std::array<uint8_t, 32> sha256(std::string_view bytes);
// Lowercase hex, 64 characters.
std::string sha256_hex(std::string_view bytes);
std::string to_hex(const std::array<uint8_t, 32>& digest);

}  // namespace attnlab
