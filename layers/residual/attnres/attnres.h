// The routing op of Attention Residuals and Delta Attention Residuals (spec:
// shared/specs/residuals_focusft_qttt.md Part 1, sections 1.2-1.5): softmax attention over the
// depth axis, per token, with a learned pseudo-query and RMSNorm'd keys.
//
// Per token (b, t), with N sources v_i = src[i, b, t, :] in R^D:
//   rho_i = sqrt(mean_d v_i^2 + eps),  eps = 1e-6          key RMS
//   z_i   = <w, g * v_i / rho_i>                           logits (no 1/sqrt(D) scale)
//   a_i   = softmax_i(z)                                   routing weights over the sources
//   o     = sum_i a_i v_i                                  routed term
//   delta_attnres:  out = r + gate * o                     additive routing (the stream stays)
//   attnres:        out = gate * o                         replacement routing
// gate is an optional scalar (undefined = 1; zero-initialised in a converted model, so out = r).
//
// Backward (spec 1.4), G = dout, Go = gate * G, n_i = v_i / rho_i:
//   dr = G;  dgate = sum_{b,t} <G, o>
//   dz_i = a_i (<Go, v_i> - <Go, o>)
//   dw = g * s,  dg = w * s,  s = sum_{b,t} sum_i dz_i n_i
//   dv_i = a_i Go + dz_i (w * g - n_i z_i / D) / rho_i      (uses <w*g, n_i> = z_i)
//
// Shapes: sources N x [B, T, D] (the stacked form takes src [N, B, T, D]), r [B, T, D], w [D],
// g [D], gate [] or [1] -> out [B, T, D] and a [N, B, T]. a is returned as a plain tensor
// without gradient (diagnostics; the loss never depends on it directly). Saved for backward:
// the sources (by reference, never copied), w, g, gate, a and rho [N, B, T].
// dtypes: f32, f64 on the CPU; f32 on CUDA with N <= kMaxCudaSources. All inputs share a dtype
// and device; every tensor is read contiguous.
//
// Memory (spec 1.5): the model's form, attnres_route, takes the sources as a list of Variables,
// each one sublayer's output (or block sum) held once; a routing op keeps references to them
// (no stacked copy per op), so the saved activations grow linearly with depth plus O(N^2 B T)
// scalars for a and rho. The kernels read the sources through a table of pointers (by index).
//
// CPU (attnres_cpu.cpp): OpenMP over tokens; the cross-token sums (s, dgate) over fixed blocks of
// tokens added in order, so the bits do not depend on the thread count.
// CUDA (attnres_cuda.cu): a warp per token, deterministic two-pass column sums, no atomics.
// The composed reference from autograd primitives is attnres_reference / delta_attnres_reference.
#pragma once

#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"

namespace attnlab {

struct AttnResOp {
  static constexpr double kEps = 1e-6;
  // The CUDA kernels take the source pointers by value in one launch argument.
  static constexpr int64_t kMaxCudaSources = 256;
  struct Forward {
    Tensor out;  // [B, T, D]
    Tensor a;    // [N, B, T]
    Tensor rho;  // [N, B, T], saved for backward
  };
  struct Grads {
    Tensor dsrc;         // [N, B, T, D]
    Tensor dw, dg;       // [D]
    Tensor dgate;        // gate's shape, when a gate was given and need_gate
  };
  // `who` names the op in messages. r may be undefined (replacement routing), gate too (= 1).
  static void check(const char* who, const std::vector<Tensor>& src, const Tensor& r, const Tensor& w,
                    const Tensor& g, const Tensor& gate);
  // Every tensor contiguous; src[i] [B, T, D].
  static Forward forward(CpuTag, const std::vector<Tensor>& src, const Tensor& r, const Tensor& w, const Tensor& g,
                         const Tensor& gate);
  static Grads backward(CpuTag, const std::vector<Tensor>& src, const Tensor& w, const Tensor& g, const Tensor& gate,
                        const Tensor& a, const Tensor& rho, const Tensor& dout, bool need_src, bool need_wg,
                        bool need_gate);
  static Forward forward(CudaTag, const std::vector<Tensor>& src, const Tensor& r, const Tensor& w, const Tensor& g,
                         const Tensor& gate);
  static Grads backward(CudaTag, const std::vector<Tensor>& src, const Tensor& w, const Tensor& g, const Tensor& gate,
                        const Tensor& a, const Tensor& rho, const Tensor& dout, bool need_src, bool need_wg,
                        bool need_gate);

  // Samples (f64 gradcheck), parity samples (CUDA vs CPU) and misuses of each form.
  static std::vector<OpSample> samples(bool delta);
  static std::vector<OpSample> parity_samples(bool delta);
  static std::vector<OpMisuse> misuses(bool delta);
};

struct AttnResResult {
  Variable out;  // [B, T, D]
  Tensor a;      // [N, B, T], no gradient
};

// The model's form: sources stored once, routed by index. r undefined = replacement routing
// (attnres), defined = additive (delta_attnres); gate undefined = 1.
AttnResResult attnres_route(const std::vector<Variable>& sources, const Variable& r, const Variable& w,
                            const Variable& g, const Variable& gate = {});

// The stacked forms (attnlab op, tests): src [N, B, T, D].
AttnResResult delta_attnres(const Variable& src, const Variable& r, const Variable& w, const Variable& g,
                            const Variable& gate = {});
AttnResResult attnres(const Variable& src, const Variable& w, const Variable& g, const Variable& gate = {});

// The same maths composed from autograd primitives: slow, obviously right, the test oracle.
AttnResResult delta_attnres_reference(const Variable& src, const Variable& r, const Variable& w, const Variable& g,
                                      const Variable& gate = {});
AttnResResult attnres_reference(const Variable& src, const Variable& w, const Variable& g,
                                const Variable& gate = {});

}  // namespace attnlab
