// mqar: multi-query associative recall (Zoology; KDA spec A10, LLA spec B9). The model sees
// key-value pairs, then keys again, and must answer each with the value it was paired with.
//
// Layout (V = data.vocab, even, >= 4; P = data.pairs <= V/2; Q = data.queries, 0 means P, Q <= P):
//   ids      keys [0, V/2), values [V/2, V), PAD = V; vocab_size() = V + 1
//   x        k1 v1 k2 v2 ... kP vP  q1 a1 q2 a2 ... qQ aQ  PAD ... PAD
//            keys distinct, values drawn with replacement; the queries are Q distinct keys of the
//            pairs in random order and a_j is q_j's value
//   y        at each q_j position: a_j (predict the value after seeing its key); else kIgnoreTarget
//   mask     1 exactly at the q_j positions
//   min_seq_len() = 2 * (P + Q); the rest of a longer sequence is PAD (ignored)
// Draws per row, in order: P distinct keys, P values, Q query picks, so the pairs and queries of
// (seed, index, row) do not depend on seq_len.
#include <sstream>

#include "data/synthetic/common.h"

namespace attnlab::synthetic {
namespace {

class Mqar final : public SyntheticTask {
 public:
  explicit Mqar(const TaskConfig& c) : SyntheticTask(c) {
    check_key_value_config(c);
    if (c.queries < 0 || c.queries > c.pairs)
      config_error(c, "data.queries must be in [0, data.pairs = ", c.pairs, "] (0 = one per pair); got ", c.queries);
  }

  int64_t queries() const { return config().queries == 0 ? config().pairs : config().queries; }
  int64_t vocab_size() const override { return config().vocab + 1; }
  int64_t min_seq_len() const override { return 2 * (config().pairs + queries()); }

  void check_seq_len(int64_t seq_len) const override {
    if (seq_len < min_seq_len())
      config_error(config(), "needs train.seq_len >= 2 * (data.pairs + data.queries) = 2 * (", config().pairs, " + ",
                   queries(), ") = ", min_seq_len(), "; got ", seq_len);
  }

  TaskBatch batch(uint64_t seed, uint64_t index, int64_t batch, int64_t seq_len) const override {
    check_batch_args(*this, batch, seq_len);
    const int64_t v = config().vocab, half = v / 2, p = config().pairs, q = queries();
    return token_batch(seed, index, batch, seq_len, [&](RowRng& rng, int32_t* x, int32_t* y) {
      const std::vector<int64_t> keys = rng.distinct(p, half);
      std::vector<int64_t> vals(static_cast<size_t>(p));
      for (int64_t i = 0; i < p; ++i) {
        vals[static_cast<size_t>(i)] = half + rng.uniform_int(half);
        x[2 * i] = static_cast<int32_t>(keys[static_cast<size_t>(i)]);
        x[2 * i + 1] = static_cast<int32_t>(vals[static_cast<size_t>(i)]);
      }
      const std::vector<int64_t> picks = rng.distinct(q, p);  // which pairs are asked, in order
      for (int64_t j = 0; j < q; ++j) {
        const size_t k = static_cast<size_t>(picks[static_cast<size_t>(j)]);
        const int64_t at = 2 * (p + j);
        x[at] = static_cast<int32_t>(keys[k]);
        x[at + 1] = static_cast<int32_t>(vals[k]);
        y[at] = static_cast<int32_t>(vals[k]);
      }
      for (int64_t t = 2 * (p + q); t < seq_len; ++t) x[t] = static_cast<int32_t>(v);
    });
  }

  std::string token(int64_t id) const {
    const int64_t v = config().vocab;
    if (id == v) return "_";
    if (id < 0 || id > v) return tagged("?", id);
    return id < v / 2 ? tagged("k", id) : tagged("v", id - v / 2);
  }

  std::string describe(const TaskBatch& b, int64_t row, const Tensor& output) const override {
    const int64_t t_len = b.x.size(1);
    AL_CHECK_SHAPE(row >= 0 && row < b.x.size(0), "mqar describe: row ", row, " is outside the batch ", b.x.str());
    const std::vector<int32_t> x = b.x.contiguous().to_vector<int32_t>();
    const std::vector<int32_t> y = b.y.contiguous().to_vector<int32_t>();
    std::vector<int32_t> pred;
    if (output.defined()) pred = predicted_tokens(b, output, vocab_size(), "mqar describe");
    const size_t base = static_cast<size_t>(row * t_len);
    std::ostringstream os;
    const int64_t p = config().pairs;
    for (int64_t t = 0; t < 2 * p && t < t_len; ++t) os << (t ? " " : "") << token(x[base + static_cast<size_t>(t)]);
    os << " |";
    bool first = true;
    for (int64_t t = 2 * p; t < t_len; ++t) {
      const size_t i = base + static_cast<size_t>(t);
      if (y[i] == kIgnoreTarget) continue;
      os << (first ? " " : ", ") << token(x[i]) << " -> " << token(y[i]);
      if (!pred.empty()) os << " (model " << token(pred[i]) << ")";
      first = false;
    }
    return os.str();
  }
};

}  // namespace

std::unique_ptr<SyntheticTask> make_mqar(const TaskConfig& config) { return std::make_unique<Mqar>(config); }

}  // namespace attnlab::synthetic
