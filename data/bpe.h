// Byte-level BPE (GPT-2 style): 256 byte tokens plus learned merges, so every byte string
// encodes and decodes exactly (invalid UTF-8 and NUL bytes included).
//
// Pre-tokenization splits text into chunks like GPT-2's regex
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// on bytes: letters are ASCII letters and every byte >= 0x80 (so UTF-8 multi-byte characters
// join letter runs), digits are 0-9, whitespace is space, \t, \n, \v, \f, \r; everything else
// (NUL and control bytes included) is punctuation. Merges never cross chunk boundaries.
//
// Training counts unique chunks, then repeatedly merges the most frequent adjacent pair (ties:
// the smallest (left id, right id)), updating pair counts incrementally over the chunks that
// hold the pair. It stops at the requested vocabulary or when no pair occurs twice, so a short
// text may give fewer tokens than asked for (vocab_size() says how many).
//
// File format (text, written atomically):
//   attnlab-bpe 1
//   pretokenizer gpt2-bytes
//   vocab_size <256 + M>
//   merges <M>
//   <left id> <right id>        M lines; merge k makes id 256 + k from two ids < 256 + k
//   sha256 <hex of every byte above this line>
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "data/tokenizer.h"

namespace attnlab {

class BpeTokenizer : public Tokenizer {
 public:
  // vocab_size >= 256 (ConfigError otherwise).
  static BpeTokenizer train(std::string_view text, int64_t vocab_size);
  void save(const std::string& path) const;           // atomic (tmp + rename)
  static BpeTokenizer load(const std::string& path);  // IoError on a corrupt file

  // A tokenizer from merges (merge k makes id 256 + k); ConfigError on an invalid list.
  static BpeTokenizer from_merges(std::vector<std::pair<int32_t, int32_t>> merges);

  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(vocab_.size()); }
  std::string kind() const override { return "bpe"; }

  const std::vector<std::pair<int32_t, int32_t>>& merges() const { return merges_; }
  // The bytes token `id` stands for.
  const std::string& token_bytes(int32_t id) const;

 private:
  BpeTokenizer() = default;
  void build_tables();
  void encode_chunk(std::string_view chunk, std::vector<int32_t>& out) const;

  std::vector<std::pair<int32_t, int32_t>> merges_;
  std::vector<std::string> vocab_;              // bytes of each id
  std::unordered_map<uint64_t, int32_t> rank_;  // (left << 32 | right) -> merge index
};

// The pre-tokenizer's chunks of `text` (views into it; concatenated they are `text`).
std::vector<std::string_view> bpe_pretokenize(std::string_view text);

}  // namespace attnlab
