// Softmax attention, fused (flash-style) on the CPU.
//
//   out[b, h, i] = sum_j P[i, j] v[b, h, j],  P[i, :] = softmax_j(scale * <q_i, k_j>) over the
//   keys j visible to query i under the mask (AttentionMask, query i at position S - T + i).
//
// Shapes: q [B, H, T, Dk], k [B, H, S, Dk], v [B, H, S, Dv] -> out [B, H, T, Dv];
//         lse [B, H, T] (log-sum-exp of each row's scaled scores), saved for backward.
// dtypes: f32, f64 (CPU); f32 on CUDA (softmax_attention_cuda.cu), with Dk, Dv <= 128.
// Forward: tiles of queries x keys with an online softmax, O(T) extra memory per (b, h), never
// the [T, S] matrix; tiles wholly above the causal diagonal are skipped.
// Backward recomputes P from q, k and lse: D_i = <dout_i, out_i>, dS = P * (dout v^T - D),
// dq = scale dS k, dk = scale dS^T q, dv = P^T dout.
// Layouts: q, k, v, dout may have any strides with a unit-stride last dim (so q, k, v can be views
// of a fused [B, T, 3C] projection, see split_heads). out, dq, dk, dv are [B, H, *, D] views of
// token-major memory ([B, T, H, D]; for self-attention dq, dk, dv share one [B, T, 3, H, D]
// buffer), so that merging heads into [B, T, C] and split_heads' backward need no copy.
// CPU: OpenMP over (b, h) pairs; CUDA: a block per (b, h, query tile), and per key tile for dk, dv
// (deterministic: no atomics). The composed reference (matmul, mask, softmax, matmul from autograd
// primitives) is softmax_attention_reference.
#pragma once

#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "layers/attention/common.h"

namespace attnlab {

struct SoftmaxAttentionOp {
  struct Forward {
    Tensor out, lse;
  };
  struct Grads {
    Tensor dq, dk, dv;
  };
  static void check(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask);
  static Forward forward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                         double scale);
  static Grads backward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor& dout, const AttentionMask& mask, double scale);
  static Forward forward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                         double scale);
  static Grads backward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor& dout, const AttentionMask& mask, double scale);
  static std::vector<OpSample> samples();
  // Larger samples for the CUDA parity test (several tiles, ragged edges, every tile shape).
  static std::vector<OpSample> parity_samples();
  static std::vector<OpMisuse> misuses();
};

// scale <= 0 means 1 / sqrt(Dk).
Variable softmax_attention(const Variable& q, const Variable& k, const Variable& v, const AttentionMask& mask = {},
                           double scale = 0.0);

// The same maths composed from autograd primitives: slow, obviously right, the test oracle.
Variable softmax_attention_reference(const Variable& q, const Variable& k, const Variable& v,
                                     const AttentionMask& mask = {}, double scale = 0.0);

}  // namespace attnlab
