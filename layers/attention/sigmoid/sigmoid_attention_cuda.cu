// CUDA forward and backward of the fused sigmoid attention, f32, on CUDA cores: the tile kernels
// of softmax_attention_cuda.cu without the online softmax (no row max, no rescaling, no row sum,
// no log-sum-exp, no D_i pass).
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
// Launch shapes. The tile kernels run 128 threads = 4 warps; lane = 8 rg + cg (row group rg 0..3,
// column group cg 0..7). A block owns a tile of "own rows" (queries in forward and dq, keys in
// dk/dv); warp w owns a quarter of them and row group rg owns RT = rows / 16 consecutive ones, each
// shared by the 8 lanes cg of that group. In a score phase lane cg computes the partner columns
// cg, cg + 8, ... (keys, or queries in dk/dv) of its RT rows; in an accumulation phase it owns the
// head-dim columns d = cg, cg + 8, ... So one score row lives in 8 lanes of one warp: the score
// tile a warp writes to shared memory is read back by that warp only (a __syncwarp, not a
// __syncthreads), and a row's dS sum is 3 xor-shuffles. Tile sizes depend on the padded head dim,
// max(Dk, Dv) rounded up to 32, 64 or 128, so every block fits in the 48 KiB of dynamic shared
// memory a launch may use without an opt-in (bytes for Dk = Dv = 32 / 64 / 128):
//   forward  grid (ceil(T/Br), B*H); Br x Bc = 64x64 / 64x32 / 32x24 queries x keys;
//            smem Q [Br], K [Bc], V [Bc] tiles + P [Br, Bc+1] = 41984 / 41728 / 44480 B.
//   dq       grid (ceil(T/Br), B*H); Br x Bc = 64x32 / 32x32 / 16x24 queries x keys;
//            smem Q, dO [Br], K, V [Bc] + dS [Br, Bc+1] = 33792 / 37504 / 42880 B.
//   dk, dv   grid (ceil(S/Bc), B*H); Bc x Br = 64x32 / 32x32 / 16x24 keys x queries;
//            smem K, V [Bc], Q, dO [Br], P^T, dS^T [Bc, Br+1] = 42240 / 41728 / 44480 B.
//   db       grid H, 32 threads (per_head and only when db is wanted): one warp per head.
// Query tiles go heaviest first (the last ones see the most keys under a causal mask).
//
// What each thread does (RT own rows, columns split 8 ways as above):
//   forward: per key tile (K, V loaded by the block; tiles past n of the tile's last query are
//     never visited, so tiles wholly above the causal diagonal are skipped) compute RT x Bc/8
//     scores, write sigmoid(scale s + b_i) for visible keys and 0 for masked ones to its warp's
//     P rows, then add P V_J into its RT x Dv/8 accumulators; at the end it writes its out columns.
//   dq: the forward's loop with two dot products per score (s from Q, K; dP from dO, V), dS into
//     its warp's rows and into its running dS sums, then dq += dS K_J; finally dq = scale acc, and
//     lane cg = 0 writes the row's dS sum (reduced over the 8 lanes) when db is wanted.
//   dk, dv: K_J, V_J stay in shared memory; per query tile from the first query that sees key j0
//     (Q, dO loaded by the block) compute P and dS of its RT keys against the Br/8 queries
//     i = cg, cg + 8, ..., write them to its warp's rows of P^T and dS^T, then dv += P^T dO_I,
//     dk += dS^T Q_I over the tile's queries; finally dk = scale acc, dv = acc.
//   db: lane l sums the row sums of head h at (b, i) = l, l + 32, ... in row-major order (double),
//     then the warp adds its 32 partial sums in a fixed xor tree; lane 0 writes db[h].
//
// Determinism: no atomics; every output element is written by one thread, every sum runs in a
// fixed order (the xor-shuffle trees included), so results do not depend on scheduling.
// Shared tiles have rows of round8(D) + 1 floats: the odd stride puts the 8 lanes that read 8
// different rows at one d in 8 different banks, and columns [D, round8(D)) hold zeros so the
// accumulation loops run over whole groups of 8 columns with no per-element bound.
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "layers/attention/sigmoid/sigmoid_attention.h"
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

// Sizes, mask and bias form, the same for every block of a launch.
struct Geom {
  int H, T, S, Dk, Dv;
  int causal;
  int prefix;  // clamped to [0, S]
  float scale;
  int neglog;         // b_i = -log n_i
  const float* bias;  // b [H] (per_head), else null
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

// b_i of a row of head h that sees n >= 1 keys (-log n rounded from double, as on the CPU).
__device__ inline float row_bias(const Geom& g, int h, int n) {
  if (g.neglog) return n > 0 ? static_cast<float>(-log(static_cast<double>(n))) : 0.0f;
  return g.bias ? g.bias[h] : 0.0f;
}

__device__ inline float sigmoid_of(float x) {
  if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
  const float e = expf(x);
  return e / (1.0f + e);
}

// dst [R, ld] (shared) <- rows [0, valid) x columns [0, D) of src (row stride src_ld), zeros in rows
// [valid, R) and columns [D, round8(D)). Warps take rows, lanes take columns (coalesced reads).
__device__ inline void load_tile(float* dst, int ld, int R, const float* src, int64_t src_ld, int valid, int D) {
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  const int w = round8(D);
  for (int r = warp; r < R; r += kWarps)
    for (int d = lane; d < w; d += 32) dst[r * ld + d] = (r < valid && d < D) ? src[r * src_ld + d] : 0.0f;
}

// Sum over the 8 lanes of a row group (lanes 8 rg .. 8 rg + 7): xor 1, 2, 4 stays inside.
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
  Geom g;
};

template <class C>
size_t fwd_smem(int Dk, int Dv) {
  return carved(C::Br * tile_ld(Dk)) + carved(C::Bc * tile_ld(Dk)) + carved(C::Bc * tile_ld(Dv)) +
         carved(C::Br * (C::Bc + 1));
}

template <class C>
__global__ void sigmoid_attention_fwd_kernel(FwdArgs a) {
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
  float rb[RT], acc[RT][DC];
  AL_UNROLL
  for (int t = 0; t < RT; ++t) {
    r[t] = warp * (Br / kWarps) + rg * RT + t;
    n[t] = r[t] < rows ? visible_keys(g, i0 + r[t]) : 0;
    rb[t] = row_bias(g, h, n[t]);
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
    for (int t = 0; t < RT; ++t)
      AL_UNROLL
      for (int c = 0; c < KT; ++c)
        ps[r[t] * ldp + cg + 8 * c] = j0 + cg + 8 * c < n[t] ? sigmoid_of(s[t][c] * g.scale + rb[t]) : 0.0f;
    __syncwarp();  // the warp's P rows are written by its 8 lanes per row and read by all of them

    tile_accumulate(acc, ps, ldp, vs, ldv, ncv, r, cg, jn);
  }

  float* ob = a.out.p + b * a.out.sb + h * a.out.sh;
  AL_UNROLL
  for (int t = 0; t < RT; ++t)
    if (r[t] < rows)
      AL_UNROLL
      for (int c = 0; c < DC; ++c) {
        const int d = cg + 8 * c;
        if (d < g.Dv) ob[static_cast<int64_t>(i0 + r[t]) * a.out.ld + d] = acc[t][c];
      }
}

// ---- backward: dq and the rows' dS sums (a block per query tile) --------------------------------

struct BwdArgs {
  Heads q, k, v, dout;
  HeadsOut dq, dk, dv;
  float* ds_rows;  // [B, H, T]: sum_j dS_ij, written when db is wanted, else null
  Geom g;
};

template <class C>
size_t dq_smem(int Dk, int Dv) {
  return carved(C::Br * tile_ld(Dk)) + carved(C::Br * tile_ld(Dv)) + carved(C::Bc * tile_ld(Dk)) +
         carved(C::Bc * tile_ld(Dv)) + carved(C::Br * (C::Bc + 1));
}

template <class C>
__global__ void sigmoid_attention_bwd_dq_kernel(BwdArgs a) {
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

  int r[RT], n[RT];
  float rb[RT], dsum[RT], acc[RT][DC];
  AL_UNROLL
  for (int t = 0; t < RT; ++t) {
    r[t] = warp * (Br / kWarps) + rg * RT + t;
    n[t] = r[t] < rows ? visible_keys(g, i0 + r[t]) : 0;
    rb[t] = row_bias(g, h, n[t]);
    dsum[t] = 0.0f;
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
        float ds = 0.0f;
        if (j0 + cg + 8 * c < n[t]) {
          const float p = sigmoid_of(s[t][c] * g.scale + rb[t]);
          ds = dp[t][c] * (p - p * p);
        }
        dss[r[t] * ldp + cg + 8 * c] = ds;
        dsum[t] += ds;
      }
    __syncwarp();  // the warp's dS rows, written 8 lanes per row, are read by all of them

    tile_accumulate(acc, dss, ldp, ks, ldk, nck, r, cg, jn);
  }

  float* qb = a.dq.p + b * a.dq.sb + h * a.dq.sh;
  AL_UNROLL
  for (int t = 0; t < RT; ++t) {
    const float row_sum = group_sum(dsum[t]);  // every lane: the shuffles run in whole warps
    if (r[t] < rows) {
      AL_UNROLL
      for (int c = 0; c < DC; ++c) {
        const int d = cg + 8 * c;
        if (d < g.Dk) qb[static_cast<int64_t>(i0 + r[t]) * a.dq.ld + d] = g.scale * acc[t][c];
      }
      if (a.ds_rows && cg == 0) a.ds_rows[static_cast<int64_t>(bh) * g.T + i0 + r[t]] = row_sum;
    }
  }
}

// ---- backward: dk, dv (a block per key tile) ----------------------------------------------------

template <class C>
size_t dkv_smem(int Dk, int Dv) {
  return carved(C::Bc * tile_ld(Dk)) + carved(C::Bc * tile_ld(Dv)) + carved(C::Br * tile_ld(Dk)) +
         carved(C::Br * tile_ld(Dv)) + 2 * carved(C::Bc * (C::Br + 1));
}

template <class C>
__global__ void sigmoid_attention_bwd_dkdv_kernel(BwdArgs a) {
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
  float* pts = carve.take<float>(Bc * ldp);   // P^T: own keys x the tile's queries
  float* dsts = carve.take<float>(Bc * ldp);  // dS^T

  load_tile(ks, ldk, Bc, a.k.p + b * a.k.sb + h * a.k.sh + static_cast<int64_t>(j0) * a.k.ld, a.k.ld, keys, g.Dk);
  load_tile(vs, ldv, Bc, a.v.p + b * a.v.sb + h * a.v.sh + static_cast<int64_t>(j0) * a.v.ld, a.v.ld, keys, g.Dv);
  const float* qb = a.q.p + b * a.q.sb + h * a.q.sh;
  const float* gb = a.dout.p + b * a.dout.sb + h * a.dout.sh;

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
    __syncthreads();  // K, V are loaded; every warp is done with the previous Q, dO
    load_tile(qs, ldk, Br, qb + static_cast<int64_t>(i0) * a.q.ld, a.q.ld, in, g.Dk);
    load_tile(dos, ldv, Br, gb + static_cast<int64_t>(i0) * a.dout.ld, a.dout.ld, in, g.Dv);
    __syncthreads();

    float s[RT][IT], dp[RT][IT];
    tile_dots(s, ks, qs, ldk, r, cg, g.Dk);
    tile_dots(dp, vs, dos, ldv, r, cg, g.Dv);
    AL_UNROLL
    for (int c = 0; c < IT; ++c) {
      const int i = cg + 8 * c;
      const int n = i < in ? visible_keys(g, i0 + i) : 0;  // keys past S: r >= keys means j >= S >= n
      const float rbi = row_bias(g, h, n);
      AL_UNROLL
      for (int t = 0; t < RT; ++t) {
        float p = 0.0f, ds = 0.0f;
        if (j0 + r[t] < n) {
          p = sigmoid_of(s[t][c] * g.scale + rbi);
          ds = dp[t][c] * (p - p * p);
        }
        pts[r[t] * ldp + i] = p;
        dsts[r[t] * ldp + i] = ds;
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
  AL_UNROLL
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(kFull, acc, off);
  if (lane == 0) a.db[h] = static_cast<float>(acc);
}

// ---- host side ----------------------------------------------------------------------------------

bool unit_last_stride(const Tensor& t) { return t.size(3) <= 1 || t.stride(3) == 1; }

Heads heads(const Tensor& t) { return {t.data<float>(), t.stride(0), t.stride(1), t.stride(2)}; }
HeadsOut heads_out(Tensor& t) { return {t.data<float>(), t.stride(0), t.stride(1), t.stride(2)}; }

// Checks what the kernels need beyond check(): f32, unit-stride D, head dims <= 128, sizes that fit
// the launch grid and int indices.
void check_cuda_inputs(std::string_view op, const Tensor& q, const Tensor& k, const Tensor& v) {
  AL_CHECK_DTYPE(q.dtype() == DType::f32, op, ": the CUDA kernels take f32 only; got q=", q, ", k=", k, ", v=", v);
  AL_ASSERT(unit_last_stride(q) && unit_last_stride(k) && unit_last_stride(v), op,
            ": q, k, v need a unit-stride last dim; got q=", q, ", k=", k, ", v=", v);
  AL_CHECK_SHAPE(q.size(3) <= kMaxHeadDim && v.size(3) <= kMaxHeadDim, op,
                 ": the CUDA kernels take head dims Dk, Dv <= ", kMaxHeadDim, "; got q=", q, ", k=", k, ", v=", v);
  AL_CHECK_SHAPE(q.size(0) * q.size(1) <= 65535 && k.size(2) < (int64_t{1} << 30), op,
                 ": the CUDA kernels take B * H <= 65535 and S < 2^30; got q=", q, ", k=", k, ", v=", v);
}

// `bias` is the contiguous b [H] of the per-head form (else undefined).
Geom geom_of(const Tensor& q, const Tensor& k, const Tensor& v, SigmoidBias mode, const Tensor& bias,
             const AttentionMask& mask, double scale) {
  const int64_t S = k.size(2);
  const int64_t prefix = mask.prefix < 0 ? 0 : (mask.prefix > S ? S : mask.prefix);  // positions are < S
  return {static_cast<int>(q.size(1)),
          static_cast<int>(q.size(2)),
          static_cast<int>(S),
          static_cast<int>(q.size(3)),
          static_cast<int>(v.size(3)),
          mask.causal ? 1 : 0,
          static_cast<int>(prefix),
          static_cast<float>(attention_scale(scale, q.size(3))),
          mode == SigmoidBias::neglog_visible ? 1 : 0,
          mode == SigmoidBias::per_head ? bias.data<float>() : nullptr};
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

Tensor SigmoidAttentionOp::forward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v, SigmoidBias mode,
                                   const Tensor& bias, const AttentionMask& mask, double scale) {
  check(q, k, v, mode, bias, mask);
  check_cuda_inputs(name(mode), q, k, v);
  const Tensor bc = mode == SigmoidBias::per_head ? bias.contiguous() : Tensor();
  const Geom g = geom_of(q, k, v, mode, bc, mask, scale);
  const int64_t B = q.size(0), H = q.size(1);
  Tensor out = empty_token_major(B, H, g.T, g.Dv, q.device());
  if (B * H * g.T == 0) return out;
  FwdArgs args{heads(q), heads(k), heads(v), heads_out(out), g};
  by_head_dim<Fwd32, Fwd64, Fwd128>(g, [&](auto tiles_tag) {
    using C = decltype(tiles_tag);
    AL_CUDA_LAUNCH(sigmoid_attention_fwd_kernel<C>, dim3(tiles(g.T, C::Br), static_cast<unsigned>(B * H)),
                   dim3(kThreads), fwd_smem<C>(g.Dk, g.Dv), args);
  });
  return out;
}

SigmoidAttentionOp::Grads SigmoidAttentionOp::backward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                       SigmoidBias mode, const Tensor& bias, const Tensor& dout,
                                                       const AttentionMask& mask, double scale, bool need_db) {
  const std::string_view op = name(mode);
  check_cuda_inputs(op, q, k, v);
  const Tensor bc = mode == SigmoidBias::per_head ? bias.contiguous() : Tensor();
  const Geom g = geom_of(q, k, v, mode, bc, mask, scale);
  const int64_t B = q.size(0), H = q.size(1);
  AL_ASSERT(unit_last_stride(dout) && dout.shape() == Shape({B, H, g.T, g.Dv}) && dout.dtype() == q.dtype() &&
                dout.device() == q.device(),
            op, ": backward got dout=", dout, " for q=", q, ", v=", v);
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
    gr = {part(0), part(1), part(2), Tensor()};
  } else {
    gr = {empty_token_major(B, H, g.T, g.Dk, q.device()), empty_token_major(B, H, g.S, g.Dk, q.device()),
          empty_token_major(B, H, g.S, g.Dv, q.device()), Tensor()};
  }
  const bool want_db = need_db && mode == SigmoidBias::per_head;
  if (want_db) gr.db = Tensor::empty(Shape{H}, DType::f32, q.device());
  if (B * H * g.T == 0) {
    cuda::fill(gr.dq, 0.0), cuda::fill(gr.dk, 0.0), cuda::fill(gr.dv, 0.0);
    if (want_db) cuda::fill(gr.db, 0.0);
    return gr;
  }

  Tensor ds_rows = want_db ? Tensor::empty(Shape{B, H, g.T}, DType::f32, q.device()) : Tensor();
  BwdArgs args{heads(q),         heads(k),         heads(v), heads(dout), heads_out(gr.dq), heads_out(gr.dk),
               heads_out(gr.dv), want_db ? ds_rows.data<float>() : nullptr, g};
  by_head_dim<Dq32, Dq64, Dq128>(g, [&](auto tiles_tag) {
    using C = decltype(tiles_tag);
    AL_CUDA_LAUNCH(sigmoid_attention_bwd_dq_kernel<C>, dim3(tiles(g.T, C::Br), static_cast<unsigned>(B * H)),
                   dim3(kThreads), dq_smem<C>(g.Dk, g.Dv), args);
  });
  by_head_dim<Dkv32, Dkv64, Dkv128>(g, [&](auto tiles_tag) {
    using C = decltype(tiles_tag);
    AL_CUDA_LAUNCH(sigmoid_attention_bwd_dkdv_kernel<C>, dim3(tiles(g.S, C::Bc), static_cast<unsigned>(B * H)),
                   dim3(kThreads), dkv_smem<C>(g.Dk, g.Dv), args);
  });
  if (want_db) {
    const DbArgs db{ds_rows.data<float>(), gr.db.data<float>(), static_cast<int>(B), static_cast<int>(H), g.T};
    AL_CUDA_LAUNCH(sigmoid_attention_bwd_db_kernel, dim3(static_cast<unsigned>(H)), dim3(32), 0, db);
  }
  return gr;
}

}  // namespace attnlab
