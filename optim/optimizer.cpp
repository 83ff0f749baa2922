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

double clip_grad_norm(const std::vector<Variable>& params, double max_norm) {
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
  const double norm = std::sqrt(sq);
  if (norm > max_norm && norm > 0) {
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

}  // namespace attnlab
