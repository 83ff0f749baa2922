// CUDA forward and backward of the fused InfSA attention (infsa_attention.h), f32.
//
// Maths, per (b, h) (glossary in layers/attention/common.h). Query i sits at position p = S - T + i
// and sees exactly the keys [0, n_i): causal n_i = min(S, p + 1), or min(S, max(p + 1, prefix))
// when p < prefix; not causal n_i = S. It sees the query rows [0, m_i), m_i = min(T, n_i - (S - T))
// >= i + 1 (the rows at positions it sees). n_i and m_i never decrease with i.
//   forward   A_ij = relu(c <q_i, k_j>) (j < n_i), r_i = sum_j A_ij^2, U_i = sum_j A_ij v_j,
//             R_i = r0 + sum_{i' < m_i} r_i', F_i = sqrt(R_i + eps^2), out_i = gamma_h U_i / F_i,
//             r_final = r0 + sum_i r_i, gamma_h = sigmoid(theta_h).
//   backward  delta_i = <dout_i, out_i>, dU_i = gamma dout_i / F_i, dR_i = -delta_i / (2 F_i^2),
//             dr_i' = sum_{i : m_i > i'} dR_i, dS_ij = [A_ij > 0] (<dU_i, v_j> + 2 A_ij dr_i),
//             dq = c dS k, dk = c dS^T q, dv = A^T dU, dtheta_h = (1 - gamma_h) sum_{b, i} delta_i.
//
// Shapes: q [B, H, T, Dk], k [B, H, S, Dk], v [B, H, S, Dv], dout [B, H, T, Dv]: any strides with a
// unit-stride last dim. out, dq, dk, dv: [B, H, *, D] views of token-major memory, laid out exactly
// as the CPU op lays them out. theta [H], r0 [B, H] (or absent), F [B, H, T], r [B, H], dtheta [H]
// contiguous. Scratch: r_i [B, H, T] and prefix sums [B, H, T] (f64) in forward; dU [B, H, T, Dv],
// delta [B, H, T], suffix sums [B, H, T] (f64), dr [B, H, T] and per-(b, h) sums of delta (f64) in
// backward. f32 only; Dk, Dv <= 128; f32 tile arithmetic, f64 scans.
//
// Kernels and launch shapes (fwd, dq and dk/dv are attention_tiles_cuda.h's tile kernels, with
// its tile shapes per padded head dim 32 / 64 / 128 and its lane layout, 128 threads = 4 warps;
// InfsaFwd and InfsaBwd below give them relu scores and the energies in place of the softmax):
//   fwd       grid (ceil(T/Br), B*H), 128 threads. Per key tile (K, V loaded by the block; tiles
//             past n of the tile's last query never visited) a lane computes RT x Bc/8 scores,
//             A = relu(c s) (0 where masked), adds A^2 to its rows' partial energies, writes A to
//             its warp's rows of the shared A tile, then U += A V_J. At the end it writes its U
//             columns unnormalised into out; lane cg = 0 writes r_i (summed over the 8 lanes).
//   scan      grid B*H, 256 threads: thread t owns a contiguous segment of rows; segment sums,
//             an exclusive scan of the 256 segment sums by thread 0, then each thread writes the
//             prefix sums of its segment; after a barrier each row reads the prefix sum at m_i
//             and writes F_i; thread 0 writes r_final. All in double, in a fixed order.
//   epilogue  grid ceil(B*H*T/8), 256 threads: one warp per row scales out_i by gamma_h / F_i.
//   rows      (backward) grid ceil(B*H*T/8), 256 threads: one warp per row: delta_i (lanes stride
//             over d, then an xor-shuffle sum), dU_i = gamma dout_i / F_i.
//   rscan     grid B*H, 256 threads: the scan kernel's segments run backwards over dR_i to give
//             suffix sums; row i' reads the suffix sum at the first row that sees it (binary
//             search over m) as dr_i'. Thread 0 also sums delta over the head's rows.
//   dtheta    grid ceil(H/128), 128 threads: thread h sums its head's delta sums over b in order.
//   dtheta    grid ceil(H/128), 128 threads: thread h sums its head's delta sums over b in order
//             (attention_tiles_cuda.h's attention_dtheta_kernel).
//   dq        grid (ceil(T/Br), B*H), 128 threads: the forward's loop with two dot products per
//             score (s from Q, K; dP from dU, V), dS = [A > 0] (dP + 2 A dr_i) into its warp's
//             rows, then dq += dS K_J.
//   dk, dv    grid (ceil(S/Bc), B*H), 128 threads: K_J, V_J stay in shared memory; per query tile
//             from the first query that sees key j0 (Q, dU and 2 dr_i loaded by the block) a lane
//             computes A and dS of its RT keys against the queries cg, cg + 8, ..., writes them to
//             its warp's rows of A^T and dS^T, then dv += A^T dU_I, dk += dS^T Q_I.
// Determinism: no atomics; every output element is written by one thread and every sum runs in a
// fixed order, so the results do not depend on scheduling.
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "layers/attention/attention_tiles_cuda.h"
#include "layers/attention/infsa/infsa_attention.h"
#include "lib/cuda/kernel.h"
#include "lib/cuda/tensor_kernels.h"
#include "lib/error.h"

namespace attnlab {

namespace {

using namespace attention_cuda;

constexpr int kScanThreads = 256;  // scan kernels: one block per (b, h)
constexpr double kEps2 = InfsaAttentionOp::kEps * InfsaAttentionOp::kEps;

// relu that keeps a NaN score NaN (as the CPU kernels do) instead of hiding it.
__device__ inline float relu_f(float x) { return x <= 0.0f ? 0.0f : x; }
__device__ inline float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }

// m_i: query i sees the query rows [0, m_i) (those at positions < n_i).
__device__ inline int visible_rows(const Geom& g, int i) { return imin(g.T, visible_keys(g, i) - (g.S - g.T)); }

// The first query row that sees row i' (m_i > i'); at most i' since m_i' >= i' + 1.
__device__ inline int first_row_seeing(const Geom& g, int ip) {
  return first_where(0, ip, [&](int i) { return visible_rows(g, i) > ip; });
}

// Rows [begin, end) of thread t when T rows are cut into kScanThreads contiguous segments.
struct Segment {
  int begin, end;
};
__device__ inline Segment segment_of(int T, int t) {
  const int per = (T + kScanThreads - 1) / kScanThreads;
  const int b = imin(T, t * per);
  return {b, imin(T, b + per)};
}

// ---- forward: U and r (attention_tiles_cuda.h's forward, a block per query tile) ---------------

// A = relu(c s), its squares summed into the row energies r_i; out holds U, unnormalised until the
// epilogue.
struct InfsaFwd {
  float* r;  // [B, H, T] row energies

  struct Row {
    float e;  // the lane's partial sum of A^2
  };
  __device__ __forceinline__ Row fwd_row(int, int) const { return {0.0f}; }

  template <int KT, int DC>
  __device__ __forceinline__ void fwd_scores(Row& st, float (&s)[KT], float (&)[DC], float* p_row, int j0, int n,
                                             int cg, float scale) const {
    AL_UNROLL
    for (int c = 0; c < KT; ++c) {
      const float x = j0 + cg + 8 * c < n ? relu_f(s[c] * scale) : 0.0f;
      p_row[cg + 8 * c] = x;
      st.e += x * x;
    }
  }
  template <int DC>
  __device__ __forceinline__ void fwd_finish(Row& st, float (&)[DC], bool valid, int64_t row, int cg) const {
    const float et = group_sum(st.e);
    if (valid && cg == 0) r[row] = et;
  }
};

// ---- forward: the prefix scan giving F and the carried energy (a block per (b, h)) ---------------

struct ScanArgs {
  const float* r;   // [B, H, T]
  const float* r0;  // [B, H] or null (zeros)
  double* prefix;   // [B, H, T] scratch: inclusive prefix sums of r
  float* F;         // [B, H, T]
  float* r_final;   // [B, H]
  Geom g;
};

size_t scan_smem() { return carved<double>(kScanThreads + 1); }

__global__ void infsa_attention_scan_kernel(ScanArgs a) {
  const Geom& g = a.g;
  const int bh = static_cast<int>(blockIdx.x), tid = static_cast<int>(threadIdx.x);
  simt::SmemCarver carve;
  double* seg = carve.take<double>(kScanThreads + 1);  // segment offsets, then the total
  const float* r = a.r + static_cast<int64_t>(bh) * g.T;
  double* P = a.prefix + static_cast<int64_t>(bh) * g.T;
  const Segment sg = segment_of(g.T, tid);

  double local = 0.0;
  for (int i = sg.begin; i < sg.end; ++i) local += r[i];
  seg[tid] = local;
  __syncthreads();
  if (tid == 0) {
    double run = 0.0;
    for (int t = 0; t < kScanThreads; ++t) {
      const double x = seg[t];
      seg[t] = run;
      run += x;
    }
    seg[kScanThreads] = run;
  }
  __syncthreads();
  double run = seg[tid];
  for (int i = sg.begin; i < sg.end; ++i) {
    run += r[i];
    P[i] = run;
  }
  __syncthreads();  // every row's prefix sum is written (row i reads the one at m_i - 1 >= i)
  const double r0 = a.r0 ? static_cast<double>(a.r0[bh]) : 0.0;
  float* F = a.F + static_cast<int64_t>(bh) * g.T;
  for (int i = sg.begin; i < sg.end; ++i) F[i] = static_cast<float>(sqrt(r0 + P[visible_rows(g, i) - 1] + kEps2));
  if (tid == 0) a.r_final[bh] = static_cast<float>(r0 + seg[kScanThreads]);
}

// ---- forward: out = gamma U / F (a warp per row) -------------------------------------------------

struct EpilogueArgs {
  HeadsOut out;
  const float* F;      // [B, H, T]
  const float* theta;  // [H]
  int H, T, Dv;
  int64_t rows;  // B * H * T
};

__global__ void infsa_attention_epilogue_kernel(EpilogueArgs a) {
  const WarpRow w = warp_row(a.rows, a.H, a.T);
  if (w.live) {
    const float c = sigmoid_f(a.theta[w.h]) / a.F[w.row];
    float* o = a.out.head(w.b, w.h) + w.i * a.out.ld;
    for (int d = w.lane; d < a.Dv; d += 32) o[d] *= c;
  }
}

// ---- backward: delta and dU (a warp per row) -----------------------------------------------------

struct RowsArgs {
  Heads out, dout;
  const float* F;      // [B, H, T]
  const float* theta;  // [H]
  float* du;           // [B, H, T, Dv] contiguous
  float* delta;        // [B, H, T]
  int H, T, Dv;
  int64_t rows;  // B * H * T
};

__global__ void infsa_attention_bwd_rows_kernel(RowsArgs a) {
  const WarpRow w = warp_row(a.rows, a.H, a.T);
  float acc = 0.0f;
  if (w.live) {  // warp-uniform: the shuffles below run in whole warps either way
    const float* o = a.out.head(w.b, w.h) + w.i * a.out.ld;
    const float* go = a.dout.head(w.b, w.h) + w.i * a.dout.ld;
    const float c = sigmoid_f(a.theta[w.h]) / a.F[w.row];
    float* u = a.du + w.row * a.Dv;
    for (int d = w.lane; d < a.Dv; d += 32) {
      acc += o[d] * go[d];
      u[d] = c * go[d];
    }
  }
  acc = warp_sum(acc);
  if (w.lane == 0 && w.live) a.delta[w.row] = acc;
}

// ---- backward: the reverse scan giving dr, and the sum of delta (a block per (b, h)) -------------

struct RScanArgs {
  const float* delta;  // [B, H, T]
  const float* F;      // [B, H, T]
  double* suffix;      // [B, H, T] scratch: suffix sums of dR
  float* dr;           // [B, H, T]
  double* delta_sum;   // [B, H]
  Geom g;
};

size_t rscan_smem() { return 2 * carved<double>(kScanThreads); }

__global__ void infsa_attention_bwd_rscan_kernel(RScanArgs a) {
  const Geom& g = a.g;
  const int bh = static_cast<int>(blockIdx.x), tid = static_cast<int>(threadIdx.x);
  simt::SmemCarver carve;
  double* seg = carve.take<double>(kScanThreads);   // sums of dR of the later segments
  double* segd = carve.take<double>(kScanThreads);  // sums of delta per segment
  const int64_t base = static_cast<int64_t>(bh) * g.T;
  const float* delta = a.delta + base;
  const float* F = a.F + base;
  double* SS = a.suffix + base;
  const Segment sg = segment_of(g.T, tid);
  auto dR = [&](int i) {
    const double f = F[i];
    return -static_cast<double>(delta[i]) / (2.0 * f * f);
  };

  double local = 0.0, local_delta = 0.0;
  for (int i = sg.begin; i < sg.end; ++i) {
    local += dR(i);
    local_delta += delta[i];
  }
  seg[tid] = local;
  segd[tid] = local_delta;
  __syncthreads();
  if (tid == 0) {
    double run = 0.0, total = 0.0;
    for (int t = kScanThreads - 1; t >= 0; --t) {
      const double x = seg[t];
      seg[t] = run;
      run += x;
    }
    for (int t = 0; t < kScanThreads; ++t) total += segd[t];
    a.delta_sum[bh] = total;
  }
  __syncthreads();
  double run = seg[tid];
  for (int i = sg.end - 1; i >= sg.begin; --i) {
    run += dR(i);
    SS[i] = run;  // sum_{i'' >= i} dR_i''
  }
  __syncthreads();  // every suffix sum is written (row i' reads the one at its first viewer <= i')
  float* dr = a.dr + base;
  for (int i = sg.begin; i < sg.end; ++i) dr[i] = static_cast<float>(SS[first_row_seeing(g, i)]);
}

// ---- backward: dq, dk, dv (attention_tiles_cuda.h's backward) ------------------------------------

// dS = [A > 0] (dP + 2 A dr_i) with A = relu(c s); dO is dU.
struct InfsaBwd {
  const float* dr;  // [B, H, T]

  struct Query {
    float two_dr;  // 2 dr_i
  };
  struct Stats {
    float* two_dr;  // [Br]
  };
  static size_t stats_smem(int Br) { return carved(Br); }
  __device__ static Stats carve_stats(simt::SmemCarver& carve, int Br) { return {carve.take<float>(Br)}; }
  __device__ __forceinline__ void load_stats(const Stats& st, int64_t row0, int in, int Br) const {
    for (int i = static_cast<int>(threadIdx.x); i < Br; i += kTileThreads)
      st.two_dr[i] = i < in ? 2.0f * dr[row0 + i] : 0.0f;
  }
  __device__ __forceinline__ Query query(int, int64_t row, bool valid, int) const {
    return {valid ? 2.0f * dr[row] : 0.0f};
  }
  __device__ __forceinline__ Query query(const Stats& st, int, int i, int) const { return {st.two_dr[i]}; }
  __device__ __forceinline__ void grad(const Query& q, float s, float dp, bool visible, float scale, float& x,
                                       float& ds) const {
    x = visible ? relu_f(s * scale) : 0.0f;
    ds = x > 0.0f ? dp + q.two_dr * x : 0.0f;
  }
  __device__ __forceinline__ void dq_finish(float, bool, int64_t, int) const {}
};

constexpr std::string_view kName = "infsa_attention";

}  // namespace

InfsaAttentionOp::Forward InfsaAttentionOp::forward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                    const Tensor& theta, const AttentionMask& mask, double scale,
                                                    const Tensor& r0) {
  check(q, k, v, theta, mask, r0);
  check_tile_inputs(kName, q, k, v);
  AL_ASSERT(theta.is_contiguous() && (!r0.defined() || r0.is_contiguous()), kName,
            ": theta and r0 must be contiguous; got theta=", theta, ", r0=", r0);
  const Geom g = tile_geom(q, k, v, mask, scale);
  const int64_t B = q.size(0), H = q.size(1);
  const Device dev = q.device();
  Forward f{empty_token_major(B, H, g.T, g.Dv, dev), Tensor::empty(Shape{B, H, g.T}, DType::f32, dev),
            Tensor::empty(Shape{B, H}, DType::f32, dev)};
  if (B * H == 0) return f;
  if (g.T == 0) {  // no rows: the carried energy passes through
    if (r0.defined())
      f.r.copy_(r0);
    else
      cuda::fill(f.r, 0.0);
    return f;
  }
  Tensor r = Tensor::empty(Shape{B, H, g.T}, DType::f32, dev);
  Tensor prefix = Tensor::empty(Shape{B, H, g.T}, DType::f64, dev);
  launch_attention_fwd(FwdArgs<InfsaFwd>{heads(q), heads(k), heads(v), heads_out(f.out), g, {r.data<float>()}}, B * H);
  const ScanArgs sa{r.data<float>(), r0.defined() ? r0.data<float>() : nullptr, prefix.data<double>(),
                    f.F.data<float>(), f.r.data<float>(), g};
  AL_CUDA_LAUNCH(infsa_attention_scan_kernel, dim3(static_cast<unsigned>(B * H)), dim3(kScanThreads), scan_smem(),
                 sa);
  const int64_t rows = B * H * g.T;
  const EpilogueArgs ea{heads_out(f.out), f.F.data<float>(), theta.data<float>(), g.H, g.T, g.Dv, rows};
  AL_CUDA_LAUNCH(infsa_attention_epilogue_kernel, dim3(warp_row_blocks(rows)), dim3(kRowThreads), 0, ea);
  return f;
}

InfsaAttentionOp::Grads InfsaAttentionOp::backward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                   const Tensor& theta, const Tensor& out, const Tensor& F,
                                                   const Tensor& dout, const AttentionMask& mask, double scale) {
  check_tile_inputs(kName, q, k, v);
  const Geom g = tile_geom(q, k, v, mask, scale);
  const int64_t B = q.size(0), H = q.size(1);
  const Device dev = q.device();
  AL_ASSERT(unit_last_stride(out) && F.is_contiguous() && unit_last_stride(dout) && theta.is_contiguous() &&
                out.shape() == dout.shape() && out.shape() == Shape({B, H, g.T, g.Dv}) &&
                F.shape() == Shape({B, H, g.T}) && theta.shape() == Shape({H}) && out.dtype() == q.dtype() &&
                F.dtype() == q.dtype() && dout.dtype() == q.dtype() && theta.dtype() == q.dtype() &&
                out.device() == dev && F.device() == dev && dout.device() == dev && theta.device() == dev,
            kName, ": backward got out=", out, ", F=", F, ", dout=", dout, ", theta=", theta, " for q=", q, ", v=", v);
  const QkvGrads qkv = empty_qkv_grads(B, H, g.T, g.S, g.Dk, g.Dv, dev);
  Grads gr{qkv.dq, qkv.dk, qkv.dv, Tensor::empty(Shape{H}, DType::f32, dev)};
  if (B * H * g.T == 0) {
    cuda::fill(gr.dq, 0.0), cuda::fill(gr.dk, 0.0), cuda::fill(gr.dv, 0.0), cuda::fill(gr.dtheta, 0.0);
    return gr;
  }

  const int64_t rows = B * H * g.T;
  Tensor du = Tensor::empty(Shape{B, H, g.T, g.Dv}, DType::f32, dev);
  Tensor delta = Tensor::empty(Shape{B, H, g.T}, DType::f32, dev);
  Tensor suffix = Tensor::empty(Shape{B, H, g.T}, DType::f64, dev);
  Tensor dr = Tensor::empty(Shape{B, H, g.T}, DType::f32, dev);
  Tensor delta_sum = Tensor::empty(Shape{B, H}, DType::f64, dev);

  const RowsArgs ra{heads(out),        heads(dout),  F.data<float>(), theta.data<float>(), du.data<float>(),
                    delta.data<float>(), g.H, g.T, g.Dv, rows};
  AL_CUDA_LAUNCH(infsa_attention_bwd_rows_kernel, dim3(warp_row_blocks(rows)), dim3(kRowThreads), 0, ra);
  const RScanArgs sa{delta.data<float>(), F.data<float>(), suffix.data<double>(), dr.data<float>(),
                     delta_sum.data<double>(), g};
  AL_CUDA_LAUNCH(infsa_attention_bwd_rscan_kernel, dim3(static_cast<unsigned>(B * H)), dim3(kScanThreads),
                 rscan_smem(), sa);
  launch_dtheta(ThetaArgs{delta_sum.data<double>(), theta.data<float>(), gr.dtheta.data<float>(), static_cast<int>(B),
                          g.H});
  launch_attention_bwd(BwdArgs<InfsaBwd>{heads(q), heads(k), heads(v), heads(du), heads_out(gr.dq), heads_out(gr.dk),
                                         heads_out(gr.dv), g, {dr.data<float>()}},
                       B * H);
  return gr;
}

}  // namespace attnlab
