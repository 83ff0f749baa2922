// needle: needle-in-a-haystack retrieval (RULER NIAH, residuals spec Part 4, single key with
// distractor needles). One needle "N k v" hides in a haystack of filler tokens among P - 1
// distractor needles with other keys; the sequence ends with the question "Q k A", whose answer is
// the needle's value. Growing seq_len with the other parameters fixed only adds filler: the same
// needles in the same order, spread further apart (pure dilution), so accuracy against seq_len
// measures how attention finds one fact in a long context.
//
// Layout (V = data.vocab, even, >= 4; P = data.pairs needles, 1 <= P <= V/2):
//   ids      keys [0, V/2), values [V/2, V), BOS = V, N = V + 1, Q = V + 2, A = V + 3, fillers
//            [V + 4, V + 20); vocab_size() = V + 20
//   x        BOS, then P + 1 runs of random filler tokens with the P needles "N k_i v_i" between
//            them (distinct keys in random order, values drawn with replacement; the F = seq_len -
//            min_seq_len() filler tokens are split over the P + 1 runs uniformly at random among all
//            compositions, so the asked needle sits at a uniformly random depth), then "Q k* A"
//            ending at position seq_len - 1, k* the key of one needle drawn uniformly
//   y        at the final A (position seq_len - 1): v*, the value of k*'s needle; else ignored
//   mask     1 at the final A only (one answer per row)
//   min_seq_len() = 1 + 3P + 3; context_length(seq_len) = seq_len (the answer is never in x)
// Draws per row, in order: P distinct keys, P values, the asked needle, P filler cut points, F
// filler tokens; everything before the cuts is independent of seq_len.
#include "data/synthetic/common.h"

namespace attnlab::synthetic {
namespace {

constexpr int64_t kFillers = 16;

class Needle final : public SyntheticTask {
 public:
  explicit Needle(const TaskConfig& c) : SyntheticTask(c) { check_key_value_config(c); }

  int32_t bos() const { return static_cast<int32_t>(config().vocab); }
  int32_t n_tok() const { return bos() + 1; }
  int32_t q_tok() const { return bos() + 2; }
  int32_t a_tok() const { return bos() + 3; }
  int32_t filler0() const { return bos() + 4; }
  bool is_filler(int32_t id) const { return id >= filler0() && id < filler0() + kFillers; }

  int64_t vocab_size() const override { return config().vocab + 4 + kFillers; }
  int64_t min_seq_len() const override { return 1 + 3 * config().pairs + 3; }
  int64_t context_length(int64_t seq_len) const override { return seq_len; }

  void check_seq_len(int64_t seq_len) const override {
    if (seq_len < min_seq_len())
      config_error(config(), "needs train.seq_len >= 1 + 3 * data.pairs + 3 = ", min_seq_len(), "; got ", seq_len);
  }

  TaskBatch batch(uint64_t seed, uint64_t index, int64_t batch, int64_t seq_len) const override {
    check_batch_args(*this, batch, seq_len);
    const int64_t half = config().vocab / 2, p = config().pairs;
    const int64_t fill = seq_len - min_seq_len();
    return token_batch(seed, index, batch, seq_len, [&](RowRng& rng, int32_t* x, int32_t* y) {
      const std::vector<int64_t> keys = rng.distinct(p, half);
      std::vector<int64_t> vals(static_cast<size_t>(p));
      for (int64_t& v : vals) v = half + rng.uniform_int(half);
      const size_t asked = static_cast<size_t>(rng.uniform_int(p));
      const std::vector<int64_t> runs = filler_runs(rng, fill, p + 1);
      int64_t t = 0;
      x[t++] = bos();
      auto run = [&](int64_t i) {  // filler run i in [0, P]
        for (int64_t f = 0; f < runs[static_cast<size_t>(i)]; ++f)
          x[t++] = filler0() + static_cast<int32_t>(rng.uniform_int(kFillers));
      };
      for (int64_t i = 0; i < p; ++i) {
        run(i);
        x[t++] = n_tok();
        x[t++] = static_cast<int32_t>(keys[static_cast<size_t>(i)]);
        x[t++] = static_cast<int32_t>(vals[static_cast<size_t>(i)]);
      }
      run(p);
      x[t++] = q_tok();
      x[t++] = static_cast<int32_t>(keys[asked]);
      x[t] = a_tok();
      y[t] = static_cast<int32_t>(vals[asked]);
    });
  }

  std::string token(int64_t id) const {
    const int64_t v = config().vocab;
    if (id >= 0 && id < v / 2) return tagged("k", id);
    if (id >= v / 2 && id < v) return tagged("v", id - v / 2);
    if (id == bos()) return "BOS";
    if (id == n_tok()) return "N";
    if (id == q_tok()) return "Q";
    if (id == a_tok()) return "A";
    if (is_filler(static_cast<int32_t>(id))) return "~";
    return tagged("?", id);
  }

  // Filler runs print as "~N" (N fillers), the answer as "A -> v (model v')", e.g.
  // "BOS ~40 N k3 v7 ~12 N k9 v1 ~180 | Q k3 A -> v7 (model v1)".
  std::string describe(const TaskBatch& b, int64_t row, const Tensor& output) const override {
    return describe_tokens(b, row, output, vocab_size(), "needle describe",
                           {.token = [this](int64_t id) { return token(id); },
                            .in_run = [this](int32_t id) { return is_filler(id); },
                            .question = q_tok()});
  }
};

}  // namespace

std::unique_ptr<SyntheticTask> make_needle(const TaskConfig& config) { return std::make_unique<Needle>(config); }

}  // namespace attnlab::synthetic
