#include "optim/sgd.h"

#include "lib/cpu/parallel.h"
#include "lib/error.h"

#if ATTNLAB_WITH_CUDA
#include "optim/optim_cuda.h"
#endif

namespace attnlab {

Sgd::Sgd(std::vector<Variable> params, SgdConfig config) : Optimizer(std::move(params)), config_(config) {
  AL_CHECK_CONFIG(config.lr > 0 && config.momentum >= 0 && config.momentum < 1 && config.weight_decay >= 0,
                  "sgd: need lr > 0, momentum in [0, 1), weight_decay >= 0; got lr=", config.lr,
                  ", momentum=", config.momentum, ", weight_decay=", config.weight_decay);
  lr_ = config.lr;
  velocity_.resize(params_.size());
}

void Sgd::step() {
  for (size_t k = 0; k < params_.size(); ++k) {
    Variable& p = params_[k];
    if (!p.requires_grad() || !p.grad().defined()) continue;
    Tensor& w = p.mutable_data();
    AL_CHECK(w.is_contiguous(), "sgd: parameter ", w, " must be contiguous");
    const Tensor g = p.grad().contiguous();
    if (config_.momentum > 0 && !velocity_[k].defined())
      velocity_[k] = Tensor::zeros(w.shape(), w.dtype(), w.device());
    if (w.device().is_cuda()) {
#if ATTNLAB_WITH_CUDA
      Tensor none;
      cuda::sgd_update(w, g, config_.momentum > 0 ? velocity_[k] : none, lr_, config_.momentum, config_.weight_decay);
#else
      detail::throw_error<DeviceError>("sgd: this build has no CUDA backend; got parameter ", w);
#endif
      continue;
    }
    dispatch_float(w.dtype(), "sgd", [&](auto tag) {
      using T = decltype(tag);
      T* pw = w.data<T>();
      const T* pg = g.data<T>();
      T* pv = config_.momentum > 0 ? velocity_[k].data<T>() : nullptr;
      const T lr = static_cast<T>(lr_), mu = static_cast<T>(config_.momentum), wd = static_cast<T>(config_.weight_decay);
      cpu::parallel_for(0, w.numel(), 1 << 15, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          T d = pg[i];
          if (pv) d = pv[i] = mu * pv[i] + pg[i];
          pw[i] -= lr * (d + wd * pw[i]);
        }
      });
    });
  }
}

std::map<std::string, Tensor> Sgd::state() const {
  std::map<std::string, Tensor> s;
  detail::save_slots(s, "velocity.", velocity_);
  return s;
}

void Sgd::load_state(const std::map<std::string, Tensor>& state) {
  detail::load_slots(state, "velocity.", params_, velocity_, "sgd");
}

}  // namespace attnlab
