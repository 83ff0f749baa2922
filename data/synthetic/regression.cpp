// regression and piecewise_regression: in-context linear regression (LLA spec B9). Each sequence
// has its own random linear map; the model reads (x, y) pairs and must predict y from x using the
// pairs before it. piecewise_regression redraws the map in each of `segments` consecutive segments,
// so a model must also notice that the map changed and forget the old one.
//
// Layout (d = data.dim, m = data.out_dim, T = seq_len even, P = T / 2 pairs, S = data.segments):
//   input_dim() = d + m, output_dim() = m
//   map      W ~ N(0, 1/d) entries, [m, d]; regression: one per sequence; piecewise: segment s
//            (s = 0..S-1) covers pairs [s * P / S, (s + 1) * P / S) (integer division) with its own W
//   pair i   x_i ~ N(0, I_d), y_i = W x_i + data.noise * N(0, I_m)
//   x        position 2i: [x_i, 0_m]; position 2i + 1: [0_d, y_i]
//   y        position 2i: y_i (predict y_i from x_i and the earlier pairs); position 2i + 1: 0
//   mask     1 at even positions, 0 at odd ones
//   min_seq_len() = 2 (regression), 2 * S (piecewise: a pair per segment at least)
// score(): mse = squared error summed over masked positions and output dims / (positions * m);
// piecewise adds parts "seg1".."segS", the same mse within each segment.
// Draws per row, in order: for each segment, W (m * d normals) then for each of its pairs x_i
// (d normals) and the noise (m normals, drawn even when data.noise = 0, so the noise level does not
// change x or W).
#include <cmath>
#include <cstdio>
#include <sstream>

#include "data/synthetic/common.h"

namespace attnlab::synthetic {
namespace {

class Regression : public SyntheticTask {
 public:
  Regression(const TaskConfig& c, bool piecewise) : SyntheticTask(c), piecewise_(piecewise) {
    if (c.dim < 1 || c.dim > 4096) config_error(c, "data.dim must be in [1, 4096]; got ", c.dim);
    if (c.out_dim < 1 || c.out_dim > 4096) config_error(c, "data.out_dim must be in [1, 4096]; got ", c.out_dim);
    if (!(c.noise >= 0.0) || !std::isfinite(c.noise))
      config_error(c, "data.noise must be a finite number >= 0; got ", c.noise);
    if (piecewise && (c.segments < 1 || c.segments > 1000000))
      config_error(c, "data.segments must be in [1, 1000000]; got ", c.segments);
  }

  int64_t segments() const { return piecewise_ ? config().segments : 1; }
  int64_t vocab_size() const override { return 0; }
  int64_t input_dim() const override { return config().dim + config().out_dim; }
  int64_t output_dim() const override { return config().out_dim; }
  int64_t min_seq_len() const override { return 2 * segments(); }

  void check_seq_len(int64_t seq_len) const override {
    if (piecewise_ && seq_len < min_seq_len())
      config_error(config(), "needs train.seq_len >= 2 * data.segments = ", min_seq_len(),
                   " (a pair per segment at least); got ", seq_len);
    if (seq_len < min_seq_len()) config_error(config(), "needs train.seq_len >= 2 (one (x, y) pair); got ", seq_len);
    if (seq_len % 2 != 0)
      config_error(config(), "needs an even train.seq_len (x and y positions alternate); got ", seq_len);
  }

  // The segment of pair i when there are `pairs` pairs.
  int64_t segment_of(int64_t i, int64_t pairs) const {
    const int64_t s = segments();
    int64_t seg = (i * s) / pairs;  // a guess, corrected against the exact boundaries below
    while (seg + 1 < s && (seg + 1) * pairs / s <= i) ++seg;
    while (seg > 0 && seg * pairs / s > i) --seg;
    return seg;
  }

  TaskBatch batch(uint64_t seed, uint64_t index, int64_t batch, int64_t seq_len) const override {
    check_batch_args(*this, batch, seq_len);
    const int64_t d = config().dim, m = config().out_dim, in = d + m, pairs = seq_len / 2, s = segments();
    const double w_std = 1.0 / std::sqrt(static_cast<double>(d)), noise = config().noise;
    TaskBatch b;
    b.x = Tensor::zeros(Shape{batch, seq_len, in}, DType::f32);
    b.y = Tensor::zeros(Shape{batch, seq_len, m}, DType::f32);
    b.mask = Tensor::zeros(Shape{batch, seq_len}, DType::f32);
    float* xs = b.x.data<float>();
    float* ys = b.y.data<float>();
    float* mask = b.mask.data<float>();
    cpu::parallel_for(0, batch, 2, [&](int64_t r0, int64_t r1) {
      std::vector<double> w(static_cast<size_t>(m * d)), xi(static_cast<size_t>(d));
      for (int64_t r = r0; r < r1; ++r) {
        RowRng rng(seed, index, r);
        for (int64_t seg = 0; seg < s; ++seg) {
          for (double& e : w) e = w_std * rng.normal();
          for (int64_t i = seg * pairs / s; i < (seg + 1) * pairs / s; ++i) {
            float* x_even = xs + (r * seq_len + 2 * i) * in;
            float* x_odd = x_even + in;
            float* y_even = ys + (r * seq_len + 2 * i) * m;
            for (int64_t k = 0; k < d; ++k) {
              xi[static_cast<size_t>(k)] = rng.normal();
              x_even[k] = static_cast<float>(xi[static_cast<size_t>(k)]);
            }
            for (int64_t j = 0; j < m; ++j) {
              double yj = 0;
              for (int64_t k = 0; k < d; ++k) yj += w[static_cast<size_t>(j * d + k)] * xi[static_cast<size_t>(k)];
              yj += noise * rng.normal();
              x_odd[d + j] = static_cast<float>(yj);
              y_even[j] = static_cast<float>(yj);
            }
            mask[r * seq_len + 2 * i] = 1.0f;
          }
        }
      }
    });
    return b;
  }

  TaskScore score(const TaskBatch& b, const Tensor& output) const override {
    TaskScore total = SyntheticTask::score(b, output);  // checks the output's shape and dtype
    if (!piecewise_) return total;
    const std::vector<double> pred = predicted_vectors(b, output, name() + " score");
    const std::vector<float> y = b.y.contiguous().to_vector<float>();
    const std::vector<float> mask = b.mask.contiguous().to_vector<float>();
    const int64_t rows = b.y.size(0), t_len = b.y.size(1), m = output_dim(), pairs = t_len / 2;
    std::vector<double> sum(static_cast<size_t>(segments()), 0.0), count(sum.size(), 0.0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t t = 0; t < t_len; ++t) {
        const size_t p = static_cast<size_t>(r * t_len + t);
        if (mask[p] == 0.0f) continue;
        const size_t seg = static_cast<size_t>(segment_of(std::min(t / 2, pairs - 1), pairs));
        for (int64_t j = 0; j < m; ++j) {
          const size_t i = p * static_cast<size_t>(m) + static_cast<size_t>(j);
          const double e = pred[i] - static_cast<double>(y[i]);
          sum[seg] += e * e;
        }
        count[seg] += static_cast<double>(m);
      }
    for (size_t seg = 0; seg < sum.size(); ++seg)
      total.parts[tagged("seg", static_cast<int64_t>(seg) + 1)] = {sum[seg], count[seg]};
    return total;
  }

  std::string describe(const TaskBatch& b, int64_t row, const Tensor& output) const override {
    AL_CHECK_SHAPE(row >= 0 && row < b.x.size(0), name(), " describe: row ", row, " is outside the batch ", b.x.str());
    const int64_t t_len = b.x.size(1), d = config().dim, m = output_dim(), in = input_dim(), pairs = t_len / 2;
    const std::vector<float> x = b.x.contiguous().to_vector<float>();
    const std::vector<float> y = b.y.contiguous().to_vector<float>();
    std::vector<double> pred;
    if (output.defined()) pred = predicted_vectors(b, output, name() + " describe");
    auto vec = [](auto first, int64_t n) {
      std::ostringstream os;
      os << "[";
      for (int64_t k = 0; k < std::min<int64_t>(n, 4); ++k) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%s%.3g", k ? ", " : "", static_cast<double>(first[k]));
        os << buf;
      }
      if (n > 4) os << ", ...";
      os << "]";
      return os.str();
    };
    std::ostringstream os;
    double se = 0;
    for (int64_t i = 0; i < pairs; ++i) {
      const int64_t t = 2 * i;
      const size_t yo = static_cast<size_t>((row * t_len + t) * m);
      if (!pred.empty())
        for (int64_t j = 0; j < m; ++j)
          se += (pred[yo + static_cast<size_t>(j)] - y[yo + static_cast<size_t>(j)]) *
                (pred[yo + static_cast<size_t>(j)] - y[yo + static_cast<size_t>(j)]);
      // The first three pairs and the last one: enough to see the map being learnt in context.
      if (i >= 3 && i != pairs - 1) continue;
      if (i) os << "; ";
      if (i == pairs - 1 && pairs > 4) os << "...; ";
      os << "pair " << i + 1;
      if (piecewise_) os << " (seg " << segment_of(i, pairs) + 1 << ")";
      os << ": x=" << vec(x.data() + (row * t_len + t) * in, d) << " y=" << vec(y.data() + yo, m);
      if (!pred.empty()) os << " model=" << vec(pred.data() + yo, m);
    }
    if (!pred.empty()) {
      char buf[48];
      std::snprintf(buf, sizeof buf, " | mse %.4g", se / static_cast<double>(pairs * m));
      os << buf;
    }
    return os.str();
  }

 private:
  bool piecewise_;
};

}  // namespace

std::unique_ptr<SyntheticTask> make_regression(const TaskConfig& config) {
  return std::make_unique<Regression>(config, false);
}
std::unique_ptr<SyntheticTask> make_piecewise_regression(const TaskConfig& config) {
  return std::make_unique<Regression>(config, true);
}

}  // namespace attnlab::synthetic
