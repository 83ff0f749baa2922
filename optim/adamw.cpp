#include "optim/adamw.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>

#include "lib/cpu/parallel.h"
#include "lib/error.h"

#if ATTNLAB_WITH_CUDA
#include "optim/optim_cuda.h"
#endif

namespace attnlab {

AdamW::AdamW(std::vector<Variable> params, AdamWConfig config, std::vector<bool> decay)
    : Optimizer(std::move(params)), config_(config), decay_(std::move(decay)) {
  if (decay_.empty()) decay_.assign(params_.size(), true);
  AL_CHECK_CONFIG(decay_.size() == params_.size(), "adamw: decay mask has ", decay_.size(), " entries for ",
                  params_.size(), " parameters");
  AL_CHECK_CONFIG(config.lr > 0 && config.beta1 >= 0 && config.beta1 < 1 && config.beta2 >= 0 && config.beta2 < 1 &&
                      config.eps > 0 && config.weight_decay >= 0,
                  "adamw: need lr > 0, betas in [0, 1), eps > 0, weight_decay >= 0; got lr=", config.lr,
                  ", beta1=", config.beta1, ", beta2=", config.beta2, ", eps=", config.eps,
                  ", weight_decay=", config.weight_decay);
  lr_ = config.lr;
  m_.resize(params_.size());
  v_.resize(params_.size());
}

namespace {

// Elements per task. Blocks start at fixed multiples of this (never where a thread's share
// happens to begin), so every element goes through the same vector or scalar code, and gets
// the same bits, on any thread count; a block's arrays stay in L1 across the three passes.
constexpr int64_t kBlock = 2048;

struct Coefficients {
  double b1, b2, step, rc2, eps, decay;
};

// One block of the update, vectorised by Eigen (sqrt and divide included: GCC leaves the
// plain loop scalar, and it was over a tenth of a GPT-2-small step).
template <typename T>
void update_block(T* w, const T* g, T* m, T* v, int64_t n, const Coefficients& c) {
  using A = Eigen::Array<T, Eigen::Dynamic, 1>;
  Eigen::Map<A> wa(w, n), ma(m, n), va(v, n);
  const Eigen::Map<const A> ga(g, n);
  const T b1 = static_cast<T>(c.b1), b2 = static_cast<T>(c.b2), step = static_cast<T>(c.step);
  const T rc2 = static_cast<T>(c.rc2), eps = static_cast<T>(c.eps), decay = static_cast<T>(c.decay);
  ma = b1 * ma + (T(1) - b1) * ga;
  va = b2 * va + (T(1) - b2) * ga.square();
  wa -= step * ma / (va.sqrt() * rc2 + eps) + decay * wa;
}

}  // namespace

void AdamW::step() {
  ++t_;
  const double c1 = 1.0 - std::pow(config_.beta1, static_cast<double>(t_));
  const double c2 = 1.0 - std::pow(config_.beta2, static_cast<double>(t_));
  for (size_t k = 0; k < params_.size(); ++k) {
    Variable& p = params_[k];
    if (!p.requires_grad() || !p.grad().defined()) continue;
    Tensor& w = p.mutable_data();
    AL_CHECK(w.is_contiguous(), "adamw: parameter ", w, " must be contiguous");
    const Tensor g = p.grad().contiguous();
    if (!m_[k].defined()) {
      m_[k] = Tensor::zeros(w.shape(), w.dtype(), w.device());
      v_[k] = Tensor::zeros(w.shape(), w.dtype(), w.device());
    }
    const Coefficients c{config_.beta1, config_.beta2, lr_ / c1, 1.0 / std::sqrt(c2), config_.eps,
                         decay_[k] ? lr_ * config_.weight_decay : 0.0};
    if (w.device().is_cuda()) {
      // The same coefficients; one fused kernel per parameter (optim/adamw_cuda.cu).
#if ATTNLAB_WITH_CUDA
      cuda::adamw_update(w, g, m_[k], v_[k], {c.b1, c.b2, c.step, c.rc2, c.eps, c.decay});
#else
      detail::throw_error<DeviceError>("adamw: this build has no CUDA backend; got parameter ", w);
#endif
      continue;
    }
    dispatch_float(w.dtype(), "adamw", [&](auto tag) {
      using T = decltype(tag);
      T* pw = w.data<T>();
      const T* pg = g.data<T>();
      T* pm = m_[k].data<T>();
      T* pv = v_[k].data<T>();
      const int64_t n = w.numel(), blocks = (n + kBlock - 1) / kBlock;
      cpu::parallel_for(0, blocks, 8, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t i = b * kBlock;
          update_block<T>(pw + i, pg + i, pm + i, pv + i, std::min(kBlock, n - i), c);
        }
      });
    });
  }
}

std::map<std::string, Tensor> AdamW::state() const {
  std::map<std::string, Tensor> s;
  detail::save_slots(s, "m.", m_);
  detail::save_slots(s, "v.", v_);
  s["t"] = Tensor::scalar(static_cast<double>(t_), DType::f64);
  return s;
}

void AdamW::load_state(const std::map<std::string, Tensor>& state) {
  auto t = state.find("t");
  AL_CHECK_CONFIG(t != state.end() && t->second.numel() == 1, "adamw: optimizer state has no step count 't'");
  std::vector<Tensor> m, v;
  detail::load_slots(state, "m.", params_, m, "adamw");
  detail::load_slots(state, "v.", params_, v, "adamw");
  for (size_t i = 0; i < params_.size(); ++i)
    AL_CHECK_CONFIG(m[i].defined() == v[i].defined(), "adamw: optimizer state has only one of m.", i, " and v.", i);
  m_ = std::move(m);
  v_ = std::move(v);
  t_ = static_cast<int64_t>(t->second.item<double>());
}

}  // namespace attnlab
