// Affine-scaled attention (spec: attention_softmax_family.md section 1), fused on CPU and CUDA.
//
// Per (b, h) and query row i (query i at position S - T + i sees exactly the keys [0, n_i), see
// common.h; N_i = n_i under bias_norm "visible", S under "full"):
//   z_i     = <x_{b,i}, w_a[h]> + c_a[h]                 the head's gate on the query token's state
//   alpha_i = phi(z_i)     phi = linear clip clamp(0.1 z + 0.5, 0, 1) (default) or sigmoid
//   beta_i  = (abar[h] - alpha_i) / N_i                  abar: a per-head buffer, no gradient
//   O^sm_i  = softmax attention of q_i over the keys [0, n_i) (SoftmaxAttentionOp, unchanged)
//   C_i     = sum_{j < n_i} v_j                          prefix sum of the visible values
//   out_i   = alpha_i O^sm_i + beta_i C_i                = sum_{j < n_i} (alpha_i P_ij + beta_i) v_j
// Backward (G = dout):
//   dalpha_i = <G_i, O^sm_i> - <G_i, C_i> / N_i,  dz_i = dalpha_i phi'(z_i)
//              (phi' = 0.1 strictly inside (-5, 5) and 0 at and beyond the kinks; sigmoid alpha (1 - alpha))
//   dw_a[h] = sum_{b,i} dz x_{b,i},  dc_a[h] = sum_{b,i} dz,  dx_{b,i} = sum_h dz_{b,h,i} w_a[h]
//   dq, dk, dv  = the softmax backward with upstream gradient alpha_i G_i,
//   dv_j       += sum_{i : n_i > j} beta_i G_i   (a reverse cumulative sum over queries)
//   abar gets no gradient and is never written: the layer updates its buffer after the step with
//   affine_abar_update (the EMA of spec 1.3), from the alpha this op returns.
//
// Shapes: q [B, H, T, Dk], k [B, H, S, Dk], v [B, H, S, Dv] (any strides, unit-stride last dim);
//         x [B, T, Dm] (the query tokens' hidden states), w_a [H, Dm], c_a [H] (optional), abar [H]
//         -> out [B, H, T, Dv] (a view of token-major [B, T, H, Dv] memory, like softmax's) and
//         alpha [B, H, T] (detached).
// dtypes: f32, f64 on the CPU; f32 on CUDA (Dk, Dv <= 128, the softmax kernels' limit). Every
// input has q's dtype and device.
// Saved for backward: O^sm and lse (the softmax forward's outputs), alpha, beta and phi'(z)
// [B, H, T]; C is recomputed by a scan of v. Memory is linear in T: no [T, S] buffer anywhere.
// CPU: OpenMP over (b, h) pairs for the scans and epilogues, cpu::gemm for z, dx and dw_a, every
// sum in a fixed order (bits independent of the thread count). CUDA: affine_attention_cuda.cu.
// The composed reference (autograd primitives, the [T, S] weights alpha P + beta written out) is
// affine_attention_reference.
#pragma once

#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "layers/attention/common.h"

namespace attnlab {

enum class AffinePhi { linear_clip, sigmoid };
// N_i, the divisor of the bias: the keys row i sees (visible: the row mass is abar for every row),
// or the key length S (full: the literal reading of the paper's Eq. 8).
enum class AffineBiasNorm { visible, full };

struct AffineOptions {
  AffinePhi phi = AffinePhi::linear_clip;
  AffineBiasNorm bias_norm = AffineBiasNorm::visible;
};

struct AffineAttentionOp {
  // What backward needs from forward: O^sm [B, H, T, Dv] and lse [B, H, T] of the softmax part,
  // alpha, beta and dphi = phi'(z), each [B, H, T] contiguous.
  struct Saved {
    Tensor out_sm, lse, alpha, beta, dphi;
  };
  struct Forward {
    Tensor out;  // [B, H, T, Dv], a view of [B, T, H, Dv] memory
    Saved saved;
  };
  // Undefined where not asked for. dq, dk, dv are softmax's layouts (one [B, T, 3, H, D] buffer
  // for self-attention), dx [B, T, Dm], dw_a [H, Dm], dc_a [H].
  struct Grads {
    Tensor dq, dk, dv, dx, dw_a, dc_a;
  };
  struct Needs {
    bool qkv = true, x = true, w_a = true, c_a = true;
  };
  // q, k, v as check_attention_inputs; x, w_a, c_a (may be undefined), abar as above.
  static void check(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& x, const Tensor& w_a,
                    const Tensor& c_a, const Tensor& abar, const AttentionMask& mask);
  // q, k, v with a unit-stride last dim; x, w_a, c_a, abar contiguous. scale > 0 (already resolved).
  static Forward forward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& x, const Tensor& w_a,
                         const Tensor& c_a, const Tensor& abar, const AttentionMask& mask, const AffineOptions& options,
                         double scale);
  static Grads backward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& x, const Tensor& w_a,
                        const Saved& saved, const Tensor& dout, const AttentionMask& mask, const AffineOptions& options,
                        double scale, const Needs& needs);
  static Forward forward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& x, const Tensor& w_a,
                         const Tensor& c_a, const Tensor& abar, const AttentionMask& mask, const AffineOptions& options,
                         double scale);
  static Grads backward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& x, const Tensor& w_a,
                        const Saved& saved, const Tensor& dout, const AttentionMask& mask, const AffineOptions& options,
                        double scale, const Needs& needs);
  // Small f64 samples (gradcheck), larger ones for the CUDA parity test, misuses.
  static std::vector<OpSample> samples();
  static std::vector<OpSample> parity_samples();
  static std::vector<OpMisuse> misuses();
};

struct AffineAttentionResult {
  Variable out;  // [B, H, T, Dv]
  Tensor alpha;  // [B, H, T], detached (its own copy): for the EMA update and diagnostics
};

// x [B, T, Dm] (T = q's T), w_a [H, Dm], c_a [H] (undefined: no bias), abar [H] (read only, no
// gradient). scale <= 0 means 1 / sqrt(Dk).
AffineAttentionResult affine_attention(const Variable& q, const Variable& k, const Variable& v, const Variable& x,
                                       const Variable& w_a, const Variable& c_a, const Tensor& abar,
                                       const AttentionMask& mask = {}, const AffineOptions& options = {},
                                       double scale = 0.0);

// The same maths composed from autograd primitives: slow, obviously right, the test oracle.
AffineAttentionResult affine_attention_reference(const Variable& q, const Variable& k, const Variable& v,
                                                 const Variable& x, const Variable& w_a, const Variable& c_a,
                                                 const Tensor& abar, const AttentionMask& mask = {},
                                                 const AffineOptions& options = {}, double scale = 0.0);

// The EMA of spec 1.3: abar_h <- rho abar_h + (1 - rho) mean over (b, t) of alpha[b, h, t].
// abar [H], alpha [B, H, T] (same dtype and device) -> a new [H] tensor; abar is not modified.
Tensor affine_abar_update(const Tensor& abar, const Tensor& alpha, double rho = 0.9);

}  // namespace attnlab
