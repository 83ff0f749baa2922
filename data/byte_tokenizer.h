// Byte-level tokenizer: every byte is its own token (vocab 256), so any file round-trips.
//   encode: bytes -> ids in [0, 256);  decode: ids -> bytes (ids must be in [0, 256)).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "data/tokenizer.h"

namespace attnlab {

class ByteTokenizer : public Tokenizer {
 public:
  static constexpr int64_t kVocabSize = 256;
  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  int64_t vocab_size() const override { return kVocabSize; }
  std::string kind() const override { return "byte"; }
};

// Reads a whole file; IoError naming the path when it cannot, or when it is empty.
std::string read_text_file(const std::string& path);

}  // namespace attnlab
