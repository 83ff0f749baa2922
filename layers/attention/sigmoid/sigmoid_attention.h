// Sigmoid attention (spec: shared/specs/attention_softmax_family.md, section 2), fused.
//
//   s_ij = scale <q_i, k_j> + b_i,   P_ij = sigmoid(s_ij) on the keys j visible to query i, and
//   exactly 0 on the others (never sigmoid of a masked score),   out_i = sum_j P_ij v_j.
//   No normalisation, no row max, no log-sum-exp: each key adds its own term.
//
// The row bias b_i (SigmoidBias):
//   zero            b_i = 0 (the attention-sink study's form; row mass about n_i / 2 at init);
//   per_head        b_i = b[h], a learnable b [H] (Apple's -log n, learnt; the "sigmoid_neglogn"
//                   form of the registry, whose layer initialises b to -log of the training length);
//   neglog_visible  b_i = -log(n_i), n_i = the number of keys row i sees (row mass about 1 at init).
// Query i sits at absolute position p = S - T + i and sees exactly the keys [0, n_i):
// causal n_i = min(S, max(p + 1, p < prefix ? prefix : 0)), not causal n_i = S (common.h).
//
// Backward (P recomputed from q, k; nothing is saved but the inputs):
//   dv = P^T dout,  dP = dout v^T,  dS = dP * (P - P * P)  (0 where masked),
//   dq = scale dS k,  dk = scale dS^T q,  db[h] = sum over b, i and visible j of dS (per_head).
//
// Shapes: q [B, H, T, Dk], k [B, H, S, Dk], v [B, H, S, Dv], b [H] -> out [B, H, T, Dv];
//         dq [B, H, T, Dk], dk [B, H, S, Dk], dv [B, H, S, Dv], db [H].
// q, k, v, dout: any strides with a unit-stride last dim (views of token-major or fused-projection
// memory). out, dq, dk, dv are [B, H, *, D] views of token-major memory, as softmax's (one
// [B, T, 3, H, D] buffer for dq, dk, dv when T = S and Dk = Dv), so heads merge without copies.
// dtypes: f32, f64 on the CPU (sigmoid_attention_cpu.cpp: tiles, no [T, S] buffer); f32 on CUDA
// (sigmoid_attention_cuda.cu), Dk, Dv <= 128. b has q's dtype and device.
// Saved for backward: q, k, v (and b) as given; no out, no row statistics.
// The composed reference (matmul, add, sigmoid, a 0/1 mask, matmul) is
// sigmoid_attention_reference.
#pragma once

#include <string_view>
#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "layers/attention/common.h"

namespace attnlab {

enum class SigmoidBias { zero, per_head, neglog_visible };

struct SigmoidAttentionOp {
  struct Grads {
    Tensor dq, dk, dv, db;  // db [H]: per_head only, and only when asked for
  };
  // The op's name in messages and in the registry: "sigmoid_attention" (zero),
  // "sigmoid_neglogn_attention" (per_head), "sigmoid_neglog_visible_attention".
  static std::string_view name(SigmoidBias mode);
  // q, k, v as check_attention_inputs wants; bias [H] like q (dtype, device) when mode is
  // per_head and undefined otherwise; mask.prefix >= 0.
  static void check(const Tensor& q, const Tensor& k, const Tensor& v, SigmoidBias mode, const Tensor& bias,
                    const AttentionMask& mask);
  static Tensor forward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v, SigmoidBias mode, const Tensor& bias,
                        const AttentionMask& mask, double scale);
  static Grads backward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v, SigmoidBias mode, const Tensor& bias,
                        const Tensor& dout, const AttentionMask& mask, double scale, bool need_db);
  static Tensor forward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v, SigmoidBias mode,
                        const Tensor& bias, const AttentionMask& mask, double scale);
  static Grads backward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v, SigmoidBias mode,
                        const Tensor& bias, const Tensor& dout, const AttentionMask& mask, double scale, bool need_db);
  static std::vector<OpMisuse> misuses(SigmoidBias mode);
};

// scale <= 0 means 1 / sqrt(Dk). bias: b [H], used and differentiated only when mode is per_head
// (pass an undefined Variable otherwise; a defined one is refused rather than ignored).
Variable sigmoid_attention(const Variable& q, const Variable& k, const Variable& v, SigmoidBias mode,
                           const Variable& bias, const AttentionMask& mask = {}, double scale = 0.0);

// The same maths composed from autograd primitives: slow, obviously right, the test oracle.
Variable sigmoid_attention_reference(const Variable& q, const Variable& k, const Variable& v, SigmoidBias mode,
                                     const Variable& bias, const AttentionMask& mask = {}, double scale = 0.0);

}  // namespace attnlab
