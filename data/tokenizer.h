// Tokenizer: text (any bytes) <-> token ids. Every tokenizer in data/ maps every byte string to
// ids and back exactly (encode then decode returns the input, including invalid UTF-8 and NULs).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "lib/tensor.h"

namespace attnlab {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // Throws attnlab::Error naming the id when one is outside [0, vocab_size()).
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual std::string kind() const = 0;  // "byte" or "bpe"

  // encode() as an i32 tensor [N] (what BatchSampler and write_token_shard take).
  Tensor encode_tensor(std::string_view text) const;
  // decode() of an i32 tensor of any shape (row-major order).
  std::string decode_tensor(const Tensor& ids) const;
};

// ids -> i32 tensor [ids.size()].
Tensor tokens_to_tensor(const std::vector<int32_t>& ids);

}  // namespace attnlab
