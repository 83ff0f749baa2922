// Synthetic tasks (data/synthetic/task.h): determinism, the layouts re-derived by independent
// parsers that read only x, oracle and wrong predictors through score(), regression maps recovered
// by least squares, and the config errors.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "data/synthetic/task.h"
#include "lib/error.h"
#include "tests/data/data_test_util.h"

namespace attnlab {
namespace {

using test::expect_config_error;
using test::task_config;

template <typename T>
bool same(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && a.to_vector<T>() == b.to_vector<T>();
}

bool same_batch(const TaskBatch& a, const TaskBatch& b, bool tokens) {
  const bool xy =
      tokens ? same<int32_t>(a.x, b.x) && same<int32_t>(a.y, b.y) : same<float>(a.x, b.x) && same<float>(a.y, b.y);
  return xy && same<float>(a.mask, b.mask);
}

// Logits f32 [B, T, V + 3] that put the largest value on pred[b, t] (and a larger one still in a
// column past vocab_size(), which score() must not look at).
Tensor logits_for(const std::vector<int32_t>& pred, int64_t b, int64_t t, int64_t vocab) {
  const int64_t width = vocab + 3;
  std::vector<float> v(static_cast<size_t>(b * t * width), 0.0f);
  for (int64_t i = 0; i < b * t; ++i) {
    v[static_cast<size_t>(i * width + pred[static_cast<size_t>(i)])] = 5.0f;
    v[static_cast<size_t>(i * width + vocab + 1)] = 9.0f;
  }
  return Tensor::from_vector(Shape{b, t, width}, v);
}

// Answer counts, expected y and the oracle's answers from one independent reading of x.
struct Parsed {
  std::vector<int32_t> y;     // the target each position should have (kIgnoreTarget elsewhere)
  std::vector<int32_t> pred;  // an oracle's prediction at every position (0 where nothing is asked)
  double answers = 0;
};

// --- mqar -----------------------------------------------------------------------------------

Parsed parse_mqar(const TaskConfig& c, const TaskBatch& b) {
  const int64_t rows = b.x.size(0), t_len = b.x.size(1), v = c.vocab, half = v / 2, p = c.pairs;
  const int64_t q = c.queries == 0 ? p : c.queries;
  const std::vector<int32_t> x = b.x.to_vector<int32_t>();
  Parsed out{std::vector<int32_t>(x.size(), kIgnoreTarget), std::vector<int32_t>(x.size(), 0), 0};
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* row = x.data() + r * t_len;
    std::map<int32_t, int32_t> value_of;
    for (int64_t i = 0; i < p; ++i) {
      EXPECT_LT(row[2 * i], half);
      EXPECT_GE(row[2 * i + 1], half);
      EXPECT_LT(row[2 * i + 1], v);
      EXPECT_TRUE(value_of.emplace(row[2 * i], row[2 * i + 1]).second) << "keys must be distinct";
    }
    std::set<int32_t> asked;
    int64_t t = 2 * p;
    for (; t + 1 < t_len && row[t] != v; t += 2) {
      const auto it = value_of.find(row[t]);
      EXPECT_NE(it, value_of.end()) << "query " << row[t] << " is not a key of the pairs";
      if (it == value_of.end()) continue;
      EXPECT_EQ(row[t + 1], it->second);
      EXPECT_TRUE(asked.insert(row[t]).second) << "queries must be distinct";
      out.y[static_cast<size_t>(r * t_len + t)] = it->second;
      out.answers += 1;
    }
    EXPECT_EQ(static_cast<int64_t>(asked.size()), q);
    for (; t < t_len; ++t) EXPECT_EQ(row[t], v) << "PAD after the queries";
    // Oracle: at any position, the token after the first earlier occurrence of this token.
    for (int64_t s = 1; s < t_len; ++s)
      for (int64_t e = 0; e + 1 < s; ++e)
        if (row[e] == row[s]) {
          out.pred[static_cast<size_t>(r * t_len + s)] = row[e + 1];
          break;
        }
  }
  return out;
}

void check_targets(const TaskBatch& b, const Parsed& p) {
  const std::vector<int32_t> y = b.y.to_vector<int32_t>();
  const std::vector<float> mask = b.mask.to_vector<float>();
  ASSERT_EQ(y.size(), p.y.size());
  for (size_t i = 0; i < y.size(); ++i) {
    EXPECT_EQ(y[i], p.y[i]) << "position " << i;
    EXPECT_EQ(mask[i], y[i] != kIgnoreTarget ? 1.0f : 0.0f) << "position " << i;
  }
}

// The oracle scores 1, the oracle shifted by one id scores 0, f32 and f64 alike.
void check_oracle(const SyntheticTask& task, const TaskBatch& b, const Parsed& p) {
  const int64_t rows = b.x.size(0), t_len = b.x.size(1), v = task.vocab_size();
  const Tensor good = logits_for(p.pred, rows, t_len, v);
  TaskScore s = task.score(b, good);
  EXPECT_EQ(s.count, p.answers);
  EXPECT_EQ(s.sum, p.answers);
  EXPECT_EQ(s.value(), 1.0);
  EXPECT_EQ(task.score(b, good.to(DType::f64)).value(), 1.0);
  std::vector<int32_t> wrong = p.pred;
  for (int32_t& w : wrong) w = static_cast<int32_t>((w + 1) % v);
  s = task.score(b, logits_for(wrong, rows, t_len, v));
  EXPECT_EQ(s.count, p.answers);
  EXPECT_EQ(s.value(), 0.0);
}

TEST(Synthetic, MqarLayoutAndOracle) {
  for (int64_t queries : {0, 3}) {
    TaskConfig c = task_config("mqar");
    c.vocab = 40;
    c.pairs = 6;
    c.queries = queries;
    c.validate(40);
    const auto task = make_task(c);
    EXPECT_TRUE(task->is_token_task());
    EXPECT_EQ(task->metric_name(), "accuracy");
    EXPECT_EQ(task->vocab_size(), 41);
    EXPECT_EQ(task->min_seq_len(), queries == 0 ? 24 : 18);
    const TaskBatch b = task->batch(11, 2, 5, 40);
    ASSERT_EQ(b.x.shape(), (Shape{5, 40}));
    ASSERT_EQ(b.mask.shape(), (Shape{5, 40}));
    const Parsed p = parse_mqar(c, b);
    EXPECT_EQ(p.answers, 5.0 * (queries == 0 ? 6 : 3));
    check_targets(b, p);
    check_oracle(*task, b, p);
    const std::string line = task->describe(b, 1, logits_for(p.pred, 5, 40, 41));
    EXPECT_NE(line.find(" -> v"), std::string::npos) << line;
    EXPECT_NE(line.find("(model v"), std::string::npos) << line;
  }
}

TEST(Synthetic, MqarManyPairs) {
  // More than 64 distinct draws take the hash-set path of the distinct sampler.
  TaskConfig c = task_config("mqar");
  c.vocab = 256;
  c.pairs = 128;
  c.queries = 100;
  const auto task = make_task(c);
  const TaskBatch b = task->batch(2, 7, 2, 460);
  const Parsed p = parse_mqar(c, b);
  EXPECT_EQ(p.answers, 200.0);
  check_targets(b, p);
  check_oracle(*task, b, p);
}

TEST(Synthetic, SameArgumentsSameBitsOtherwiseDifferent) {
  for (const std::string& name : task_names()) {
    TaskConfig c = task_config(name);
    c.queries = name == "kv_retrieval" ? 2 : 0;
    const auto task = make_task(c);
    const int64_t t_len = 64;
    const TaskBatch a = task->batch(5, 9, 3, t_len);
    EXPECT_TRUE(same_batch(a, task->batch(5, 9, 3, t_len), task->is_token_task())) << name;
    EXPECT_FALSE(same_batch(a, task->batch(5, 10, 3, t_len), task->is_token_task())) << name;
    EXPECT_FALSE(same_batch(a, task->batch(6, 9, 3, t_len), task->is_token_task())) << name;
    // Rows are their own streams: a smaller batch is the first rows of a larger one.
    const TaskBatch two = task->batch(5, 9, 2, t_len);
    if (task->is_token_task()) {
      const std::vector<int32_t> ax = a.x.to_vector<int32_t>(), tx = two.x.to_vector<int32_t>();
      EXPECT_TRUE(std::equal(tx.begin(), tx.end(), ax.begin())) << name;
    } else {
      const std::vector<float> ax = a.x.to_vector<float>(), tx = two.x.to_vector<float>();
      EXPECT_TRUE(std::equal(tx.begin(), tx.end(), ax.begin())) << name;
    }
  }
}

// --- kv_retrieval ----------------------------------------------------------------------------

Parsed parse_kv(const TaskConfig& c, const TaskBatch& b) {
  const int64_t rows = b.x.size(0), t_len = b.x.size(1), v = c.vocab, half = v / 2;
  const int32_t bos = static_cast<int32_t>(v), qt = bos + 1, at = bos + 2, filler0 = bos + 4;
  const std::vector<int32_t> x = b.x.to_vector<int32_t>();
  Parsed out{std::vector<int32_t>(x.size(), kIgnoreTarget), std::vector<int32_t>(x.size(), 0), 0};
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* row = x.data() + r * t_len;
    EXPECT_EQ(row[0], bos);
    std::map<int32_t, int32_t> value_of;
    int64_t t = 1, fillers = 0;
    while (t < t_len && row[t] != qt) {
      if (row[t] >= filler0 && row[t] < filler0 + 16) {
        ++fillers;
        ++t;
        continue;
      }
      EXPECT_LT(row[t], half);
      EXPECT_GE(row[t + 1], half);
      EXPECT_LT(row[t + 1], v);
      EXPECT_TRUE(value_of.emplace(row[t], row[t + 1]).second) << "keys must be distinct";
      t += 2;
    }
    EXPECT_EQ(static_cast<int64_t>(value_of.size()), c.pairs);
    EXPECT_EQ(fillers, t_len - (1 + 2 * c.pairs + 4 * c.queries + 3));
    std::set<int32_t> asked;
    int64_t demos = 0;
    for (; t < t_len; t += 4) {
      EXPECT_EQ(row[t], qt);
      if (t + 2 >= t_len) {
        ADD_FAILURE() << "a query runs past the end";
        break;
      }
      EXPECT_EQ(row[t + 2], at);
      const auto it = value_of.find(row[t + 1]);
      EXPECT_NE(it, value_of.end());
      if (it == value_of.end()) continue;
      EXPECT_TRUE(asked.insert(row[t + 1]).second) << "demo and final keys must be distinct";
      out.y[static_cast<size_t>(r * t_len + t + 2)] = it->second;
      out.answers += 1;
      if (t + 3 < t_len) {
        EXPECT_EQ(row[t + 3], it->second) << "a demo shows its answer";
        ++demos;
      } else {
        EXPECT_EQ(t + 2, t_len - 1) << "the final query ends the sequence";
      }
    }
    EXPECT_EQ(demos, c.queries);
    // Oracle: at an A, the token after the key's first occurrence.
    for (int64_t s = 2; s < t_len; ++s) {
      if (row[s] != at) continue;
      for (int64_t e = 1; e < s - 1; ++e)
        if (row[e] == row[s - 1]) {
          out.pred[static_cast<size_t>(r * t_len + s)] = row[e + 1];
          break;
        }
    }
  }
  return out;
}

TEST(Synthetic, KvRetrievalLayoutOracleAndDilution) {
  TaskConfig c = task_config("kv_retrieval");
  c.vocab = 32;
  c.pairs = 5;
  c.queries = 2;
  const auto task = make_task(c);
  EXPECT_EQ(task->vocab_size(), 32 + 4 + 16);
  EXPECT_EQ(task->min_seq_len(), 1 + 10 + 8 + 3);
  for (int64_t t_len : {22, 23, 60}) {
    const TaskBatch b = task->batch(3, 1, 4, t_len);
    const Parsed p = parse_kv(c, b);
    EXPECT_EQ(p.answers, 4.0 * 3);
    check_targets(b, p);
    check_oracle(*task, b, p);
    const TaskScore s = task->score(b, logits_for(p.pred, 4, t_len, task->vocab_size()));
    ASSERT_EQ(s.parts.count("final"), 1u);
    EXPECT_EQ(s.parts.at("final"), (std::pair<double, double>{4.0, 4.0}));
  }
  // A longer sequence only adds filler: the non-filler tokens are the same.
  auto content = [&](int64_t t_len) {
    std::vector<int32_t> keep;
    for (int32_t id : task->batch(3, 1, 2, t_len).x.to_vector<int32_t>())
      if (id < 32 + 4) keep.push_back(id);
    return keep;
  };
  EXPECT_EQ(content(22), content(200));
  const TaskBatch b = task->batch(3, 1, 1, 60);
  const std::string line = task->describe(b, 0);
  EXPECT_EQ(line.rfind("BOS k", 0), 0u) << line;
  EXPECT_NE(line.find("A -> v"), std::string::npos) << line;
}

// --- selective_copy --------------------------------------------------------------------------

Parsed parse_copy(const TaskConfig& c, const TaskBatch& b) {
  const int64_t rows = b.x.size(0), t_len = b.x.size(1), n = c.copy_tokens, r_len = t_len - n;
  const int32_t blank = static_cast<int32_t>(c.vocab), sep = blank + 1;
  const std::vector<int32_t> x = b.x.to_vector<int32_t>();
  Parsed out{std::vector<int32_t>(x.size(), kIgnoreTarget), std::vector<int32_t>(x.size(), 0), 0};
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* row = x.data() + r * t_len;
    std::vector<int32_t> content;
    int64_t t = 0;
    for (; t < t_len && row[t] != sep; ++t)
      if (row[t] != blank) {
        EXPECT_LT(row[t], c.vocab);
        content.push_back(row[t]);
      }
    EXPECT_EQ(t, r_len) << "SEP position";
    EXPECT_EQ(static_cast<int64_t>(content.size()), n);
    if (static_cast<int64_t>(content.size()) != n) continue;
    for (int64_t j = 0; j < n; ++j) {
      if (j > 0) {
        EXPECT_EQ(row[r_len + j], content[static_cast<size_t>(j - 1)]) << "teacher forcing";
      }
      out.y[static_cast<size_t>(r * t_len + r_len + j)] = content[static_cast<size_t>(j)];
      out.pred[static_cast<size_t>(r * t_len + r_len + j)] = content[static_cast<size_t>(j)];
      out.answers += 1;
    }
  }
  return out;
}

TEST(Synthetic, SelectiveCopyLayoutAndOracle) {
  TaskConfig c = task_config("selective_copy");
  c.vocab = 10;
  c.copy_tokens = 6;
  const auto task = make_task(c);
  EXPECT_EQ(task->vocab_size(), 12);
  EXPECT_EQ(task->min_seq_len(), 13);
  for (int64_t t_len : {13, 40}) {
    const TaskBatch b = task->batch(21, 0, 6, t_len);
    const Parsed p = parse_copy(c, b);
    EXPECT_EQ(p.answers, 36.0);
    check_targets(b, p);
    check_oracle(*task, b, p);
  }
  const TaskBatch b = task->batch(21, 0, 1, 40);
  const std::string line = task->describe(b, 0, logits_for(parse_copy(c, b).pred, 1, 40, 12));
  EXPECT_NE(line.find("| SEP ->"), std::string::npos) << line;
  EXPECT_NE(line.find("(model "), std::string::npos) << line;
}

// --- regression ------------------------------------------------------------------------------

// Least squares W [m, d] from pairs (x_i, y_i): W = Y^T X (X^T X)^-1, by Gauss-Jordan on X^T X.
std::vector<double> fit(const std::vector<std::vector<double>>& xs, const std::vector<std::vector<double>>& ys) {
  const size_t d = xs[0].size(), m = ys[0].size();
  std::vector<double> a(d * (d + m), 0.0);  // [X^T X | X^T Y], row-major d x (d + m)
  for (size_t i = 0; i < xs.size(); ++i)
    for (size_t r = 0; r < d; ++r) {
      for (size_t k = 0; k < d; ++k) a[r * (d + m) + k] += xs[i][r] * xs[i][k];
      for (size_t j = 0; j < m; ++j) a[r * (d + m) + d + j] += xs[i][r] * ys[i][j];
    }
  for (size_t col = 0; col < d; ++col) {
    size_t piv = col;
    for (size_t r = col; r < d; ++r)
      if (std::abs(a[r * (d + m) + col]) > std::abs(a[piv * (d + m) + col])) piv = r;
    for (size_t k = 0; k < d + m; ++k) std::swap(a[col * (d + m) + k], a[piv * (d + m) + k]);
    const double pv = a[col * (d + m) + col];
    for (size_t k = 0; k < d + m; ++k) a[col * (d + m) + k] /= pv;
    for (size_t r = 0; r < d; ++r) {
      if (r == col) continue;
      const double f = a[r * (d + m) + col];
      for (size_t k = 0; k < d + m; ++k) a[r * (d + m) + k] -= f * a[col * (d + m) + k];
    }
  }
  std::vector<double> w(m * d);
  for (size_t j = 0; j < m; ++j)
    for (size_t k = 0; k < d; ++k) w[j * d + k] = a[k * (d + m) + d + j];
  return w;
}

double max_residual(const std::vector<double>& w, const std::vector<std::vector<double>>& xs,
                    const std::vector<std::vector<double>>& ys) {
  double worst = 0;
  for (size_t i = 0; i < xs.size(); ++i)
    for (size_t j = 0; j < ys[i].size(); ++j) {
      double pred = 0;
      for (size_t k = 0; k < xs[i].size(); ++k) pred += w[j * xs[i].size() + k] * xs[i][k];
      worst = std::max(worst, std::abs(pred - ys[i][j]));
    }
  return worst;
}

// Reads row `row`'s pairs from x (x_i at even positions, y_i at odd ones) and checks the zero
// padding, y and the mask against them.
void read_pairs(const TaskBatch& b, int64_t row, int64_t d, int64_t m, std::vector<std::vector<double>>& xs,
                std::vector<std::vector<double>>& ys) {
  const int64_t t_len = b.x.size(1), in = d + m;
  const std::vector<float> x = b.x.to_vector<float>(), y = b.y.to_vector<float>(), mask = b.mask.to_vector<float>();
  for (int64_t i = 0; i < t_len / 2; ++i) {
    const float* xe = x.data() + (row * t_len + 2 * i) * in;
    const float* xo = xe + in;
    const float* ye = y.data() + (row * t_len + 2 * i) * m;
    const float* yo = ye + m;
    xs.emplace_back(xe, xe + d);
    ys.emplace_back(xo + d, xo + in);
    for (int64_t j = 0; j < m; ++j) {
      EXPECT_EQ(xe[d + j], 0.0f);
      EXPECT_EQ(ye[j], xo[d + j]) << "the target at 2i is y_i";
      EXPECT_EQ(yo[j], 0.0f);
    }
    for (int64_t k = 0; k < d; ++k) EXPECT_EQ(xo[k], 0.0f);
    EXPECT_EQ(mask[static_cast<size_t>(row * t_len + 2 * i)], 1.0f);
    EXPECT_EQ(mask[static_cast<size_t>(row * t_len + 2 * i + 1)], 0.0f);
  }
}

TEST(Synthetic, RegressionRecoversOneLinearMap) {
  TaskConfig c = task_config("regression");
  c.dim = 3;
  c.out_dim = 2;
  const auto task = make_task(c);
  EXPECT_FALSE(task->is_token_task());
  EXPECT_EQ(task->metric_name(), "mse");
  EXPECT_EQ(task->input_dim(), 5);
  EXPECT_EQ(task->output_dim(), 2);
  const TaskBatch b = task->batch(4, 0, 3, 24);
  ASSERT_EQ(b.x.shape(), (Shape{3, 24, 5}));
  ASSERT_EQ(b.y.shape(), (Shape{3, 24, 2}));
  std::vector<std::vector<double>> xs, ys;
  read_pairs(b, 1, 3, 2, xs, ys);
  const std::vector<double> w = fit(xs, ys);
  EXPECT_LT(max_residual(w, xs, ys), 1e-5);
  // Another row has its own map.
  std::vector<std::vector<double>> xs2, ys2;
  read_pairs(b, 2, 3, 2, xs2, ys2);
  EXPECT_GT(max_residual(w, xs2, ys2), 1e-2);
  // With noise the same W no longer fits exactly (x and W are drawn the same way).
  c.noise = 0.1;
  const TaskBatch noisy = make_task(c)->batch(4, 0, 3, 24);
  std::vector<std::vector<double>> xs3, ys3;
  read_pairs(noisy, 1, 3, 2, xs3, ys3);
  EXPECT_EQ(xs3, xs);
  EXPECT_GT(max_residual(w, xs3, ys3), 1e-3);
  const std::string line = task->describe(b, 0, b.y);
  EXPECT_NE(line.find("pair 1: x=["), std::string::npos) << line;
  EXPECT_NE(line.find("| mse 0"), std::string::npos) << line;
}

TEST(Synthetic, PiecewiseRegressionChangesMapPerSegment) {
  TaskConfig c = task_config("piecewise_regression");
  c.dim = 3;
  c.out_dim = 1;
  c.segments = 3;
  const auto task = make_task(c);
  EXPECT_EQ(task->min_seq_len(), 6);
  const TaskBatch b = task->batch(8, 5, 2, 26);  // 13 pairs: segments [0, 4), [4, 8), [8, 13)
  std::vector<std::vector<double>> xs, ys;
  read_pairs(b, 0, 3, 1, xs, ys);
  const int64_t bounds[4] = {0, 4, 8, 13};
  std::vector<std::vector<double>> maps;
  for (int s = 0; s < 3; ++s) {
    const std::vector<std::vector<double>> sx(xs.begin() + bounds[s], xs.begin() + bounds[s + 1]);
    const std::vector<std::vector<double>> sy(ys.begin() + bounds[s], ys.begin() + bounds[s + 1]);
    maps.push_back(fit(sx, sy));
    EXPECT_LT(max_residual(maps.back(), sx, sy), 1e-5) << "segment " << s << " has one map";
    // The segment's map does not fit the pair just across the boundary before it.
    if (s > 0) {
      const std::vector<std::vector<double>> px(xs.begin() + bounds[s] - 1, xs.begin() + bounds[s]);
      const std::vector<std::vector<double>> py(ys.begin() + bounds[s] - 1, ys.begin() + bounds[s]);
      EXPECT_GT(max_residual(maps.back(), px, py), 1e-3) << "segment " << s;
    }
  }
  for (int s = 1; s < 3; ++s) {
    double diff = 0;
    for (size_t k = 0; k < maps[0].size(); ++k) diff = std::max(diff, std::abs(maps[s][k] - maps[s - 1][k]));
    EXPECT_GT(diff, 1e-2) << "segments " << s - 1 << " and " << s << " share a map";
  }
  EXPECT_NE(task->describe(b, 0).find("(seg 3)"), std::string::npos) << task->describe(b, 0);
}

TEST(Synthetic, RegressionScores) {
  for (const std::string name : {"regression", "piecewise_regression"}) {
    TaskConfig c = task_config(name);
    c.dim = 4;
    c.out_dim = 2;
    c.segments = 2;
    c.noise = 0.05;
    const auto task = make_task(c);
    const TaskBatch b = task->batch(1, 1, 3, 20);
    TaskScore exact = task->score(b, b.y);
    EXPECT_EQ(exact.value(), 0.0) << name;
    EXPECT_EQ(exact.count, 3.0 * 10 * 2) << name;
    const std::vector<float> y = b.y.to_vector<float>();
    double sq = 0;
    for (float v : y) sq += static_cast<double>(v) * v;  // odd positions hold 0
    const TaskScore zeros = task->score(b, Tensor::zeros(b.y.shape(), DType::f64));
    EXPECT_NEAR(zeros.value(), sq / (3 * 10 * 2), 1e-9) << name;
    EXPECT_GT(zeros.value(), 0.1) << name;
    if (name == "piecewise_regression") {
      ASSERT_EQ(zeros.parts.size(), 2u);
      const auto& s1 = zeros.parts.at("seg1");
      const auto& s2 = zeros.parts.at("seg2");
      EXPECT_EQ(s1.second, 3.0 * 5 * 2);
      EXPECT_EQ(s1.second + s2.second, zeros.count);
      EXPECT_NEAR(s1.first + s2.first, zeros.sum, 1e-9);
      TaskScore acc;
      acc.add(zeros);
      acc.add(zeros);
      EXPECT_EQ(acc.parts.at("seg2").second, 2 * s2.second);
      EXPECT_NEAR(acc.value(), zeros.value(), 1e-12);
    } else {
      EXPECT_TRUE(zeros.parts.empty());
    }
    EXPECT_THROW(task->score(b, Tensor::zeros(Shape{3, 20, 3})), ShapeError) << name;
  }
}

// --- errors ----------------------------------------------------------------------------------

TEST(Synthetic, ConfigErrorsNameTaskFieldAndRange) {
  TaskConfig mqar = task_config("mqar");
  mqar.vocab = 64;
  mqar.pairs = 8;
  mqar.queries = 0;
  expect_config_error([&] { mqar.validate(20); },
                      {"data.task = mqar", "train.seq_len >= 2 * (data.pairs + data.queries)", "= 32", "got 20"});
  EXPECT_NO_THROW(mqar.validate(32));
  expect_config_error([&] { make_task(mqar)->batch(0, 0, 2, 31); }, {"data.task = mqar", "got 31"});
  expect_config_error([&] { make_task(mqar)->batch(0, 0, 0, 32); }, {"batch size", "got 0"});
  TaskConfig bad = mqar;
  bad.vocab = 16;
  bad.pairs = 9;
  expect_config_error([&] { bad.validate(100); }, {"data.task = mqar", "data.pairs", "data.vocab / 2 = 8", "got 9"});
  bad = mqar;
  bad.vocab = 63;
  expect_config_error([&] { make_task(bad); }, {"data.vocab", "even", "got 63"});
  bad = mqar;
  bad.queries = 9;
  expect_config_error([&] { bad.validate(100); }, {"data.queries", "[0, data.pairs = 8]", "got 9"});

  TaskConfig kv = task_config("kv_retrieval");
  kv.pairs = 4;
  kv.queries = 4;
  expect_config_error([&] { kv.validate(100); }, {"data.task = kv_retrieval", "data.queries", "got 4"});
  kv.queries = 1;
  expect_config_error([&] { kv.validate(15); },
                      {"data.task = kv_retrieval", "1 + 2 * data.pairs + 4 * data.queries + 3 = 16", "got 15"});
  kv.pairs = 40;
  expect_config_error([&] { kv.validate(1000); }, {"data.pairs", "data.vocab / 2 = 32", "got 40"});

  TaskConfig copy = task_config("selective_copy");
  copy.copy_tokens = 8;
  expect_config_error([&] { copy.validate(16); },
                      {"data.task = selective_copy", "2 * data.copy_tokens + 1 = 17", "got 16"});
  copy.copy_tokens = 0;
  expect_config_error([&] { copy.validate(16); }, {"data.copy_tokens", "got 0"});

  TaskConfig reg = task_config("regression");
  expect_config_error([&] { reg.validate(33); }, {"data.task = regression", "even train.seq_len", "got 33"});
  reg.dim = 0;
  expect_config_error([&] { reg.validate(32); }, {"data.dim", "got 0"});
  reg = task_config("regression");
  reg.noise = -1;
  expect_config_error([&] { reg.validate(32); }, {"data.noise", "got -1"});

  TaskConfig pw = task_config("piecewise_regression");
  pw.segments = 4;
  expect_config_error([&] { pw.validate(6); }, {"data.task = piecewise_regression", "2 * data.segments = 8", "got 6"});
  expect_config_error([&] { pw.validate(9); }, {"even train.seq_len", "got 9"});
  EXPECT_NO_THROW(pw.validate(8));

  std::vector<std::string> unknown = {"data.task", "unknown task 'mqqar'"};
  for (const std::string& n : task_names()) unknown.push_back(n);
  expect_config_error([&] { task_config("mqqar").validate(64); }, unknown);
  expect_config_error([&] { make_task(task_config("")); }, {"unknown task ''", "mqar"});
}

TEST(Synthetic, TokenScoreChecksLogits) {
  const auto task = make_task(task_config("mqar"));
  const TaskBatch b = task->batch(0, 0, 2, 32);
  EXPECT_THROW(task->score(b, Tensor::zeros(Shape{2, 32, 64})), ShapeError);  // vocab_size() is 65
  EXPECT_THROW(task->score(b, Tensor::zeros(Shape{2, 31, 65})), ShapeError);
  EXPECT_THROW(task->score(b, Tensor::zeros(Shape{2, 32, 65}, DType::i32)), DTypeError);
  // All-zero logits: argmax is id 0, a key, never a value: accuracy 0 over 2 * 8 answers.
  const TaskScore s = task->score(b, Tensor::zeros(Shape{2, 32, 65}));
  EXPECT_EQ(s.count, 16.0);
  EXPECT_EQ(s.sum, 0.0);
}

}  // namespace
}  // namespace attnlab
