#include "optim/optimizer.h"

#include <cmath>

#include "lib/cpu/parallel.h"
#include "lib/error.h"

namespace attnlab {

Optimizer::Optimizer(std::vector<Variable> params) : params_(std::move(params)) {
  for (const Variable& p : params_)
    AL_CHECK(p.defined() && p.is_leaf(), "optimizer: parameters must be leaf Variables; got ", p);
}

void Optimizer::zero_grad() {
  for (Variable& p : params_) p.zero_grad();
}

double grad_norm(const std::vector<Variable>& params) {
  double sq = 0.0;
  for (const Variable& p : params) {
    if (!p.grad().defined()) continue;
    const Tensor g = p.grad().contiguous();
    sq += dispatch_float(g.dtype(), "clip_grad_norm", [&](auto tag) {
      using T = decltype(tag);
      const T* pg = g.data<T>();
      return cpu::parallel_reduce(
          0, g.numel(), 1 << 14, 0.0,
          [&](int64_t b, int64_t e) {
            double s = 0;
            for (int64_t i = b; i < e; ++i) s += static_cast<double>(pg[i]) * pg[i];
            return s;
          },
          [](double a, double b) { return a + b; });
    });
  }
  return std::sqrt(sq);
}

double clip_grad_norm(const std::vector<Variable>& params, double max_norm) {
  const double norm = grad_norm(params);
  if (std::isfinite(norm) && norm > max_norm && norm > 0) {
    const double scale = max_norm / norm;
    for (const Variable& p : params) {
      if (!p.grad().defined()) continue;
      Tensor g = p.grad();
      dispatch_float(g.dtype(), "clip_grad_norm", [&](auto tag) {
        using T = decltype(tag);
        T* pg = g.data<T>();
        for (int64_t i = 0; i < g.numel(); ++i) pg[i] = static_cast<T>(pg[i] * scale);
      });
    }
  }
  return norm;
}

namespace detail {

void save_slots(std::map<std::string, Tensor>& state, const std::string& prefix, const std::vector<Tensor>& slots) {
  for (size_t i = 0; i < slots.size(); ++i)
    if (slots[i].defined()) state[prefix + std::to_string(i)] = slots[i];
}

void load_slots(const std::map<std::string, Tensor>& state, const std::string& prefix,
                const std::vector<Variable>& params, std::vector<Tensor>& slots, const char* who) {
  std::vector<Tensor> loaded(params.size());
  for (const auto& [key, t] : state) {
    if (key.rfind(prefix, 0) != 0) continue;
    size_t i = 0;
    try {
      i = std::stoul(key.substr(prefix.size()));
    } catch (const std::exception&) {
      detail::throw_error<ConfigError>(who, ": unexpected state entry '", key, "'");
    }
    AL_CHECK_CONFIG(i < params.size(), who, ": state entry '", key, "' is for parameter ", i, " but there are ",
                    params.size(), " parameters");
    AL_CHECK_SHAPE(t.shape() == params[i].shape() && t.dtype() == params[i].dtype(), who, ": state entry '", key,
                   "' is ", t, "; parameter ", i, " is ", params[i].str());
    loaded[i] = t.clone();
  }
  slots = std::move(loaded);
}

}  // namespace detail

}  // namespace attnlab
