// CUDA forward and backward of the fused softmax attention: FlashAttention-2 on CUDA cores, f32.
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
// Launch shapes. The tile kernels run 128 threads = 4 warps; lane = 8 rg + cg (row group rg 0..3,
// column group cg 0..7). A block owns a tile of "own rows" (queries in forward and dq, keys in
// dk/dv); warp w owns a quarter of them and row group rg owns RT = rows / 16 consecutive ones, each
// shared by the 8 lanes cg of that group. In a score phase lane cg computes the partner columns
// cg, cg + 8, ... (keys, or queries in dk/dv) of its RT rows; in an accumulation phase it owns the
// head-dim columns d = cg, cg + 8, ... So one score row lives in 8 lanes of one warp: its max and
// sum are 3 xor-shuffles, and the score tile a warp writes to shared memory is read back by that
// warp only (a __syncwarp, not a __syncthreads). Tile sizes depend on the padded head dim,
// max(Dk, Dv) rounded up to 32, 64 or 128, so that every block fits in the 48 KiB of dynamic
// shared memory a launch may use without an opt-in (bytes for Dk = Dv = 32 / 64 / 128):
//   forward  grid (ceil(T/Br), B*H); Br x Bc = 64x64 / 64x32 / 32x24 queries x keys;
//            smem Q [Br], K [Bc], V [Bc] tiles + P [Br, Bc+1] = 41984 / 41728 / 44480 B.
//   D        grid ceil(B*H*T/8), 256 threads: one warp per query row, a 5-step xor reduction.
//   dq       grid (ceil(T/Br), B*H); Br x Bc = 64x32 / 32x32 / 16x24 queries x keys;
//            smem Q, dO [Br], K, V [Bc] + dS [Br, Bc+1] = 33792 / 37504 / 42880 B.
//   dk, dv   grid (ceil(S/Bc), B*H); Bc x Br = 64x32 / 32x32 / 16x24 keys x queries;
//            smem K, V [Bc], Q, dO [Br], lse, D [Br], P^T, dS^T [Bc, Br+1] = 42496 / 41984 / 44672 B.
// Query tiles go heaviest first (the last ones see the most keys under a causal mask).
//
// What each thread does (RT own rows, columns split 8 ways as above):
//   forward: per key tile (K, V loaded by the block; tiles past n of the tile's last query are
//     never visited, so tiles wholly above the causal diagonal are skipped) compute RT x Bc/8
//     scores, mask j >= n_i to -inf, take the row max over the 8 lanes, rescale its running
//     l (its own partial sum, reduced over the 8 lanes at the end) and its RT x Dv/8 accumulators,
//     write e^(s - m) to its warp's P rows, then add P V_J into the accumulators. At the end it
//     writes its out columns; lane cg = 0 writes lse.
//   D: lanes stride over d, then the warp sums; lane 0 writes D_i.
//   dq: the forward's loop with two dot products per score (s from Q, K; dP from dO, V), P from
//     lse, dS into its warp's rows, then dq += dS K_J; finally dq = scale acc.
//   dk, dv: K_J, V_J stay in shared memory; per query tile from the first query that sees key j0
//     (Q, dO, lse, D loaded by the block) compute P and dS of its RT keys against the Br/8
//     queries i = cg, cg + 8, ..., write them to its warp's rows of P^T and dS^T, then
//     dv += P^T dO_I, dk += dS^T Q_I over the tile's queries; finally dk = scale acc, dv = acc.
//
// Determinism: no atomics; every output element is written by one thread, every sum runs in a
// fixed order (the xor-shuffle trees included), so results do not depend on scheduling.
// Shared tiles have rows of round8(D) + 1 floats: the odd stride puts the 8 lanes that read 8
// different rows at one d in 8 different banks, and columns [D, round8(D)) hold zeros so the
// accumulation loops run over whole groups of 8 columns with no per-element bound.
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "layers/attention/softmax/softmax_attention.h"
#include "lib/cuda/kernel.h"
#include "lib/cuda/tensor_kernels.h"
#include "lib/error.h"
#include "lib/host_device.h"

// The loops over a thread's own rows and columns (AL_UNROLL) have fixed trip counts and index
// small arrays: fully unrolled, those arrays stay in registers.

namespace attnlab {

namespace {

constexpr int kThreads = 128;  // tile kernels: 4 warps
constexpr int kWarps = kThreads / 32;
constexpr int kDotThreads = 256;  // the D kernel: 8 warps, one query row each
constexpr unsigned kFull = 0xffffffffu;
constexpr int kMaxHeadDim = 128;

// Tile shape of one kernel for one padded head dim: Br query rows, Bc key rows, DC = DMAX / 8
// head-dim columns per lane.
template <int BR, int BC, int DMAX>
struct Tiles {
  static constexpr int Br = BR, Bc = BC, DC = DMAX / 8;
};
using Fwd32 = Tiles<64, 64, 32>;
using Fwd64 = Tiles<64, 32, 64>;
using Fwd128 = Tiles<32, 24, 128>;
using Dq32 = Tiles<64, 32, 32>;
using Dq64 = Tiles<32, 32, 64>;
using Dq128 = Tiles<16, 24, 128>;
using Dkv32 = Tiles<32, 64, 32>;
using Dkv64 = Tiles<32, 32, 64>;
using Dkv128 = Tiles<24, 16, 128>;

AL_HOST_DEVICE inline int imin(int a, int b) { return a < b ? a : b; }
AL_HOST_DEVICE inline int round8(int d) { return (d + 7) / 8 * 8; }
// Row stride of a shared tile holding head dim d: odd (bank spread), with room for the zero pad.
AL_HOST_DEVICE inline int tile_ld(int d) { return round8(d) + 1; }
// Bytes SmemCarver::take<float>(n) consumes: it rounds each array up to 16 bytes.
inline size_t carved(int64_t floats) { return (static_cast<size_t>(floats) * sizeof(float) + 15) / 16 * 16; }

// A [B, H, rows, D] tensor with unit-stride D: element (b, h, r, d) at p[b sb + h sh + r ld + d].
struct Heads {
  const float* p;
  int64_t sb, sh, ld;
};
struct HeadsOut {
  float* p;
  int64_t sb, sh, ld;
};

// Sizes and mask, the same for every block of a launch.
struct Geom {
  int H, T, S, Dk, Dv;
  int causal;
  int prefix;  // clamped to [0, S]
  float scale;
};

// n_i: query i sees the keys [0, n_i).
__device__ inline int visible_keys(const Geom& g, int i) {
  if (!g.causal) return g.S;
  const int p = g.S - g.T + i;
  int n = p + 1;
  if (p < g.prefix && g.prefix > n) n = g.prefix;
  return imin(n, g.S);
}

// The first query that sees key j (n_i > j), or T. n_i never decreases with i.
__device__ inline int first_query_seeing(const Geom& g, int j) {
  int lo = 0, hi = g.T;
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (visible_keys(g, mid) > j)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

// dst [R, ld] (shared) <- rows [0, valid) x columns [0, D) of src (row stride src_ld), zeros in rows
// [valid, R) and columns [D, round8(D)). Warps take rows, lanes take columns (coalesced reads).
__device__ inline void load_tile(float* dst, int ld, int R, const float* src, int64_t src_ld, int valid, int D) {
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  const int w = round8(D);
  for (int r = warp; r < R; r += kWarps)
    for (int d = lane; d < w; d += 32) dst[r * ld + d] = (r < valid && d < D) ? src[r * src_ld + d] : 0.0f;
}

// Max and sum over the 8 lanes of a row group (lanes 8 rg .. 8 rg + 7): xor 1, 2, 4 stays inside.
__device__ inline float group_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(kFull, x, 1));
  x = fmaxf(x, __shfl_xor_sync(kFull, x, 2));
  x = fmaxf(x, __shfl_xor_sync(kFull, x, 4));
  return x;
}
__device__ inline float group_sum(float x) {
  x += __shfl_xor_sync(kFull, x, 1);
  x += __shfl_xor_sync(kFull, x, 2);
  x += __shfl_xor_sync(kFull, x, 4);
  return x;
}

// The score phase's dot products: out[t][c] = sum_{d < D} own[r[t] ld + d] partner[(cg + 8c) ld + d],
// the lane's RT own rows against its N partner rows cg, cg + 8, ..., added in increasing d. own
// and partner are shared tiles of row stride ld. Forced inline: out stays in registers.
template <int RT, int N>
__device__ __forceinline__ void tile_dots(float (&out)[RT][N], const float* own, const float* partner, int ld,
                                          const int (&r)[RT], int cg, int D) {
  AL_UNROLL
  for (int t = 0; t < RT; ++t)
    AL_UNROLL
    for (int c = 0; c < N; ++c) out[t][c] = 0.0f;
  for (int d = 0; d < D; ++d) {
    float pv[N];
    AL_UNROLL
    for (int c = 0; c < N; ++c) pv[c] = partner[(cg + 8 * c) * ld + d];
    AL_UNROLL
    for (int t = 0; t < RT; ++t) {
      const float ov = own[r[t] * ld + d];
      AL_UNROLL
      for (int c = 0; c < N; ++c) out[t][c] += ov * pv[c];
    }
  }
}

// The accumulation phase: acc[t][c] += sum_{j < jn} w[r[t] ldw + j] tile[j ld + cg + 8c], the
// lane's RT own rows of w (P or dS, shared, row stride ldw) times its head-dim columns of the
// shared tile (V or K, row stride ld), in increasing j; column groups c >= nc hold no data.
template <int RT, int DC>
__device__ __forceinline__ void tile_accumulate(float (&acc)[RT][DC], const float* w, int ldw, const float* tile,
                                                int ld, int nc, const int (&r)[RT], int cg, int jn) {
  for (int j = 0; j < jn; ++j) {
    float tv[DC];
    AL_UNROLL
    for (int c = 0; c < DC; ++c) tv[c] = c < nc ? tile[j * ld + cg + 8 * c] : 0.0f;
    AL_UNROLL
    for (int t = 0; t < RT; ++t) {
      const float wv = w[r[t] * ldw + j];
      AL_UNROLL
      for (int c = 0; c < DC; ++c)
        if (c < nc) acc[t][c] += wv * tv[c];
    }
  }
}

// ---- forward ------------------------------------------------------------------------------------

struct FwdArgs {
  Heads q, k, v;
  HeadsOut out;
  float* lse;
  Geom g;
};

template <class C>
size_t fwd_smem(int Dk, int Dv) {
  return carved(C::Br * tile_ld(Dk)) + carved(C::Bc * tile_ld(Dk)) + carved(C::Bc * tile_ld(Dv)) +
         carved(C::Br * (C::Bc + 1));
}

template <class C>
__global__ void softmax_attention_fwd_kernel(FwdArgs a) {
  constexpr int Br = C::Br, Bc = C::Bc, DC = C::DC, RT = Br / 16, KT = Bc / 8;
  static_assert(Br % 16 == 0 && Bc % 8 == 0, "tile shape");
  const Geom& g = a.g;
  const int bh = static_cast<int>(blockIdx.y), b = bh / g.H, h = bh % g.H;
  const int i0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * Br;
  const int rows = imin(Br, g.T - i0);
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  const int rg = lane >> 3, cg = lane & 7;
  const int ldk = tile_ld(g.Dk), ldv = tile_ld(g.Dv), ldp = Bc + 1;
  const int ncv = round8(g.Dv) / 8;  // column groups of 8 that hold v's columns

  simt::SmemCarver carve;
  float* qs = carve.take<float>(Br * ldk);
  float* ks = carve.take<float>(Bc * ldk);
  float* vs = carve.take<float>(Bc * ldv);
  float* ps = carve.take<float>(Br * ldp);

  const float* qb = a.q.p + b * a.q.sb + h * a.q.sh;
  const float* kb = a.k.p + b * a.k.sb + h * a.k.sh;
  const float* vb = a.v.p + b * a.v.sb + h * a.v.sh;
  load_tile(qs, ldk, Br, qb + static_cast<int64_t>(i0) * a.q.ld, a.q.ld, rows, g.Dk);

  int r[RT], n[RT];  // own rows (in the tile) and their visible-key counts (0 past T: all masked)
  float m[RT], l[RT], acc[RT][DC];
  AL_UNROLL
  for (int t = 0; t < RT; ++t) {
    r[t] = warp * (Br / kWarps) + rg * RT + t;
    n[t] = r[t] < rows ? visible_keys(g, i0 + r[t]) : 0;
    m[t] = -INFINITY;
    l[t] = 0.0f;
    AL_UNROLL
    for (int c = 0; c < DC; ++c) acc[t][c] = 0.0f;
  }
  // Keys past the tile's last query's count are invisible to every row: never loaded or computed.
  const int nmax = visible_keys(g, i0 + rows - 1);

  for (int j0 = 0; j0 < nmax; j0 += Bc) {
    const int jn = imin(Bc, nmax - j0);
    __syncthreads();  // Q is loaded; every warp is done with the previous K, V (and its P rows)
    load_tile(ks, ldk, Bc, kb + static_cast<int64_t>(j0) * a.k.ld, a.k.ld, jn, g.Dk);
    load_tile(vs, ldv, Bc, vb + static_cast<int64_t>(j0) * a.v.ld, a.v.ld, jn, g.Dv);
    __syncthreads();

    float s[RT][KT];
    tile_dots(s, qs, ks, ldk, r, cg, g.Dk);

    AL_UNROLL
    for (int t = 0; t < RT; ++t) {
      float mx = -INFINITY;
      AL_UNROLL
      for (int c = 0; c < KT; ++c) {
        s[t][c] = j0 + cg + 8 * c < n[t] ? s[t][c] * g.scale : -INFINITY;
        mx = fmaxf(mx, s[t][c]);
      }
      const float m_new = fmaxf(m[t], group_max(mx));
      // A row that has seen no key yet (only rows past T) keeps m = -inf: shift by 0 instead, so
      // alpha and P are e^-inf = 0 rather than NaN.
      const float shift = m_new == -INFINITY ? 0.0f : m_new;
      const float alpha = expf(m[t] - shift);
      m[t] = m_new;
      float sum = 0.0f;
      AL_UNROLL
      for (int c = 0; c < KT; ++c) {
        const float p = expf(s[t][c] - shift);  // 0 where masked (s = -inf)
        ps[r[t] * ldp + cg + 8 * c] = p;
        sum += p;
      }
      l[t] = alpha * l[t] + sum;
      AL_UNROLL
      for (int c = 0; c < DC; ++c) acc[t][c] *= alpha;
    }
    __syncwarp();  // the warp's P rows are written by its 8 lanes per row and read by all of them

    tile_accumulate(acc, ps, ldp, vs, ldv, ncv, r, cg, jn);
  }

  float* ob = a.out.p + b * a.out.sb + h * a.out.sh;
  float* lb = a.lse + static_cast<int64_t>(bh) * g.T;
  AL_UNROLL
  for (int t = 0; t < RT; ++t) {
    const float lt = group_sum(l[t]);
    if (r[t] < rows) {
      const int i = i0 + r[t];
      const float inv = 1.0f / lt;
      AL_UNROLL
      for (int c = 0; c < DC; ++c) {
        const int d = cg + 8 * c;
        if (d < g.Dv) ob[static_cast<int64_t>(i) * a.out.ld + d] = acc[t][c] * inv;
      }
      if (cg == 0) lb[i] = m[t] + logf(lt);
    }
  }
}

// ---- backward: D_i = <dout_i, out_i> ------------------------------------------------------------

struct DotArgs {
  Heads out, dout;
  float* dd;  // [B, H, T]
  int H, T, Dv;
  int64_t rows;  // B * H * T
};

__global__ void softmax_attention_bwd_dot_kernel(DotArgs a) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kDotThreads / 32) + (threadIdx.x >> 5);
  const int lane = static_cast<int>(threadIdx.x) & 31;
  float acc = 0.0f;
  if (row < a.rows) {  // warp-uniform: the shuffles below run in whole warps either way
    const int64_t i = row % a.T, bh = row / a.T, b = bh / a.H, h = bh % a.H;
    const float* o = a.out.p + b * a.out.sb + h * a.out.sh + i * a.out.ld;
    const float* go = a.dout.p + b * a.dout.sb + h * a.dout.sh + i * a.dout.ld;
    for (int d = lane; d < a.Dv; d += 32) acc += o[d] * go[d];
  }
  AL_UNROLL
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(kFull, acc, off);
  if (lane == 0 && row < a.rows) a.dd[row] = acc;
}

// ---- backward: dq (a block per query tile) ------------------------------------------------------

struct BwdArgs {
  Heads q, k, v, dout;
  const float* lse;  // [B, H, T]
  const float* dd;   // [B, H, T]
  HeadsOut dq, dk, dv;
  Geom g;
};

template <class C>
size_t dq_smem(int Dk, int Dv) {
  return carved(C::Br * tile_ld(Dk)) + carved(C::Br * tile_ld(Dv)) + carved(C::Bc * tile_ld(Dk)) +
         carved(C::Bc * tile_ld(Dv)) + carved(C::Br * (C::Bc + 1));
}

template <class C>
__global__ void softmax_attention_bwd_dq_kernel(BwdArgs a) {
  constexpr int Br = C::Br, Bc = C::Bc, DC = C::DC, RT = Br / 16, KT = Bc / 8;
  static_assert(Br % 16 == 0 && Bc % 8 == 0, "tile shape");
  const Geom& g = a.g;
  const int bh = static_cast<int>(blockIdx.y), b = bh / g.H, h = bh % g.H;
  const int i0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * Br;
  const int rows = imin(Br, g.T - i0);
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  const int rg = lane >> 3, cg = lane & 7;
  const int ldk = tile_ld(g.Dk), ldv = tile_ld(g.Dv), ldp = Bc + 1;
  const int nck = round8(g.Dk) / 8;

  simt::SmemCarver carve;
  float* qs = carve.take<float>(Br * ldk);
  float* dos = carve.take<float>(Br * ldv);
  float* ks = carve.take<float>(Bc * ldk);
  float* vs = carve.take<float>(Bc * ldv);
  float* dss = carve.take<float>(Br * ldp);

  const float* kb = a.k.p + b * a.k.sb + h * a.k.sh;
  const float* vb = a.v.p + b * a.v.sb + h * a.v.sh;
  load_tile(qs, ldk, Br, a.q.p + b * a.q.sb + h * a.q.sh + static_cast<int64_t>(i0) * a.q.ld, a.q.ld, rows, g.Dk);
  load_tile(dos, ldv, Br, a.dout.p + b * a.dout.sb + h * a.dout.sh + static_cast<int64_t>(i0) * a.dout.ld,
            a.dout.ld, rows, g.Dv);

  const int64_t row0 = static_cast<int64_t>(bh) * g.T + i0;  // (b, h, i0) in lse and D
  int r[RT], n[RT];
  float lse[RT], dd[RT], acc[RT][DC];
  AL_UNROLL
  for (int t = 0; t < RT; ++t) {
    r[t] = warp * (Br / kWarps) + rg * RT + t;
    const bool valid = r[t] < rows;
    n[t] = valid ? visible_keys(g, i0 + r[t]) : 0;
    lse[t] = valid ? a.lse[row0 + r[t]] : 0.0f;
    dd[t] = valid ? a.dd[row0 + r[t]] : 0.0f;
    AL_UNROLL
    for (int c = 0; c < DC; ++c) acc[t][c] = 0.0f;
  }
  const int nmax = visible_keys(g, i0 + rows - 1);

  for (int j0 = 0; j0 < nmax; j0 += Bc) {
    const int jn = imin(Bc, nmax - j0);
    __syncthreads();  // Q, dO are loaded; every warp is done with the previous K, V
    load_tile(ks, ldk, Bc, kb + static_cast<int64_t>(j0) * a.k.ld, a.k.ld, jn, g.Dk);
    load_tile(vs, ldv, Bc, vb + static_cast<int64_t>(j0) * a.v.ld, a.v.ld, jn, g.Dv);
    __syncthreads();

    float s[RT][KT], dp[RT][KT];
    tile_dots(s, qs, ks, ldk, r, cg, g.Dk);
    tile_dots(dp, dos, vs, ldv, r, cg, g.Dv);
    AL_UNROLL
    for (int t = 0; t < RT; ++t)
      AL_UNROLL
      for (int c = 0; c < KT; ++c) {
        const float p = j0 + cg + 8 * c < n[t] ? expf(s[t][c] * g.scale - lse[t]) : 0.0f;
        dss[r[t] * ldp + cg + 8 * c] = p * (dp[t][c] - dd[t]);
      }
    __syncwarp();  // the warp's dS rows, written 8 lanes per row, are read by all of them

    tile_accumulate(acc, dss, ldp, ks, ldk, nck, r, cg, jn);
  }

  float* qb = a.dq.p + b * a.dq.sb + h * a.dq.sh;
  AL_UNROLL
  for (int t = 0; t < RT; ++t)
    if (r[t] < rows)
      AL_UNROLL
      for (int c = 0; c < DC; ++c) {
        const int d = cg + 8 * c;
        if (d < g.Dk) qb[static_cast<int64_t>(i0 + r[t]) * a.dq.ld + d] = g.scale * acc[t][c];
      }
}

// ---- backward: dk, dv (a block per key tile) ----------------------------------------------------

template <class C>
size_t dkv_smem(int Dk, int Dv) {
  return carved(C::Bc * tile_ld(Dk)) + carved(C::Bc * tile_ld(Dv)) + carved(C::Br * tile_ld(Dk)) +
         carved(C::Br * tile_ld(Dv)) + 2 * carved(C::Br) + 2 * carved(C::Bc * (C::Br + 1));
}

template <class C>
__global__ void softmax_attention_bwd_dkdv_kernel(BwdArgs a) {
  constexpr int Br = C::Br, Bc = C::Bc, DC = C::DC, RT = Bc / 16, IT = Br / 8;
  static_assert(Bc % 16 == 0 && Br % 8 == 0, "tile shape");
  const Geom& g = a.g;
  const int bh = static_cast<int>(blockIdx.y), b = bh / g.H, h = bh % g.H;
  const int j0 = static_cast<int>(blockIdx.x) * Bc;
  const int keys = imin(Bc, g.S - j0);
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  const int rg = lane >> 3, cg = lane & 7;
  const int ldk = tile_ld(g.Dk), ldv = tile_ld(g.Dv), ldp = Br + 1;
  const int nck = round8(g.Dk) / 8, ncv = round8(g.Dv) / 8;

  simt::SmemCarver carve;
  float* ks = carve.take<float>(Bc * ldk);
  float* vs = carve.take<float>(Bc * ldv);
  float* qs = carve.take<float>(Br * ldk);
  float* dos = carve.take<float>(Br * ldv);
  float* lses = carve.take<float>(Br);
  float* dds = carve.take<float>(Br);
  float* pts = carve.take<float>(Bc * ldp);   // P^T: own keys x the tile's queries
  float* dsts = carve.take<float>(Bc * ldp);  // dS^T

  load_tile(ks, ldk, Bc, a.k.p + b * a.k.sb + h * a.k.sh + static_cast<int64_t>(j0) * a.k.ld, a.k.ld, keys, g.Dk);
  load_tile(vs, ldv, Bc, a.v.p + b * a.v.sb + h * a.v.sh + static_cast<int64_t>(j0) * a.v.ld, a.v.ld, keys, g.Dv);
  const float* qb = a.q.p + b * a.q.sb + h * a.q.sh;
  const float* gb = a.dout.p + b * a.dout.sb + h * a.dout.sh;
  const float* lb = a.lse + static_cast<int64_t>(bh) * g.T;
  const float* db = a.dd + static_cast<int64_t>(bh) * g.T;

  int r[RT];  // own keys, in the tile
  float dk[RT][DC], dv[RT][DC];
  AL_UNROLL
  for (int t = 0; t < RT; ++t) {
    r[t] = warp * (Bc / kWarps) + rg * RT + t;
    AL_UNROLL
    for (int c = 0; c < DC; ++c) dk[t][c] = dv[t][c] = 0.0f;
  }

  // Queries before the first one that sees key j0 see none of the tile's keys.
  for (int i0 = first_query_seeing(g, j0); i0 < g.T; i0 += Br) {
    const int in = imin(Br, g.T - i0);
    __syncthreads();  // K, V are loaded; every warp is done with the previous Q, dO, lse, D
    load_tile(qs, ldk, Br, qb + static_cast<int64_t>(i0) * a.q.ld, a.q.ld, in, g.Dk);
    load_tile(dos, ldv, Br, gb + static_cast<int64_t>(i0) * a.dout.ld, a.dout.ld, in, g.Dv);
    for (int i = static_cast<int>(threadIdx.x); i < Br; i += kThreads) {
      lses[i] = i < in ? lb[i0 + i] : 0.0f;
      dds[i] = i < in ? db[i0 + i] : 0.0f;
    }
    __syncthreads();

    float s[RT][IT], dp[RT][IT];
    tile_dots(s, ks, qs, ldk, r, cg, g.Dk);
    tile_dots(dp, vs, dos, ldv, r, cg, g.Dv);
    AL_UNROLL
    for (int c = 0; c < IT; ++c) {
      const int i = cg + 8 * c;
      const int n = i < in ? visible_keys(g, i0 + i) : 0;  // keys past S: r >= keys means j >= S >= n
      AL_UNROLL
      for (int t = 0; t < RT; ++t) {
        const float p = j0 + r[t] < n ? expf(s[t][c] * g.scale - lses[i]) : 0.0f;
        pts[r[t] * ldp + i] = p;
        dsts[r[t] * ldp + i] = p * (dp[t][c] - dds[i]);
      }
    }
    __syncwarp();  // the warp's P^T, dS^T rows, written 8 lanes per row, are read by all of them

    for (int i = 0; i < in; ++i) {
      float qv[DC], gv[DC];
      AL_UNROLL
      for (int c = 0; c < DC; ++c) {
        qv[c] = c < nck ? qs[i * ldk + cg + 8 * c] : 0.0f;
        gv[c] = c < ncv ? dos[i * ldv + cg + 8 * c] : 0.0f;
      }
      AL_UNROLL
      for (int t = 0; t < RT; ++t) {
        const float p = pts[r[t] * ldp + i], ds = dsts[r[t] * ldp + i];
        AL_UNROLL
        for (int c = 0; c < DC; ++c) {
          if (c < nck) dk[t][c] += ds * qv[c];
          if (c < ncv) dv[t][c] += p * gv[c];
        }
      }
    }
  }

  float* kout = a.dk.p + b * a.dk.sb + h * a.dk.sh;
  float* vout = a.dv.p + b * a.dv.sb + h * a.dv.sh;
  AL_UNROLL
  for (int t = 0; t < RT; ++t)
    if (r[t] < keys) {
      const int64_t j = j0 + r[t];
      AL_UNROLL
      for (int c = 0; c < DC; ++c) {
        const int d = cg + 8 * c;
        if (d < g.Dk) kout[j * a.dk.ld + d] = g.scale * dk[t][c];
        if (d < g.Dv) vout[j * a.dv.ld + d] = dv[t][c];
      }
    }
}

// ---- host side ----------------------------------------------------------------------------------

constexpr std::string_view kName = "softmax_attention";

bool unit_last_stride(const Tensor& t) { return t.size(3) <= 1 || t.stride(3) == 1; }

Heads heads(const Tensor& t) { return {t.data<float>(), t.stride(0), t.stride(1), t.stride(2)}; }
HeadsOut heads_out(Tensor& t) { return {t.data<float>(), t.stride(0), t.stride(1), t.stride(2)}; }

// Checks what the kernels need beyond check(): f32, unit-stride D, head dims <= 128, sizes that fit
// the launch grid and int indices.
void check_cuda_inputs(const Tensor& q, const Tensor& k, const Tensor& v) {
  AL_CHECK_DTYPE(q.dtype() == DType::f32, kName, ": the CUDA kernels take f32 only; got q=", q, ", k=", k, ", v=", v);
  AL_ASSERT(unit_last_stride(q) && unit_last_stride(k) && unit_last_stride(v), kName,
            ": q, k, v need a unit-stride last dim; got q=", q, ", k=", k, ", v=", v);
  AL_CHECK_SHAPE(q.size(3) <= kMaxHeadDim && v.size(3) <= kMaxHeadDim, kName,
                 ": the CUDA kernels take head dims Dk, Dv <= ", kMaxHeadDim, "; got q=", q, ", k=", k, ", v=", v);
  AL_CHECK_SHAPE(q.size(0) * q.size(1) <= 65535 && k.size(2) < (int64_t{1} << 30), kName,
                 ": the CUDA kernels take B * H <= 65535 and S < 2^30; got q=", q, ", k=", k, ", v=", v);
}

Geom geom_of(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask, double scale) {
  const int64_t S = k.size(2);
  const int64_t prefix = mask.prefix < 0 ? 0 : (mask.prefix > S ? S : mask.prefix);  // positions are < S
  return {static_cast<int>(q.size(1)), static_cast<int>(q.size(2)), static_cast<int>(S),
          static_cast<int>(q.size(3)), static_cast<int>(v.size(3)), mask.causal ? 1 : 0,
          static_cast<int>(prefix), static_cast<float>(attention_scale(scale, q.size(3)))};
}

// Calls fn(C{}) with the tile shape for the padded head dim max(Dk, Dv).
template <class C32, class C64, class C128, class Fn>
void by_head_dim(const Geom& g, Fn&& fn) {
  const int dmax = g.Dk > g.Dv ? g.Dk : g.Dv;
  if (dmax <= 32)
    fn(C32{});
  else if (dmax <= 64)
    fn(C64{});
  else
    fn(C128{});
}

unsigned tiles(int n, int tile) { return static_cast<unsigned>((n + tile - 1) / tile); }

Tensor empty_token_major(int64_t B, int64_t H, int64_t rows, int64_t D, Device device) {
  return Tensor::empty(Shape{B, rows, H, D}, DType::f32, device).permute({0, 2, 1, 3});
}

}  // namespace

SoftmaxAttentionOp::Forward SoftmaxAttentionOp::forward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                        const AttentionMask& mask, double scale) {
  check(q, k, v, mask);
  check_cuda_inputs(q, k, v);
  const Geom g = geom_of(q, k, v, mask, scale);
  const int64_t B = q.size(0), H = q.size(1);
  Forward f{empty_token_major(B, H, g.T, g.Dv, q.device()), Tensor::empty(Shape{B, H, g.T}, DType::f32, q.device())};
  if (B * H * g.T == 0) return f;
  FwdArgs args{heads(q), heads(k), heads(v), heads_out(f.out), f.lse.data<float>(), g};
  by_head_dim<Fwd32, Fwd64, Fwd128>(g, [&](auto tiles_tag) {
    using C = decltype(tiles_tag);
    AL_CUDA_LAUNCH(softmax_attention_fwd_kernel<C>, dim3(tiles(g.T, C::Br), static_cast<unsigned>(B * H)),
                   dim3(kThreads), fwd_smem<C>(g.Dk, g.Dv), args);
  });
  return f;
}

SoftmaxAttentionOp::Grads SoftmaxAttentionOp::backward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                       const Tensor& out, const Tensor& lse, const Tensor& dout,
                                                       const AttentionMask& mask, double scale) {
  check_cuda_inputs(q, k, v);
  const Geom g = geom_of(q, k, v, mask, scale);
  const int64_t B = q.size(0), H = q.size(1);
  AL_ASSERT(unit_last_stride(out) && lse.is_contiguous() && unit_last_stride(dout) && out.shape() == dout.shape() &&
                out.shape() == Shape({B, H, g.T, g.Dv}) && lse.shape() == Shape({B, H, g.T}) &&
                out.dtype() == q.dtype() && lse.dtype() == q.dtype() && dout.dtype() == q.dtype() &&
                out.device() == q.device() && lse.device() == q.device() && dout.device() == q.device(),
            kName, ": backward got out=", out, ", lse=", lse, ", dout=", dout, " for q=", q, ", v=", v);
  // The CPU op's layouts: self-attention (T = S, Dk = Dv) puts dq, dk, dv in one [B, T, 3, H, D]
  // buffer (a fused q|k|v projection's gradient, taken as it is by split_heads' backward); else
  // each is token-major on its own. The kernels write every element.
  Grads gr;
  if (g.T == g.S && g.Dk == g.Dv) {
    const int64_t T = g.T, D = g.Dk;
    const Tensor joint = Tensor::empty(Shape{B, T, 3, H, D}, DType::f32, q.device());
    auto part = [&](int64_t i) {
      return Tensor(joint.storage(), Shape{B, H, T, D}, {T * 3 * H * D, D, 3 * H * D, 1}, i * H * D, DType::f32);
    };
    gr = {part(0), part(1), part(2)};
  } else {
    gr = {empty_token_major(B, H, g.T, g.Dk, q.device()), empty_token_major(B, H, g.S, g.Dk, q.device()),
          empty_token_major(B, H, g.S, g.Dv, q.device())};
  }
  if (B * H * g.T == 0) {
    cuda::fill(gr.dq, 0.0), cuda::fill(gr.dk, 0.0), cuda::fill(gr.dv, 0.0);
    return gr;
  }

  Tensor dd = Tensor::empty(Shape{B, H, g.T}, DType::f32, q.device());
  const int64_t rows = B * H * g.T;
  const DotArgs dot{heads(out), heads(dout), dd.data<float>(), g.H, g.T, g.Dv, rows};
  AL_CUDA_LAUNCH(softmax_attention_bwd_dot_kernel, dim3(cuda::blocks_for(rows, kDotThreads / 32, 0x7fffffffu)),
                 dim3(kDotThreads), 0, dot);

  BwdArgs args{heads(q),        heads(k), heads(v), heads(dout), lse.data<float>(), dd.data<float>(), heads_out(gr.dq),
               heads_out(gr.dk), heads_out(gr.dv), g};
  by_head_dim<Dq32, Dq64, Dq128>(g, [&](auto tiles_tag) {
    using C = decltype(tiles_tag);
    AL_CUDA_LAUNCH(softmax_attention_bwd_dq_kernel<C>, dim3(tiles(g.T, C::Br), static_cast<unsigned>(B * H)),
                   dim3(kThreads), dq_smem<C>(g.Dk, g.Dv), args);
  });
  by_head_dim<Dkv32, Dkv64, Dkv128>(g, [&](auto tiles_tag) {
    using C = decltype(tiles_tag);
    AL_CUDA_LAUNCH(softmax_attention_bwd_dkdv_kernel<C>, dim3(tiles(g.S, C::Bc), static_cast<unsigned>(B * H)),
                   dim3(kThreads), dkv_smem<C>(g.Dk, g.Dv), args);
  });
  return gr;
}

}  // namespace attnlab
