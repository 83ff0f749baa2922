// Training batches from a token stream.
//
// BatchSampler draws B random windows of T + 1 tokens per batch: x = window[0, T), y =
// window[1, T + 1) (y is x shifted by one). Batch k (0-based) depends only on (seed, k): its B
// starts come from Philox-4x32-10 under key `seed` at counters [k * ceil(B / 4), (k + 1) *
// ceil(B / 4)) (lib/rng.h randint), uniform in [0, N - T - 1]. So the step count is the only
// state a resume needs: set_step(k) then next() returns what an uninterrupted run drew at k.
#pragma once

#include <cstdint>
#include <vector>

#include "lib/tensor.h"

namespace attnlab {

struct Batch {
  Tensor x, y;  // i32 [B, T] each, y = x shifted by one
};

class BatchSampler {  // random windows of a token stream
 public:
  // tokens: i32 [N] with N >= seq_len + 1; batch, seq_len >= 1 (ConfigError / ShapeError else).
  BatchSampler(Tensor tokens, int64_t batch, int64_t seq_len, uint64_t seed);
  Batch next();                            // deterministic in (seed, step); advances step
  uint64_t step() const { return step_; }  // batches drawn so far: the only state a resume needs
  void set_step(uint64_t step) { step_ = step; }

  int64_t batch() const { return batch_; }
  int64_t seq_len() const { return seq_len_; }
  uint64_t seed() const { return seed_; }
  int64_t num_tokens() const { return tokens_.numel(); }
  // The window starts batch `step` uses (what next() at that step reads), without advancing.
  std::vector<int64_t> starts(uint64_t step) const;

 private:
  Tensor tokens_;
  int64_t batch_, seq_len_;
  uint64_t seed_;
  uint64_t step_ = 0;
};

// The whole stream cut into consecutive non-overlapping windows of seq_len (+1 for targets),
// batched; for validation (deterministic, every token once). Window w covers tokens
// [w * seq_len, w * seq_len + seq_len]; there are (N - 1) / seq_len of them, grouped in order
// into batches of `batch`. Windows that do not fill a whole batch at the end are dropped (so
// every batch is [batch, seq_len]); ConfigError when not even one batch fits. max_batches >= 1
// keeps only the first max_batches batches; -1 keeps all.
std::vector<Batch> sequential_batches(const Tensor& tokens, int64_t batch, int64_t seq_len, int64_t max_batches = -1);

}  // namespace attnlab
