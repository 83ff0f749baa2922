// selective_copy: copy the content tokens scattered among blanks, in order, after a separator
// (Mamba's selective copying task). Needs content-dependent selection: a fixed-shift or purely
// time-invariant mixer cannot know where the next content token is.
//
// Layout (V = data.vocab >= 1 content ids; n = data.copy_tokens; R = seq_len - n):
//   ids      content [0, V), BLANK = V, SEP = V + 1; vocab_size() = V + 2
//   x        positions [0, R): the n content tokens c1..cn (drawn with replacement) at n distinct
//            random positions, in order, BLANK elsewhere; position R: SEP; positions R + 1 ..
//            seq_len - 1: c1 .. c(n-1) (teacher forcing)
//   y        position R: c1; position R + j (holding c_j): c(j+1), j = 1..n-1; else ignored
//   mask     1 exactly at positions R .. seq_len - 1 (n per row)
//   min_seq_len() = 2n + 1 (at least one blank)
// Draws per row, in order: n content tokens, then n distinct positions among R.
#include <algorithm>
#include <sstream>

#include "data/synthetic/common.h"

namespace attnlab::synthetic {
namespace {

class SelectiveCopy final : public SyntheticTask {
 public:
  explicit SelectiveCopy(const TaskConfig& c) : SyntheticTask(c) {
    if (c.vocab < 1 || c.vocab > kMaxVocab)
      config_error(c, "data.vocab must be in [1, ", kMaxVocab, "]; got ", c.vocab);
    if (c.copy_tokens < 1 || c.copy_tokens > 1000000)
      config_error(c, "data.copy_tokens must be in [1, 1000000]; got ", c.copy_tokens);
  }

  int32_t blank() const { return static_cast<int32_t>(config().vocab); }
  int32_t sep() const { return blank() + 1; }
  int64_t vocab_size() const override { return config().vocab + 2; }
  int64_t min_seq_len() const override { return 2 * config().copy_tokens + 1; }

  void check_seq_len(int64_t seq_len) const override {
    if (seq_len < min_seq_len())
      config_error(config(), "needs train.seq_len >= 2 * data.copy_tokens + 1 = ", min_seq_len(), "; got ", seq_len);
  }

  TaskBatch batch(uint64_t seed, uint64_t index, int64_t batch, int64_t seq_len) const override {
    check_batch_args(*this, batch, seq_len);
    const int64_t n = config().copy_tokens, v = config().vocab, r_len = seq_len - n;
    return token_batch(seed, index, batch, seq_len, [&](RowRng& rng, int32_t* x, int32_t* y) {
      std::vector<int32_t> content(static_cast<size_t>(n));
      for (int32_t& c : content) c = static_cast<int32_t>(rng.uniform_int(v));
      std::vector<int64_t> pos = rng.distinct(n, r_len);
      std::sort(pos.begin(), pos.end());
      std::fill(x, x + r_len, blank());
      for (int64_t j = 0; j < n; ++j) x[pos[static_cast<size_t>(j)]] = content[static_cast<size_t>(j)];
      x[r_len] = sep();
      for (int64_t j = 0; j < n; ++j) {
        if (j > 0) x[r_len + j] = content[static_cast<size_t>(j - 1)];
        y[r_len + j] = content[static_cast<size_t>(j)];
      }
    });
  }

  std::string token(int64_t id) const {
    if (id == sep()) return "SEP";
    if (id == blank()) return ".";
    return std::to_string(id);
  }

  // Blank runs print as ".N" (N blanks); then "| SEP -> c1 c2 ... (model ...)".
  std::string describe(const TaskBatch& b, int64_t row, const Tensor& output) const override {
    AL_CHECK_SHAPE(row >= 0 && row < b.x.size(0), "selective_copy describe: row ", row, " is outside the batch ",
                   b.x.str());
    const int64_t t_len = b.x.size(1), r_len = t_len - config().copy_tokens;
    const std::vector<int32_t> x = b.x.contiguous().to_vector<int32_t>();
    const std::vector<int32_t> y = b.y.contiguous().to_vector<int32_t>();
    std::vector<int32_t> pred;
    if (output.defined()) pred = predicted_tokens(b, output, vocab_size(), "selective_copy describe");
    const size_t base = static_cast<size_t>(row * t_len);
    std::ostringstream os;
    for (int64_t t = 0; t < r_len && t < t_len;) {
      if (t) os << " ";
      if (x[base + static_cast<size_t>(t)] == blank()) {
        int64_t n = 0;
        while (t < r_len && x[base + static_cast<size_t>(t)] == blank()) ++n, ++t;
        os << "." << n;
        continue;
      }
      os << token(x[base + static_cast<size_t>(t)]);
      ++t;
    }
    os << " | SEP ->";
    for (int64_t t = std::max<int64_t>(r_len, 0); t < t_len; ++t) os << " " << token(y[base + static_cast<size_t>(t)]);
    if (!pred.empty()) {
      os << " (model";
      for (int64_t t = std::max<int64_t>(r_len, 0); t < t_len; ++t)
        os << " " << token(pred[base + static_cast<size_t>(t)]);
      os << ")";
    }
    return os.str();
  }
};

}  // namespace

std::unique_ptr<SyntheticTask> make_selective_copy(const TaskConfig& config) {
  return std::make_unique<SelectiveCopy>(config);
}

}  // namespace attnlab::synthetic
