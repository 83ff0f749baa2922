// CUDA forward and backward of the fused sigmoid attention, f32, on CUDA cores: the tile kernels
// of attention_tiles_cuda.h with sigmoid as the score function (SigmoidFwd, SigmoidBwd). Unlike
// softmax there is no row max, no rescaling, no row sum, no log-sum-exp and no D_i pass.
//
// Maths, per (b, h) (glossary in layers/attention/common.h). Query i sits at position p = S - T + i
// and sees exactly the keys [0, n_i): causal n_i = min(S, p + 1), or min(S, max(p + 1, prefix))
// when p < prefix (a bidirectional prefix); not causal n_i = S. n_i >= 1 and never decreases with i.
//   forward   s_ij = scale <q_i, k_j> + b_i,  b_i = 0, b[h] (per_head) or -log n_i (neglog_visible);
//             P_ij = sigmoid(s_ij) for j < n_i and exactly 0 otherwise (a masked score is never
//             passed to sigmoid); out_i = sum_j P_ij v_j. Each key tile's terms are just added.
//   backward  P recomputed from q, k; dP_ij = <dout_i, v_j>, dS = dP * (P - P * P) (0 where masked),
//             dq_i = scale sum_j dS_ij k_j,  dk_j = scale sum_i dS_ij q_i,  dv_j = sum_i P_ij dout_i,
//             db[h] = sum over b, i, j of dS_ij (per_head only).
// sigmoid(x) is 1 / (1 + e^-x) for x >= 0 and e^x / (1 + e^x) for x < 0: e^ never overflows.
//
// Shapes: q [B, H, T, Dk], k [B, H, S, Dk], v [B, H, S, Dv], dout [B, H, T, Dv]: any strides with
// a unit-stride last dim. out [B, H, T, Dv], dq, dk, dv: [B, H, *, D] views of token-major memory
// ([B, T, H, D]; one [B, T, 3, H, D] buffer for dq, dk, dv when T = S and Dk = Dv), exactly as the
// CPU op allocates them. b [H] and db [H] contiguous; the scratch row sums of dS [B, H, T]
// contiguous. f32 only; Dk, Dv <= 128; f32 accumulation (the db reduction in double).
//
// Launch shapes (tile kernels: see attention_tiles_cuda.h; 128 threads, a block per query tile in
// forward and dq, per key tile in dk/dv; smem for Dk = Dv = 32 / 64 / 128):
//   forward  the tile forward: 41984 / 41728 / 44480 B.
//   dq       the tile dq: 33792 / 37504 / 42880 B.
//   dk, dv   the tile dk/dv, no per-query statistics in shared memory: 42240 / 41728 / 44480 B.
//   db       grid H, 32 threads (per_head and only when db is wanted): one warp per head.
//
// What each thread does for the sigmoid (RT own rows, columns split 8 ways):
//   forward: writes sigmoid(scale s + b_i) for visible keys and 0 for masked ones to its warp's P
//     rows; out is the accumulated P V, unscaled.
//   dq, dk, dv: P as in forward, dS = dP (P - P^2) (both 0 where masked); in dq the lane's partial
//     row sums of dS are reduced over the 8 lanes and lane cg = 0 writes them when db is wanted.
//   db: lane l sums the row sums of head h at (b, i) = l, l + 32, ... in row-major order (double),
//     then the warp adds its 32 partial sums in a fixed xor tree; lane 0 writes db[h].
//
// Determinism: no atomics; every output element is written by one thread, every sum runs in a
// fixed order (the xor-shuffle trees included), so results do not depend on scheduling.
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "layers/attention/attention_tiles_cuda.h"
#include "layers/attention/sigmoid/sigmoid_attention.h"
#include "lib/cuda/kernel.h"
#include "lib/cuda/tensor_kernels.h"
#include "lib/error.h"

namespace attnlab {

namespace {

using namespace attention_cuda;

__device__ inline float sigmoid_of(float x) {
  if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
  const float e = expf(x);
  return e / (1.0f + e);
}

// The bias form, shared by the forward and backward policies.
struct SigmoidScore {
  int neglog;         // b_i = -log n_i
  const float* bias;  // b [H] (per_head), else null

  // b_i of a row of head h that sees n >= 1 keys (-log n rounded from double, as on the CPU).
  __device__ __forceinline__ float row_bias(int h, int n) const {
    if (neglog) return n > 0 ? static_cast<float>(-log(static_cast<double>(n))) : 0.0f;
    return bias ? bias[h] : 0.0f;
  }
};

// Forward (attention_tiles_cuda.h's forward policy): P = sigmoid(scale s + b_i), out = P V.
struct SigmoidFwd : SigmoidScore {
  struct Row {
    float rb;  // b_i
  };
  __device__ __forceinline__ Row fwd_row(int h, int n) const { return {row_bias(h, n)}; }

  template <int KT, int DC>
  __device__ __forceinline__ void fwd_scores(Row& st, float (&s)[KT], float (&)[DC], float* p_row, int j0, int n,
                                             int cg, float scale) const {
    AL_UNROLL
    for (int c = 0; c < KT; ++c) p_row[cg + 8 * c] = j0 + cg + 8 * c < n ? sigmoid_of(s[c] * scale + st.rb) : 0.0f;
  }
  template <int DC>
  __device__ __forceinline__ void fwd_finish(Row&, float (&)[DC], bool, int64_t, int) const {}
};

// Backward (attention_tiles_cuda.h's backward policy): dS = dP (P - P^2); the rows' dS sums for db.
struct SigmoidBwd : SigmoidScore {
  float* ds_rows;  // [B, H, T]: sum_j dS_ij, written when db is wanted, else null

  struct Query {
    float rb;  // b_i
  };
  struct Stats {};  // b_i comes from n_i: nothing in shared memory
  static size_t stats_smem(int) { return 0; }
  __device__ static Stats carve_stats(simt::SmemCarver&, int) { return {}; }
  __device__ __forceinline__ void load_stats(const Stats&, int64_t, int, int) const {}
  __device__ __forceinline__ Query query(int h, int64_t, bool, int n) const { return {row_bias(h, n)}; }
  __device__ __forceinline__ Query query(const Stats&, int h, int, int n) const { return {row_bias(h, n)}; }
  __device__ __forceinline__ void grad(const Query& q, float s, float dp, bool visible, float scale, float& p,
                                       float& ds) const {
    p = 0.0f, ds = 0.0f;
    if (visible) {
      p = sigmoid_of(s * scale + q.rb);
      ds = dp * (p - p * p);
    }
  }
  __device__ __forceinline__ void dq_finish(float ds_partial, bool valid, int64_t row, int cg) const {
    const float row_sum = group_sum(ds_partial);  // every lane: the shuffles run in whole warps
    if (valid && ds_rows && cg == 0) ds_rows[row] = row_sum;
  }
};

// ---- backward: db[h] = sum over b and i of the rows' dS sums (a warp per head) ------------------

struct DbArgs {
  const float* ds_rows;  // [B, H, T]
  float* db;             // [H]
  int B, H, T;
};

__global__ void sigmoid_attention_bwd_db_kernel(DbArgs a) {
  const int h = static_cast<int>(blockIdx.x), lane = static_cast<int>(threadIdx.x);
  const int64_t count = static_cast<int64_t>(a.B) * a.T;
  double acc = 0.0;
  for (int64_t e = lane; e < count; e += 32) {
    const int64_t b = e / a.T, i = e % a.T;
    acc += a.ds_rows[(b * a.H + h) * a.T + i];
  }
  acc = warp_sum(acc);
  if (lane == 0) a.db[h] = static_cast<float>(acc);
}

// ---- host side ----------------------------------------------------------------------------------

// `bias` is the contiguous b [H] of the per-head form (else undefined).
SigmoidScore score_of(SigmoidBias mode, const Tensor& bias) {
  return {mode == SigmoidBias::neglog_visible ? 1 : 0, mode == SigmoidBias::per_head ? bias.data<float>() : nullptr};
}

}  // namespace

Tensor SigmoidAttentionOp::forward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v, SigmoidBias mode,
                                   const Tensor& bias, const AttentionMask& mask, double scale) {
  check(q, k, v, mode, bias, mask);
  check_tile_inputs(name(mode), q, k, v);
  const Tensor bc = mode == SigmoidBias::per_head ? bias.contiguous() : Tensor();
  const Geom g = tile_geom(q, k, v, mask, scale);
  const int64_t B = q.size(0), H = q.size(1);
  Tensor out = empty_token_major(B, H, g.T, g.Dv, q.device());
  if (B * H * g.T == 0) return out;
  launch_attention_fwd(FwdArgs<SigmoidFwd>{heads(q), heads(k), heads(v), heads_out(out), g, {score_of(mode, bc)}},
                       B * H);
  return out;
}

SigmoidAttentionOp::Grads SigmoidAttentionOp::backward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                       SigmoidBias mode, const Tensor& bias, const Tensor& dout,
                                                       const AttentionMask& mask, double scale, bool need_db) {
  const std::string_view op = name(mode);
  check_tile_inputs(op, q, k, v);
  const Tensor bc = mode == SigmoidBias::per_head ? bias.contiguous() : Tensor();
  const Geom g = tile_geom(q, k, v, mask, scale);
  const int64_t B = q.size(0), H = q.size(1);
  AL_ASSERT(unit_last_stride(dout) && dout.shape() == Shape({B, H, g.T, g.Dv}) && dout.dtype() == q.dtype() &&
                dout.device() == q.device(),
            op, ": backward got dout=", dout, " for q=", q, ", v=", v);
  const QkvGrads qkv = empty_qkv_grads(B, H, g.T, g.S, g.Dk, g.Dv, q.device());
  Grads gr{qkv.dq, qkv.dk, qkv.dv, Tensor()};
  const bool want_db = need_db && mode == SigmoidBias::per_head;
  if (want_db) gr.db = Tensor::empty(Shape{H}, DType::f32, q.device());
  if (B * H * g.T == 0) {
    cuda::fill(gr.dq, 0.0), cuda::fill(gr.dk, 0.0), cuda::fill(gr.dv, 0.0);
    if (want_db) cuda::fill(gr.db, 0.0);
    return gr;
  }

  Tensor ds_rows = want_db ? Tensor::empty(Shape{B, H, g.T}, DType::f32, q.device()) : Tensor();
  launch_attention_bwd(BwdArgs<SigmoidBwd>{heads(q), heads(k), heads(v), heads(dout), heads_out(gr.dq),
                                           heads_out(gr.dk), heads_out(gr.dv), g,
                                           {score_of(mode, bc), want_db ? ds_rows.data<float>() : nullptr}},
                       B * H);
  if (want_db) {
    const DbArgs db{ds_rows.data<float>(), gr.db.data<float>(), static_cast<int>(B), static_cast<int>(H), g.T};
    AL_CUDA_LAUNCH(sigmoid_attention_bwd_db_kernel, dim3(static_cast<unsigned>(H)), dim3(32), 0, db);
  }
  return gr;
}

}  // namespace attnlab
