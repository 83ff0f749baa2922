// Private helpers shared by the synthetic task generators (not part of the data/ interface): a
// per-row random stream, distinct sampling, config error messages, argmax over logits, filler
// runs and the describe() text of the haystack tasks, and the per-task factories make_task()
// dispatches to.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "data/synthetic/task.h"
#include "lib/cpu/parallel.h"
#include "lib/error.h"
#include "lib/rng.h"

namespace attnlab::synthetic {

// A sequential stream of random words for one row of one batch. Philox key: the seed (mixed, so
// nearby seeds give unrelated keys); counter: (batch index, row << 32 | block). Every row of every
// batch is therefore its own stream, so batch i never depends on batches < i, rows can be drawn in
// any order or in parallel, and the same (seed, index, row) always yields the same words.
class RowRng {
 public:
  RowRng(uint64_t seed, uint64_t index, int64_t row);
  uint32_t next_u32();
  uint64_t next_u64() { return (static_cast<uint64_t>(next_u32()) << 32) | next_u32(); }
  // Uniform in [0, n), n >= 1 (64-bit multiply-shift: bias below n / 2^64).
  int64_t uniform_int(int64_t n);
  // Standard normal (Box-Muller on two words; one value per call keeps the draw count simple).
  double normal();
  // A uniformly random permutation applied in place (Fisher-Yates).
  template <typename T>
  void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i)
      std::swap(v[i - 1], v[static_cast<size_t>(uniform_int(static_cast<int64_t>(i)))]);
  }
  // k distinct integers from [0, n), in random order (Floyd's algorithm, then a shuffle). Uses
  // exactly 2k - 1 draws for k >= 1 whatever the values, so what follows in the stream does not
  // depend on n.
  std::vector<int64_t> distinct(int64_t k, int64_t n);

 private:
  uint64_t key_;
  uint64_t counter_lo_;
  uint64_t row_;
  uint64_t block_ = 0;
  uint32_t words_[4] = {};
  int used_ = 4;
};

// "data.task = <name>: " + parts..., thrown as ConfigError.
template <typename... Parts>
[[noreturn]] void config_error(const TaskConfig& c, const Parts&... parts) {
  std::ostringstream os;
  os << "data.task = " << c.name << ": ";
  (os << ... << parts);
  throw ConfigError(os.str());
}

// The largest content alphabet a token task accepts (ids stay far inside i32; logits stay sane).
inline constexpr int64_t kMaxVocab = int64_t{1} << 20;

// The key-value tasks (mqar, kv_retrieval, needle): keys from [0, vocab / 2), values from [vocab / 2,
// vocab), so vocab is even and the `pairs` keys of a sequence, being distinct, fit in vocab / 2.
inline void check_key_value_config(const TaskConfig& c) {
  const int64_t v = c.vocab;
  if (v < 4 || v > kMaxVocab || v % 2 != 0)
    config_error(c, "data.vocab must be even and in [4, ", kMaxVocab, "]; got ", v);
  if (c.pairs < 1 || c.pairs > v / 2)
    config_error(c, "data.pairs must be in [1, data.vocab / 2 = ", v / 2, "] (keys are distinct); got ", c.pairs);
}

// Checks `batch >= 1` and `seq_len` via task.check_seq_len() before a batch is drawn.
void check_batch_args(const SyntheticTask& task, int64_t batch, int64_t seq_len);

// Index of the largest of row[0, n) (the first one on ties); row is a f32 or f64 row.
template <typename T>
int64_t argmax(const T* row, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (row[i] > row[best]) best = i;
  return best;
}

// The model's token at every position of a token task's output (logits [B, T, V'] f32/f64 with
// V' >= vocab), as [B * T] ids; checks the output's shape against the batch's y [B, T].
std::vector<int32_t> predicted_tokens(const TaskBatch& batch, const Tensor& logits, int64_t vocab,
                                      const std::string& who);
// A vector task's output [B, T, out_dim] f32/f64 as doubles, shape-checked against y.
std::vector<double> predicted_vectors(const TaskBatch& batch, const Tensor& output, const std::string& who);

// A token task's batch: x, y i32 [B, T] and mask f32 [B, T], with row r filled by
// fill(rng, x_row, y_row, mask_row) from its own stream RowRng(seed, index, r). y starts as
// kIgnoreTarget and mask as 0, so a filler only writes the answers; the mask is then derived from
// y (1 exactly where y is a target).
template <typename Fill>
TaskBatch token_batch(uint64_t seed, uint64_t index, int64_t batch, int64_t seq_len, const Fill& fill) {
  TaskBatch b;
  b.x = Tensor::zeros(Shape{batch, seq_len}, DType::i32);
  b.y = Tensor::full(Shape{batch, seq_len}, kIgnoreTarget, DType::i32);
  b.mask = Tensor::zeros(Shape{batch, seq_len}, DType::f32);
  int32_t* x = b.x.data<int32_t>();
  int32_t* y = b.y.data<int32_t>();
  float* mask = b.mask.data<float>();
  cpu::parallel_for(0, batch, 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      RowRng rng(seed, index, r);
      fill(rng, x + r * seq_len, y + r * seq_len);
      for (int64_t t = r * seq_len; t < (r + 1) * seq_len; ++t) mask[t] = y[t] != kIgnoreTarget ? 1.0f : 0.0f;
    }
  });
  return b;
}

// prefix followed by n, e.g. tagged("k", 3) = "k3". (Not "k" + std::to_string(n): GCC 12 at -O3
// reports a false -Wrestrict on that.)
inline std::string tagged(const char* prefix, int64_t n) {
  std::string s(prefix);
  s += std::to_string(n);
  return s;
}

// Stars and bars for the haystack tasks (kv_retrieval, needle, fact_chain): the lengths of `runs`
// filler runs (runs >= 1) that sum to `fill`, uniformly at random among all compositions: runs - 1
// distinct cut points among fill + runs - 1 slots. Draws exactly rng.distinct(runs - 1, fill +
// runs - 1), so what a task draws after it does not depend on seq_len's split.
std::vector<int64_t> filler_runs(RowRng& rng, int64_t fill, int64_t runs);

// How describe_tokens() prints a token task's row.
struct TokenText {
  std::function<std::string(int64_t)> token = {};  // one id as text
  std::function<bool(int32_t)> in_run = {};        // ids that collapse into one "~N" per run
  int32_t question = -1;                           // the question token, printed after "| "
  // How many tokens from position t of the row print as one group (fact_chain's four-token facts;
  // 0 for none). Empty: no groups.
  std::function<int64_t(const int32_t* row, int64_t t, int64_t t_len)> group = {};
  // The token after a target repeats it in x (kv_retrieval's demo values): skip it.
  bool skip_after_target = false;
};

// describe() of a token task whose answers sit at positions with a target: row `row` of b as
// tokens separated by spaces, runs of in_run ids as "~N", a target as "A -> v" and, when output
// (logits) is given, " (model v')". `who` (e.g. "needle describe") prefixes the shape errors.
std::string describe_tokens(const TaskBatch& b, int64_t row, const Tensor& output, int64_t vocab,
                            const std::string& who, const TokenText& text);

// Factories (one per task file).
std::unique_ptr<SyntheticTask> make_mqar(const TaskConfig& config);
std::unique_ptr<SyntheticTask> make_kv_retrieval(const TaskConfig& config);
std::unique_ptr<SyntheticTask> make_selective_copy(const TaskConfig& config);
std::unique_ptr<SyntheticTask> make_regression(const TaskConfig& config);
std::unique_ptr<SyntheticTask> make_piecewise_regression(const TaskConfig& config);
std::unique_ptr<SyntheticTask> make_needle(const TaskConfig& config);
std::unique_ptr<SyntheticTask> make_fact_chain(const TaskConfig& config);

}  // namespace attnlab::synthetic
