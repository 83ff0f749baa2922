// Kimi Delta Attention (KDA) core: the gated delta rule with a per-channel decay
// (spec: shared/specs/attention_kda_lla.md, Part A, sections A3-A8).
//
// Per (b, h), with s = scale (1 / sqrt(Dk) unless given), alpha_t = exp(g_t) in (0, 1]^Dk:
//   St_t  = Diag(alpha_t) S_{t-1}                        decay first
//   e_t   = v_t - St_t^T k_t                             the delta-rule error on the decayed state
//   S_t   = St_t + beta_t k_t e_t^T                      S_t [Dk, Dv], S_{-1} = s0 (zeros if undefined)
//   out_t = S_t^T (s q_t)                                the readout sees the token's own write
// and the op returns the final state S_{T-1} (a second call with s0 = state continues exactly).
// q and k are taken as given (the mixer L2-normalises them), g is the log-decay (<= 0 in a model,
// any value in a test), beta the write strength after the sigmoid.
//
// Two forms of the same function:
//   kda_attention            chunkwise-parallel (section A6, WY representation / UT transform,
//                            chunk 64 on the CPU, triangular inverse in the input's dtype with f32
//                            at least), backward section A7 recomputing the chunk quantities;
//   kda_attention_recurrent  the token-by-token recurrence (A4) with its own hand-written
//                            backward through time (A5), states checkpointed every 64 steps.
// Both take dstate (the gradient of the returned state) as well as dout: the state is a
// differentiable output, so a test-time-training loop or a truncated-BPTT chain can use it.
// kda_attention_reference composes the recurrence from autograd primitives (slow, the oracle).
//
// Backward (A5): dq_t, dk_t, dv_t, dg_t, dbeta_t and ds0 = dL/dS_{-1}; every input differentiable.
//
// Shapes: q, k [B, H, T, Dk], v [B, H, T, Dv], g [B, H, T, Dk], beta [B, H, T],
// s0 [B, H, Dk, Dv] (optional) -> out [B, H, T, Dv], state [B, H, Dk, Dv]. No mask: the op is
// causal by construction and there is no S != T (the state is the cache). Any T >= 1, any
// chunk remainder.
// dtypes: f32, f64 on the CPU (f32 accumulates in f32; the WY inverse in f32 as the spec asks);
// f32 on CUDA with Dk, Dv <= 128. All inputs share q's dtype and device.
// Layouts: q, k, v, g, dout may have any strides with a unit-stride last dim; beta, s0 and dstate
// are packed by the wiring; outputs are contiguous.
// CPU: OpenMP over (b, h) pairs (lib/cpu/parallel.h), bits independent of the thread count,
// memory linear in T. CUDA: deterministic, no float atomics.
// Nothing is saved for backward but the inputs: the backward recomputes the gate cumsums, the
// chunk matrices and the chunk-start states (fla's default recompute policy, spec A7).
#pragma once

#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"

namespace attnlab {

struct KdaAttentionOp {
  static constexpr int64_t kChunk = 64;  // CPU chunk length (spec A6)
  struct Forward {
    Tensor out;    // [B, H, T, Dv]
    Tensor state;  // [B, H, Dk, Dv]: S after the last token
  };
  struct Grads {
    Tensor dq, dk, dv, dg, dbeta, ds0;  // ds0 [B, H, Dk, Dv] always (zeros when s0 was undefined)
  };
  // Shapes, dtypes and devices of every input (s0 may be undefined); ShapeError etc. naming "kda".
  static void check(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& beta,
                    const Tensor& s0);
  // Chunkwise form. beta [B, H, T] and s0 [B, H, Dk, Dv] contiguous (s0 may be undefined);
  // dstate may be undefined (zeros). scale already resolved (> 0).
  static Forward forward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                         const Tensor& beta, const Tensor& s0, double scale);
  static Grads backward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                        const Tensor& beta, const Tensor& s0, const Tensor& dout, const Tensor& dstate,
                        double scale);
  static Forward forward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                         const Tensor& beta, const Tensor& s0, double scale);
  static Grads backward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                        const Tensor& beta, const Tensor& s0, const Tensor& dout, const Tensor& dstate,
                        double scale);
  // Token-by-token form (same contract), CPU only.
  static Forward forward_recurrent(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                                   const Tensor& beta, const Tensor& s0, double scale);
  static Grads backward_recurrent(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                                  const Tensor& beta, const Tensor& s0, const Tensor& dout, const Tensor& dstate,
                                  double scale);
  static std::vector<OpSample> samples();
  static std::vector<OpSample> parity_samples();
  static std::vector<OpMisuse> misuses();
};

struct KdaResult {
  Variable out;    // [B, H, T, Dv]
  Variable state;  // [B, H, Dk, Dv], differentiable
};

// scale <= 0 means 1 / sqrt(Dk); s0 undefined means a zero initial state (then no ds0).
KdaResult kda_attention(const Variable& q, const Variable& k, const Variable& v, const Variable& g,
                        const Variable& beta, const Variable& s0 = {}, double scale = 0.0);
KdaResult kda_attention_recurrent(const Variable& q, const Variable& k, const Variable& v, const Variable& g,
                                  const Variable& beta, const Variable& s0 = {}, double scale = 0.0);
KdaResult kda_attention_reference(const Variable& q, const Variable& k, const Variable& v, const Variable& g,
                                  const Variable& beta, const Variable& s0 = {}, double scale = 0.0);

}  // namespace attnlab
