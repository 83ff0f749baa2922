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
// Kernels and launch shapes (the tile kernels are softmax_attention_cuda.cu's with the softmax
// taken out; same tile shapes per padded head dim 32 / 64 / 128, same lane layout: 128 threads =
// 4 warps, lane = 8 rg + cg, a row group rg of 8 lanes owns RT = rows / 16 consecutive own rows,
// cg splits the partner columns in the score phase and the head-dim columns in the accumulation):
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
//   dq        grid (ceil(T/Br), B*H), 128 threads: the forward's loop with two dot products per
//             score (s from Q, K; dP from dU, V), dS into its warp's rows, then dq += dS K_J.
//   dk, dv    grid (ceil(S/Bc), B*H), 128 threads: K_J, V_J stay in shared memory; per query tile
//             from the first query that sees key j0 a lane computes A and dS of its RT keys
//             against the queries cg, cg + 8, ..., writes them to its warp's rows of A^T and
//             dS^T, then dv += A^T dU_I, dk += dS^T Q_I.
// Determinism: no atomics; every output element is written by one thread and every sum runs in a
// fixed order, so the results do not depend on scheduling.
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "layers/attention/infsa/infsa_attention.h"
#include "lib/cuda/kernel.h"
#include "lib/cuda/tensor_kernels.h"
#include "lib/error.h"
#include "lib/host_device.h"

namespace attnlab {

namespace {

constexpr int kThreads = 128;  // tile kernels: 4 warps
constexpr int kWarps = kThreads / 32;
constexpr int kRowThreads = 256;   // row kernels: 8 warps, one row each
constexpr int kScanThreads = 256;  // scan kernels: one block per (b, h)
constexpr int kThetaThreads = 128;
constexpr unsigned kFull = 0xffffffffu;
constexpr int kMaxHeadDim = 128;
constexpr double kEps2 = InfsaAttentionOp::kEps * InfsaAttentionOp::kEps;

// Tile shape of one kernel for one padded head dim: Br query rows, Bc key rows, DC = DMAX / 8
// head-dim columns per lane (softmax_attention_cuda.cu's shapes: they fit 48 KiB of shared memory).
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
// Bytes SmemCarver::take<T>(n) consumes: it rounds each array up to 16 bytes.
template <typename T = float>
size_t carved(int64_t n) {
  return (static_cast<size_t>(n) * sizeof(T) + 15) / 16 * 16;
}

// relu that keeps a NaN score NaN (as the CPU kernels do) instead of hiding it.
__device__ inline float relu_f(float x) { return x <= 0.0f ? 0.0f : x; }
__device__ inline float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }

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

// m_i: query i sees the query rows [0, m_i) (those at positions < n_i).
__device__ inline int visible_rows(const Geom& g, int i) { return imin(g.T, visible_keys(g, i) - (g.S - g.T)); }

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

// The first query row that sees row i' (m_i > i'); at most i' since m_i' >= i' + 1.
__device__ inline int first_row_seeing(const Geom& g, int ip) {
  int lo = 0, hi = ip;
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (visible_rows(g, mid) > ip)
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

// Sum over the 8 lanes of a row group (lanes 8 rg .. 8 rg + 7): xor 1, 2, 4 stays inside.
__device__ inline float group_sum(float x) {
  x += __shfl_xor_sync(kFull, x, 1);
  x += __shfl_xor_sync(kFull, x, 2);
  x += __shfl_xor_sync(kFull, x, 4);
  return x;
}

// The score phase's dot products: out[t][c] = sum_{d < D} own[r[t] ld + d] partner[(cg + 8c) ld + d],
// the lane's RT own rows against its N partner rows cg, cg + 8, ..., added in increasing d.
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
// lane's RT own rows of w (A or dS, shared, row stride ldw) times its head-dim columns of the
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

// Rows [begin, end) of thread t when T rows are cut into kScanThreads contiguous segments.
struct Segment {
  int begin, end;
};
__device__ inline Segment segment_of(int T, int t) {
  const int per = (T + kScanThreads - 1) / kScanThreads;
  const int b = imin(T, t * per);
  return {b, imin(T, b + per)};
}

// ---- forward: U and r (a block per query tile) --------------------------------------------------

struct FwdArgs {
  Heads q, k, v;
  HeadsOut out;  // U, unnormalised until the epilogue
  float* r;      // [B, H, T] row energies
  Geom g;
};

template <class C>
size_t fwd_smem(int Dk, int Dv) {
  return carved(C::Br * tile_ld(Dk)) + carved(C::Bc * tile_ld(Dk)) + carved(C::Bc * tile_ld(Dv)) +
         carved(C::Br * (C::Bc + 1));
}

template <class C>
__global__ void infsa_attention_fwd_kernel(FwdArgs a) {
  constexpr int Br = C::Br, Bc = C::Bc, DC = C::DC, RT = Br / 16, KT = Bc / 8;
  static_assert(Br % 16 == 0 && Bc % 8 == 0, "tile shape");
  const Geom& g = a.g;
  const int bh = static_cast<int>(blockIdx.y), b = bh / g.H, h = bh % g.H;
  const int i0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * Br;  // heaviest tiles first
  const int rows = imin(Br, g.T - i0);
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  const int rg = lane >> 3, cg = lane & 7;
  const int ldk = tile_ld(g.Dk), ldv = tile_ld(g.Dv), ldp = Bc + 1;
  const int ncv = round8(g.Dv) / 8;  // column groups of 8 that hold v's columns

  simt::SmemCarver carve;
  float* qs = carve.take<float>(Br * ldk);
  float* ks = carve.take<float>(Bc * ldk);
  float* vs = carve.take<float>(Bc * ldv);
  float* ps = carve.take<float>(Br * ldp);  // A of the current tile

  const float* qb = a.q.p + b * a.q.sb + h * a.q.sh;
  const float* kb = a.k.p + b * a.k.sb + h * a.k.sh;
  const float* vb = a.v.p + b * a.v.sb + h * a.v.sh;
  load_tile(qs, ldk, Br, qb + static_cast<int64_t>(i0) * a.q.ld, a.q.ld, rows, g.Dk);

  int r[RT], n[RT];  // own rows (in the tile) and their visible-key counts (0 past T: all masked)
  float e[RT], acc[RT][DC];
  AL_UNROLL
  for (int t = 0; t < RT; ++t) {
    r[t] = warp * (Br / kWarps) + rg * RT + t;
    n[t] = r[t] < rows ? visible_keys(g, i0 + r[t]) : 0;
    e[t] = 0.0f;
    AL_UNROLL
    for (int c = 0; c < DC; ++c) acc[t][c] = 0.0f;
  }
  const int nmax = visible_keys(g, i0 + rows - 1);

  for (int j0 = 0; j0 < nmax; j0 += Bc) {
    const int jn = imin(Bc, nmax - j0);
    __syncthreads();  // Q is loaded; every warp is done with the previous K, V (and its A rows)
    load_tile(ks, ldk, Bc, kb + static_cast<int64_t>(j0) * a.k.ld, a.k.ld, jn, g.Dk);
    load_tile(vs, ldv, Bc, vb + static_cast<int64_t>(j0) * a.v.ld, a.v.ld, jn, g.Dv);
    __syncthreads();

    float s[RT][KT];
    tile_dots(s, qs, ks, ldk, r, cg, g.Dk);
    AL_UNROLL
    for (int t = 0; t < RT; ++t)
      AL_UNROLL
      for (int c = 0; c < KT; ++c) {
        const float x = j0 + cg + 8 * c < n[t] ? relu_f(s[t][c] * g.scale) : 0.0f;
        ps[r[t] * ldp + cg + 8 * c] = x;
        e[t] += x * x;
      }
    __syncwarp();  // the warp's A rows are written by its 8 lanes per row and read by all of them

    tile_accumulate(acc, ps, ldp, vs, ldv, ncv, r, cg, jn);
  }

  float* ob = a.out.p + b * a.out.sb + h * a.out.sh;
  float* rb = a.r + static_cast<int64_t>(bh) * g.T;
  AL_UNROLL
  for (int t = 0; t < RT; ++t) {
    const float et = group_sum(e[t]);
    if (r[t] < rows) {
      const int i = i0 + r[t];
      AL_UNROLL
      for (int c = 0; c < DC; ++c) {
        const int d = cg + 8 * c;
        if (d < g.Dv) ob[static_cast<int64_t>(i) * a.out.ld + d] = acc[t][c];
      }
      if (cg == 0) rb[i] = et;
    }
  }
}

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
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kRowThreads / 32) + (threadIdx.x >> 5);
  const int lane = static_cast<int>(threadIdx.x) & 31;
  if (row < a.rows) {
    const int64_t i = row % a.T, bh = row / a.T, b = bh / a.H, h = bh % a.H;
    const float c = sigmoid_f(a.theta[h]) / a.F[row];
    float* o = a.out.p + b * a.out.sb + h * a.out.sh + i * a.out.ld;
    for (int d = lane; d < a.Dv; d += 32) o[d] *= c;
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
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kRowThreads / 32) + (threadIdx.x >> 5);
  const int lane = static_cast<int>(threadIdx.x) & 31;
  float acc = 0.0f;
  if (row < a.rows) {  // warp-uniform: the shuffles below run in whole warps either way
    const int64_t i = row % a.T, bh = row / a.T, b = bh / a.H, h = bh % a.H;
    const float* o = a.out.p + b * a.out.sb + h * a.out.sh + i * a.out.ld;
    const float* go = a.dout.p + b * a.dout.sb + h * a.dout.sh + i * a.dout.ld;
    const float c = sigmoid_f(a.theta[h]) / a.F[row];
    float* u = a.du + row * a.Dv;
    for (int d = lane; d < a.Dv; d += 32) {
      acc += o[d] * go[d];
      u[d] = c * go[d];
    }
  }
  AL_UNROLL
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(kFull, acc, off);
  if (lane == 0 && row < a.rows) a.delta[row] = acc;
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

// ---- backward: dtheta (a thread per head) --------------------------------------------------------

struct ThetaArgs {
  const double* delta_sum;  // [B, H]
  const float* theta;       // [H]
  float* dtheta;            // [H]
  int B, H;
};

__global__ void infsa_attention_bwd_dtheta_kernel(ThetaArgs a) {
  const int h = static_cast<int>(blockIdx.x) * kThetaThreads + static_cast<int>(threadIdx.x);
  if (h < a.H) {
    double acc = 0.0;
    for (int b = 0; b < a.B; ++b) acc += a.delta_sum[static_cast<int64_t>(b) * a.H + h];
    const double gamma = 1.0 / (1.0 + exp(-static_cast<double>(a.theta[h])));
    a.dtheta[h] = static_cast<float>((1.0 - gamma) * acc);
  }
}

// ---- backward: dq (a block per query tile) -------------------------------------------------------

struct BwdArgs {
  Heads q, k, v, du;  // du: [B, H, T, Dv] contiguous
  const float* dr;    // [B, H, T]
  HeadsOut dq, dk, dv;
  Geom g;
};

template <class C>
size_t dq_smem(int Dk, int Dv) {
  return carved(C::Br * tile_ld(Dk)) + carved(C::Br * tile_ld(Dv)) + carved(C::Bc * tile_ld(Dk)) +
         carved(C::Bc * tile_ld(Dv)) + carved(C::Br * (C::Bc + 1));
}

template <class C>
__global__ void infsa_attention_bwd_dq_kernel(BwdArgs a) {
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
  float* dus = carve.take<float>(Br * ldv);
  float* ks = carve.take<float>(Bc * ldk);
  float* vs = carve.take<float>(Bc * ldv);
  float* dss = carve.take<float>(Br * ldp);

  const float* kb = a.k.p + b * a.k.sb + h * a.k.sh;
  const float* vb = a.v.p + b * a.v.sb + h * a.v.sh;
  load_tile(qs, ldk, Br, a.q.p + b * a.q.sb + h * a.q.sh + static_cast<int64_t>(i0) * a.q.ld, a.q.ld, rows, g.Dk);
  load_tile(dus, ldv, Br, a.du.p + b * a.du.sb + h * a.du.sh + static_cast<int64_t>(i0) * a.du.ld, a.du.ld, rows,
            g.Dv);

  const int64_t row0 = static_cast<int64_t>(bh) * g.T + i0;  // (b, h, i0) in dr
  int r[RT], n[RT];
  float two_dr[RT], acc[RT][DC];
  AL_UNROLL
  for (int t = 0; t < RT; ++t) {
    r[t] = warp * (Br / kWarps) + rg * RT + t;
    const bool valid = r[t] < rows;
    n[t] = valid ? visible_keys(g, i0 + r[t]) : 0;
    two_dr[t] = valid ? 2.0f * a.dr[row0 + r[t]] : 0.0f;
    AL_UNROLL
    for (int c = 0; c < DC; ++c) acc[t][c] = 0.0f;
  }
  const int nmax = visible_keys(g, i0 + rows - 1);

  for (int j0 = 0; j0 < nmax; j0 += Bc) {
    const int jn = imin(Bc, nmax - j0);
    __syncthreads();  // Q, dU are loaded; every warp is done with the previous K, V
    load_tile(ks, ldk, Bc, kb + static_cast<int64_t>(j0) * a.k.ld, a.k.ld, jn, g.Dk);
    load_tile(vs, ldv, Bc, vb + static_cast<int64_t>(j0) * a.v.ld, a.v.ld, jn, g.Dv);
    __syncthreads();

    float s[RT][KT], dp[RT][KT];
    tile_dots(s, qs, ks, ldk, r, cg, g.Dk);
    tile_dots(dp, dus, vs, ldv, r, cg, g.Dv);
    AL_UNROLL
    for (int t = 0; t < RT; ++t)
      AL_UNROLL
      for (int c = 0; c < KT; ++c) {
        const float x = j0 + cg + 8 * c < n[t] ? relu_f(s[t][c] * g.scale) : 0.0f;
        dss[r[t] * ldp + cg + 8 * c] = x > 0.0f ? dp[t][c] + two_dr[t] * x : 0.0f;
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

// ---- backward: dk, dv (a block per key tile) -----------------------------------------------------

template <class C>
size_t dkv_smem(int Dk, int Dv) {
  return carved(C::Bc * tile_ld(Dk)) + carved(C::Bc * tile_ld(Dv)) + carved(C::Br * tile_ld(Dk)) +
         carved(C::Br * tile_ld(Dv)) + carved(C::Br) + 2 * carved(C::Bc * (C::Br + 1));
}

template <class C>
__global__ void infsa_attention_bwd_dkdv_kernel(BwdArgs a) {
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
  float* dus = carve.take<float>(Br * ldv);
  float* drs = carve.take<float>(Br);
  float* ats = carve.take<float>(Bc * ldp);   // A^T: own keys x the tile's queries
  float* dsts = carve.take<float>(Bc * ldp);  // dS^T

  load_tile(ks, ldk, Bc, a.k.p + b * a.k.sb + h * a.k.sh + static_cast<int64_t>(j0) * a.k.ld, a.k.ld, keys, g.Dk);
  load_tile(vs, ldv, Bc, a.v.p + b * a.v.sb + h * a.v.sh + static_cast<int64_t>(j0) * a.v.ld, a.v.ld, keys, g.Dv);
  const float* qb = a.q.p + b * a.q.sb + h * a.q.sh;
  const float* ub = a.du.p + b * a.du.sb + h * a.du.sh;
  const float* drb = a.dr + static_cast<int64_t>(bh) * g.T;

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
    __syncthreads();  // K, V are loaded; every warp is done with the previous Q, dU, dr
    load_tile(qs, ldk, Br, qb + static_cast<int64_t>(i0) * a.q.ld, a.q.ld, in, g.Dk);
    load_tile(dus, ldv, Br, ub + static_cast<int64_t>(i0) * a.du.ld, a.du.ld, in, g.Dv);
    for (int i = static_cast<int>(threadIdx.x); i < Br; i += kThreads) drs[i] = i < in ? 2.0f * drb[i0 + i] : 0.0f;
    __syncthreads();

    float s[RT][IT], dp[RT][IT];
    tile_dots(s, ks, qs, ldk, r, cg, g.Dk);
    tile_dots(dp, vs, dus, ldv, r, cg, g.Dv);
    AL_UNROLL
    for (int c = 0; c < IT; ++c) {
      const int i = cg + 8 * c;
      const int n = i < in ? visible_keys(g, i0 + i) : 0;  // keys past S: r >= keys means j >= S >= n
      AL_UNROLL
      for (int t = 0; t < RT; ++t) {
        const float x = j0 + r[t] < n ? relu_f(s[t][c] * g.scale) : 0.0f;
        ats[r[t] * ldp + i] = x;
        dsts[r[t] * ldp + i] = x > 0.0f ? dp[t][c] + drs[i] * x : 0.0f;
      }
    }
    __syncwarp();  // the warp's A^T, dS^T rows, written 8 lanes per row, are read by all of them

    for (int i = 0; i < in; ++i) {
      float qv[DC], gv[DC];
      AL_UNROLL
      for (int c = 0; c < DC; ++c) {
        qv[c] = c < nck ? qs[i * ldk + cg + 8 * c] : 0.0f;
        gv[c] = c < ncv ? dus[i * ldv + cg + 8 * c] : 0.0f;
      }
      AL_UNROLL
      for (int t = 0; t < RT; ++t) {
        const float x = ats[r[t] * ldp + i], ds = dsts[r[t] * ldp + i];
        AL_UNROLL
        for (int c = 0; c < DC; ++c) {
          if (c < nck) dk[t][c] += ds * qv[c];
          if (c < ncv) dv[t][c] += x * gv[c];
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

constexpr std::string_view kName = "infsa_attention";

bool unit_last_stride(const Tensor& t) { return t.size(3) <= 1 || t.stride(3) == 1; }

Heads heads(const Tensor& t) { return {t.data<float>(), t.stride(0), t.stride(1), t.stride(2)}; }
HeadsOut heads_out(Tensor& t) { return {t.data<float>(), t.stride(0), t.stride(1), t.stride(2)}; }

// What the kernels need beyond check(): f32, unit-stride D, head dims <= 128, sizes that fit the
// launch grid and int indices.
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

InfsaAttentionOp::Forward InfsaAttentionOp::forward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                    const Tensor& theta, const AttentionMask& mask, double scale,
                                                    const Tensor& r0) {
  check(q, k, v, theta, mask, r0);
  check_cuda_inputs(q, k, v);
  AL_ASSERT(theta.is_contiguous() && (!r0.defined() || r0.is_contiguous()), kName,
            ": theta and r0 must be contiguous; got theta=", theta, ", r0=", r0);
  const Geom g = geom_of(q, k, v, mask, scale);
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
  const FwdArgs fa{heads(q), heads(k), heads(v), heads_out(f.out), r.data<float>(), g};
  by_head_dim<Fwd32, Fwd64, Fwd128>(g, [&](auto tiles_tag) {
    using C = decltype(tiles_tag);
    AL_CUDA_LAUNCH(infsa_attention_fwd_kernel<C>, dim3(tiles(g.T, C::Br), static_cast<unsigned>(B * H)),
                   dim3(kThreads), fwd_smem<C>(g.Dk, g.Dv), fa);
  });
  const ScanArgs sa{r.data<float>(), r0.defined() ? r0.data<float>() : nullptr, prefix.data<double>(),
                    f.F.data<float>(), f.r.data<float>(), g};
  AL_CUDA_LAUNCH(infsa_attention_scan_kernel, dim3(static_cast<unsigned>(B * H)), dim3(kScanThreads), scan_smem(),
                 sa);
  const int64_t rows = B * H * g.T;
  const EpilogueArgs ea{heads_out(f.out), f.F.data<float>(), theta.data<float>(), g.H, g.T, g.Dv, rows};
  AL_CUDA_LAUNCH(infsa_attention_epilogue_kernel, dim3(cuda::blocks_for(rows, kRowThreads / 32, 0x7fffffffu)),
                 dim3(kRowThreads), 0, ea);
  return f;
}

InfsaAttentionOp::Grads InfsaAttentionOp::backward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                   const Tensor& theta, const Tensor& out, const Tensor& F,
                                                   const Tensor& dout, const AttentionMask& mask, double scale) {
  check_cuda_inputs(q, k, v);
  const Geom g = geom_of(q, k, v, mask, scale);
  const int64_t B = q.size(0), H = q.size(1);
  const Device dev = q.device();
  AL_ASSERT(unit_last_stride(out) && F.is_contiguous() && unit_last_stride(dout) && theta.is_contiguous() &&
                out.shape() == dout.shape() && out.shape() == Shape({B, H, g.T, g.Dv}) &&
                F.shape() == Shape({B, H, g.T}) && theta.shape() == Shape({H}) && out.dtype() == q.dtype() &&
                F.dtype() == q.dtype() && dout.dtype() == q.dtype() && theta.dtype() == q.dtype() &&
                out.device() == dev && F.device() == dev && dout.device() == dev && theta.device() == dev,
            kName, ": backward got out=", out, ", F=", F, ", dout=", dout, ", theta=", theta, " for q=", q, ", v=", v);
  // The CPU op's layouts: self-attention (T = S, Dk = Dv) puts dq, dk, dv in one [B, T, 3, H, D]
  // buffer; else each is token-major on its own. The kernels write every element.
  Grads gr;
  if (g.T == g.S && g.Dk == g.Dv) {
    const int64_t T = g.T, D = g.Dk;
    const Tensor joint = Tensor::empty(Shape{B, T, 3, H, D}, DType::f32, dev);
    auto part = [&](int64_t i) {
      return Tensor(joint.storage(), Shape{B, H, T, D}, {T * 3 * H * D, D, 3 * H * D, 1}, i * H * D, DType::f32);
    };
    gr = {part(0), part(1), part(2), Tensor()};
  } else {
    gr = {empty_token_major(B, H, g.T, g.Dk, dev), empty_token_major(B, H, g.S, g.Dk, dev),
          empty_token_major(B, H, g.S, g.Dv, dev), Tensor()};
  }
  gr.dtheta = Tensor::empty(Shape{H}, DType::f32, dev);
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
  AL_CUDA_LAUNCH(infsa_attention_bwd_rows_kernel, dim3(cuda::blocks_for(rows, kRowThreads / 32, 0x7fffffffu)),
                 dim3(kRowThreads), 0, ra);
  const RScanArgs sa{delta.data<float>(), F.data<float>(), suffix.data<double>(), dr.data<float>(),
                     delta_sum.data<double>(), g};
  AL_CUDA_LAUNCH(infsa_attention_bwd_rscan_kernel, dim3(static_cast<unsigned>(B * H)), dim3(kScanThreads),
                 rscan_smem(), sa);
  const ThetaArgs ta{delta_sum.data<double>(), theta.data<float>(), gr.dtheta.data<float>(), static_cast<int>(B),
                     g.H};
  AL_CUDA_LAUNCH(infsa_attention_bwd_dtheta_kernel, dim3(tiles(g.H, kThetaThreads)), dim3(kThetaThreads), 0, ta);

  const BwdArgs args{heads(q),         heads(k),         heads(v),         heads(du), dr.data<float>(),
                     heads_out(gr.dq), heads_out(gr.dk), heads_out(gr.dv), g};
  by_head_dim<Dq32, Dq64, Dq128>(g, [&](auto tiles_tag) {
    using C = decltype(tiles_tag);
    AL_CUDA_LAUNCH(infsa_attention_bwd_dq_kernel<C>, dim3(tiles(g.T, C::Br), static_cast<unsigned>(B * H)),
                   dim3(kThreads), dq_smem<C>(g.Dk, g.Dv), args);
  });
  by_head_dim<Dkv32, Dkv64, Dkv128>(g, [&](auto tiles_tag) {
    using C = decltype(tiles_tag);
    AL_CUDA_LAUNCH(infsa_attention_bwd_dkdv_kernel<C>, dim3(tiles(g.S, C::Bc), static_cast<unsigned>(B * H)),
                   dim3(kThreads), dkv_smem<C>(g.Dk, g.Dv), args);
  });
  return gr;
}

}  // namespace attnlab
