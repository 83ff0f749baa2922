// Token shard files: a tokenized corpus on disk, so training does not re-tokenize.
//
// Layout (little-endian), 32-byte header then the payload:
//   0  "ALTOKENS"   magic, 8 bytes
//   8  u32 version  1
//   12 u32 width    bytes per token: 2 (u16) when vocab_size <= 65536, else 4 (i32)
//   16 u64 vocab    vocabulary size; every token is in [0, vocab)
//   24 u64 count    number of tokens
//   32 count * width bytes of tokens
// Readers check all of it (size, magic, version, width, count, every token) and raise IoError
// naming the file and what is wrong.
#pragma once

#include <cstdint>
#include <string>

#include "lib/tensor.h"

namespace attnlab {

inline constexpr int64_t kShardHeaderBytes = 32;

// tokens: i32 [N], each in [0, vocab_size); vocab_size in [1, 2^31]. Written atomically.
void write_token_shard(const std::string& path, const Tensor& tokens, int64_t vocab_size);  // atomic
// i32 [N]; stores the header's vocabulary size in *vocab_size when given.
Tensor read_token_shard(const std::string& path, int64_t* vocab_size = nullptr);  // IoError on bad files

}  // namespace attnlab
