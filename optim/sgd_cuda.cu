// SGD's update of one CUDA parameter (optim/optim_cuda.h), sgd.cpp's CPU maths element for
// element, in the parameter's dtype (f32 or f64):
//   d = g, or with momentum d = vel = mu vel + g;   w -= lr (d + wd w)
// Shapes: w, g (and vel) contiguous, one shape. Launch: grid min(ceil(n / 256), 65535) with a
// grid-stride loop, block 256, no shared memory; one thread per element.
#include "lib/cuda/kernel.h"

#include "optim/optim_cuda.h"

namespace attnlab::cuda {

namespace {

constexpr unsigned kThreads = 256;

// vel is null when momentum is off.
template <typename T>
__global__ void sgd_kernel(T* w, const T* g, T* vel, int64_t n, T lr, T mu, T wd) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    T d = g[i];
    if (vel != nullptr) d = vel[i] = mu * vel[i] + g[i];
    w[i] -= lr * (d + wd * w[i]);
  }
}

}  // namespace

void sgd_update(Tensor& w, const Tensor& g, Tensor& velocity, double lr, double momentum, double weight_decay) {
  const bool with_velocity = velocity.defined();
  AL_CHECK_DEVICE(w.device().is_cuda() && g.device() == w.device() && (!with_velocity || velocity.device() == w.device()),
                  "sgd (cuda): parameter, gradient and velocity must share one CUDA device; got w=", w, ", g=", g);
  AL_CHECK_SHAPE(g.shape() == w.shape() && w.is_contiguous() && g.is_contiguous() &&
                     (!with_velocity || (velocity.shape() == w.shape() && velocity.is_contiguous())),
                 "sgd (cuda): w, g and velocity must be contiguous and of one shape; got w=", w, ", g=", g);
  AL_CHECK_DTYPE(g.dtype() == w.dtype() && (!with_velocity || velocity.dtype() == w.dtype()),
                 "sgd (cuda): w, g and velocity must share a dtype; got w=", w, ", g=", g);
  const int64_t n = w.numel();
  if (n == 0) return;
  dispatch_float(w.dtype(), "sgd (cuda)", [&](auto tag) {
    using T = decltype(tag);
    T* vel = with_velocity ? velocity.data<T>() : nullptr;
    void (*kernel)(T*, const T*, T*, int64_t, T, T, T) = &sgd_kernel<T>;
    AL_CUDA_LAUNCH(kernel, dim3(blocks_for(n, kThreads)), dim3(kThreads), 0, w.data<T>(), g.data<T>(), vel, n,
                   static_cast<T>(lr), static_cast<T>(momentum), static_cast<T>(weight_decay));
  });
}

}  // namespace attnlab::cuda
