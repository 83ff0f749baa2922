#include "data/shard.h"

#include <cstring>
#include <string_view>

#include "lib/error.h"
#include "lib/file_io.h"

namespace attnlab {

namespace {

constexpr std::string_view kMagic = "ALTOKENS";
constexpr uint32_t kVersion = 1;
constexpr int64_t kMaxVocab = int64_t{1} << 31;

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

uint64_t get_le(const unsigned char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t{p[i]} << (8 * i);
  return v;
}

uint32_t width_for(int64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

}  // namespace

void write_token_shard(const std::string& path, const Tensor& tokens, int64_t vocab_size) {
  AL_CHECK_DTYPE(tokens.defined() && tokens.dtype() == DType::i32, "write_token_shard '", path,
                 "': tokens must be i32 [N]; got ", tokens);
  AL_CHECK_SHAPE(tokens.ndim() == 1, "write_token_shard '", path, "': tokens must be i32 [N]; got ", tokens);
  AL_CHECK_CONFIG(vocab_size >= 1 && vocab_size <= kMaxVocab, "write_token_shard '", path,
                  "': vocab_size must be in [1, 2^31]; got ", vocab_size);
  const Tensor t = tokens.contiguous();
  const int32_t* p = t.data<int32_t>();
  const int64_t n = t.numel();
  const uint32_t width = width_for(vocab_size);
  std::string out;
  out.reserve(static_cast<size_t>(kShardHeaderBytes + n * width));
  out += kMagic;
  put_le(out, kVersion, 4);
  put_le(out, width, 4);
  put_le(out, static_cast<uint64_t>(vocab_size), 8);
  put_le(out, static_cast<uint64_t>(n), 8);
  for (int64_t i = 0; i < n; ++i) {
    AL_CHECK_CONFIG(p[i] >= 0 && p[i] < vocab_size, "write_token_shard '", path, "': token ", p[i], " at index ", i,
                    " is outside the vocabulary [0, ", vocab_size, ")");
    put_le(out, static_cast<uint32_t>(p[i]), static_cast<int>(width));
  }
  write_file_atomic(path, out);
}

Tensor read_token_shard(const std::string& path, int64_t* vocab_size) {
  const std::string bytes = read_file(path);
  const std::string src = "token shard '" + path + "'";
  const auto size = static_cast<uint64_t>(bytes.size());
  AL_CHECK_IO(size >= static_cast<uint64_t>(kShardHeaderBytes), src, ": truncated: ", size, " bytes, shorter than the ",
              kShardHeaderBytes, "-byte header");
  AL_CHECK_IO(std::string_view(bytes).substr(0, 8) == kMagic, src,
              ": bad magic (not an attnlab token shard; expected '", kMagic, "')");
  const auto* h = reinterpret_cast<const unsigned char*>(bytes.data());
  const uint64_t version = get_le(h + 8, 4);
  const uint64_t width = get_le(h + 12, 4);
  const uint64_t vocab = get_le(h + 16, 8);
  const uint64_t count = get_le(h + 24, 8);
  AL_CHECK_IO(version == kVersion, src, ": unsupported version ", version, " (this build reads version ", kVersion,
              ")");
  AL_CHECK_IO(vocab >= 1 && vocab <= static_cast<uint64_t>(kMaxVocab), src, ": vocabulary size ", vocab,
              " is outside [1, 2^31]");
  AL_CHECK_IO(width == width_for(static_cast<int64_t>(vocab)), src, ": element width ", width,
              " does not match vocabulary size ", vocab, " (expected ", width_for(static_cast<int64_t>(vocab)), ")");
  const uint64_t payload = size - static_cast<uint64_t>(kShardHeaderBytes);
  const bool fits = count <= payload / width;  // no overflow in count * width below
  AL_CHECK_IO(fits && payload == count * width, src, ": header declares ", count, " tokens of ", width,
              " bytes but the payload has ", payload, " bytes", fits ? " (extra bytes at the end)" : " (truncated)");
  Tensor t = Tensor::empty(Shape{static_cast<int64_t>(count)}, DType::i32);
  int32_t* out = t.data<int32_t>();
  const unsigned char* p = h + kShardHeaderBytes;
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t v = get_le(p + i * width, static_cast<int>(width));
    AL_CHECK_IO(v < vocab, src, ": token ", static_cast<int64_t>(static_cast<int32_t>(static_cast<uint32_t>(v))),
                " at index ", i, " is outside the vocabulary [0, ", vocab, ")");
    out[i] = static_cast<int32_t>(v);
  }
  if (vocab_size) *vocab_size = static_cast<int64_t>(vocab);
  return t;
}

}  // namespace attnlab
