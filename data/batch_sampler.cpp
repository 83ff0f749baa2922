#include "data/batch_sampler.h"

#include <cstring>

#include "lib/error.h"
#include "lib/rng.h"

namespace attnlab {

namespace {

void check_stream(const Tensor& tokens, int64_t batch, int64_t seq_len, const char* who) {
  AL_CHECK_DTYPE(tokens.defined() && tokens.dtype() == DType::i32, who, ": tokens must be i32 [N]; got ", tokens);
  AL_CHECK_SHAPE(tokens.ndim() == 1, who, ": tokens must be i32 [N]; got ", tokens);
  AL_CHECK_CONFIG(batch >= 1, who, ": batch must be >= 1; got ", batch);
  AL_CHECK_CONFIG(seq_len >= 1, who, ": seq_len must be >= 1; got ", seq_len);
  AL_CHECK_CONFIG(tokens.numel() >= seq_len + 1, who, ": the token stream has ", tokens.numel(),
                  " tokens; a window of seq_len ", seq_len, " needs at least seq_len + 1 = ", seq_len + 1);
}

// Copies windows starting at `starts` into x and y ([B, T] each).
Batch gather(const int32_t* tok, const std::vector<int64_t>& starts, int64_t seq_len) {
  const auto b = static_cast<int64_t>(starts.size());
  Batch out{Tensor::empty(Shape{b, seq_len}, DType::i32), Tensor::empty(Shape{b, seq_len}, DType::i32)};
  int32_t* x = out.x.data<int32_t>();
  int32_t* y = out.y.data<int32_t>();
  const auto bytes = static_cast<size_t>(seq_len) * sizeof(int32_t);
  for (int64_t i = 0; i < b; ++i) {
    std::memcpy(x + i * seq_len, tok + starts[static_cast<size_t>(i)], bytes);
    std::memcpy(y + i * seq_len, tok + starts[static_cast<size_t>(i)] + 1, bytes);
  }
  return out;
}

}  // namespace

BatchSampler::BatchSampler(Tensor tokens, int64_t batch, int64_t seq_len, uint64_t seed)
    : batch_(batch), seq_len_(seq_len), seed_(seed) {
  check_stream(tokens, batch, seq_len, "BatchSampler");
  AL_CHECK_CONFIG(tokens.numel() - seq_len <= (int64_t{1} << 31), "BatchSampler: the token stream has ", tokens.numel(),
                  " tokens; at most 2^31 + seq_len are supported");
  tokens_ = tokens.contiguous();
}

std::vector<int64_t> BatchSampler::starts(uint64_t step) const {
  const auto blocks = static_cast<uint64_t>((batch_ + 3) / 4);
  Generator gen(seed_, step * blocks);
  // Starts uniform in [0, N - T - 1]: a window needs T + 1 tokens.
  const std::vector<int32_t> s = randint(Shape{batch_}, tokens_.numel() - seq_len_, gen).to_vector<int32_t>();
  return std::vector<int64_t>(s.begin(), s.end());
}

Batch BatchSampler::next() {
  Batch b = gather(tokens_.data<int32_t>(), starts(step_), seq_len_);
  ++step_;
  return b;
}

std::vector<Batch> sequential_batches(const Tensor& tokens, int64_t batch, int64_t seq_len, int64_t max_batches) {
  check_stream(tokens, batch, seq_len, "sequential_batches");
  AL_CHECK_CONFIG(max_batches == -1 || max_batches >= 1,
                  "sequential_batches: max_batches must be -1 (all) or >= 1; got ", max_batches);
  const Tensor t = tokens.contiguous();
  const int64_t windows = (t.numel() - 1) / seq_len;
  int64_t n = windows / batch;
  AL_CHECK_CONFIG(n >= 1, "sequential_batches: the token stream has ", t.numel(), " tokens, ", windows,
                  " windows of seq_len ", seq_len, " (+1 for targets); a batch of ", batch, " needs ",
                  batch * seq_len + 1, " tokens");
  if (max_batches > 0 && max_batches < n) n = max_batches;
  std::vector<Batch> out;
  out.reserve(static_cast<size_t>(n));
  std::vector<int64_t> starts(static_cast<size_t>(batch));
  for (int64_t k = 0; k < n; ++k) {
    for (int64_t i = 0; i < batch; ++i) starts[static_cast<size_t>(i)] = (k * batch + i) * seq_len;
    out.push_back(gather(t.data<int32_t>(), starts, seq_len));
  }
  return out;
}

}  // namespace attnlab
