// CUDA forward and backward of the fused softmax attention: FlashAttention-2 on CUDA cores, f32.
// The tile kernels, their lane layout and launch shapes are attention_tiles_cuda.h's; this file
// gives them the online softmax (SoftmaxFwd) and its backward formula (SoftmaxBwd).
//
// Maths, per (b, h) (glossary in layers/attention/common.h). Query i sits at position p = S - T + i
// and sees exactly the keys [0, n_i): causal n_i = min(S, p + 1), or min(S, max(p + 1, prefix))
// when p < prefix (a bidirectional prefix); not causal n_i = S. n_i >= 1 and never decreases with i.
//   forward   s_ij = scale <q_i, k_j>,  out_i = sum_{j < n_i} softmax_j(s_i)_j v_j,
//             lse_i = log sum_{j < n_i} exp(s_ij). Online over key tiles J, per row:
//             m' = max(m, rowmax s_IJ), l = e^(m - m') l + rowsum e^(s - m'),
//             acc = e^(m - m') acc + e^(s - m') V_J, m = m'; then out = acc / l, lse = m + log l.
//   backward  P_ij = exp(s_ij - lse_i) (recomputed from q, k and lse, never stored),
//             D_i = <dout_i, out_i>, dP_ij = <dout_i, v_j>, dS = P * (dP - D),
//             dq_i = scale sum_j dS_ij k_j,  dk_j = scale sum_i dS_ij q_i,  dv_j = sum_i P_ij dout_i.
//
// Shapes: q [B, H, T, Dk], k [B, H, S, Dk], v [B, H, S, Dv], dout [B, H, T, Dv]: any strides with
// a unit-stride last dim (views of token-major or fused-projection memory). out [B, H, T, Dv],
// dq, dk, dv: [B, H, *, D] views of token-major memory ([B, T, H, D]; one [B, T, 3, H, D] buffer
// for dq, dk, dv when T = S and Dk = Dv), exactly as the CPU op allocates them, so merging heads
// and split_heads' backward need no copy. lse [B, H, T] and the scratch D [B, H, T] are
// contiguous. f32 only; Dk, Dv <= 128; f32 accumulation everywhere.
//
// Launch shapes (tile kernels: see attention_tiles_cuda.h; 128 threads, a block per query tile in
// forward and dq, per key tile in dk/dv):
//   forward  the tile forward; smem 41984 / 41728 / 44480 B for Dk = Dv = 32 / 64 / 128.
//   D        grid ceil(B*H*T/8), 256 threads: one warp per query row, a 5-step xor reduction.
//   dq       the tile dq; smem 33792 / 37504 / 42880 B.
//   dk, dv   the tile dk/dv with lse and D per query in shared memory: 42496 / 41984 / 44672 B.
//
// What each thread does for the softmax (RT own rows, columns split 8 ways):
//   forward: per key tile, for each own row, mask j >= n_i to -inf, take the row max over the 8
//     lanes, rescale its running l (its own partial sum, reduced over the 8 lanes at the end) and
//     the row's accumulators, write e^(s - m) to its warp's P row. At the end out = acc / l; lane
//     cg = 0 writes lse.
//   D: lanes stride over d, then the warp sums; lane 0 writes D_i.
//   dq, dk, dv: P = e^(scale s - lse_i) (0 where masked), dS = P (dP - D_i).
//
// Determinism: no atomics; every output element is written by one thread, every sum runs in a
// fixed order (the xor-shuffle trees included), so results do not depend on scheduling.
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "layers/attention/attention_tiles_cuda.h"
#include "layers/attention/softmax/softmax_attention.h"
#include "lib/cuda/kernel.h"
#include "lib/cuda/tensor_kernels.h"
#include "lib/error.h"

namespace attnlab {

namespace {

using namespace attention_cuda;

// The forward's online softmax (attention_tiles_cuda.h's forward policy).
struct SoftmaxFwd {
  float* lse;  // [B, H, T]

  struct Row {
    float m, l;  // running max; the lane's partial sum of e^(s - m)
  };
  __device__ __forceinline__ Row fwd_row(int, int) const { return {-INFINITY, 0.0f}; }

  template <int KT, int DC>
  __device__ __forceinline__ void fwd_scores(Row& st, float (&s)[KT], float (&acc)[DC], float* p_row, int j0, int n,
                                             int cg, float scale) const {
    float mx = -INFINITY;
    AL_UNROLL
    for (int c = 0; c < KT; ++c) {
      s[c] = j0 + cg + 8 * c < n ? s[c] * scale : -INFINITY;
      mx = fmaxf(mx, s[c]);
    }
    const float m_new = fmaxf(st.m, group_max(mx));
    // A row that has seen no key yet (only rows past T) keeps m = -inf: shift by 0 instead, so
    // alpha and P are e^-inf = 0 rather than NaN.
    const float shift = m_new == -INFINITY ? 0.0f : m_new;
    const float alpha = expf(st.m - shift);
    st.m = m_new;
    float sum = 0.0f;
    AL_UNROLL
    for (int c = 0; c < KT; ++c) {
      const float p = expf(s[c] - shift);  // 0 where masked (s = -inf)
      p_row[cg + 8 * c] = p;
      sum += p;
    }
    st.l = alpha * st.l + sum;
    AL_UNROLL
    for (int c = 0; c < DC; ++c) acc[c] *= alpha;
  }

  // out = acc / l, lse = m + log l.
  template <int DC>
  __device__ __forceinline__ void fwd_finish(Row& st, float (&acc)[DC], bool valid, int64_t row, int cg) const {
    const float lt = group_sum(st.l);
    if (valid) {
      const float inv = 1.0f / lt;
      AL_UNROLL
      for (int c = 0; c < DC; ++c) acc[c] *= inv;
      if (cg == 0) lse[row] = st.m + logf(lt);
    }
  }
};

// The backward: P from lse, dS = P (dP - D) (attention_tiles_cuda.h's backward policy).
struct SoftmaxBwd {
  const float* lse;  // [B, H, T]
  const float* dd;   // [B, H, T]: D_i

  struct Query {
    float lse, dd;
  };
  struct Stats {
    float *lse, *dd;  // [Br] each
  };
  static size_t stats_smem(int Br) { return 2 * carved(Br); }
  __device__ static Stats carve_stats(simt::SmemCarver& carve, int Br) {
    float* l = carve.take<float>(Br);
    return {l, carve.take<float>(Br)};
  }
  __device__ __forceinline__ void load_stats(const Stats& st, int64_t row0, int in, int Br) const {
    for (int i = static_cast<int>(threadIdx.x); i < Br; i += kTileThreads) {
      st.lse[i] = i < in ? lse[row0 + i] : 0.0f;
      st.dd[i] = i < in ? dd[row0 + i] : 0.0f;
    }
  }
  __device__ __forceinline__ Query query(int, int64_t row, bool valid, int) const {
    return {valid ? lse[row] : 0.0f, valid ? dd[row] : 0.0f};
  }
  __device__ __forceinline__ Query query(const Stats& st, int, int i, int) const { return {st.lse[i], st.dd[i]}; }
  __device__ __forceinline__ void grad(const Query& q, float s, float dp, bool visible, float scale, float& p,
                                       float& ds) const {
    p = visible ? expf(s * scale - q.lse) : 0.0f;
    ds = p * (dp - q.dd);
  }
  __device__ __forceinline__ void dq_finish(float, bool, int64_t, int) const {}
};

constexpr std::string_view kName = "softmax_attention";

}  // namespace

SoftmaxAttentionOp::Forward SoftmaxAttentionOp::forward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                        const AttentionMask& mask, double scale) {
  check(q, k, v, mask);
  check_tile_inputs(kName, q, k, v);
  const Geom g = tile_geom(q, k, v, mask, scale);
  const int64_t B = q.size(0), H = q.size(1);
  Forward f{empty_token_major(B, H, g.T, g.Dv, q.device()), Tensor::empty(Shape{B, H, g.T}, DType::f32, q.device())};
  if (B * H * g.T == 0) return f;
  launch_attention_fwd(FwdArgs<SoftmaxFwd>{heads(q), heads(k), heads(v), heads_out(f.out), g, {f.lse.data<float>()}},
                       B * H);
  return f;
}

SoftmaxAttentionOp::Grads SoftmaxAttentionOp::backward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                       const Tensor& out, const Tensor& lse, const Tensor& dout,
                                                       const AttentionMask& mask, double scale) {
  check_tile_inputs(kName, q, k, v);
  const Geom g = tile_geom(q, k, v, mask, scale);
  const int64_t B = q.size(0), H = q.size(1);
  AL_ASSERT(unit_last_stride(out) && lse.is_contiguous() && unit_last_stride(dout) && out.shape() == dout.shape() &&
                out.shape() == Shape({B, H, g.T, g.Dv}) && lse.shape() == Shape({B, H, g.T}) &&
                out.dtype() == q.dtype() && lse.dtype() == q.dtype() && dout.dtype() == q.dtype() &&
                out.device() == q.device() && lse.device() == q.device() && dout.device() == q.device(),
            kName, ": backward got out=", out, ", lse=", lse, ", dout=", dout, " for q=", q, ", v=", v);
  const QkvGrads qkv = empty_qkv_grads(B, H, g.T, g.S, g.Dk, g.Dv, q.device());
  Grads gr{qkv.dq, qkv.dk, qkv.dv};
  if (B * H * g.T == 0) {
    cuda::fill(gr.dq, 0.0), cuda::fill(gr.dk, 0.0), cuda::fill(gr.dv, 0.0);
    return gr;
  }

  Tensor dd = Tensor::empty(Shape{B, H, g.T}, DType::f32, q.device());
  launch_row_dot<float>(RowDotArgs{heads(out), heads(dout), dd.data<float>(), g.H, g.T, g.Dv, B * H * g.T});
  launch_attention_bwd(BwdArgs<SoftmaxBwd>{heads(q), heads(k), heads(v), heads(dout), heads_out(gr.dq),
                                           heads_out(gr.dk), heads_out(gr.dv), g,
                                           {lse.data<float>(), dd.data<float>()}},
                       B * H);
  return gr;
}

}  // namespace attnlab
