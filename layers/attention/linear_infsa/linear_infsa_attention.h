// Causal linear infinite self-attention (linear-InfSA, form (B) of specs/attention_softmax_family.md
// section 3.8): causal linear attention whose query is the running energy-weighted mean query.
//
// Per (b, h), query i at absolute position p_i = S - T + i (glossary in layers/attention/common.h):
//   q~_i = c q_i, k~_j = c k_j                          c = scale, or 1 / sqrt(Dk)
//   n_i  = ||q~_i||                                     the query's energy
//   P_i  = p0 + sum_{s <= i} n_s q~_s                   N_i = n0 + sum_{s <= i} n_s
//   qbar_i = P_i / N_i  (0 where N_i <= 0)              the running energy-weighted mean query
//   f_i  = relu(qbar_i),  g_j = relu(k~_j)              phi = relu, elementwise
//   A_ij = <f_i, g_j> for j <= p_i                      (keys by absolute position)
//   num_i = sum_j A_ij v_j,  den_i = sum_j A_ij         (= f_i^T S_i, f_i^T z_i with the states
//                                                        S_i = sum_{j <= p_i} g_j v_j^T, z_i = sum g_j)
//   out_i = gamma_h num_i / (den_i + eps),  gamma_h = sigmoid(theta_h),  eps = 1e-6.
// p0, n0 carry the query-side prefix of the rows before the first query (zeros when absent); the op
// returns P_{T-1}, N_{T-1} as p, n, so running positions [0, S - T) and then [S - T, S) with the
// first call's p, n as p0, n0 equals one call over [0, S). A zero query has n_s = 0 and adds nothing.
//
// Shapes: q [B, H, T, Dk], k [B, H, S, Dk], v [B, H, S, Dv], theta [H], p0 [B, H, Dk], n0 [B, H]
//         -> out [B, H, T, Dv], p [B, H, Dk], n [B, H] (no gradient), den [B, H, T] (saved).
// Masks: the plain causal mask only (AttentionMask{causal = true, prefix = 0}); others are a
// ConfigError. p0 and n0 get no gradient; theta does: dtheta_h = (1 - gamma_h) sum_{b,i} <dout_i, out_i>.
// dtypes: f32, f64 on the CPU; f32 on CUDA (linear_infsa_attention_cuda.cu), Dk, Dv <= 128.
// Fused CPU kernel (linear_infsa_attention_cpu.cpp): chunks of 64 queries, intra-chunk
// (F G^T o M) V plus F S_prev with the state S [Dk, Dv], z [Dk] carried across chunks: O(T C D + T D^2)
// time and memory linear in T per (b, h). Backward: the chunked linear-attention backward (a forward
// pass saving S, z at each chunk start, then a reverse pass carrying dS, dz that gives dqbar, dk, dv)
// and then the prefix-mean chain rule (reverse scans gP_s = sum_{i >= s} dqbar_i / N_i, gN_s = -sum_{i >= s} <dqbar_i, qbar_i> / N_i,
// dq~_s = n_s gP_s + (<gP_s, q~_s> + gN_s) q~_s / n_s).
// Saved for backward: q, k, v, theta, p0, n0, out and den; the prefix mean is recomputed.
// The composed reference (the exact quadratic [T, S] form from autograd primitives, qbar from
// cumsum) is linear_infsa_reference.
#pragma once

#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "layers/attention/common.h"

namespace attnlab {

struct LinearInfsaAttentionOp {
  static constexpr double kEps = 1e-6;
  struct Forward {
    Tensor out, den, p, n;
  };
  struct Grads {
    Tensor dq, dk, dv, dtheta;
  };
  // p0, n0 may be undefined (zeros).
  static void check(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& theta, const AttentionMask& mask,
                    const Tensor& p0, const Tensor& n0);
  static Forward forward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& theta,
                         const Tensor& p0, const Tensor& n0, double scale);
  static Grads backward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& theta,
                        const Tensor& p0, const Tensor& n0, const Tensor& out, const Tensor& den, const Tensor& dout,
                        double scale);
  static Forward forward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& theta,
                         const Tensor& p0, const Tensor& n0, double scale);
  static Grads backward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& theta,
                        const Tensor& p0, const Tensor& n0, const Tensor& out, const Tensor& den, const Tensor& dout,
                        double scale);
};

struct LinearInfsaResult {
  Variable out;
  Tensor p, n;  // p [B, H, Dk], n [B, H]: the carried query prefix after the last row (no gradient)
};

// scale <= 0 means 1 / sqrt(Dk). p0 [B, H, Dk], n0 [B, H] may be left undefined (zeros).
LinearInfsaResult linear_infsa_attention(const Variable& q, const Variable& k, const Variable& v,
                                         const Variable& theta, const AttentionMask& mask = {}, double scale = 0.0,
                                         const Tensor& p0 = {}, const Tensor& n0 = {});

// The same maths composed from autograd primitives (the quadratic [T, S] score matrix, masked,
// row sums, division; qbar from cumsum): slow, obviously right, the test oracle.
LinearInfsaResult linear_infsa_reference(const Variable& q, const Variable& k, const Variable& v,
                                         const Variable& theta, const AttentionMask& mask = {}, double scale = 0.0,
                                         const Tensor& p0 = {}, const Tensor& n0 = {});

// Form (A) of the same spec section, the exact prefix form (quadratic; attention op
// "linear_infsa_prefix"): the same qbar, scored against each key through one relu,
//   e_ij = relu(<qbar_i, k~_j>) for j <= p_i,  Z_i = sum_j e_ij,  U_i = sum_j e_ij v_j,
//   out_i = gamma_h U_i / (Z_i + eps).
// Backward (spec 3.8 (A)): dU_i = gamma dout_i / (Z_i + eps), dZ_i = -<dout_i, out_i> / (Z_i + eps),
// ds_ij = (<dU_i, v_j> + dZ_i) [<qbar_i, k~_j> > 0], dqbar = ds k~, dk~ = ds^T qbar, dv = e^T dU, then
// the same prefix-mean chain rule. Shapes, extras, carried p, n and masks as above; saved: q, k, v,
// theta, p0, n0, out and Z [B, H, T]. Fused CPU kernel (f32, f64): 64 x 64 query x key tiles, no
// [T, S] buffer, the causal diagonal tile in 12-row blocks; FA2-like backward (5 tile products).
// CPU only (no CUDA kernels).
struct LinearInfsaPrefixOp {
  static void check(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& theta, const AttentionMask& mask,
                    const Tensor& p0, const Tensor& n0);
  // out, den (= Z), p, n.
  static LinearInfsaAttentionOp::Forward forward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                 const Tensor& theta, const Tensor& p0, const Tensor& n0, double scale);
  static LinearInfsaAttentionOp::Grads backward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                const Tensor& theta, const Tensor& p0, const Tensor& n0,
                                                const Tensor& out, const Tensor& den, const Tensor& dout, double scale);
};

LinearInfsaResult linear_infsa_prefix_attention(const Variable& q, const Variable& k, const Variable& v,
                                                const Variable& theta, const AttentionMask& mask = {},
                                                double scale = 0.0, const Tensor& p0 = {}, const Tensor& n0 = {});

// Form (A) composed from autograd primitives: relu(qbar (c k)^T) as a [T, S] matrix, masked, row
// sums, division.
LinearInfsaResult linear_infsa_prefix_reference(const Variable& q, const Variable& k, const Variable& v,
                                                const Variable& theta, const AttentionMask& mask = {},
                                                double scale = 0.0, const Tensor& p0 = {}, const Tensor& n0 = {});

}  // namespace attnlab
