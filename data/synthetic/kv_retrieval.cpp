// kv_retrieval: key-value retrieval with in-context demonstrations, a needle in a filler haystack
// (residuals spec 3.6, simplified to one-token keys and values). Growing seq_len with the other
// parameters fixed only adds filler: the same pairs, demos and needle, spread further apart (pure
// dilution), so accuracy against seq_len measures how attention copes with distance and noise.
//
// Layout (V = data.vocab, even, >= 4; P = data.pairs <= V/2; Q = data.queries demo queries, Q < P):
//   ids      keys [0, V/2), values [V/2, V), BOS = V, Q = V + 1, A = V + 2, PAD = V + 3 (reserved,
//            unused: a sequence is exactly seq_len long), fillers [V + 4, V + 20);
//            vocab_size() = V + 20
//   x        BOS, then the P pairs "k v" (distinct keys in random order, values drawn with
//            replacement), each followed by a run of random filler tokens (the F = seq_len -
//            min_seq_len() filler tokens are split over the P runs uniformly at random among all
//            compositions), then Q demos "Q k_j A v_j" (distinct keys of the pairs, never k*), then
//            the final "Q k* A" ending at position seq_len - 1
//   y        at each A position: the value that follows (demos: v_j; the final A: v*); else ignored
//   mask     1 exactly at the A positions (Q + 1 per row)
//   min_seq_len() = 1 + 2P + 4Q + 3; context_length(seq_len) = seq_len (SFT: the demos' targets
//            lie inside the context and are dropped; the final answer is the one target)
// score(): accuracy over all answers (demos included), plus part "final": the final answer alone.
// Draws per row, in order: P distinct keys, P values, Q + 1 distinct pair picks (needle first),
// P - 1 filler cut points, F filler tokens; everything before the cuts is independent of seq_len.
#include "data/synthetic/common.h"

namespace attnlab::synthetic {
namespace {

constexpr int64_t kFillers = 16;

class KvRetrieval final : public SyntheticTask {
 public:
  explicit KvRetrieval(const TaskConfig& c) : SyntheticTask(c) {
    check_key_value_config(c);
    if (c.queries < 0 || c.queries > c.pairs - 1)
      config_error(c, "data.queries (demo queries) must be in [0, data.pairs - 1 = ", c.pairs - 1,
                   "] (demo keys are distinct and differ from the final key); got ", c.queries);
  }

  int32_t bos() const { return static_cast<int32_t>(config().vocab); }
  int32_t q_tok() const { return bos() + 1; }
  int32_t a_tok() const { return bos() + 2; }
  int32_t pad() const { return bos() + 3; }
  int32_t filler0() const { return bos() + 4; }
  bool is_filler(int32_t id) const { return id >= filler0() && id < filler0() + kFillers; }

  int64_t vocab_size() const override { return config().vocab + 4 + kFillers; }
  int64_t min_seq_len() const override { return 1 + 2 * config().pairs + 4 * config().queries + 3; }
  // The whole row is context: the final A is the last position and its answer is never in x.
  int64_t context_length(int64_t seq_len) const override { return seq_len; }

  void check_seq_len(int64_t seq_len) const override {
    if (seq_len < min_seq_len())
      config_error(config(), "needs train.seq_len >= 1 + 2 * data.pairs + 4 * data.queries + 3 = ", min_seq_len(),
                   "; got ", seq_len);
  }

  TaskBatch batch(uint64_t seed, uint64_t index, int64_t batch, int64_t seq_len) const override {
    check_batch_args(*this, batch, seq_len);
    const int64_t half = config().vocab / 2, p = config().pairs, q = config().queries;
    const int64_t fill = seq_len - min_seq_len();
    return token_batch(seed, index, batch, seq_len, [&](RowRng& rng, int32_t* x, int32_t* y) {
      const std::vector<int64_t> keys = rng.distinct(p, half);
      std::vector<int64_t> vals(static_cast<size_t>(p));
      for (int64_t& v : vals) v = half + rng.uniform_int(half);
      const std::vector<int64_t> picks = rng.distinct(q + 1, p);  // picks[0]: the needle
      const std::vector<int64_t> runs = filler_runs(rng, fill, p);
      int64_t t = 0;
      x[t++] = bos();
      for (int64_t i = 0; i < p; ++i) {
        x[t++] = static_cast<int32_t>(keys[static_cast<size_t>(i)]);
        x[t++] = static_cast<int32_t>(vals[static_cast<size_t>(i)]);
        for (int64_t f = 0; f < runs[static_cast<size_t>(i)]; ++f)
          x[t++] = filler0() + static_cast<int32_t>(rng.uniform_int(kFillers));
      }
      for (int64_t j = 1; j <= q + 1; ++j) {
        // Demos first (picks[1..Q]), the needle (picks[0]) last.
        const size_t k = static_cast<size_t>(picks[static_cast<size_t>(j % (q + 1))]);
        x[t++] = q_tok();
        x[t++] = static_cast<int32_t>(keys[k]);
        x[t] = a_tok();
        y[t++] = static_cast<int32_t>(vals[k]);
        if (j <= q) x[t++] = static_cast<int32_t>(vals[k]);
      }
    });
  }

  TaskScore score(const TaskBatch& b, const Tensor& output) const override {
    TaskScore s = SyntheticTask::score(b, output);
    const std::vector<int32_t> pred = predicted_tokens(b, output, vocab_size(), "kv_retrieval score");
    const std::vector<int32_t> y = b.y.contiguous().to_vector<int32_t>();
    const int64_t rows = b.y.size(0), t_len = b.y.size(1);
    auto& fin = s.parts["final"];
    for (int64_t r = 0; r < rows; ++r) {
      const size_t i = static_cast<size_t>(r * t_len + t_len - 1);
      if (y[i] == kIgnoreTarget) continue;
      fin.second += 1;
      fin.first += pred[i] == y[i] ? 1.0 : 0.0;
    }
    return s;
  }

  std::string token(int64_t id) const {
    const int64_t v = config().vocab;
    if (id >= 0 && id < v / 2) return tagged("k", id);
    if (id >= v / 2 && id < v) return tagged("v", id - v / 2);
    if (id == bos()) return "BOS";
    if (id == q_tok()) return "Q";
    if (id == a_tok()) return "A";
    if (id == pad()) return "PAD";
    if (is_filler(static_cast<int32_t>(id))) return "~";
    return tagged("?", id);
  }

  // Filler runs print as "~N" (N fillers), answers as "A -> v (model v')".
  std::string describe(const TaskBatch& b, int64_t row, const Tensor& output) const override {
    return describe_tokens(b, row, output, vocab_size(), "kv_retrieval describe",
                           {.token = [this](int64_t id) { return token(id); },
                            .in_run = [this](int32_t id) { return is_filler(id); },
                            .question = q_tok(),
                            .skip_after_target = true});
  }
};

}  // namespace

std::unique_ptr<SyntheticTask> make_kv_retrieval(const TaskConfig& config) {
  return std::make_unique<KvRetrieval>(config);
}

}  // namespace attnlab::synthetic
