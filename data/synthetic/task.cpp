// The task registry (make_task, task_names), TaskConfig::validate, the shared scoring of token and
// vector tasks, and the private helpers of common.h (per-row random streams, output checks,
// filler runs, the haystack tasks' describe() text).
#include "data/synthetic/task.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <sstream>
#include <unordered_set>

#include "data/synthetic/common.h"

namespace attnlab {

namespace synthetic {

namespace {
// splitmix64's finaliser: spreads nearby seeds (0, 1, 2, ...) over the whole key space.
uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
}  // namespace

RowRng::RowRng(uint64_t seed, uint64_t index, int64_t row)
    : key_(mix64(seed ^ 0x5EED5EED00000000ull)), counter_lo_(index), row_(static_cast<uint64_t>(row)) {}

uint32_t RowRng::next_u32() {
  if (used_ == 4) {
    const Philox4x32 r = philox4x32_10(counter_lo_, (row_ << 32) | block_, key_);
    ++block_;
    for (int j = 0; j < 4; ++j) words_[j] = r.v[j];
    used_ = 0;
  }
  return words_[used_++];
}

int64_t RowRng::uniform_int(int64_t n) {
  AL_ASSERT(n >= 1, "uniform_int needs n >= 1; got ", n);
  const unsigned __int128 p = static_cast<unsigned __int128>(next_u64()) * static_cast<uint64_t>(n);
  return static_cast<int64_t>(p >> 64);
}

double RowRng::normal() {
  const double u1 = 1.0 - uniform01(next_u32());  // in (0, 1]: the log stays finite
  const double u2 = uniform01(next_u32());
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

std::vector<int64_t> RowRng::distinct(int64_t k, int64_t n) {
  AL_ASSERT(k >= 0 && k <= n, "distinct: need 0 <= k <= n; got k=", k, " n=", n);
  // Floyd: for j in [n - k, n), add a random t in [0, j] unless taken, else j itself. Membership:
  // a linear scan for small k, a hash set beyond (same draws either way).
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(k));
  std::unordered_set<int64_t> seen;
  const bool use_set = k > 64;
  for (int64_t j = n - k; j < n; ++j) {
    const int64_t t = uniform_int(j + 1);
    bool taken = false;
    if (use_set)
      taken = seen.count(t) > 0;
    else
      for (int64_t v : out) taken = taken || v == t;
    out.push_back(taken ? j : t);
    if (use_set) seen.insert(out.back());
  }
  shuffle(out);
  return out;
}

std::vector<int64_t> filler_runs(RowRng& rng, int64_t fill, int64_t runs) {
  std::vector<int64_t> cuts = rng.distinct(runs - 1, fill + runs - 1);
  std::sort(cuts.begin(), cuts.end());
  std::vector<int64_t> len(static_cast<size_t>(runs));
  int64_t lo = 0;
  for (int64_t i = 0; i < runs; ++i) {
    const int64_t hi = i == runs - 1 ? fill + runs - 1 : cuts[static_cast<size_t>(i)];
    len[static_cast<size_t>(i)] = hi - lo;
    lo = hi + 1;
  }
  return len;
}

std::string describe_tokens(const TaskBatch& b, int64_t row, const Tensor& output, int64_t vocab,
                            const std::string& who, const TokenText& text) {
  AL_CHECK_SHAPE(row >= 0 && row < b.x.size(0), who, ": row ", row, " is outside the batch ", b.x.str());
  const int64_t t_len = b.x.size(1);
  const std::vector<int32_t> x = b.x.contiguous().to_vector<int32_t>();
  const std::vector<int32_t> y = b.y.contiguous().to_vector<int32_t>();
  std::vector<int32_t> pred;
  if (output.defined()) pred = predicted_tokens(b, output, vocab, who);
  const size_t base = static_cast<size_t>(row * t_len);
  const int32_t* xr = x.data() + base;
  std::ostringstream os;
  for (int64_t t = 0; t < t_len;) {
    if (t) os << " ";
    if (text.in_run(xr[t])) {
      int64_t n = 0;
      for (; t < t_len && text.in_run(xr[t]); ++t) ++n;
      os << "~" << n;
      continue;
    }
    if (const int64_t g = text.group ? text.group(xr, t, t_len) : 0; g > 0) {
      for (int64_t k = 0; k < g; ++k) os << (k ? " " : "") << text.token(xr[t + k]);
      t += g;
      continue;
    }
    const size_t i = base + static_cast<size_t>(t);
    if (x[i] == text.question) os << "| ";
    os << text.token(x[i]);
    if (y[i] != kIgnoreTarget) {
      os << " -> " << text.token(y[i]);
      if (!pred.empty()) os << " (model " << text.token(pred[i]) << ")";
      if (text.skip_after_target && t + 1 < t_len) ++t;
    }
    ++t;
  }
  return os.str();
}

void check_batch_args(const SyntheticTask& task, int64_t batch, int64_t seq_len) {
  if (batch < 1) config_error(task.config(), "batch size must be >= 1; got ", batch);
  task.check_seq_len(seq_len);
}

namespace {
template <typename T>
void argmax_rows(const Tensor& logits, int64_t rows, int64_t width, int64_t vocab, std::vector<int32_t>& out) {
  const T* p = logits.data<T>();
  for (int64_t r = 0; r < rows; ++r) out[static_cast<size_t>(r)] = static_cast<int32_t>(argmax(p + r * width, vocab));
}
}  // namespace

std::vector<int32_t> predicted_tokens(const TaskBatch& batch, const Tensor& logits, int64_t vocab,
                                      const std::string& who) {
  const Shape& ys = batch.y.shape();
  AL_CHECK_SHAPE(logits.defined() && logits.ndim() == 3 && ys.ndim() == 2 && logits.size(0) == ys[0] &&
                     logits.size(1) == ys[1] && logits.size(2) >= vocab,
                 who, ": logits must be [B, T, V'] with [B, T] = y's ", ys, " and V' >= vocab_size() = ", vocab,
                 "; got ", logits.str());
  AL_CHECK_DTYPE(logits.dtype() == DType::f32 || logits.dtype() == DType::f64, who, ": logits must be f32 or f64; got ",
                 logits.str());
  AL_CHECK_DEVICE(logits.device() == Device::cpu(), who, ": logits must be on the CPU; got ", logits.str());
  const Tensor l = logits.contiguous();
  const int64_t rows = ys[0] * ys[1];
  std::vector<int32_t> out(static_cast<size_t>(rows));
  if (l.dtype() == DType::f32)
    argmax_rows<float>(l, rows, l.size(2), vocab, out);
  else
    argmax_rows<double>(l, rows, l.size(2), vocab, out);
  return out;
}

std::vector<double> predicted_vectors(const TaskBatch& batch, const Tensor& output, const std::string& who) {
  const Shape& ys = batch.y.shape();
  AL_CHECK_SHAPE(output.defined() && output.shape() == ys, who, ": predictions must be [B, T, output_dim] = ", ys,
                 "; got ", output.str());
  AL_CHECK_DTYPE(output.dtype() == DType::f32 || output.dtype() == DType::f64, who,
                 ": predictions must be f32 or f64; got ", output.str());
  AL_CHECK_DEVICE(output.device() == Device::cpu(), who, ": predictions must be on the CPU; got ", output.str());
  return output.to(DType::f64).contiguous().to_vector<double>();
}

}  // namespace synthetic

void TaskScore::add(const TaskScore& other) {
  sum += other.sum;
  count += other.count;
  for (const auto& [name, sc] : other.parts) {
    auto& mine = parts[name];
    mine.first += sc.first;
    mine.second += sc.second;
  }
}

void SyntheticTask::check_seq_len(int64_t seq_len) const {
  if (seq_len < min_seq_len())
    synthetic::config_error(config(), "needs train.seq_len >= ", min_seq_len(), "; got ", seq_len);
}

TaskScore SyntheticTask::score(const TaskBatch& batch, const Tensor& output) const {
  const std::string who = name() + " score";
  const std::vector<float> mask = batch.mask.contiguous().to_vector<float>();
  TaskScore s;
  if (is_token_task()) {
    const std::vector<int32_t> pred = synthetic::predicted_tokens(batch, output, vocab_size(), who);
    const std::vector<int32_t> y = batch.y.contiguous().to_vector<int32_t>();
    for (size_t i = 0; i < y.size(); ++i) {
      if (mask[i] == 0.0f || y[i] == kIgnoreTarget) continue;
      s.count += 1;
      s.sum += pred[i] == y[i] ? 1.0 : 0.0;
    }
    return s;
  }
  const std::vector<double> pred = synthetic::predicted_vectors(batch, output, who);
  const std::vector<float> y = batch.y.contiguous().to_vector<float>();
  const int64_t m = output_dim();
  for (size_t p = 0; p < mask.size(); ++p) {
    if (mask[p] == 0.0f) continue;
    for (int64_t j = 0; j < m; ++j) {
      const size_t i = p * static_cast<size_t>(m) + static_cast<size_t>(j);
      const double e = pred[i] - static_cast<double>(y[i]);
      s.sum += e * e;
    }
    s.count += static_cast<double>(m);
  }
  return s;
}

std::vector<std::string> task_names() {
  return {"mqar", "kv_retrieval", "selective_copy", "regression", "piecewise_regression", "needle", "fact_chain"};
}

std::unique_ptr<SyntheticTask> make_task(const TaskConfig& config) {
  if (config.name == "mqar") return synthetic::make_mqar(config);
  if (config.name == "kv_retrieval") return synthetic::make_kv_retrieval(config);
  if (config.name == "selective_copy") return synthetic::make_selective_copy(config);
  if (config.name == "regression") return synthetic::make_regression(config);
  if (config.name == "piecewise_regression") return synthetic::make_piecewise_regression(config);
  if (config.name == "needle") return synthetic::make_needle(config);
  if (config.name == "fact_chain") return synthetic::make_fact_chain(config);
  std::string valid;
  for (const std::string& n : task_names()) valid += (valid.empty() ? "" : ", ") + n;
  throw ConfigError("data.task: unknown task '" + config.name + "'; valid: " + valid);
}

void TaskConfig::validate(int64_t seq_len) const { make_task(*this)->check_seq_len(seq_len); }

}  // namespace attnlab
