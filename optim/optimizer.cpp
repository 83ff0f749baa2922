#include "optim/optimizer.h"

#include <cmath>

#include "lib/cpu/parallel.h"
#include "lib/error.h"

#if ATTNLAB_WITH_CUDA
#include "optim/optim_cuda.h"
#endif

namespace attnlab {

Optimizer::Optimizer(std::vector<Variable> params) : params_(std::move(params)) {
  for (const Variable& p : params_)
    AL_CHECK(p.defined() && p.is_leaf(), "optimizer: parameters must be leaf Variables; got ", p);
}

void Optimizer::zero_grad() {
  for (Variable& p : params_) p.zero_grad();
}

double grad_norm(const std::vector<Variable>& params) {
  // Each gradient's sum of squares, then their sum in parameter order, whatever device each
  // gradient lives on. CUDA gradients are reduced on their device, all in one batch.
  std::vector<double> per_param(params.size(), 0.0);
  std::vector<Tensor> on_cuda;
  std::vector<size_t> cuda_index;
  for (size_t k = 0; k < params.size(); ++k) {
    const Variable& p = params[k];
    if (!p.grad().defined()) continue;
    const Tensor g = p.grad().contiguous();
    if (g.device().is_cuda()) {
      on_cuda.push_back(g);
      cuda_index.push_back(k);
      continue;
    }
    per_param[k] = dispatch_float(g.dtype(), "clip_grad_norm", [&](auto tag) {
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
  if (!on_cuda.empty()) {
#if ATTNLAB_WITH_CUDA
    const std::vector<double> sums = cuda::grad_sum_squares(on_cuda);
    for (size_t i = 0; i < sums.size(); ++i) per_param[cuda_index[i]] = sums[i];
#else
    detail::throw_error<DeviceError>("clip_grad_norm: this build has no CUDA backend; got ", on_cuda[0]);
#endif
  }
  double sq = 0.0;
  for (double s : per_param) sq += s;
  return std::sqrt(sq);
}

double clip_grad_norm(const std::vector<Variable>& params, double max_norm) {
  const double norm = grad_norm(params);
  if (std::isfinite(norm) && norm > max_norm && norm > 0) {
    const double scale = max_norm / norm;
    for (const Variable& p : params) {
      if (!p.grad().defined()) continue;
      Tensor g = p.grad();
      if (g.device().is_cuda()) {
#if ATTNLAB_WITH_CUDA
        cuda::grad_scale(g, scale);
#endif
        continue;
      }
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

// Saved state lives on the CPU (checkpoints write it from there): CUDA slots are copied over.
void save_slots(std::map<std::string, Tensor>& state, const std::string& prefix, const std::vector<Tensor>& slots) {
  for (size_t i = 0; i < slots.size(); ++i) {
    if (!slots[i].defined()) continue;
    state[prefix + std::to_string(i)] = slots[i].device().is_cpu() ? slots[i] : slots[i].to(Device::cpu());
  }
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
    // Each slot goes to its parameter's device, as a copy the optimizer owns.
    const Device device = params[i].device();
    loaded[i] = t.device() == device ? t.clone() : t.to(device);
  }
  slots = std::move(loaded);
}

}  // namespace detail

}  // namespace attnlab
