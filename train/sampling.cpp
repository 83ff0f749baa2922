#include "train/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "autograd/grad_mode.h"
#include "lib/error.h"

namespace attnlab {

namespace {

// Draws one id from logits[0 .. vocab) with temperature and top-k.
int32_t draw(const float* logits, int64_t vocab, const SampleOptions& o, Generator& gen) {
  std::vector<int32_t> ids(static_cast<size_t>(vocab));
  std::iota(ids.begin(), ids.end(), 0);
  int64_t k = o.top_k > 0 ? std::min(o.top_k, vocab) : vocab;
  if (k < vocab)
    std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  float top = logits[ids[0]];
  for (int64_t i = 1; i < k; ++i) top = std::max(top, logits[ids[static_cast<size_t>(i)]]);
  std::vector<double> p(static_cast<size_t>(k));
  double total = 0;
  for (int64_t i = 0; i < k; ++i) {
    p[static_cast<size_t>(i)] = std::exp((static_cast<double>(logits[ids[static_cast<size_t>(i)]]) - top) / o.temperature);
    total += p[static_cast<size_t>(i)];
  }
  const double u = rand(Shape{}, gen, DType::f64).item<double>() * total;
  double acc = 0;
  for (int64_t i = 0; i < k; ++i) {
    acc += p[static_cast<size_t>(i)];
    if (u < acc) return ids[static_cast<size_t>(i)];
  }
  return ids[static_cast<size_t>(k - 1)];
}

Tensor as_ids(const std::vector<int32_t>& v) {
  return Tensor::from_vector(Shape{1, static_cast<int64_t>(v.size())}, v);
}

}  // namespace

std::vector<int32_t> generate(const Gpt& model, const std::vector<int32_t>& prompt, const SampleOptions& o) {
  AL_CHECK_CONFIG(!prompt.empty(), "sample: the prompt encodes to no tokens");
  AL_CHECK_CONFIG(o.temperature > 0, "sample: temperature must be > 0; got ", o.temperature);
  AL_CHECK_CONFIG(o.tokens >= 0 && o.top_k >= 0, "sample: tokens and top_k must be >= 0; got tokens=", o.tokens,
                  ", top_k=", o.top_k);
  NoGradGuard no_grad;
  const GptConfig& cfg = model.config();
  const int64_t context = cfg.context, vocab = cfg.vocab_size;
  Generator gen(o.seed);
  std::vector<int32_t> history = prompt, out;
  KvCache cache = model.make_cache(1);
  // Prefill with at most a context of prompt.
  std::vector<int32_t> window(history.end() - std::min<int64_t>(context, static_cast<int64_t>(history.size())),
                              history.end());
  Tensor logits = model.forward_cached(Variable(as_ids(window).to(model.device())), cache).data().to(Device::cpu());
  int64_t cached = static_cast<int64_t>(window.size());
  for (int64_t n = 0; n < o.tokens; ++n) {
    const Tensor last = logits.narrow(1, logits.size(1) - 1, 1).contiguous();
    const int32_t next = draw(last.data<float>(), vocab, o, gen);
    out.push_back(next);
    history.push_back(next);
    if (n + 1 == o.tokens) break;
    if (cached == context) {  // full: restart from the last half-context of tokens
      cache = model.make_cache(1);
      const int64_t keep = std::max<int64_t>(1, context / 2);
      window.assign(history.end() - keep, history.end());
      logits = model.forward_cached(Variable(as_ids(window).to(model.device())), cache).data().to(Device::cpu());
      cached = keep;
    } else {
      logits = model.forward_cached(Variable(as_ids({next}).to(model.device())), cache).data().to(Device::cpu());
      ++cached;
    }
  }
  return out;
}

}  // namespace attnlab
