// Byte-level tokenizer: every byte is its own token (vocab 256), so any file round-trips.
//   encode: bytes -> i32 ids [N];  decode: ids -> bytes (ids must be in [0, 256)).
#pragma once

#include <string>
#include <string_view>

#include "lib/tensor.h"

namespace attnlab {

class ByteTokenizer {
 public:
  static constexpr int64_t kVocabSize = 256;
  Tensor encode(std::string_view text) const;
  std::string decode(const Tensor& ids) const;
};

// Reads a whole file; IoError naming the path when it cannot, or when it is empty.
std::string read_text_file(const std::string& path);

}  // namespace attnlab
