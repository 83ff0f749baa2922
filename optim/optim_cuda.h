// The optimizers' CUDA side: parameter updates and the global gradient norm on CUDA tensors,
// called by adamw.cpp, sgd.cpp and optimizer.cpp for parameters that live on a CUDA device (the
// CPU paths stay in those files). Definitions: adamw_cuda.cu, sgd_cuda.cu, grad_norm_cuda.cu,
// built into the CUDA backends only, so callers guard their calls with #if ATTNLAB_WITH_CUDA.
// No CUDA types here. Every tensor argument is contiguous, f32 or f64, and on one CUDA device.
#pragma once

#include <vector>

#include "lib/tensor.h"

namespace attnlab::cuda {

// AdamW's per-step coefficients, computed on the host in double exactly as adamw.cpp does for
// its CPU update, and rounded to the parameter's dtype once:
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//   w -= step m / (sqrt(v) rc2 + eps) + decay w
// with step = lr / (1 - beta1^t), rc2 = 1 / sqrt(1 - beta2^t), decay = lr * weight_decay (or 0).
struct AdamWCoefficients {
  double beta1, beta2, step, rc2, eps, decay;
};

// One fused pass over a parameter: updates m, v and w in place (all shaped like w, g too).
void adamw_update(Tensor& w, const Tensor& g, Tensor& m, Tensor& v, const AdamWCoefficients& c);

// SGD (sgd.h): d = g, or with momentum d = velocity = momentum velocity + g; w -= lr (d + wd w).
// `velocity` is undefined when momentum is off.
void sgd_update(Tensor& w, const Tensor& g, Tensor& velocity, double lr, double momentum, double weight_decay);

// The sum of squares of every tensor, each accumulated in double by a deterministic two-pass
// reduction (a fixed split that depends on the size only), and brought back to the host with one
// copy. The tensors share one CUDA device.
std::vector<double> grad_sum_squares(const std::vector<Tensor>& xs);

// x[i] = x[i] * scale, computed in double and rounded to x's dtype (clip_grad_norm's scaling).
void grad_scale(Tensor& x, double scale);

}  // namespace attnlab::cuda
