// Local linear attention (LLA): attention as a local linear regression of values on keys
// around each query, evaluated at the query (spec: shared/specs/attention_kda_lla.md, Part B).
//
// Per (b, h), query i at absolute position p_i = S - T + i sees the keys [0, n_i) (AttentionMask,
// common.h); sums over j run over those keys; c = scale (1 / sqrt(Dk) unless given):
//   w_ij = exp(c q_i.k_j - m_i)                 m_i = max_j c q_i.k_j (any shift: it cancels)
//   omega_i = sum_j w_ij,  mu_i = sum_j w_ij (k_j - q_i)                                  [Dk]
//   Sigma_i = sum_j w_ij (k_j - q_i)(k_j - q_i)^T + lam omega_i I                         [Dk, Dk] SPD
//   rho_i = Sigma_i^-1 mu_i,  delta_i = omega_i - mu_i.rho_i
//   c_ij = w_ij (1 - rho_i.(k_j - q_i)) / delta_i,   out_i = sum_j c_ij v_j
// lam -> infinity gives softmax attention; the first position gives out_0 = v_0.
// Backward: implicit differentiation of the solve (spec B4), exact, including the ridge's
// dependence on omega (d omega = -b - lam u.rho) and dlam = -sum_i omega_i u_i.rho_i. With
// flashlla_grad = true the ridge lam omega_i is treated as a constant in the backward (FlashLLA's
// published gradient, dlam then 0): kept for reproducing that code, off by default.
//
// Shapes: q [B, H, T, Dk], k [B, H, S, Dk], v [B, H, S, Dv], lam [1] (> 0) -> out [B, H, T, Dv];
// saved for backward: q, k, v, lam, out, and per row m, omega, delta [B, H, T], rho [B, H, T, Dk].
// dtypes: f32, f64 on the CPU; f32 on CUDA with Dk <= 64, Dv <= 128. lam shares q's dtype and
// device.
// CPU: per (b, h) and query tile, Sigma is built for the tile's rows only (never for all T rows
// at once) and solved by Cholesky; OpenMP over (b, h, query tile), bits independent of the thread
// count. CUDA: deterministic, no float atomics.
// The composed reference from autograd primitives is lla_attention_reference (exact solves).
#pragma once

#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "layers/attention/common.h"

namespace attnlab {

struct LlaAttentionOp {
  static constexpr double kDefaultLambda = 10.0;
  struct Forward {
    Tensor out;                 // [B, H, T, Dv]
    Tensor m, omega, delta;     // [B, H, T]
    Tensor rho;                 // [B, H, T, Dk]
  };
  struct Grads {
    Tensor dq, dk, dv, dlam;  // dlam [1]
  };
  static void check(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lam, const AttentionMask& mask);
  // lam [1] contiguous, its value > 0; scale already resolved (> 0).
  static Forward forward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lam,
                         const AttentionMask& mask, double scale);
  static Grads backward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lam,
                        const Forward& saved, const Tensor& dout, const AttentionMask& mask, double scale,
                        bool flashlla_grad);
  static Forward forward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lam,
                         const AttentionMask& mask, double scale);
  static Grads backward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lam,
                        const Forward& saved, const Tensor& dout, const AttentionMask& mask, double scale,
                        bool flashlla_grad);
  static std::vector<OpSample> samples();
  static std::vector<OpSample> parity_samples();
  static std::vector<OpMisuse> misuses();
};

// The solves' conditioning on one call (diagnostics): over the query rows, the ratio
// delta_i / omega_i in (0, 1] (small = the query extrapolates beyond its keys) and the condition
// number of Sigma_i / omega_i.
struct LlaConditioning {
  double delta_ratio_min = 0.0, delta_ratio_mean = 0.0;
  double cond_mean = 0.0, cond_max = 0.0;
};

// scale <= 0 means 1 / sqrt(Dk).
Variable lla_attention(const Variable& q, const Variable& k, const Variable& v, const Variable& lam,
                       const AttentionMask& mask = {}, double scale = 0.0, bool flashlla_grad = false);
Variable lla_attention_reference(const Variable& q, const Variable& k, const Variable& v, const Variable& lam,
                                 const AttentionMask& mask = {}, double scale = 0.0, bool flashlla_grad = false);
// No graph; CPU or CUDA inputs (computed on the CPU in f64).
LlaConditioning lla_conditioning(const Tensor& q, const Tensor& k, const Tensor& lam, const AttentionMask& mask = {},
                                 double scale = 0.0);

}  // namespace attnlab
