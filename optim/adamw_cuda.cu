// AdamW's update of one CUDA parameter (optim/optim_cuda.h), the maths of adamw.cpp's CPU
// update element for element, in the parameter's dtype (f32 or f64):
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  w -= step m / (sqrt(v) rc2 + eps) + decay w
// Shapes: w, g, m, v all [n] as far as the kernel cares (any shape, contiguous).
// Launch: grid min(ceil(n / 256), 65535) with a grid-stride loop, block 256, no shared memory.
// Each thread updates whole elements: reads g, m, v, w once and writes m, v, w once, so a
// parameter costs one pass (7 accesses per element) and one launch.
#include "lib/cuda/kernel.h"

#include <cmath>

#include "optim/optim_cuda.h"

namespace attnlab::cuda {

namespace {

constexpr unsigned kThreads = 256;

// The coefficients rounded to T on the host, (1 - b) included, as the CPU update rounds them.
template <typename T>
struct AdamWArgs {
  T b1, one_minus_b1, b2, one_minus_b2, step, rc2, eps, decay;
};

__device__ inline float root(float x) { return sqrtf(x); }
__device__ inline double root(double x) { return sqrt(x); }

template <typename T>
__global__ void adamw_kernel(T* w, const T* g, T* m, T* v, int64_t n, AdamWArgs<T> a) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const T gi = g[i];
    const T mi = a.b1 * m[i] + a.one_minus_b1 * gi;
    const T vi = a.b2 * v[i] + a.one_minus_b2 * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    const T wi = w[i];
    w[i] = wi - (a.step * mi / (root(vi) * a.rc2 + a.eps) + a.decay * wi);
  }
}

template <typename T>
void launch_adamw(Tensor& w, const Tensor& g, Tensor& m, Tensor& v, const AdamWCoefficients& c) {
  const T b1 = static_cast<T>(c.beta1), b2 = static_cast<T>(c.beta2);
  const AdamWArgs<T> a{b1,
                       T(1) - b1,
                       b2,
                       T(1) - b2,
                       static_cast<T>(c.step),
                       static_cast<T>(c.rc2),
                       static_cast<T>(c.eps),
                       static_cast<T>(c.decay)};
  const int64_t n = w.numel();
  if (n == 0) return;
  void (*kernel)(T*, const T*, T*, T*, int64_t, AdamWArgs<T>) = &adamw_kernel<T>;
  AL_CUDA_LAUNCH(kernel, dim3(blocks_for(n, kThreads)), dim3(kThreads), 0, w.data<T>(), g.data<T>(), m.data<T>(),
                 v.data<T>(), n, a);
}

}  // namespace

void adamw_update(Tensor& w, const Tensor& g, Tensor& m, Tensor& v, const AdamWCoefficients& c) {
  AL_CHECK_DEVICE(w.device().is_cuda() && g.device() == w.device() && m.device() == w.device() &&
                      v.device() == w.device(),
                  "adamw (cuda): parameter, gradient and state must share one CUDA device; got w=", w, ", g=", g,
                  ", m=", m, ", v=", v);
  AL_CHECK_SHAPE(g.shape() == w.shape() && m.shape() == w.shape() && v.shape() == w.shape() && w.is_contiguous() &&
                     g.is_contiguous() && m.is_contiguous() && v.is_contiguous(),
                 "adamw (cuda): w, g, m and v must be contiguous and of one shape; got w=", w, ", g=", g, ", m=", m,
                 ", v=", v);
  AL_CHECK_DTYPE(g.dtype() == w.dtype() && m.dtype() == w.dtype() && v.dtype() == w.dtype(),
                 "adamw (cuda): w, g, m and v must share a dtype; got w=", w, ", g=", g, ", m=", m, ", v=", v);
  dispatch_float(w.dtype(), "adamw (cuda)", [&](auto tag) { launch_adamw<decltype(tag)>(w, g, m, v, c); });
}

}  // namespace attnlab::cuda
