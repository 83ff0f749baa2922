// CUDA forward and backward of the fused linear-InfSA attention (form B), f32.
//
// Maths, per (b, h) (glossary in layers/attention/common.h; derivation in
// linear_infsa_attention_cpu.cpp). off = S - T; query i sits at position off + i.
//   q~ = c q, n_i = ||q~_i||, P_i = p0 + sum_{s<=i} n_s q~_s, N_i = n0 + sum_{s<=i} n_s,
//   qbar_i = P_i / N_i (0 where N_i <= 0), f_i = relu(qbar_i), g_j = relu(c k_j),
//   A_ij = <f_i, g_j> (j <= off + i), num_i = sum_j A_ij v_j, den_i = sum_j A_ij,
//   out_i = gamma num_i / (den_i + eps), gamma = sigmoid(theta_h).
// Chunked over queries (C per chunk; the chunk [i0, i0 + cn) sees the keys [off + i0, off + i0 + cn)
// inside the chunk and the rest through the state S = sum g_j v_j^T [Dk, Dv], z = sum g_j [Dk]):
//   num = F S + ((F G^T) o M) V, den = F z + rowsum((F G^T) o M); then S += G^T V, z += colsum G.
// Backward: dnum_i = gamma dout_i / (den_i + eps), dden_i = -<dout_i, out_i> / (den_i + eps),
//   dA = (dNum V^T + dden 1^T) o M,
//   df = dA G + dNum S_prev^T + dden z_prev^T              (forward over chunks)
//   dg = dA^T F + V dS_next^T + dz_next, dv = (A^T dNum) + G dS_next  (reverse over chunks; dS, dz sum
//        f_i dnum_i^T, dden_i f_i over the later queries; the keys before query 0 get dS v + dz, dS^T g)
//   dk = c dg o [k > 0]; dqbar = df o [qbar > 0], dP_i = dqbar_i / N_i, dN_i = -<dqbar_i, qbar_i> / N_i
//   (= -<dqbar_i, f_i> / N_i, as dqbar is 0 where qbar <= 0),
//   gP, gN = reverse cumulative sums, dq_s = c (n_s gP_s + (<gP_s, q~_s> + gN_s) q~_s / n_s) (0 when n_s = 0),
//   dtheta_h = (1 - gamma_h) sum_{b, i} <dout_i, out_i>.
//
// Shapes: q [B, H, T, Dk], k [B, H, S, Dk], v [B, H, S, Dv], dout [B, H, T, Dv] (any strides, a
// unit-stride last dim); theta [H], p0 [B, H, Dk], n0 [B, H] contiguous. out [B, H, T, Dv] and
// dq, dk, dv as the CPU op lays them out (token-major views; one [B, T, 3, H, D] buffer when T = S
// and Dk = Dv). den [B, H, T], p [B, H, Dk], n [B, H]. f32 only, Dk <= 128, any Dv.
// Scratch (device): f [B, H, T, Dk] f32; n_s, N_s [B, H, T] f64; delta [B, H, T] f32;
// the Dv-slice partials of df [nsl, B, H, T, Dk] and dg [nsl, B, H, S, Dk]; gP [B, H, T, Dk],
// gN [B, H, T] f64; per-(b, h) partial dtheta sums [B, H] f64.
//
// Launch shapes (all 128 threads = 4 warps, except the per-head dtheta kernel):
//   prefix   grid B*H. Warps take rows: n_s = ||c q_s|| (a double xor-shuffle sum); then thread d
//            (d < Dk) walks the rows in order carrying P_d, N in double and writes f and N_s;
//            p, n are the final P, N (forward). No shared memory.
//   forward  grid (B*H, ceil(Dv / 32)): a block owns one (b, h) and a 32-wide slice of Dv and walks
//            the chunks in order (C = 32 for Dk <= 64, 16 for Dk <= 128) with its slice of S and
//            all of z in shared memory: F, G [C, Dk], V [C, 32], A [C, C], S [Dk, 32], z [Dk], den [C]
//            (<= 42.4 KB). Per chunk each thread computes a strided set of A entries (a Dk dot),
//            then den rows (threads < C), then output elements (C x 32 of them, 128 at a time),
//            then state elements (Dk x 32). Every block computes den the same way; slice 0 stores it.
//   delta    grid ceil(B*H*T / 8), 256 threads: one warp per row, <dout_i, out_i> accumulated in
//            double (attention_tiles_cuda.h's row dot).
//   bwd      grid (B*H, ceil(Dv / 32)): the same block shape as forward, two walks over the chunks:
//            forward (S, z) writing the slice's partial df, reverse (dS, dz) writing the slice's
//            partial dg and the slice's columns of dv (complete: dv needs only its own columns).
//            The dden terms are added by slice 0 only, so the slices' partials sum to df, dg.
//   finish   grid B*H: sums the slice partials in slice order; warps per row for dP, dN (xor-tree
//            sums); thread d scans gP_d, thread 0 scans gN (reverse, in double); warps per row for
//            dq; all threads for dk; thread 0 sums <dout, out> over the rows in order.
//   dtheta   one thread per head: sums the (b, h) partials over b in order (attention_tiles_cuda.h).
// Determinism: no atomics; every output element is written by one thread, every sum runs in a
// fixed order, so results do not depend on scheduling.
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "layers/attention/attention_tiles_cuda.h"
#include "layers/attention/linear_infsa/linear_infsa_attention.h"
#include "lib/cuda/kernel.h"
#include "lib/error.h"

namespace attnlab {

namespace {

// From attention_tiles_cuda.h (named one by one: this file has its own Geom, FwdArgs, BwdArgs).
using attention_cuda::carved, attention_cuda::empty_qkv_grads, attention_cuda::empty_token_major,
    attention_cuda::gamma_of, attention_cuda::heads, attention_cuda::heads_out, attention_cuda::Heads,
    attention_cuda::HeadsOut, attention_cuda::imin, attention_cuda::launch_dtheta, attention_cuda::launch_row_dot,
    attention_cuda::QkvGrads, attention_cuda::RowDotArgs, attention_cuda::ThetaArgs, attention_cuda::unit_last_stride,
    attention_cuda::warp_sum;

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kSlice = 32;  // Dv columns per block
constexpr int kMaxDk = 128;
constexpr float kEpsF = static_cast<float>(LinearInfsaAttentionOp::kEps);

struct Geom {
  int H, T, S, Dk, Dv;
  int C;        // queries per chunk
  int slices;   // ceil(Dv / kSlice)
  float scale;  // c
};

// Row stride of a shared tile of width d: odd, so lanes reading one column of many rows spread
// over the banks.
__host__ __device__ inline int odd_ld(int d) { return d | 1; }

// ---- prefix mean ----------------------------------------------------------------------------------

struct PrefixArgs {
  Heads q;
  const float* p0;  // [B, H, Dk] or null
  const float* n0;  // [B, H] or null
  float* f;         // [B, H, T, Dk]
  double* nrm;      // [B, H, T]: n_s
  double* nrun;     // [B, H, T]: N_s
  float* p_out;     // [B, H, Dk] or null (backward)
  float* n_out;     // [B, H] or null
  Geom g;
};

__global__ void linear_infsa_prefix_kernel(PrefixArgs a) {
  const Geom& g = a.g;
  const int bh = static_cast<int>(blockIdx.x), b = bh / g.H, h = bh % g.H;
  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5, lane = tid & 31;
  const float* qb = a.q.head(b, h);
  const double c = g.scale;
  double* nrm = a.nrm + static_cast<int64_t>(bh) * g.T;
  double* nrun = a.nrun + static_cast<int64_t>(bh) * g.T;
  // n_s, one warp per row (every lane of a warp runs the same rows: the shuffles stay converged).
  for (int s = warp; s < g.T; s += kWarps) {
    const float* qs = qb + static_cast<int64_t>(s) * a.q.ld;
    double ss = 0;
    for (int d = lane; d < g.Dk; d += 32) {
      const double x = c * static_cast<double>(qs[d]);
      ss += x * x;
    }
    ss = warp_sum(ss);
    if (lane == 0) nrm[s] = sqrt(ss);
  }
  __syncthreads();  // every n_s is written (global memory, visible to the block after the barrier)
  const int d = tid;
  if (d < g.Dk) {
    double P = a.p0 ? static_cast<double>(a.p0[static_cast<int64_t>(bh) * g.Dk + d]) : 0.0;
    double N = a.n0 ? static_cast<double>(a.n0[bh]) : 0.0;
    const int64_t base = static_cast<int64_t>(bh) * g.T * g.Dk;
    for (int s = 0; s < g.T; ++s) {
      const double n = nrm[s];
      P += n * (c * static_cast<double>(qb[static_cast<int64_t>(s) * a.q.ld + d]));
      N += n;
      const double qbd = N > 0 ? P * (1.0 / N) : 0.0;
      const float x = static_cast<float>(qbd);
      a.f[base + static_cast<int64_t>(s) * g.Dk + d] = x > 0.0f ? x : 0.0f;
      if (d == 0) nrun[s] = N;
    }
    if (a.p_out) a.p_out[static_cast<int64_t>(bh) * g.Dk + d] = static_cast<float>(P);
    if (a.n_out && d == 0) a.n_out[bh] = static_cast<float>(N);
  }
}

// ---- shared tiles of one chunk ----------------------------------------------------------------------

// The block's shared arrays (carved once; sizes from the Geom).
struct Tiles {
  float *F, *G, *V, *dN, *dd, *A, *dA, *S, *z;
  int ldk, ldv, lda;
};

__device__ inline Tiles carve_tiles(const Geom& g, bool backward) {
  simt::SmemCarver carve;
  Tiles t;
  t.ldk = odd_ld(g.Dk);
  t.ldv = odd_ld(kSlice);
  t.lda = odd_ld(g.C);
  t.F = carve.take<float>(g.C * t.ldk);
  t.G = carve.take<float>(g.C * t.ldk);
  t.V = carve.take<float>(g.C * t.ldv);
  t.A = carve.take<float>(g.C * t.lda);
  t.S = carve.take<float>(g.Dk * t.ldv);
  t.z = carve.take<float>(g.Dk);
  t.dd = carve.take<float>(g.C);  // den (forward) or dden (backward)
  t.dN = backward ? carve.take<float>(g.C * t.ldv) : nullptr;
  t.dA = backward ? carve.take<float>(g.C * t.lda) : nullptr;
  return t;
}

size_t tiles_smem(const Geom& g, bool backward) {
  const int ldk = odd_ld(g.Dk), ldv = odd_ld(kSlice), lda = odd_ld(g.C);
  size_t n = carved(g.C * ldk) * 2 + carved(g.C * ldv) + carved(g.C * lda) + carved(g.Dk * ldv) + carved(g.Dk) +
             carved(g.C);
  if (backward) n += carved(g.C * ldv) + carved(g.C * lda);
  return n;
}

// G rows [j0, j0 + rows) = relu(c k), V's slice columns [v0, v0 + 32) of the same rows; zeros past
// `rows` and past Dv. Warps take rows, lanes take columns.
__device__ inline void load_keys(const Tiles& t, const Geom& g, const float* kb, int64_t kld, const float* vb,
                                 int64_t vld, int j0, int rows, int v0) {
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  for (int r = warp; r < g.C; r += kWarps) {
    for (int d = lane; d < g.Dk; d += 32) {
      float x = 0.0f;
      if (r < rows) x = static_cast<float>(static_cast<double>(g.scale) * kb[static_cast<int64_t>(j0 + r) * kld + d]);
      t.G[r * t.ldk + d] = x > 0.0f ? x : 0.0f;
    }
    const int d = lane;  // kSlice = 32 = one column per lane
    t.V[r * t.ldv + d] = (r < rows && v0 + d < g.Dv) ? vb[static_cast<int64_t>(j0 + r) * vld + v0 + d] : 0.0f;
  }
}

// F rows [i0, i0 + rows) of f (contiguous [T, Dk]); zeros past `rows`.
__device__ inline void load_queries(const Tiles& t, const Geom& g, const float* fb, int i0, int rows) {
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  for (int r = warp; r < g.C; r += kWarps)
    for (int d = lane; d < g.Dk; d += 32)
      t.F[r * t.ldk + d] = r < rows ? fb[static_cast<int64_t>(i0 + r) * g.Dk + d] : 0.0f;
}

// A[i][j] = <F_i, G_j> for j <= i (0 above the diagonal).
__device__ inline void chunk_scores(const Tiles& t, const Geom& g) {
  for (int e = static_cast<int>(threadIdx.x); e < g.C * g.C; e += kThreads) {
    const int i = e / g.C, j = e % g.C;
    float s = 0.0f;
    if (j <= i)
      for (int d = 0; d < g.Dk; ++d) s += t.F[i * t.ldk + d] * t.G[j * t.ldk + d];
    t.A[i * t.lda + j] = s;
  }
}

// S[k][d] += sum_j G[j][k] V[j][d]; z[k] += sum_j G[j][k] (the chunk's keys into the state).
__device__ inline void add_keys_to_state(const Tiles& t, const Geom& g) {
  for (int e = static_cast<int>(threadIdx.x); e < g.Dk * kSlice; e += kThreads) {
    const int k = e / kSlice, d = e % kSlice;
    float s = t.S[k * t.ldv + d];
    for (int j = 0; j < g.C; ++j) s += t.G[j * t.ldk + k] * t.V[j * t.ldv + d];
    t.S[k * t.ldv + d] = s;
  }
  for (int k = static_cast<int>(threadIdx.x); k < g.Dk; k += kThreads) {
    float s = t.z[k];
    for (int j = 0; j < g.C; ++j) s += t.G[j * t.ldk + k];
    t.z[k] = s;
  }
}

__device__ inline void zero_state(const Tiles& t, const Geom& g) {
  for (int e = static_cast<int>(threadIdx.x); e < g.Dk * t.ldv; e += kThreads) t.S[e] = 0.0f;
  for (int k = static_cast<int>(threadIdx.x); k < g.Dk; k += kThreads) t.z[k] = 0.0f;
}

// ---- forward ----------------------------------------------------------------------------------------

struct FwdArgs {
  Heads k, v;
  const float* f;      // [B, H, T, Dk]
  const float* theta;  // [H]
  HeadsOut out;
  float* den;  // [B, H, T]
  Geom g;
};

__global__ void linear_infsa_fwd_kernel(FwdArgs a) {
  const Geom& g = a.g;
  const int bh = static_cast<int>(blockIdx.x), b = bh / g.H, h = bh % g.H;
  const int slice = static_cast<int>(blockIdx.y), v0 = slice * kSlice;
  const int tid = static_cast<int>(threadIdx.x);
  const int off = g.S - g.T;
  const Tiles t = carve_tiles(g, false);
  const float* kb = a.k.head(b, h);
  const float* vb = a.v.head(b, h);
  const float* fb = a.f + static_cast<int64_t>(bh) * g.T * g.Dk;
  float* ob = a.out.head(b, h);
  const float gamma = static_cast<float>(gamma_of(a.theta, h));

  zero_state(t, g);
  // The keys before query 0, a chunk of C at a time.
  for (int j0 = 0; j0 < off; j0 += g.C) {
    __syncthreads();  // the previous chunk's G, V are consumed; the state is zeroed
    load_keys(t, g, kb, a.k.ld, vb, a.v.ld, j0, imin(g.C, off - j0), v0);
    __syncthreads();
    add_keys_to_state(t, g);
  }
  for (int i0 = 0; i0 < g.T; i0 += g.C) {
    const int cn = imin(g.C, g.T - i0), j0 = off + i0;
    __syncthreads();  // the state is updated; the previous chunk's tiles are consumed
    load_queries(t, g, fb, i0, cn);
    load_keys(t, g, kb, a.k.ld, vb, a.v.ld, j0, cn, v0);
    __syncthreads();
    chunk_scores(t, g);
    __syncthreads();
    for (int i = tid; i < g.C; i += kThreads) {
      float s = 0.0f;
      for (int j = 0; j <= i; ++j) s += t.A[i * t.lda + j];
      for (int k = 0; k < g.Dk; ++k) s += t.F[i * t.ldk + k] * t.z[k];
      t.dd[i] = s;
      if (slice == 0 && i < cn) a.den[static_cast<int64_t>(bh) * g.T + i0 + i] = s;
    }
    __syncthreads();
    for (int e = tid; e < g.C * kSlice; e += kThreads) {
      const int i = e / kSlice, d = e % kSlice;
      float s = 0.0f;
      for (int k = 0; k < g.Dk; ++k) s += t.F[i * t.ldk + k] * t.S[k * t.ldv + d];
      for (int j = 0; j <= i; ++j) s += t.A[i * t.lda + j] * t.V[j * t.ldv + d];
      if (i < cn && v0 + d < g.Dv) ob[static_cast<int64_t>(i0 + i) * a.out.ld + v0 + d] = gamma * s / (t.dd[i] + kEpsF);
    }
    __syncthreads();  // S is read above and written below
    add_keys_to_state(t, g);
  }
}

// ---- backward: the chunk walks of one Dv slice ----------------------------------------------------

struct BwdArgs {
  Heads k, v, dout;
  const float* f;      // [B, H, T, Dk]
  const float* den;    // [B, H, T]
  const float* delta;  // [B, H, T]
  const float* theta;  // [H]
  float* dfp;          // [slices, B, H, T, Dk]
  float* dgp;          // [slices, B, H, S, Dk]
  HeadsOut dv;
  int BH;
  Geom g;
};

// dN rows [i0, i0 + rows) = gamma dout / (den + eps) on the slice's columns, dd = dden on slice 0
// (0 elsewhere, so the dden terms enter the slice partials once); zeros past `rows`.
__device__ inline void load_row_grads(const Tiles& t, const BwdArgs& a, const float* gb, const float* denb,
                                      const float* deltab, float gamma, int i0, int rows, int v0, bool first_slice) {
  const Geom& g = a.g;
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  for (int r = warp; r < g.C; r += kWarps) {
    const float inv = r < rows ? 1.0f / (denb[i0 + r] + kEpsF) : 0.0f;
    const int d = lane;
    t.dN[r * t.ldv + d] =
        (r < rows && v0 + d < g.Dv) ? gamma * gb[static_cast<int64_t>(i0 + r) * a.dout.ld + v0 + d] * inv : 0.0f;
    if (lane == 0) t.dd[r] = (r < rows && first_slice) ? -deltab[i0 + r] * inv : 0.0f;
  }
}

// dA[i][j] = <dN_i, V_j> + dd_i for j <= i (0 above the diagonal).
__device__ inline void chunk_dscores(const Tiles& t, const Geom& g) {
  for (int e = static_cast<int>(threadIdx.x); e < g.C * g.C; e += kThreads) {
    const int i = e / g.C, j = e % g.C;
    float s = 0.0f;
    if (j <= i) {
      for (int d = 0; d < kSlice; ++d) s += t.dN[i * t.ldv + d] * t.V[j * t.ldv + d];
      s += t.dd[i];
    }
    t.dA[i * t.lda + j] = s;
  }
}

__global__ void linear_infsa_bwd_kernel(BwdArgs a) {
  const Geom& g = a.g;
  const int bh = static_cast<int>(blockIdx.x), b = bh / g.H, h = bh % g.H;
  const int slice = static_cast<int>(blockIdx.y), v0 = slice * kSlice;
  const int tid = static_cast<int>(threadIdx.x);
  const int off = g.S - g.T;
  const Tiles t = carve_tiles(g, true);
  const float* kb = a.k.head(b, h);
  const float* vb = a.v.head(b, h);
  const float* gb = a.dout.head(b, h);
  const float* fb = a.f + static_cast<int64_t>(bh) * g.T * g.Dk;
  const float* denb = a.den + static_cast<int64_t>(bh) * g.T;
  const float* deltab = a.delta + static_cast<int64_t>(bh) * g.T;
  float* dfb = a.dfp + (static_cast<int64_t>(slice) * a.BH + bh) * g.T * g.Dk;
  float* dgb = a.dgp + (static_cast<int64_t>(slice) * a.BH + bh) * g.S * g.Dk;
  float* dvb = a.dv.head(b, h);
  const float gamma = static_cast<float>(gamma_of(a.theta, h));
  const bool first = slice == 0;

  // Walk 1, forward: S, z over the keys before each chunk; the slice's partial
  // df = dA G + dN S^T + dd z^T.
  zero_state(t, g);
  for (int j0 = 0; j0 < off; j0 += g.C) {
    __syncthreads();
    load_keys(t, g, kb, a.k.ld, vb, a.v.ld, j0, imin(g.C, off - j0), v0);
    __syncthreads();
    add_keys_to_state(t, g);
  }
  for (int i0 = 0; i0 < g.T; i0 += g.C) {
    const int cn = imin(g.C, g.T - i0), j0 = off + i0;
    __syncthreads();
    load_keys(t, g, kb, a.k.ld, vb, a.v.ld, j0, cn, v0);
    load_row_grads(t, a, gb, denb, deltab, gamma, i0, cn, v0, first);
    __syncthreads();
    chunk_dscores(t, g);
    __syncthreads();
    for (int e = tid; e < g.C * g.Dk; e += kThreads) {
      const int i = e / g.Dk, k = e % g.Dk;
      if (i >= cn) continue;  // no barrier inside this loop
      float s = 0.0f;
      for (int j = 0; j <= i; ++j) s += t.dA[i * t.lda + j] * t.G[j * t.ldk + k];
      for (int d = 0; d < kSlice; ++d) s += t.dN[i * t.ldv + d] * t.S[k * t.ldv + d];
      s += t.dd[i] * t.z[k];
      dfb[static_cast<int64_t>(i0 + i) * g.Dk + k] = s;
    }
    __syncthreads();
    add_keys_to_state(t, g);
  }

  // Walk 2, reverse: dS = sum f_i dN_i^T, dz = sum dd_i f_i over the queries after each chunk;
  // the slice's partial dg = dA^T F + V dS^T + dz, and dv (its columns) = A^T dN + G dS.
  __syncthreads();
  zero_state(t, g);  // S, z now hold dS, dz
  const int chunks = (g.T + g.C - 1) / g.C;
  for (int ci = chunks - 1; ci >= 0; --ci) {
    const int i0 = ci * g.C, cn = imin(g.C, g.T - i0), j0 = off + i0;
    __syncthreads();
    load_queries(t, g, fb, i0, cn);
    load_keys(t, g, kb, a.k.ld, vb, a.v.ld, j0, cn, v0);
    load_row_grads(t, a, gb, denb, deltab, gamma, i0, cn, v0, first);
    __syncthreads();
    chunk_scores(t, g);
    chunk_dscores(t, g);
    __syncthreads();
    for (int e = tid; e < g.C * g.Dk; e += kThreads) {
      const int j = e / g.Dk, k = e % g.Dk;
      if (j >= cn) continue;
      float s = 0.0f;
      for (int i = j; i < g.C; ++i) s += t.dA[i * t.lda + j] * t.F[i * t.ldk + k];
      for (int d = 0; d < kSlice; ++d) s += t.V[j * t.ldv + d] * t.S[k * t.ldv + d];
      s += t.z[k];
      dgb[static_cast<int64_t>(j0 + j) * g.Dk + k] = s;
    }
    for (int e = tid; e < g.C * kSlice; e += kThreads) {
      const int j = e / kSlice, d = e % kSlice;
      if (j >= cn || v0 + d >= g.Dv) continue;
      float s = 0.0f;
      for (int i = j; i < g.C; ++i) s += t.A[i * t.lda + j] * t.dN[i * t.ldv + d];
      for (int k = 0; k < g.Dk; ++k) s += t.G[j * t.ldk + k] * t.S[k * t.ldv + d];
      dvb[static_cast<int64_t>(j0 + j) * a.dv.ld + v0 + d] = s;
    }
    __syncthreads();  // dS, dz are read above and written below
    for (int e = tid; e < g.Dk * kSlice; e += kThreads) {
      const int k = e / kSlice, d = e % kSlice;
      float s = t.S[k * t.ldv + d];
      for (int i = 0; i < g.C; ++i) s += t.F[i * t.ldk + k] * t.dN[i * t.ldv + d];
      t.S[k * t.ldv + d] = s;
    }
    for (int k = tid; k < g.Dk; k += kThreads) {
      float s = t.z[k];
      for (int i = 0; i < g.C; ++i) s += t.dd[i] * t.F[i * t.ldk + k];
      t.z[k] = s;
    }
  }
  // The keys before query 0 are seen by every query: dg = V dS^T + dz, dv = G dS.
  for (int j0 = 0; j0 < off; j0 += g.C) {
    const int rows = imin(g.C, off - j0);
    __syncthreads();
    load_keys(t, g, kb, a.k.ld, vb, a.v.ld, j0, rows, v0);
    __syncthreads();
    for (int e = tid; e < g.C * g.Dk; e += kThreads) {
      const int j = e / g.Dk, k = e % g.Dk;
      if (j >= rows) continue;
      float s = 0.0f;
      for (int d = 0; d < kSlice; ++d) s += t.V[j * t.ldv + d] * t.S[k * t.ldv + d];
      dgb[static_cast<int64_t>(j0 + j) * g.Dk + k] = s + t.z[k];
    }
    for (int e = tid; e < g.C * kSlice; e += kThreads) {
      const int j = e / kSlice, d = e % kSlice;
      if (j >= rows || v0 + d >= g.Dv) continue;
      float s = 0.0f;
      for (int k = 0; k < g.Dk; ++k) s += t.G[j * t.ldk + k] * t.S[k * t.ldv + d];
      dvb[static_cast<int64_t>(j0 + j) * a.dv.ld + v0 + d] = s;
    }
  }
}

// ---- backward: sums over the slices, the prefix-mean chain rule, dq, dk ------------------------

struct FinishArgs {
  Heads q, k;
  const float* f;       // [B, H, T, Dk]
  const double* nrm;    // [B, H, T]
  const double* nrun;   // [B, H, T]
  const float* dfp;     // [slices, B, H, T, Dk]
  const float* dgp;     // [slices, B, H, S, Dk]
  const float* delta;   // [B, H, T]
  double* gp;           // [B, H, T, Dk] scratch: dP, then gP
  double* gn;           // [B, H, T] scratch: dN, then gN
  double* dtheta_part;  // [B, H]
  HeadsOut dq, dk;
  int BH;
  Geom g;
};

__global__ void linear_infsa_bwd_finish_kernel(FinishArgs a) {
  const Geom& g = a.g;
  const int bh = static_cast<int>(blockIdx.x), b = bh / g.H, h = bh % g.H;
  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5, lane = tid & 31;
  const double c = g.scale;
  const int64_t rowbase = static_cast<int64_t>(bh) * g.T;
  const int64_t tdk = static_cast<int64_t>(g.T) * g.Dk, sdk = static_cast<int64_t>(g.S) * g.Dk;
  const int64_t slice_stride_t = static_cast<int64_t>(a.BH) * tdk, slice_stride_s = static_cast<int64_t>(a.BH) * sdk;
  double* gp = a.gp + static_cast<int64_t>(bh) * tdk;
  double* gn = a.gn + rowbase;

  // dP_i = dqbar_i / N_i, dN_i = -<dqbar_i, qbar_i> / N_i, dqbar = (sum of the partials) o [f > 0].
  for (int i = warp; i < g.T; i += kWarps) {
    const double N = a.nrun[rowbase + i];
    const double inv = N > 0 ? 1.0 / N : 0.0;
    double dot = 0;
    for (int d = lane; d < g.Dk; d += 32) {
      const int64_t e = static_cast<int64_t>(i) * g.Dk + d;
      float df = 0.0f;
      for (int s = 0; s < g.slices; ++s) df += a.dfp[s * slice_stride_t + static_cast<int64_t>(bh) * tdk + e];
      const float fe = a.f[static_cast<int64_t>(bh) * tdk + e];
      const double dqb = fe > 0.0f ? static_cast<double>(df) : 0.0;
      gp[e] = dqb * inv;
      dot += dqb * static_cast<double>(fe);
    }
    dot = warp_sum(dot);
    if (lane == 0) gn[i] = -dot * inv;
  }
  __syncthreads();
  // Reverse scans: gP_s = sum_{i >= s} dP_i (thread d), gN_s = sum_{i >= s} dN_i (thread 0).
  if (tid < g.Dk) {
    double acc = 0;
    for (int s = g.T - 1; s >= 0; --s) {
      acc += gp[static_cast<int64_t>(s) * g.Dk + tid];
      gp[static_cast<int64_t>(s) * g.Dk + tid] = acc;
    }
  }
  if (tid == 0) {
    double acc = 0;
    for (int s = g.T - 1; s >= 0; --s) {
      acc += gn[s];
      gn[s] = acc;
    }
  }
  __syncthreads();
  // dq_s = c (n_s gP_s + (<gP_s, q~_s> + gN_s) q~_s / n_s), 0 for a zero query.
  const float* qb = a.q.head(b, h);
  float* dqb = a.dq.head(b, h);
  for (int s = warp; s < g.T; s += kWarps) {
    const float* qs = qb + static_cast<int64_t>(s) * a.q.ld;
    const double n = a.nrm[rowbase + s];
    double gq = 0;
    for (int d = lane; d < g.Dk; d += 32) gq += gp[static_cast<int64_t>(s) * g.Dk + d] * (c * static_cast<double>(qs[d]));
    gq = warp_sum(gq);
    const double coef = n > 0 ? (gq + gn[s]) / n : 0.0;
    for (int d = lane; d < g.Dk; d += 32) {
      const double x = c * static_cast<double>(qs[d]);
      dqb[static_cast<int64_t>(s) * a.dq.ld + d] =
          n > 0 ? static_cast<float>(c * (n * gp[static_cast<int64_t>(s) * g.Dk + d] + coef * x)) : 0.0f;
    }
  }
  // dk = c (sum of the partials) o [c k > 0].
  const float* kb = a.k.head(b, h);
  float* dkb = a.dk.head(b, h);
  for (int64_t e = tid; e < sdk; e += kThreads) {
    const int64_t j = e / g.Dk, d = e % g.Dk;
    float dg = 0.0f;
    for (int s = 0; s < g.slices; ++s) dg += a.dgp[s * slice_stride_s + static_cast<int64_t>(bh) * sdk + e];
    const float kx = static_cast<float>(c * static_cast<double>(kb[j * a.k.ld + d]));
    dkb[j * a.dk.ld + d] = kx > 0.0f ? static_cast<float>(c * static_cast<double>(dg)) : 0.0f;
  }
  if (tid == 0) {
    double s = 0;
    for (int i = 0; i < g.T; ++i) s += a.delta[rowbase + i];
    a.dtheta_part[bh] = s;
  }
}

// ---- host side ----------------------------------------------------------------------------------

constexpr std::string_view kName = "linear_infsa_attention";

void check_cuda_inputs(const Tensor& q, const Tensor& k, const Tensor& v) {
  AL_CHECK_DTYPE(q.dtype() == DType::f32, kName, ": the CUDA kernels take f32 only; got q=", q, ", k=", k, ", v=", v);
  AL_ASSERT(unit_last_stride(q) && unit_last_stride(k) && unit_last_stride(v), kName,
            ": q, k, v need a unit-stride last dim; got q=", q, ", k=", k, ", v=", v);
  AL_CHECK_SHAPE(q.size(3) <= kMaxDk, kName, ": the CUDA kernels take Dk <= ", kMaxDk, "; got q=", q, ", k=", k,
                 ", v=", v);
  AL_CHECK_SHAPE(v.size(3) <= 65535 * kSlice && k.size(2) < (int64_t{1} << 30), kName,
                 ": the CUDA kernels take S < 2^30 and Dv <= ", 65535 * kSlice, "; got q=", q, ", k=", k, ", v=", v);
}

Geom geom_of(const Tensor& q, const Tensor& k, const Tensor& v, double scale) {
  Geom g;
  g.H = static_cast<int>(q.size(1));
  g.T = static_cast<int>(q.size(2));
  g.S = static_cast<int>(k.size(2));
  g.Dk = static_cast<int>(q.size(3));
  g.Dv = static_cast<int>(v.size(3));
  g.C = g.Dk <= 64 ? 32 : 16;  // keeps the backward's tiles under 48 KiB of shared memory
  g.slices = (g.Dv + kSlice - 1) / kSlice;
  g.scale = static_cast<float>(attention_scale(scale, q.size(3)));
  return g;
}

// The prefix mean into f, n_s, N_s; p, n when given.
void run_prefix(const Tensor& q, const Tensor& p0, const Tensor& n0, const Geom& g, int64_t BH, Tensor& f, Tensor& nrm,
                Tensor& nrun, Tensor* p, Tensor* n) {
  PrefixArgs args{heads(q),
                  p0.defined() ? p0.data<float>() : nullptr,
                  n0.defined() ? n0.data<float>() : nullptr,
                  f.data<float>(),
                  nrm.data<double>(),
                  nrun.data<double>(),
                  p ? p->data<float>() : nullptr,
                  n ? n->data<float>() : nullptr,
                  g};
  AL_CUDA_LAUNCH(linear_infsa_prefix_kernel, dim3(static_cast<unsigned>(BH)), dim3(kThreads), 0, args);
}

void check_extras(const Tensor& theta, const Tensor& p0, const Tensor& n0) {
  AL_ASSERT(theta.is_contiguous() && (!p0.defined() || p0.is_contiguous()) && (!n0.defined() || n0.is_contiguous()),
            kName, ": theta, p0, n0 must be contiguous; got theta=", theta, ", p0=", p0, ", n0=", n0);
}

}  // namespace

LinearInfsaAttentionOp::Forward LinearInfsaAttentionOp::forward(CudaTag, const Tensor& q, const Tensor& k,
                                                                const Tensor& v, const Tensor& theta, const Tensor& p0,
                                                                const Tensor& n0, double scale) {
  check(q, k, v, theta, AttentionMask{}, p0, n0);
  check_cuda_inputs(q, k, v);
  check_extras(theta, p0, n0);
  const Geom g = geom_of(q, k, v, scale);
  const int64_t B = q.size(0), H = q.size(1), BH = B * H;
  const Device dev = q.device();
  Forward fw{empty_token_major(B, H, g.T, g.Dv, dev), Tensor::empty(Shape{B, H, g.T}, DType::f32, dev),
             Tensor::empty(Shape{B, H, g.Dk}, DType::f32, dev), Tensor::empty(Shape{B, H}, DType::f32, dev)};
  if (BH == 0) return fw;
  Tensor f = Tensor::empty(Shape{B, H, g.T, g.Dk}, DType::f32, dev);
  Tensor nrm = Tensor::empty(Shape{B, H, g.T}, DType::f64, dev), nrun = Tensor::empty(Shape{B, H, g.T}, DType::f64, dev);
  run_prefix(q, p0, n0, g, BH, f, nrm, nrun, &fw.p, &fw.n);
  if (g.T == 0) return fw;
  FwdArgs args{heads(k), heads(v), f.data<float>(), theta.data<float>(), heads_out(fw.out), fw.den.data<float>(), g};
  AL_CUDA_LAUNCH(linear_infsa_fwd_kernel, dim3(static_cast<unsigned>(BH), static_cast<unsigned>(g.slices)),
                 dim3(kThreads), tiles_smem(g, false), args);
  return fw;
}

LinearInfsaAttentionOp::Grads LinearInfsaAttentionOp::backward(CudaTag, const Tensor& q, const Tensor& k,
                                                               const Tensor& v, const Tensor& theta, const Tensor& p0,
                                                               const Tensor& n0, const Tensor& out, const Tensor& den,
                                                               const Tensor& dout, double scale) {
  check_cuda_inputs(q, k, v);
  check_extras(theta, p0, n0);
  const Geom g = geom_of(q, k, v, scale);
  const int64_t B = q.size(0), H = q.size(1), BH = B * H;
  const Device dev = q.device();
  AL_ASSERT(unit_last_stride(out) && den.is_contiguous() && unit_last_stride(dout) && out.shape() == dout.shape() &&
                out.shape() == Shape({B, H, g.T, g.Dv}) && den.shape() == Shape({B, H, g.T}) &&
                out.dtype() == q.dtype() && den.dtype() == q.dtype() && dout.dtype() == q.dtype() &&
                out.device() == dev && den.device() == dev && dout.device() == dev,
            kName, ": backward got out=", out, ", den=", den, ", dout=", dout, " for q=", q, ", v=", v);
  // The CPU op's layouts (one [B, T, 3, H, D] buffer for self-attention, else token-major).
  const QkvGrads qkv = empty_qkv_grads(B, H, g.T, g.S, g.Dk, g.Dv, dev);
  Grads gr{qkv.dq, qkv.dk, qkv.dv, Tensor::zeros(Shape{H}, DType::f32, dev)};
  if (BH * g.T == 0) {
    gr.dq.fill_(0.0), gr.dk.fill_(0.0), gr.dv.fill_(0.0);
    return gr;
  }

  Tensor f = Tensor::empty(Shape{B, H, g.T, g.Dk}, DType::f32, dev);
  Tensor nrm = Tensor::empty(Shape{B, H, g.T}, DType::f64, dev), nrun = Tensor::empty(Shape{B, H, g.T}, DType::f64, dev);
  run_prefix(q, p0, n0, g, BH, f, nrm, nrun, nullptr, nullptr);

  Tensor delta = Tensor::empty(Shape{B, H, g.T}, DType::f32, dev);
  const int64_t rows = BH * g.T;
  launch_row_dot<double>(RowDotArgs{heads(out), heads(dout), delta.data<float>(), g.H, g.T, g.Dv, rows});

  Tensor dfp = Tensor::empty(Shape{g.slices, B, H, g.T, g.Dk}, DType::f32, dev);
  Tensor dgp = Tensor::empty(Shape{g.slices, B, H, g.S, g.Dk}, DType::f32, dev);
  const BwdArgs bargs{heads(k),          heads(v),           heads(dout),        f.data<float>(),
                      den.data<float>(), delta.data<float>(), theta.data<float>(), dfp.data<float>(),
                      dgp.data<float>(), heads_out(gr.dv),   static_cast<int>(BH), g};
  AL_CUDA_LAUNCH(linear_infsa_bwd_kernel, dim3(static_cast<unsigned>(BH), static_cast<unsigned>(g.slices)),
                 dim3(kThreads), tiles_smem(g, true), bargs);

  Tensor gp = Tensor::empty(Shape{B, H, g.T, g.Dk}, DType::f64, dev), gn = Tensor::empty(Shape{B, H, g.T}, DType::f64, dev);
  Tensor part = Tensor::empty(Shape{B, H}, DType::f64, dev);
  const FinishArgs fargs{heads(q),           heads(k),          f.data<float>(),
                         nrm.data<double>(), nrun.data<double>(), dfp.data<float>(), dgp.data<float>(),
                         delta.data<float>(), gp.data<double>(),  gn.data<double>(),  part.data<double>(),
                         heads_out(gr.dq),   heads_out(gr.dk),   static_cast<int>(BH), g};
  AL_CUDA_LAUNCH(linear_infsa_bwd_finish_kernel, dim3(static_cast<unsigned>(BH)), dim3(kThreads), 0, fargs);

  launch_dtheta(ThetaArgs{part.data<double>(), theta.data<float>(), gr.dtheta.data<float>(), static_cast<int>(B),
                          static_cast<int>(H)});
  return gr;
}

}  // namespace attnlab
