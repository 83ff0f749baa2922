// Pure infinite self-attention (InfSA), causal form with a prefix Frobenius normaliser
// (spec: shared/specs/attention_softmax_family.md sections 3.2, 3.3, 3.5, 3.6).
//
// Per (b, h), query i at absolute position p_i = S - T + i sees the keys [0, n_i) (AttentionMask,
// common.h), and the query rows i' whose positions are visible to it, i.e. p_i' < n_i (under a
// plain causal mask i' <= i; not causal: every row, the paper's global form):
//   A_ij = relu(c <q_i, k_j>) for j < n_i, else 0          c = 1 / sqrt(Dk) unless given
//   r_i  = sum_j A_ij^2                                      row energy
//   R_i  = r0 + sum_{i' : p_i' < n_i} r_i'                   prefix energy (r0: rows before query 0)
//   F_i  = sqrt(R_i + eps^2),  eps = 1e-6
//   U_i  = sum_j A_ij v_j,     out_i = gamma_h U_i / F_i,    gamma_h = sigmoid(theta_h)
// so sqrt(R_i) is the Frobenius norm of the block of scores row i may see, and no row's
// normaliser depends on a later token. The op also returns r = r0 + sum_i r_i, the carried
// energy after the last query row: a second call over the following positions with r0 = r (or a
// KV-cache decode step) continues exactly where this one stopped.
//
// Backward (spec 3.5, with the reverse scan generalised to the visibility rule):
//   delta_i = <dout_i, out_i>,  dU_i = gamma dout_i / F_i,  dR_i = -delta_i / (2 F_i^2),
//   dr_i' = sum_{i : p_i' < n_i} dR_i                        (a reverse scan over rows)
//   dA_ij = <dU_i, v_j> + 2 A_ij dr_i,  dS_ij = dA_ij [A_ij > 0]
//   dq = c dS k,  dk = c dS^T q,  dv = A^T dU,  dtheta_h = (1 - gamma_h) sum_{b, i} delta_i.
// r0 gets no gradient (it is carried state, like a KV cache).
//
// Shapes: q [B, H, T, Dk], k [B, H, S, Dk], v [B, H, S, Dv], theta [H], r0 [B, H] (optional:
// undefined means zeros) -> out [B, H, T, Dv], r [B, H]; saved for backward: q, k, v, theta,
// out and F [B, H, T] (the normaliser of each row).
// dtypes: f32, f64 on the CPU; f32 on CUDA (infsa_attention_cuda.cu) with Dk, Dv <= 128. theta
// and r0 share q's dtype and device.
// Layouts: q, k, v, dout may have any strides with a unit-stride last dim; out, dq, dk, dv are
// [B, H, *, D] views of token-major memory, as softmax_attention's are.
// CPU: flash-style tiles, OpenMP over (b, h) pairs, memory linear in T (never a [T, S] buffer).
// CUDA: a block per (b, h, query tile) (and per key tile for dk, dv), deterministic, no atomics.
// The composed reference from autograd primitives is infsa_attention_reference.
#pragma once

#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "layers/attention/common.h"

namespace attnlab {

struct InfsaAttentionOp {
  static constexpr double kEps = 1e-6;
  struct Forward {
    Tensor out;  // [B, H, T, Dv]
    Tensor F;    // [B, H, T]: sqrt(R_i + eps^2), saved for backward
    Tensor r;    // [B, H]: r0 + sum_i r_i, the energy to carry into the next call
  };
  struct Grads {
    Tensor dq, dk, dv, dtheta;
  };
  // Shapes, dtypes and devices of every input; r0 may be undefined.
  static void check(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& theta, const AttentionMask& mask,
                    const Tensor& r0);
  // theta [H] and r0 [B, H] contiguous (r0 may be undefined); scale already resolved (> 0).
  static Forward forward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& theta,
                         const AttentionMask& mask, double scale, const Tensor& r0);
  static Grads backward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& theta,
                        const Tensor& out, const Tensor& F, const Tensor& dout, const AttentionMask& mask,
                        double scale);
  static Forward forward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& theta,
                         const AttentionMask& mask, double scale, const Tensor& r0);
  static Grads backward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& theta,
                        const Tensor& out, const Tensor& F, const Tensor& dout, const AttentionMask& mask,
                        double scale);
  // Small f64 samples (gradcheck), larger ones for the CUDA parity test, and misuses.
  static std::vector<OpSample> samples();
  static std::vector<OpSample> parity_samples();
  static std::vector<OpMisuse> misuses();
};

struct InfsaResult {
  Variable out;  // [B, H, T, Dv]
  Tensor r;      // [B, H]: R after the last query row (no gradient)
};

// scale <= 0 means 1 / sqrt(Dk); r0 undefined means no energy before query 0.
InfsaResult infsa_attention(const Variable& q, const Variable& k, const Variable& v, const Variable& theta,
                            const AttentionMask& mask = {}, double scale = 0.0, const Tensor& r0 = {});

// The same maths composed from autograd primitives: slow, obviously right, the test oracle.
InfsaResult infsa_attention_reference(const Variable& q, const Variable& k, const Variable& v,
                                      const Variable& theta, const AttentionMask& mask = {}, double scale = 0.0,
                                      const Tensor& r0 = {});

}  // namespace attnlab
