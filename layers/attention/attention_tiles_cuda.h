// What the CUDA kernels of the attention variants share (softmax, sigmoid, infsa, linear_infsa and
// affine *_cuda.cu): the tile kernels of a FlashAttention-2 layout on CUDA cores, written once
// with the variant's score function as a policy, and the small pieces the other kernels repeat
// (strided head views, the mask's visible-key counts, warp sums, row dots, dtheta, host-side
// checks and output layouts). A variant's .cu file keeps only what is its own: the policy (score
// function, statistics, epilogue, backward formula) and its extra kernels.
//
// Maths, per (b, h) (glossary in layers/attention/common.h). Query i sits at position p = S - T + i
// and sees exactly the keys [0, n_i): causal n_i = min(S, p + 1), or min(S, max(p + 1, prefix))
// when p < prefix (a bidirectional prefix); not causal n_i = S. n_i >= 1 and never decreases with i.
// The tile kernels compute, with s_ij = <q_i, k_j> (unscaled; the variant applies c = g.scale):
//   forward  P_ij = f(s_ij) for j < n_i (the variant's f, its statistics updated on the way, 0 where
//            masked), out_i = epilogue(sum_j P_ij v_j).
//   dq       dP_ij = <dO_i, v_j>, dS_ij = f'(s_ij, dP_ij, stats_i), dq_i = c sum_j dS_ij k_j.
//   dk, dv   dk_j = c sum_i dS_ij q_i, dv_j = sum_i P_ij dO_i (P, dS recomputed per tile).
// dO is whatever meets V in dP (dout for softmax and sigmoid, dU for infsa).
//
// Shapes: q [B, H, T, Dk], k [B, H, S, Dk], v [B, H, S, Dv], dO [B, H, T, Dv] with any strides and
// a unit-stride last dim (Heads: element (b, h, r, d) at p[b sb + h sh + r ld + d]); out, dq, dk,
// dv [B, H, *, D] views of the same kind (token-major memory, empty_token_major / empty_qkv_grads).
// f32 only; Dk, Dv <= 128; f32 accumulation.
//
// Launch shapes of the tile kernels: 128 threads = 4 warps; lane = 8 rg + cg (row group rg 0..3,
// column group cg 0..7). A block owns a tile of "own rows" (queries in forward and dq, keys in
// dk/dv); warp w owns a quarter of them and row group rg owns RT = rows / 16 consecutive ones, each
// shared by the 8 lanes cg of that group. In a score phase lane cg computes the partner columns
// cg, cg + 8, ... (keys, or queries in dk/dv) of its RT rows; in an accumulation phase it owns the
// head-dim columns d = cg, cg + 8, ... So one score row lives in 8 lanes of one warp: its max and
// sum are 3 xor-shuffles (group_max, group_sum), and the score tile a warp writes to shared memory
// is read back by that warp only (a __syncwarp, not a __syncthreads). Tile sizes depend on the
// padded head dim, max(Dk, Dv) rounded up to 32, 64 or 128, so that every block fits in the 48 KiB
// of dynamic shared memory a launch may use without an opt-in (bytes for Dk = Dv = 32 / 64 / 128):
//   forward  grid (ceil(T/Br), B*H); Br x Bc = 64x64 / 64x32 / 32x24 queries x keys;
//            smem Q [Br], K [Bc], V [Bc] tiles + P [Br, Bc+1] = 41984 / 41728 / 44480 B.
//   dq       grid (ceil(T/Br), B*H); Br x Bc = 64x32 / 32x32 / 16x24 queries x keys;
//            smem Q, dO [Br], K, V [Bc] + dS [Br, Bc+1] = 33792 / 37504 / 42880 B.
//   dk, dv   grid (ceil(S/Bc), B*H); Bc x Br = 64x32 / 32x32 / 16x24 keys x queries;
//            smem K, V [Bc], Q, dO [Br], the variant's per-query statistics (k arrays of Br
//            floats), P^T, dS^T [Bc, Br+1] = 42240 / 41728 / 44480 B + 128 / 128 / 96 B per array.
// Query tiles go heaviest first (the last ones see the most keys under a causal mask).
//
// What each thread does (RT own rows, columns split 8 ways as above):
//   forward: per key tile (K, V loaded by the block; tiles past n of the tile's last query are
//     never visited, so tiles wholly above the causal diagonal are skipped) compute RT x Bc/8
//     scores; the variant turns each row of them into P (writing its warp's P rows) and may
//     rescale that row's accumulators; then P V_J is added into its RT x Dv/8 accumulators. At the
//     end the variant finishes each row (fwd_finish) and the thread writes its out columns.
//   dq: the forward's loop with two dot products per score (s from Q, K; dP from dO, V); dS from
//     the variant into its warp's rows (and the lane's partial row sums of dS), then dq += dS K_J;
//     finally dq = c acc and the variant's dq_finish (all lanes: it may shuffle).
//   dk, dv: K_J, V_J stay in shared memory; per query tile from the first query that sees key j0
//     (Q, dO and the variant's statistics loaded by the block) compute P and dS of its RT keys
//     against the Br/8 queries i = cg, cg + 8, ..., write them to its warp's rows of P^T and dS^T,
//     then dv += P^T dO_I, dk += dS^T Q_I over the tile's queries; finally dk = c acc, dv = acc.
//
// The variant policies (structs of device pointers and flags, passed in the kernel arguments):
//   forward, FwdArgs<V>::variant:
//     struct Row;                                    a row's running statistics (registers)
//     Row fwd_row(int h, int n) const;               fresh ones; n = n_i (0 for rows past T)
//     void fwd_scores(Row&, float (&s)[KT], float (&acc)[DC], float* p_row, int j0, int n, int cg,
//                     float scale) const;            a row's raw scores s[c] (key j0 + cg + 8c) ->
//                                                    p_row[cg + 8c]; may rescale acc (online softmax)
//     void fwd_finish(Row&, float (&acc)[DC], bool valid, int64_t row, int cg) const;
//                                                    all lanes; row = (b, h, i) in [B, H, T]; may
//                                                    scale acc, which is then stored for valid rows
//   backward, BwdArgs<V>::variant:
//     struct Query;                                  what dS_ij needs of query i (registers)
//     struct Stats;                                  its shared-memory copies for a query tile
//     static size_t stats_smem(int Br);              their bytes (carved())
//     static Stats carve_stats(simt::SmemCarver&, int Br);
//     void load_stats(const Stats&, int64_t row0, int in, int Br) const;   the tile's queries
//                                                    [row0, row0 + in) of [B, H, T], zeros past in
//     Query query(int h, int64_t row, bool valid, int n) const;           dq: from global memory
//     Query query(const Stats&, int h, int i, int n) const;               dk, dv: query i of the tile
//     void grad(const Query&, float s, float dp, bool visible, float scale, float& p, float& ds) const;
//     void dq_finish(float ds_partial, bool valid, int64_t row, int cg) const;   all lanes; the
//                                                    lane's partial sum of the row's dS
// The hooks are __forceinline__: their array arguments stay in registers.
//
// Determinism: no atomics; every output element is written by one thread, every sum runs in a
// fixed order (the xor-shuffle trees included), so results do not depend on scheduling.
// Shared tiles have rows of round8(D) + 1 floats: the odd stride puts the 8 lanes that read 8
// different rows at one d in 8 different banks, and columns [D, round8(D)) hold zeros so the
// accumulation loops run over whole groups of 8 columns with no per-element bound. The loops over
// a thread's own rows and columns (AL_UNROLL) have fixed trip counts and index small arrays: fully
// unrolled, those arrays stay in registers.
//
// C++17 (nvcc) and C++20 (g++, the emulator); every function is inline or a template, so each
// kernel file gets its own copy of the kernels it instantiates.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "layers/attention/common.h"
#include "lib/cuda/kernel.h"
#include "lib/error.h"
#include "lib/host_device.h"
#include "lib/tensor.h"

namespace attnlab::attention_cuda {

constexpr int kTileThreads = 128;  // tile kernels: 4 warps
constexpr int kTileWarps = kTileThreads / 32;
constexpr int kRowThreads = 256;  // row kernels: 8 warps, one row each
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kMaxHeadDim = 128;

AL_HOST_DEVICE inline int imin(int a, int b) { return a < b ? a : b; }
AL_HOST_DEVICE inline int round8(int d) { return (d + 7) / 8 * 8; }
// Row stride of a shared tile holding head dim d: odd (bank spread), with room for the zero pad.
AL_HOST_DEVICE inline int tile_ld(int d) { return round8(d) + 1; }
// Bytes SmemCarver::take<T>(n) consumes: it rounds each array up to 16 bytes.
template <typename T = float>
inline size_t carved(int64_t n) {
  return (static_cast<size_t>(n) * sizeof(T) + 15) / 16 * 16;
}
// Blocks of `tile` items covering n.
inline unsigned tile_count(int64_t n, int64_t tile) { return static_cast<unsigned>((n + tile - 1) / tile); }

// A [B, H, rows, D] tensor with unit-stride D: element (b, h, r, d) at p[b sb + h sh + r ld + d].
struct Heads {
  const float* p;
  int64_t sb, sh, ld;
  AL_HOST_DEVICE const float* head(int64_t b, int64_t h) const { return p + b * sb + h * sh; }
};
struct HeadsOut {
  float* p;
  int64_t sb, sh, ld;
  AL_HOST_DEVICE float* head(int64_t b, int64_t h) const { return p + b * sb + h * sh; }
};

// Sizes, mask and scale c of a tile launch, the same for every block.
struct Geom {
  int H, T, S, Dk, Dv;
  int causal;
  int prefix;  // clamped to [0, S]
  float scale;
};

// n_i: query i sees the keys [0, n_i). G is any geometry with T, S, causal and prefix.
template <class G>
__device__ inline int visible_keys(const G& g, int i) {
  if (!g.causal) return g.S;
  const int p = g.S - g.T + i;
  int n = p + 1;
  if (p < g.prefix && g.prefix > n) n = g.prefix;
  return imin(n, g.S);
}

// The least i in [lo, hi) with pred(i), or hi, for a pred that is false and then true (binary search).
template <class Pred>
__device__ inline int first_where(int lo, int hi, Pred pred) {
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (pred(mid))
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

// The first query that sees key j (n_i > j), or T. n_i never decreases with i.
template <class G>
__device__ inline int first_query_seeing(const G& g, int j) {
  return first_where(0, g.T, [&](int i) { return visible_keys(g, i) > j; });
}

// ---- warp sums ----------------------------------------------------------------------------------

// Max and sum over the 8 lanes of a row group (lanes 8 rg .. 8 rg + 7): xor 1, 2, 4 stays inside.
__device__ inline float group_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(kFullMask, x, 1));
  x = fmaxf(x, __shfl_xor_sync(kFullMask, x, 2));
  x = fmaxf(x, __shfl_xor_sync(kFullMask, x, 4));
  return x;
}
__device__ inline float group_sum(float x) {
  x += __shfl_xor_sync(kFullMask, x, 1);
  x += __shfl_xor_sync(kFullMask, x, 2);
  x += __shfl_xor_sync(kFullMask, x, 4);
  return x;
}

// Sum over the whole warp in a fixed xor tree (16, 8, 4, 2, 1): every lane gets the same bits.
template <class T>
__device__ inline T warp_sum(T x) {
  AL_UNROLL
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(kFullMask, x, off);
  return x;
}

// sigmoid(theta_h) in double: the gate gamma_h of infsa and linear_infsa.
__device__ inline double gamma_of(const float* theta, int h) {
  return 1.0 / (1.0 + exp(-static_cast<double>(theta[h])));
}

// ---- row kernels: a warp per row (b, h, i) of [B, H, T] -----------------------------------------

// The row of this thread's warp in a launch of kRowThreads-thread blocks; b, h, i mean something
// only when live (row < rows), but every lane still reaches the warp's shuffles.
struct WarpRow {
  int64_t row, b, h, i;
  int lane;
  bool live;
};
__device__ inline WarpRow warp_row(int64_t rows, int H, int T) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kRowThreads / 32) + (threadIdx.x >> 5);
  const int64_t bh = row / T;
  return {row, bh / H, bh % H, row % T, static_cast<int>(threadIdx.x) & 31, row < rows};
}
inline unsigned warp_row_blocks(int64_t rows) { return cuda::blocks_for(rows, kRowThreads / 32, 0x7fffffffu); }

struct RowDotArgs {
  Heads out, dout;
  float* dot;  // [B, H, T]
  int H, T, Dv;
  int64_t rows;  // B * H * T
};

// dot_i = <dout_i, out_i> (softmax's D_i, linear_infsa's delta_i): lanes stride over d,
// accumulating in Acc (float or double), then the warp sums.
template <class Acc>
__global__ void attention_row_dot_kernel(RowDotArgs a) {
  const WarpRow w = warp_row(a.rows, a.H, a.T);
  Acc acc = 0;
  if (w.live) {  // warp-uniform: the shuffles below run in whole warps either way
    const float* o = a.out.head(w.b, w.h) + w.i * a.out.ld;
    const float* go = a.dout.head(w.b, w.h) + w.i * a.dout.ld;
    for (int d = w.lane; d < a.Dv; d += 32) acc += static_cast<Acc>(o[d]) * go[d];
  }
  acc = warp_sum(acc);
  if (w.lane == 0 && w.live) a.dot[w.row] = static_cast<float>(acc);
}

template <class Acc>
void launch_row_dot(const RowDotArgs& a) {
  AL_CUDA_LAUNCH(attention_row_dot_kernel<Acc>, dim3(warp_row_blocks(a.rows)), dim3(kRowThreads), 0, a);
}

// ---- dtheta_h = (1 - gamma_h) sum_b part[b, h] (infsa, linear_infsa): a thread per head --------

struct ThetaArgs {
  const double* part;  // [B, H]: per-(b, h) sums of delta_i
  const float* theta;  // [H]
  float* dtheta;       // [H]
  int B, H;
};

template <int kThreads>  // the block size
__global__ void attention_dtheta_kernel(ThetaArgs a) {
  const int h = static_cast<int>(blockIdx.x) * kThreads + static_cast<int>(threadIdx.x);
  if (h < a.H) {
    double acc = 0.0;
    for (int b = 0; b < a.B; ++b) acc += a.part[static_cast<int64_t>(b) * a.H + h];
    a.dtheta[h] = static_cast<float>((1.0 - gamma_of(a.theta, h)) * acc);
  }
}

// A template, so that only the files that launch it compile the kernel.
template <int kThreads = 128>
void launch_dtheta(const ThetaArgs& a) {
  AL_CUDA_LAUNCH(attention_dtheta_kernel<kThreads>, dim3(tile_count(a.H, kThreads)), dim3(kThreads), 0, a);
}

// ---- tile kernels: building blocks --------------------------------------------------------------

// Tile shape of one kernel for one padded head dim: Br query rows, Bc key rows, DC = DMAX / 8
// head-dim columns per lane.
template <int BR, int BC, int DMAX>
struct TileShape {
  static constexpr int Br = BR, Bc = BC, DC = DMAX / 8;
};
struct FwdTiles {
  using D32 = TileShape<64, 64, 32>;
  using D64 = TileShape<64, 32, 64>;
  using D128 = TileShape<32, 24, 128>;
};
struct DqTiles {
  using D32 = TileShape<64, 32, 32>;
  using D64 = TileShape<32, 32, 64>;
  using D128 = TileShape<16, 24, 128>;
};
struct DkvTiles {
  using D32 = TileShape<32, 64, 32>;
  using D64 = TileShape<32, 32, 64>;
  using D128 = TileShape<24, 16, 128>;
};

// This thread's place in the lane layout: warp, row group rg (lanes 8 rg .. 8 rg + 7), column group cg.
struct TileLane {
  int warp, rg, cg;
};
__device__ inline TileLane tile_lane() {
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  return {warp, lane >> 3, lane & 7};
}

// The query tile of a forward or dq block: rows [i0, i0 + rows) of head bh = (b, h). The grid runs
// the tiles last first: they see the most keys under a causal mask, so the heaviest start first.
struct QueryTile {
  int bh, b, h, i0, rows;
};
template <int Br>
__device__ inline QueryTile query_tile(const Geom& g) {
  const int bh = static_cast<int>(blockIdx.y);
  const int i0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * Br;
  return {bh, bh / g.H, bh % g.H, i0, imin(Br, g.T - i0)};
}

// dst [R, ld] (shared) <- rows [0, valid) x columns [0, D) of src (row stride src_ld), zeros in rows
// [valid, R) and columns [D, round8(D)). Warps take rows, lanes take columns (coalesced reads).
__device__ inline void load_tile(float* dst, int ld, int R, const float* src, int64_t src_ld, int valid, int D) {
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  const int w = round8(D);
  for (int r = warp; r < R; r += kTileWarps)
    for (int d = lane; d < w; d += 32) dst[r * ld + d] = (r < valid && d < D) ? src[r * src_ld + d] : 0.0f;
}

// K_J, V_J <- keys [j0, j0 + jn) of the head (kb, vb with row strides kld, vld) into the shared
// tiles ks, vs of Bc rows, between two barriers: the first lets every warp finish with the
// previous tiles (and the rows it wrote from them), the second publishes the new ones.
__device__ inline void load_key_tiles(float* ks, float* vs, int Bc, const float* kb, int64_t kld, const float* vb,
                                      int64_t vld, int j0, int jn, int Dk, int Dv) {
  __syncthreads();
  load_tile(ks, tile_ld(Dk), Bc, kb + static_cast<int64_t>(j0) * kld, kld, jn, Dk);
  load_tile(vs, tile_ld(Dv), Bc, vb + static_cast<int64_t>(j0) * vld, vld, jn, Dv);
  __syncthreads();
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

// dst[d] = scale acc[c] (or acc[c]) for the lane's head-dim columns d = cg + 8c < D.
template <int DC>
__device__ __forceinline__ void store_columns(float* dst, const float (&acc)[DC], int cg, int D) {
  AL_UNROLL
  for (int c = 0; c < DC; ++c) {
    const int d = cg + 8 * c;
    if (d < D) dst[d] = acc[c];
  }
}
template <int DC>
__device__ __forceinline__ void store_columns(float* dst, float scale, const float (&acc)[DC], int cg, int D) {
  AL_UNROLL
  for (int c = 0; c < DC; ++c) {
    const int d = cg + 8 * c;
    if (d < D) dst[d] = scale * acc[c];
  }
}

// ---- tile kernels -------------------------------------------------------------------------------

template <class V>
struct FwdArgs {
  Heads q, k, v;
  HeadsOut out;
  Geom g;
  V variant;
};

template <class V>
struct BwdArgs {
  Heads q, k, v, dout;  // dout: dO, the gradient that meets V in dP
  HeadsOut dq, dk, dv;
  Geom g;
  V variant;
};

template <class C>
size_t fwd_smem(int Dk, int Dv) {
  return carved(C::Br * tile_ld(Dk)) + carved(C::Bc * tile_ld(Dk)) + carved(C::Bc * tile_ld(Dv)) +
         carved(C::Br * (C::Bc + 1));
}
template <class C>
size_t dq_smem(int Dk, int Dv) {
  return carved(C::Br * tile_ld(Dk)) + carved(C::Br * tile_ld(Dv)) + carved(C::Bc * tile_ld(Dk)) +
         carved(C::Bc * tile_ld(Dv)) + carved(C::Br * (C::Bc + 1));
}
template <class C, class V>
size_t dkv_smem(int Dk, int Dv) {
  return carved(C::Bc * tile_ld(Dk)) + carved(C::Bc * tile_ld(Dv)) + carved(C::Br * tile_ld(Dk)) +
         carved(C::Br * tile_ld(Dv)) + V::stats_smem(C::Br) + 2 * carved(C::Bc * (C::Br + 1));
}

// Forward: a block per query tile.
template <class V, class C>
__global__ void attention_fwd_kernel(FwdArgs<V> a) {
  constexpr int Br = C::Br, Bc = C::Bc, DC = C::DC, RT = Br / 16, KT = Bc / 8;
  static_assert(Br % 16 == 0 && Bc % 8 == 0, "tile shape");
  const Geom& g = a.g;
  const V& var = a.variant;
  const QueryTile qt = query_tile<Br>(g);
  const int b = qt.b, h = qt.h, i0 = qt.i0, rows = qt.rows;
  const TileLane ln = tile_lane();
  const int cg = ln.cg;
  const int ldk = tile_ld(g.Dk), ldv = tile_ld(g.Dv), ldp = Bc + 1;
  const int ncv = round8(g.Dv) / 8;  // column groups of 8 that hold v's columns

  simt::SmemCarver carve;
  float* qs = carve.take<float>(Br * ldk);
  float* ks = carve.take<float>(Bc * ldk);
  float* vs = carve.take<float>(Bc * ldv);
  float* ps = carve.take<float>(Br * ldp);

  const float* kb = a.k.head(b, h);
  const float* vb = a.v.head(b, h);
  load_tile(qs, ldk, Br, a.q.head(b, h) + static_cast<int64_t>(i0) * a.q.ld, a.q.ld, rows, g.Dk);

  int r[RT], n[RT];  // own rows (in the tile) and their visible-key counts (0 past T: all masked)
  typename V::Row st[RT];
  float acc[RT][DC];
  AL_UNROLL
  for (int t = 0; t < RT; ++t) {
    r[t] = ln.warp * (Br / kTileWarps) + ln.rg * RT + t;
    n[t] = r[t] < rows ? visible_keys(g, i0 + r[t]) : 0;
    st[t] = var.fwd_row(h, n[t]);
    AL_UNROLL
    for (int c = 0; c < DC; ++c) acc[t][c] = 0.0f;
  }
  // Keys past the tile's last query's count are invisible to every row: never loaded or computed.
  const int nmax = visible_keys(g, i0 + rows - 1);

  for (int j0 = 0; j0 < nmax; j0 += Bc) {
    const int jn = imin(Bc, nmax - j0);
    // Its first barrier also publishes Q; its second, K_J and V_J.
    load_key_tiles(ks, vs, Bc, kb, a.k.ld, vb, a.v.ld, j0, jn, g.Dk, g.Dv);

    float s[RT][KT];
    tile_dots(s, qs, ks, ldk, r, cg, g.Dk);
    AL_UNROLL
    for (int t = 0; t < RT; ++t) var.fwd_scores(st[t], s[t], acc[t], ps + r[t] * ldp, j0, n[t], cg, g.scale);
    __syncwarp();  // the warp's P rows are written by its 8 lanes per row and read by all of them

    tile_accumulate(acc, ps, ldp, vs, ldv, ncv, r, cg, jn);
  }

  float* ob = a.out.head(b, h);
  const int64_t row0 = static_cast<int64_t>(qt.bh) * g.T + i0;  // (b, h, i0) in [B, H, T]
  AL_UNROLL
  for (int t = 0; t < RT; ++t) {
    const bool valid = r[t] < rows;
    var.fwd_finish(st[t], acc[t], valid, row0 + r[t], cg);  // every lane: it may shuffle
    if (valid) store_columns(ob + static_cast<int64_t>(i0 + r[t]) * a.out.ld, acc[t], cg, g.Dv);
  }
}

// Backward dq: a block per query tile.
template <class V, class C>
__global__ void attention_bwd_dq_kernel(BwdArgs<V> a) {
  constexpr int Br = C::Br, Bc = C::Bc, DC = C::DC, RT = Br / 16, KT = Bc / 8;
  static_assert(Br % 16 == 0 && Bc % 8 == 0, "tile shape");
  const Geom& g = a.g;
  const V& var = a.variant;
  const QueryTile qt = query_tile<Br>(g);
  const int b = qt.b, h = qt.h, i0 = qt.i0, rows = qt.rows;
  const TileLane ln = tile_lane();
  const int cg = ln.cg;
  const int ldk = tile_ld(g.Dk), ldv = tile_ld(g.Dv), ldp = Bc + 1;
  const int nck = round8(g.Dk) / 8;

  simt::SmemCarver carve;
  float* qs = carve.take<float>(Br * ldk);
  float* dos = carve.take<float>(Br * ldv);
  float* ks = carve.take<float>(Bc * ldk);
  float* vs = carve.take<float>(Bc * ldv);
  float* dss = carve.take<float>(Br * ldp);

  const float* kb = a.k.head(b, h);
  const float* vb = a.v.head(b, h);
  load_tile(qs, ldk, Br, a.q.head(b, h) + static_cast<int64_t>(i0) * a.q.ld, a.q.ld, rows, g.Dk);
  load_tile(dos, ldv, Br, a.dout.head(b, h) + static_cast<int64_t>(i0) * a.dout.ld, a.dout.ld, rows, g.Dv);

  const int64_t row0 = static_cast<int64_t>(qt.bh) * g.T + i0;  // (b, h, i0) in [B, H, T]
  int r[RT], n[RT];
  typename V::Query qi[RT];  // what dS needs of each own row's query
  float dsum[RT], acc[RT][DC];  // dsum: the lane's partial row sums of dS
  AL_UNROLL
  for (int t = 0; t < RT; ++t) {
    r[t] = ln.warp * (Br / kTileWarps) + ln.rg * RT + t;
    const bool valid = r[t] < rows;
    n[t] = valid ? visible_keys(g, i0 + r[t]) : 0;
    qi[t] = var.query(h, row0 + r[t], valid, n[t]);
    dsum[t] = 0.0f;
    AL_UNROLL
    for (int c = 0; c < DC; ++c) acc[t][c] = 0.0f;
  }
  const int nmax = visible_keys(g, i0 + rows - 1);

  for (int j0 = 0; j0 < nmax; j0 += Bc) {
    const int jn = imin(Bc, nmax - j0);
    // Its first barrier also publishes Q and dO; its second, K_J and V_J.
    load_key_tiles(ks, vs, Bc, kb, a.k.ld, vb, a.v.ld, j0, jn, g.Dk, g.Dv);

    float s[RT][KT], dp[RT][KT];
    tile_dots(s, qs, ks, ldk, r, cg, g.Dk);
    tile_dots(dp, dos, vs, ldv, r, cg, g.Dv);
    AL_UNROLL
    for (int t = 0; t < RT; ++t)
      AL_UNROLL
      for (int c = 0; c < KT; ++c) {
        float p, ds;
        var.grad(qi[t], s[t][c], dp[t][c], j0 + cg + 8 * c < n[t], g.scale, p, ds);
        dss[r[t] * ldp + cg + 8 * c] = ds;
        dsum[t] += ds;
      }
    __syncwarp();  // the warp's dS rows, written 8 lanes per row, are read by all of them

    tile_accumulate(acc, dss, ldp, ks, ldk, nck, r, cg, jn);
  }

  float* qb = a.dq.head(b, h);
  AL_UNROLL
  for (int t = 0; t < RT; ++t) {
    const bool valid = r[t] < rows;
    var.dq_finish(dsum[t], valid, row0 + r[t], cg);  // every lane: it may shuffle
    if (valid) store_columns(qb + static_cast<int64_t>(i0 + r[t]) * a.dq.ld, g.scale, acc[t], cg, g.Dk);
  }
}

// Backward dk, dv: a block per key tile.
template <class V, class C>
__global__ void attention_bwd_dkdv_kernel(BwdArgs<V> a) {
  constexpr int Br = C::Br, Bc = C::Bc, DC = C::DC, RT = Bc / 16, IT = Br / 8;
  static_assert(Bc % 16 == 0 && Br % 8 == 0, "tile shape");
  const Geom& g = a.g;
  const V& var = a.variant;
  const int bh = static_cast<int>(blockIdx.y), b = bh / g.H, h = bh % g.H;
  const int j0 = static_cast<int>(blockIdx.x) * Bc;
  const int keys = imin(Bc, g.S - j0);
  const TileLane ln = tile_lane();
  const int cg = ln.cg;
  const int ldk = tile_ld(g.Dk), ldv = tile_ld(g.Dv), ldp = Br + 1;
  const int nck = round8(g.Dk) / 8, ncv = round8(g.Dv) / 8;

  simt::SmemCarver carve;
  float* ks = carve.take<float>(Bc * ldk);
  float* vs = carve.take<float>(Bc * ldv);
  float* qs = carve.take<float>(Br * ldk);
  float* dos = carve.take<float>(Br * ldv);
  const typename V::Stats stats = V::carve_stats(carve, Br);
  float* pts = carve.take<float>(Bc * ldp);   // P^T: own keys x the tile's queries
  float* dsts = carve.take<float>(Bc * ldp);  // dS^T

  load_tile(ks, ldk, Bc, a.k.head(b, h) + static_cast<int64_t>(j0) * a.k.ld, a.k.ld, keys, g.Dk);
  load_tile(vs, ldv, Bc, a.v.head(b, h) + static_cast<int64_t>(j0) * a.v.ld, a.v.ld, keys, g.Dv);
  const float* qb = a.q.head(b, h);
  const float* gb = a.dout.head(b, h);

  int r[RT];  // own keys, in the tile
  float dk[RT][DC], dv[RT][DC];
  AL_UNROLL
  for (int t = 0; t < RT; ++t) {
    r[t] = ln.warp * (Bc / kTileWarps) + ln.rg * RT + t;
    AL_UNROLL
    for (int c = 0; c < DC; ++c) dk[t][c] = dv[t][c] = 0.0f;
  }

  // Queries before the first one that sees key j0 see none of the tile's keys.
  for (int i0 = first_query_seeing(g, j0); i0 < g.T; i0 += Br) {
    const int in = imin(Br, g.T - i0);
    __syncthreads();  // K, V are loaded; every warp is done with the previous Q, dO and statistics
    load_tile(qs, ldk, Br, qb + static_cast<int64_t>(i0) * a.q.ld, a.q.ld, in, g.Dk);
    load_tile(dos, ldv, Br, gb + static_cast<int64_t>(i0) * a.dout.ld, a.dout.ld, in, g.Dv);
    var.load_stats(stats, static_cast<int64_t>(bh) * g.T + i0, in, Br);
    __syncthreads();

    float s[RT][IT], dp[RT][IT];
    tile_dots(s, ks, qs, ldk, r, cg, g.Dk);
    tile_dots(dp, vs, dos, ldv, r, cg, g.Dv);
    AL_UNROLL
    for (int c = 0; c < IT; ++c) {
      const int i = cg + 8 * c;
      const int n = i < in ? visible_keys(g, i0 + i) : 0;  // keys past S: r >= keys means j >= S >= n
      const typename V::Query qi = var.query(stats, h, i, n);
      AL_UNROLL
      for (int t = 0; t < RT; ++t) {
        float p, ds;
        var.grad(qi, s[t][c], dp[t][c], j0 + r[t] < n, g.scale, p, ds);
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

  float* kout = a.dk.head(b, h);
  float* vout = a.dv.head(b, h);
  AL_UNROLL
  for (int t = 0; t < RT; ++t)
    if (r[t] < keys) {
      const int64_t j = j0 + r[t];
      store_columns(kout + j * a.dk.ld, g.scale, dk[t], cg, g.Dk);
      store_columns(vout + j * a.dv.ld, dv[t], cg, g.Dv);
    }
}

// Calls fn(C{}) with the tile shape of Shapes (FwdTiles, DqTiles, DkvTiles) for the padded head
// dim max(Dk, Dv).
template <class Shapes, class Fn>
void by_head_dim(const Geom& g, Fn&& fn) {
  const int dmax = g.Dk > g.Dv ? g.Dk : g.Dv;
  if (dmax <= 32)
    fn(typename Shapes::D32{});
  else if (dmax <= 64)
    fn(typename Shapes::D64{});
  else
    fn(typename Shapes::D128{});
}

// The forward over B*H heads (T > 0).
template <class V>
void launch_attention_fwd(const FwdArgs<V>& a, int64_t BH) {
  const Geom& g = a.g;
  by_head_dim<FwdTiles>(g, [&](auto shape) {
    using C = decltype(shape);
    AL_CUDA_LAUNCH((attention_fwd_kernel<V, C>), dim3(tile_count(g.T, C::Br), static_cast<unsigned>(BH)),
                   dim3(kTileThreads), fwd_smem<C>(g.Dk, g.Dv), a);
  });
}

// dq, then dk and dv, over B*H heads (T > 0).
template <class V>
void launch_attention_bwd(const BwdArgs<V>& a, int64_t BH) {
  const Geom& g = a.g;
  by_head_dim<DqTiles>(g, [&](auto shape) {
    using C = decltype(shape);
    AL_CUDA_LAUNCH((attention_bwd_dq_kernel<V, C>), dim3(tile_count(g.T, C::Br), static_cast<unsigned>(BH)),
                   dim3(kTileThreads), dq_smem<C>(g.Dk, g.Dv), a);
  });
  by_head_dim<DkvTiles>(g, [&](auto shape) {
    using C = decltype(shape);
    AL_CUDA_LAUNCH((attention_bwd_dkdv_kernel<V, C>), dim3(tile_count(g.S, C::Bc), static_cast<unsigned>(BH)),
                   dim3(kTileThreads), (dkv_smem<C, V>(g.Dk, g.Dv)), a);
  });
}

// ---- host side ----------------------------------------------------------------------------------

inline bool unit_last_stride(const Tensor& t) { return t.size(3) <= 1 || t.stride(3) == 1; }

inline Heads heads(const Tensor& t) { return {t.data<float>(), t.stride(0), t.stride(1), t.stride(2)}; }
inline HeadsOut heads_out(Tensor& t) { return {t.data<float>(), t.stride(0), t.stride(1), t.stride(2)}; }

// The mask's prefix clamped to [0, S] (positions are < S).
inline int64_t clamped_prefix(const AttentionMask& mask, int64_t S) {
  return mask.prefix < 0 ? 0 : (mask.prefix > S ? S : mask.prefix);
}

// What the tile kernels need beyond the op's check(): f32, unit-stride D, head dims <= 128, sizes
// that fit the launch grid and int indices.
inline void check_tile_inputs(std::string_view op, const Tensor& q, const Tensor& k, const Tensor& v) {
  AL_CHECK_DTYPE(q.dtype() == DType::f32, op, ": the CUDA kernels take f32 only; got q=", q, ", k=", k, ", v=", v);
  AL_ASSERT(unit_last_stride(q) && unit_last_stride(k) && unit_last_stride(v), op,
            ": q, k, v need a unit-stride last dim; got q=", q, ", k=", k, ", v=", v);
  AL_CHECK_SHAPE(q.size(3) <= kMaxHeadDim && v.size(3) <= kMaxHeadDim, op,
                 ": the CUDA kernels take head dims Dk, Dv <= ", kMaxHeadDim, "; got q=", q, ", k=", k, ", v=", v);
  AL_CHECK_SHAPE(q.size(0) * q.size(1) <= 65535 && k.size(2) < (int64_t{1} << 30), op,
                 ": the CUDA kernels take B * H <= 65535 and S < 2^30; got q=", q, ", k=", k, ", v=", v);
}

inline Geom tile_geom(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask, double scale) {
  const int64_t S = k.size(2);
  return {static_cast<int>(q.size(1)),
          static_cast<int>(q.size(2)),
          static_cast<int>(S),
          static_cast<int>(q.size(3)),
          static_cast<int>(v.size(3)),
          mask.causal ? 1 : 0,
          static_cast<int>(clamped_prefix(mask, S)),
          static_cast<float>(attention_scale(scale, q.size(3)))};
}

// [B, H, rows, D] view of token-major [B, rows, H, D] memory.
inline Tensor empty_token_major(int64_t B, int64_t H, int64_t rows, int64_t D, Device device) {
  return Tensor::empty(Shape{B, rows, H, D}, DType::f32, device).permute({0, 2, 1, 3});
}

// dq, dk, dv laid out as the CPU ops lay them out: self-attention (T = S, Dk = Dv) puts them in
// one [B, T, 3, H, D] buffer (a fused q|k|v projection's gradient, taken as it is by split_heads'
// backward); else each is token-major on its own. Uninitialised: the kernels write every element.
struct QkvGrads {
  Tensor dq, dk, dv;
};
inline QkvGrads empty_qkv_grads(int64_t B, int64_t H, int64_t T, int64_t S, int64_t Dk, int64_t Dv, Device device) {
  if (T == S && Dk == Dv) {
    const int64_t D = Dk;
    const Tensor joint = Tensor::empty(Shape{B, T, 3, H, D}, DType::f32, device);
    auto part = [&](int64_t i) {
      return Tensor(joint.storage(), Shape{B, H, T, D}, {T * 3 * H * D, D, 3 * H * D, 1}, i * H * D, DType::f32);
    };
    return {part(0), part(1), part(2)};
  }
  return {empty_token_major(B, H, T, Dk, device), empty_token_major(B, H, S, Dk, device),
          empty_token_major(B, H, S, Dv, device)};
}

}  // namespace attnlab::attention_cuda
