// CUDA forward and backward of local linear attention (lla_attention.h), f32, Dk <= 64, Dv <= 128.
//
// Maths, per (b, h) (glossary in layers/attention/common.h; spec attention_kda_lla.md B1, B4).
// Query i sits at position p = S - T + i and sees the keys [0, n_i): causal n_i = min(S, p + 1), or
// min(S, max(p + 1, prefix)) when p < prefix; not causal n_i = S. Sums over j run over j < n_i; c is
// the scale; x_ij = k_j - q_i.
//   forward   s_ij = c q_i.k_j, m_i = max_j s_ij, w_ij = exp(s_ij - m_i), omega_i = sum_j w_ij,
//             mu_i = sum_j w_ij x_ij, Sigma_i = sum_j w_ij x_ij x_ij^T + lam omega_i I,
//             rho_i = Sigma_i^-1 mu_i, delta_i = omega_i - mu_i.rho_i,
//             c_ij = w_ij (1 - rho_i.x_ij) / delta_i, out_i = sum_j c_ij v_j.
//   backward  gamma_ij = dout_i.v_j, C_ij = gamma_ij w_ij / delta_i, tau_i = sum_j C_ij,
//             t_i = sum_j C_ij x_ij, b_i = dout_i.out_i / delta_i,
//             u_i = Sigma_i^-1 (b_i mu_i - t_i) = b_i rho_i - Sigma_i^-1 t_i, dmu_i = u_i + b_i rho_i,
//             domega_i = -b_i - lam u_i.rho_i (flashlla_grad: -b_i), dlam = -sum_i omega_i u_i.rho_i
//             (flashlla_grad: 0);
//             dl_ij = w_ij (gamma_ij (1 - rho_i.x_ij) / delta_i + dmu_i.x_ij - (u_i.x_ij)(rho_i.x_ij)
//                     + domega_i),
//             dx_ij = -C_ij rho_i - w_ij ((rho_i.x_ij) u_i + (u_i.x_ij) rho_i) + w_ij dmu_i,
//             dq_i = c sum_j dl_ij k_j - sum_j dx_ij, with
//                    sum_j dx_ij = -tau_i rho_i - (rho_i.mu_i) u_i - (u_i.mu_i) rho_i + omega_i dmu_i,
//             dk_j = sum_i (c dl_ij q_i + dx_ij), dv_j = sum_i c_ij dout_i.
// The solves are exact: Sigma_i is formed (centred at q_i, in f32 sums over the keys) and factored
// by Cholesky in f64 in shared memory; Dk is small, so this costs O(Dk^3) per row beside the
// O(n_i Dk^2) of forming Sigma_i.
//
// Shapes: q [B, H, T, Dk], k [B, H, S, Dk], v [B, H, S, Dv], dout and the saved out [B, H, T, Dv]:
// any strides with a unit-stride last dim. out, dq, dk, dv: [B, H, *, D] views of token-major
// memory, laid out as the other variants lay them out (empty_token_major, empty_qkv_grads).
// m, omega, delta [B, H, T], rho [B, H, T, Dk], lam [1], dlam [1]: contiguous. Backward scratch:
// u, dmu [B, H, T, Dk], domega, dlam_i [B, H, T].
//
// Kernels and launch shapes (DKP = Dk padded to 32 or 64; Bc = 32 keys per shared tile):
//   fwd       grid B*H*T (a block per query row), 256 threads = 8 warps laid out 16 x 16 over
//             the DKP x DKP entries of Sigma: thread (ta, tb) owns the entries (ta + 16 r, tb + 16 c),
//             r >= c, in registers. Pass 1: threads stride over the visible keys for the row max m
//             (warp max, then over the 8 warps). Pass 2, per key tile (K_J in shared memory): a
//             score phase gives each key a group of 8 lanes of one warp (lane sub takes
//             d = sub + 8 t, partial sums added in lane order by lane 0 of the group after a
//             __syncwarp) for w_j; then every thread adds w_j x_a x_b to its entries in increasing
//             j (and mu, omega, kept by every thread, written by one). Sigma + lam omega I goes to
//             shared memory in f64 (packed lower triangle); warp 0 factors it (right-looking
//             Cholesky, two __syncwarps per column) and solves for rho (two triangular solves, a
//             shuffle per row); delta = omega - mu.rho in f64. Pass 3, per key tile (K_J, V_J): a
//             score phase for c_j, then thread t accumulates out column t % 128 over half of the
//             tile's keys (t / 128); the halves are added at the end.
//             smem (Dk = 64, Dv = 128): q, K_J [Bc, 72], V_J [Bc, 136] (row strides 8 mod 32: the
//             score phases' 4 keys x 8 lanes per warp hit 32 banks), w, c, Sigma (f64, DKP (DKP + 1)
//             / 2, which also holds the score phases' partial sums), its diagonal, mu, rho
//             = 45616 B.
//   bwd rows  grid B*H*T, 256 threads, the forward's layout. Pass A per key tile: a score phase for
//             w_j and C_j; every thread adds its Sigma entries, mu and t (in increasing j). Warp 0
//             factors Sigma, solves z = Sigma^-1 t and forms u, dmu, domega, dlam_i and
//             sum_j dx_ij (f64 dots in a fixed xor tree), written to scratch for the key kernel.
//             Pass B per key tile: a score phase for dl_j (five dots per key); thread t accumulates
//             dq column t % 64 over a quarter of the tile's keys (t / 64); the quarters are added
//             in order at the end. smem (Dk = 64, Dv = 128): the forward's plus dout_i, t, u, dmu,
//             sum dx = 47776 B.
//   bwd keys  grid (ceil(S / 16), B*H), 128 threads: K_J, V_J (16 keys) stay in shared memory; per
//             tile of 16 query rows from the first query that sees key j0 (Q, dout, rho, u, dmu,
//             m, delta, domega loaded by the block) thread t computes the five pair coefficients of
//             pairs t and t + 128 of the 16 x 16 (key, query) pairs into shared memory (c dl_ij,
//             -C_ij - w_ij u.x, -w_ij rho.x, w_ij, c_ij); then thread t owns key t / 8 and the
//             columns t % 8 + 8 c of dk (c < 8) and dv (c < 16), adding over the tile's queries in
//             order. smem (Dk = 64, Dv = 128): K, V, Q, rho, u, dmu, dout tiles + 5 x [16, 17]
//             = 42944 B.
//   dlam      grid 1, 256 threads: thread t sums a contiguous segment of dlam_i in f64, thread 0
//             adds the 256 segment sums in order.
// Every launch stays within the 48 KiB of dynamic shared memory a kernel gets without an opt-in.
// Determinism: no atomics; every output element is written by one thread and every sum runs in a
// fixed order (the xor-shuffle trees included), so results do not depend on scheduling.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

#include "layers/attention/attention_tiles_cuda.h"
#include "layers/attention/lla/lla_attention.h"
#include "lib/cuda/kernel.h"
#include "lib/cuda/tensor_kernels.h"
#include "lib/error.h"

namespace attnlab {

namespace {

using namespace attention_cuda;

constexpr int kMaxDk = 64;
constexpr int kMaxDv = 128;
constexpr int kRowThreadsL = 256;  // row kernels: 16 x 16 threads over Sigma's entries
constexpr int kRowWarps = kRowThreadsL / 32;
constexpr int kBc = 32;  // keys per shared tile in the row kernels: 8 lanes per key
static_assert(kBc * 8 == kRowThreadsL, "a score phase gives each key of a tile a group of 8 lanes");
constexpr int kKeyThreads = 128;  // key kernel
constexpr int kBk = 16;           // keys per block in the key kernel
constexpr int kBq = 16;           // query rows per tile in the key kernel
constexpr int kSumThreads = 256;  // dlam kernel
constexpr size_t kSmemLimit = 48 * 1024;

// Row stride of a row kernel's key tile of width d: 8 mod 32, so the 4 keys x 8 lanes of a warp in
// a score phase (lane sub reads d = sub + 8 t of key kj) hit 32 different banks.
AL_HOST_DEVICE inline int key_ld(int d) { return (d + 31) / 32 * 32 + 8; }

// Doubles of the shared array that holds Sigma's packed lower triangle (DKP rows) or, before it,
// the score phases' NV partial sums per lane (kBc * 8 * NV floats).
template <int DKP, int NV>
AL_HOST_DEVICE constexpr int tri_or_partials() {
  constexpr int tri = DKP * (DKP + 1) / 2, parts = (kBc * 8 * NV + 1) / 2;
  return tri > parts ? tri : parts;
}

// Index of (i, j), j <= i, in a packed lower triangle stored row by row.
__device__ inline int tri(int i, int j) { return i * (i + 1) / 2 + j; }

__device__ inline float dot_f(const float* a, const float* b, int n) {
  float s = 0.0f;
  for (int d = 0; d < n; ++d) s += a[d] * b[d];
  return s;
}
// sum_d r_d (k_d - q_d): a direction dotted with the centred key.
__device__ inline float dot_x(const float* r, const float* k, const float* q, int n) {
  float s = 0.0f;
  for (int d = 0; d < n; ++d) s += r[d] * (k[d] - q[d]);
  return s;
}

// The score phases split each key's dots over the 8 lanes of a group (lanes 8 g .. 8 g + 7 of one
// warp): lane `sub` takes d = sub, sub + 8, ... (partial_dot, partial_dot_x) and stores its NV
// partial sums in gp; after a __syncwarp lane sub = 0 adds the 8 partials of each dot in lane order
// (group_total). One __syncwarp instead of 3 shuffles per dot.
__device__ inline float partial_dot(const float* a, const float* b, int n, int sub) {
  float s = 0.0f;
  for (int d = sub; d < n; d += 8) s += a[d] * b[d];
  return s;
}
__device__ inline float partial_dot_x(const float* r, const float* k, const float* q, int n, int sub) {
  float s = 0.0f;
  for (int d = sub; d < n; d += 8) s += r[d] * (k[d] - q[d]);
  return s;
}
// gp: kBc * 8 * NV floats. Every lane of the warp calls it; the totals mean something in lane sub = 0.
template <int NV>
__device__ inline void group_total(float* gp, const float (&p)[NV], int kj, int sub, float (&tot)[NV]) {
  float* mine = gp + (kj * 8 + sub) * NV;
  AL_UNROLL
  for (int v = 0; v < NV; ++v) mine[v] = p[v];
  __syncwarp();
  AL_UNROLL
  for (int v = 0; v < NV; ++v) {
    float t = 0.0f;
    if (sub == 0)
      for (int l = 0; l < 8; ++l) t += gp[(kj * 8 + l) * NV + v];
    tot[v] = t;
  }
}

__device__ inline float warp_max(float x) {
  AL_UNROLL
  for (int off = 16; off > 0; off >>= 1) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, off));
  return x;
}

// Right-looking Cholesky of the packed lower triangle A (n <= 64 rows) by one warp, in place: A's
// strictly lower part becomes L's, dd gets L's diagonal (A's diagonal is left partly updated).
// Column k: the lanes scale their rows' entries of column k by 1 / L_kk, a __syncwarp publishes
// the column, then each lane subtracts L_ik L_jk from its rows' trailing entries (k < j <= i):
// independent FMAs, no long dependent chains; a second __syncwarp publishes them.
__device__ void warp_cholesky(double* A, double* dd, int n, int lane) {
  for (int k = 0; k < n; ++k) {
    const double lkk = sqrt(A[tri(k, k)]);
    for (int i = k + 1 + lane; i < n; i += 32) A[tri(i, k)] /= lkk;
    if (lane == 0) dd[k] = lkk;
    __syncwarp();
    for (int i = k + 1 + lane; i < n; i += 32) {
      double* ri = A + tri(i, 0);
      const double lik = ri[k];
      for (int j = k + 1; j <= i; ++j) ri[j] -= lik * A[tri(j, k)];
    }
    __syncwarp();
  }
}

// x = (L L^T)^-1 y by one warp, L from warp_cholesky; lane holds rows lane and lane + 32 of y in
// r[0], r[1] (zeros past n) and gets those of x. A shuffle per row broadcasts the solved value;
// the other rows' residuals are updated in increasing (then decreasing) row order.
__device__ void warp_solve(const double* A, const double* dd, int n, int lane, double (&r)[2]) {
  for (int k = 0; k < n; ++k) {
    const double mine = k < 32 ? r[0] : r[1];
    const double yk = __shfl_sync(kFullMask, mine, k & 31) / dd[k];
    AL_UNROLL
    for (int t = 0; t < 2; ++t) {
      const int i = lane + 32 * t;
      if (i == k) r[t] = yk;
      if (i > k && i < n) r[t] -= A[tri(i, k)] * yk;
    }
  }
  for (int k = n - 1; k >= 0; --k) {
    const double mine = k < 32 ? r[0] : r[1];
    const double xk = __shfl_sync(kFullMask, mine, k & 31) / dd[k];
    AL_UNROLL
    for (int t = 0; t < 2; ++t) {
      const int i = lane + 32 * t;
      if (i == k) r[t] = xk;
      if (i < k) r[t] -= A[tri(k, i)] * xk;
    }
  }
}

// Sum over the warp of a[i] b[i] for the lane's rows i = lane, lane + 32 (< n), in f64.
__device__ inline double warp_dot(const double (&a)[2], const double (&b)[2]) {
  return warp_sum(a[0] * b[0] + a[1] * b[1]);
}

// The query row of a row-kernel block.
struct RowPos {
  int64_t row;  // (b, h, i) in [B, H, T]
  int b, h, i, n;
};
__device__ inline RowPos row_pos(const Geom& g) {
  const int64_t row = static_cast<int64_t>(blockIdx.x);
  const int64_t bh = row / g.T;
  const int i = static_cast<int>(row % g.T);
  return {row, static_cast<int>(bh / g.H), static_cast<int>(bh % g.H), i, visible_keys(g, i)};
}

// dst [kBc, ld] <- rows [j0, j0 + jn) x columns [0, D) of src (row stride sld), zeros elsewhere in
// columns [0, W). Block-wide, between the caller's barriers.
__device__ inline void load_rows(float* dst, int ld, int W, const float* src, int64_t sld, int j0, int jn, int D,
                                 int rows) {
  for (int e = static_cast<int>(threadIdx.x); e < rows * W; e += static_cast<int>(blockDim.x)) {
    const int r = e / W, d = e % W;
    dst[r * ld + d] = (r < jn && d < D) ? src[static_cast<int64_t>(j0 + r) * sld + d] : 0.0f;
  }
}

// The row max m of c q.k_j over the visible keys: threads stride over keys, then warp and block
// maxima (order-free, so deterministic). red holds kRowWarps floats. Block-uniform.
__device__ inline float row_max(const float* qs, const float* kb, int64_t kld, int n, int Dk, float scale, float* red) {
  const int tid = static_cast<int>(threadIdx.x);
  float mx = -INFINITY;
  for (int j = tid; j < n; j += kRowThreadsL) mx = fmaxf(mx, scale * dot_f(qs, kb + static_cast<int64_t>(j) * kld, Dk));
  mx = warp_max(mx);
  if ((tid & 31) == 0) red[tid >> 5] = mx;
  __syncthreads();
  float m = red[0];
  for (int w = 1; w < kRowWarps; ++w) m = fmaxf(m, red[w]);
  return m;
}

// Sigma and mu of a query row, built the same way by the forward and the backward row kernels: in
// the 16 x 16 layout thread (ta, tb) keeps, in registers, the entries (ta + 16 r, tb + 16 c), r >= c,
// of sum_j w_j x_j x_j^T in S and the entries ta + 16 r of mu = sum_j w_j x_j (x_j = k_j - q); qa,
// qb hold the entries of q it centres by. Per-thread only: no barriers inside.
template <int RA>
__device__ inline void sigma_begin(const float* qs, int ta, int tb, float (&qa)[RA], float (&qb)[RA], float (&mu)[RA],
                                   float (&S)[RA][RA]) {
  AL_UNROLL
  for (int r = 0; r < RA; ++r) {
    qa[r] = qs[ta + 16 * r];
    qb[r] = qs[tb + 16 * r];
    mu[r] = 0.0f;
    AL_UNROLL
    for (int c = 0; c < RA; ++c) S[r][c] = 0.0f;
  }
}
// Adds key kr (a shared tile row) with weight w to mu and S; with kT also cc x to t (the backward's
// t = sum_j C_j x_j, the other sum of the same centred key).
template <int RA, bool kT>
__device__ inline void sigma_add(const float* kr, float w, float cc, int ta, int tb, const float (&qa)[RA],
                                 const float (&qb)[RA], float (&mu)[RA], float (&t)[RA], float (&S)[RA][RA]) {
  float xb[RA];
  AL_UNROLL
  for (int c = 0; c < RA; ++c) xb[c] = kr[tb + 16 * c] - qb[c];
  AL_UNROLL
  for (int r = 0; r < RA; ++r) {
    const float x = kr[ta + 16 * r] - qa[r];
    const float wx = w * x;
    mu[r] += wx;
    if constexpr (kT) t[r] += cc * x;
    AL_UNROLL
    for (int c = 0; c <= r; ++c) S[r][c] += wx * xb[c];
  }
}
// Sigma + ridge I into the packed lower triangle L (rows < Dk), each thread its own entries; the
// caller's __syncthreads publishes them.
template <int RA>
__device__ inline void sigma_store(double* L, const float (&S)[RA][RA], int ta, int tb, int Dk, double ridge) {
  AL_UNROLL
  for (int r = 0; r < RA; ++r) AL_UNROLL
  for (int c = 0; c <= r; ++c) {
    const int ia = ta + 16 * r, ib = tb + 16 * c;
    if (ib <= ia && ia < Dk) L[tri(ia, ib)] = static_cast<double>(S[r][c]) + (ia == ib ? ridge : 0.0);
  }
}

// ---- forward: a block per query row --------------------------------------------------------------

struct LlaFwdArgs {
  Heads q, k, v;
  HeadsOut out;
  float* m;          // [B, H, T]
  float* omega;      // [B, H, T]
  float* delta;      // [B, H, T]
  float* rho;        // [B, H, T, Dk]
  const float* lam;  // [1]
  Geom g;
};

template <int DKP>
size_t fwd_smem(int Dv) {
  const int ldk = key_ld(DKP), ldv = key_ld(Dv);
  return carved(DKP) + carved(kBc * ldk) + carved(kBc * ldv) + 2 * carved(kBc) + carved(kRowWarps) + carved(kMaxDv) +
         carved<double>(tri_or_partials<DKP, 2>()) + 2 * carved<double>(DKP) + carved(DKP) + carved(4);
}

template <int DKP>
__global__ void lla_attention_fwd_kernel(LlaFwdArgs a) {
  constexpr int RA = DKP / 16;
  const Geom& g = a.g;
  const RowPos rp = row_pos(g);
  const int n = rp.n, Dk = g.Dk, Dv = g.Dv;
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int ta = tid >> 4, tb = tid & 15;
  const int kj = tid >> 3, sub = tid & 7;  // score phases: key kj of the tile, lane sub of its group
  const int ldk = key_ld(DKP), ldv = key_ld(Dv);

  simt::SmemCarver carve;
  float* qs = carve.take<float>(DKP);
  float* ks = carve.take<float>(kBc * ldk);
  float* vs = carve.take<float>(kBc * ldv);
  float* ws = carve.take<float>(kBc);
  float* cs = carve.take<float>(kBc);
  float* red = carve.take<float>(kRowWarps);
  float* part = carve.take<float>(kMaxDv);
  // Sigma's factor, and before it the score phases' partial sums (never live at the same time).
  double* L = carve.take<double>(tri_or_partials<DKP, 2>());
  float* gp = reinterpret_cast<float*>(L);
  double* dd = carve.take<double>(DKP);
  double* mud = carve.take<double>(DKP);
  float* rhof = carve.take<float>(DKP);
  float* scal = carve.take<float>(4);  // omega, delta

  const float* qrow = a.q.head(rp.b, rp.h) + static_cast<int64_t>(rp.i) * a.q.ld;
  const float* kb = a.k.head(rp.b, rp.h);
  const float* vb = a.v.head(rp.b, rp.h);
  if (tid < DKP) qs[tid] = tid < Dk ? qrow[tid] : 0.0f;
  __syncthreads();

  // Pass 1: the row max.
  const float m = row_max(qs, kb, a.k.ld, n, Dk, g.scale, red);

  // Pass 2: omega, mu, Sigma (centred at q).
  float qa[RA], qb[RA], mu[RA], S[RA][RA];
  sigma_begin<RA>(qs, ta, tb, qa, qb, mu, S);
  float om = 0.0f;
  for (int j0 = 0; j0 < n; j0 += kBc) {
    const int jn = imin(kBc, n - j0);
    __syncthreads();  // every thread is done with the previous tile
    load_rows(ks, ldk, DKP, kb, a.k.ld, j0, jn, Dk, kBc);
    __syncthreads();
    {  // key kj of the tile, by the 8 lanes sub of its group
      const float p[1] = {partial_dot(qs, ks + kj * ldk, Dk, sub)};
      float t[1];
      group_total(gp, p, kj, sub, t);
      if (sub == 0) ws[kj] = kj < jn ? expf(g.scale * t[0] - m) : 0.0f;
    }
    __syncthreads();
    for (int jj = 0; jj < jn; ++jj) {
      const float w = ws[jj];
      sigma_add<RA, false>(ks + jj * ldk, w, 0.0f, ta, tb, qa, qb, mu, mu, S);
      om += w;
    }
  }
  if (tid == 0) scal[0] = om;
  if (tb == 0) AL_UNROLL
  for (int r = 0; r < RA; ++r) mud[ta + 16 * r] = mu[r];                         // zeros past Dk
  const double ridge = static_cast<double>(a.lam[0]) * static_cast<double>(om);  // om: the same bits in every thread
  sigma_store<RA>(L, S, ta, tb, Dk, ridge);
  __syncthreads();

  // rho = Sigma^-1 mu and delta = omega - mu.rho, by warp 0.
  if (warp == 0) {
    warp_cholesky(L, dd, Dk, lane);
    double x[2], mv[2];
    AL_UNROLL
    for (int t = 0; t < 2; ++t) {
      const int i = lane + 32 * t;
      mv[t] = i < Dk ? mud[i] : 0.0;
      x[t] = mv[t];
    }
    warp_solve(L, dd, Dk, lane, x);
    const double dlt = static_cast<double>(om) - warp_dot(mv, x);
    AL_UNROLL
    for (int t = 0; t < 2; ++t) {
      const int i = lane + 32 * t;
      if (i < DKP) {
        rhof[i] = i < Dk ? static_cast<float>(x[t]) : 0.0f;
      }
    }
    if (lane == 0) scal[1] = static_cast<float>(dlt);
  }
  __syncthreads();
  const float dlt = scal[1];
  if (tid == 0) {
    a.m[rp.row] = m;
    a.omega[rp.row] = om;
    a.delta[rp.row] = dlt;
  }
  if (tid < Dk) a.rho[rp.row * Dk + tid] = rhof[tid];

  // Pass 3: out = sum_j c_j v_j.
  const int d = tid & (kMaxDv - 1), half = tid / kMaxDv;
  float acc = 0.0f;
  for (int j0 = 0; j0 < n; j0 += kBc) {
    const int jn = imin(kBc, n - j0);
    __syncthreads();
    load_rows(ks, ldk, DKP, kb, a.k.ld, j0, jn, Dk, kBc);
    load_rows(vs, ldv, Dv, vb, a.v.ld, j0, jn, Dv, kBc);
    __syncthreads();
    {
      const float* kr = ks + kj * ldk;
      const float p[2] = {partial_dot(qs, kr, Dk, sub), partial_dot_x(rhof, kr, qs, Dk, sub)};
      float t[2];
      group_total(gp, p, kj, sub, t);
      if (sub == 0) cs[kj] = kj < jn ? expf(g.scale * t[0] - m) * (1.0f - t[1]) / dlt : 0.0f;
    }
    __syncthreads();
    if (d < Dv) {
      const int e = imin(jn, (half + 1) * (kBc / 2));
      for (int jj = half * (kBc / 2); jj < e; ++jj) acc += cs[jj] * vs[jj * ldv + d];
    }
  }
  if (half == 1) part[d] = acc;
  __syncthreads();
  if (half == 0 && d < Dv) a.out.head(rp.b, rp.h)[static_cast<int64_t>(rp.i) * a.out.ld + d] = acc + part[d];
}

// ---- backward: a block per query row (dq and the per-row vectors) ------------------------------

struct LlaBwdRowArgs {
  Heads q, k, v, dout, out;
  const float* m;      // [B, H, T]
  const float* omega;  // [B, H, T]
  const float* delta;  // [B, H, T]
  const float* rho;    // [B, H, T, Dk]
  const float* lam;    // [1]
  HeadsOut dq;
  float* u;       // [B, H, T, Dk] scratch
  float* dmu;     // [B, H, T, Dk] scratch
  float* domega;  // [B, H, T] scratch
  float* dlam_i;  // [B, H, T] scratch: -omega_i u_i.rho_i (0 with flashlla_grad)
  Geom g;
  int flashlla;
};

template <int DKP>
size_t bwd_row_smem(int Dv) {
  const int ldk = key_ld(DKP), ldv = key_ld(Dv);
  return carved(DKP) + carved(kMaxDv) + carved(kBc * ldk) + carved(kBc * ldv) + 3 * carved(kBc) + carved(3 * kMaxDk) +
         carved<double>(tri_or_partials<DKP, 5>()) + 3 * carved<double>(DKP) + 4 * carved(DKP) + carved(8);
}

template <int DKP>
__global__ void lla_attention_bwd_rows_kernel(LlaBwdRowArgs a) {
  constexpr int RA = DKP / 16;
  const Geom& g = a.g;
  const RowPos rp = row_pos(g);
  const int n = rp.n, Dk = g.Dk, Dv = g.Dv;
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int ta = tid >> 4, tb = tid & 15;
  const int kj = tid >> 3, sub = tid & 7;  // score phases: key kj of the tile, lane sub of its group
  const int ldk = key_ld(DKP), ldv = key_ld(Dv);

  simt::SmemCarver carve;
  float* qs = carve.take<float>(DKP);
  float* gos = carve.take<float>(kMaxDv);  // dout_i
  float* ks = carve.take<float>(kBc * ldk);
  float* vs = carve.take<float>(kBc * ldv);
  float* ws = carve.take<float>(kBc);
  float* cs = carve.take<float>(kBc);  // C_j
  float* ls = carve.take<float>(kBc);  // dl_j
  float* part = carve.take<float>(3 * kMaxDk);
  double* L = carve.take<double>(tri_or_partials<DKP, 5>());  // as in the forward
  float* gp = reinterpret_cast<float*>(L);
  double* dd = carve.take<double>(DKP);
  double* mud = carve.take<double>(DKP);
  double* td = carve.take<double>(DKP);
  float* rhof = carve.take<float>(DKP);
  float* uf = carve.take<float>(DKP);
  float* dmuf = carve.take<float>(DKP);
  float* sdx = carve.take<float>(DKP);  // sum_j dx_ij
  float* scal = carve.take<float>(8);   // b, domega, tau

  const int64_t row = rp.row;
  const float* qrow = a.q.head(rp.b, rp.h) + static_cast<int64_t>(rp.i) * a.q.ld;
  const float* gorow = a.dout.head(rp.b, rp.h) + static_cast<int64_t>(rp.i) * a.dout.ld;
  const float* orow = a.out.head(rp.b, rp.h) + static_cast<int64_t>(rp.i) * a.out.ld;
  const float* kb = a.k.head(rp.b, rp.h);
  const float* vb = a.v.head(rp.b, rp.h);
  const float m = a.m[row], om = a.omega[row], dlt = a.delta[row];
  if (tid < DKP) {
    qs[tid] = tid < Dk ? qrow[tid] : 0.0f;
    rhof[tid] = tid < Dk ? a.rho[row * Dk + tid] : 0.0f;
  }
  if (tid < kMaxDv) gos[tid] = tid < Dv ? gorow[tid] : 0.0f;
  if (warp == 0) {  // b = dout.out / delta (f32 terms, a fixed xor tree)
    float s = 0.0f;
    for (int e = lane; e < Dv; e += 32) s += gorow[e] * orow[e];
    s = warp_sum(s);
    if (lane == 0) scal[0] = s / dlt;
  }
  __syncthreads();

  // Pass A: Sigma, mu, tau, t.
  float qa[RA], qb[RA], mu[RA], tt[RA], S[RA][RA];
  sigma_begin<RA>(qs, ta, tb, qa, qb, mu, S);
  AL_UNROLL
  for (int r = 0; r < RA; ++r) tt[r] = 0.0f;
  float tau = 0.0f;
  for (int j0 = 0; j0 < n; j0 += kBc) {
    const int jn = imin(kBc, n - j0);
    __syncthreads();
    load_rows(ks, ldk, DKP, kb, a.k.ld, j0, jn, Dk, kBc);
    load_rows(vs, ldv, Dv, vb, a.v.ld, j0, jn, Dv, kBc);
    __syncthreads();
    {
      const float p[2] = {partial_dot(qs, ks + kj * ldk, Dk, sub), partial_dot(gos, vs + kj * ldv, Dv, sub)};
      float t[2];
      group_total(gp, p, kj, sub, t);
      if (sub == 0) {
        const float w = expf(g.scale * t[0] - m);
        ws[kj] = kj < jn ? w : 0.0f;
        cs[kj] = kj < jn ? t[1] * w / dlt : 0.0f;
      }
    }
    __syncthreads();
    for (int jj = 0; jj < jn; ++jj) {
      const float cc = cs[jj];
      sigma_add<RA, true>(ks + jj * ldk, ws[jj], cc, ta, tb, qa, qb, mu, tt, S);
      tau += cc;
    }
  }
  if (tb == 0) AL_UNROLL
  for (int r = 0; r < RA; ++r) {
    mud[ta + 16 * r] = mu[r];
    td[ta + 16 * r] = tt[r];
  }
  const double lam = static_cast<double>(a.lam[0]);
  sigma_store<RA>(L, S, ta, tb, Dk, lam * static_cast<double>(om));
  __syncthreads();

  // u = b rho - Sigma^-1 t, dmu, domega, dlam_i, sum_j dx_ij: warp 0.
  if (warp == 0) {
    warp_cholesky(L, dd, Dk, lane);
    const double b = scal[0];
    double z[2], rh[2], mv[2];
    AL_UNROLL
    for (int t = 0; t < 2; ++t) {
      const int i = lane + 32 * t;
      z[t] = i < Dk ? td[i] : 0.0;
      rh[t] = i < Dk ? static_cast<double>(rhof[i]) : 0.0;
      mv[t] = i < Dk ? mud[i] : 0.0;
    }
    warp_solve(L, dd, Dk, lane, z);
    double u[2], dm[2];
    AL_UNROLL
    for (int t = 0; t < 2; ++t) {
      u[t] = b * rh[t] - z[t];
      dm[t] = u[t] + b * rh[t];
    }
    const double urho = warp_dot(u, rh), rhomu = warp_dot(rh, mv), umu = warp_dot(u, mv);
    const double dom = -b - (a.flashlla ? 0.0 : lam * urho);
    const double tau_d = static_cast<double>(tau);  // the same bits in every thread
    AL_UNROLL
    for (int t = 0; t < 2; ++t) {
      const int i = lane + 32 * t;
      if (i < DKP) {
        const bool in = i < Dk;
        const float uv = in ? static_cast<float>(u[t]) : 0.0f, mv2 = in ? static_cast<float>(dm[t]) : 0.0f;
        uf[i] = uv;
        dmuf[i] = mv2;
        sdx[i] = in ? static_cast<float>(-tau_d * rh[t] - rhomu * u[t] - umu * rh[t] + static_cast<double>(om) * dm[t])
                    : 0.0f;
        if (in) {
          a.u[row * Dk + i] = uv;
          a.dmu[row * Dk + i] = mv2;
        }
      }
    }
    if (lane == 0) {
      scal[1] = static_cast<float>(dom);
      a.domega[row] = static_cast<float>(dom);
      a.dlam_i[row] = a.flashlla ? 0.0f : static_cast<float>(-static_cast<double>(om) * urho);
    }
  }
  __syncthreads();
  const float dom = scal[1];

  // Pass B: dq = c sum_j dl_j k_j - sum_j dx_j.
  const int col = tid & (kMaxDk - 1), quarter = tid / kMaxDk;
  float acc = 0.0f;
  for (int j0 = 0; j0 < n; j0 += kBc) {
    const int jn = imin(kBc, n - j0);
    __syncthreads();
    load_rows(ks, ldk, DKP, kb, a.k.ld, j0, jn, Dk, kBc);
    load_rows(vs, ldv, Dv, vb, a.v.ld, j0, jn, Dv, kBc);
    __syncthreads();
    {
      const float* kr = ks + kj * ldk;
      const float p[5] = {partial_dot(qs, kr, Dk, sub), partial_dot(gos, vs + kj * ldv, Dv, sub),
                          partial_dot_x(rhof, kr, qs, Dk, sub), partial_dot_x(uf, kr, qs, Dk, sub),
                          partial_dot_x(dmuf, kr, qs, Dk, sub)};
      float t[5];
      group_total(gp, p, kj, sub, t);
      if (sub == 0) {
        const float w = expf(g.scale * t[0] - m), gm = t[1], rx = t[2], ux = t[3], mx = t[4];
        ls[kj] = kj < jn ? w * (gm * (1.0f - rx) / dlt + mx - ux * rx + dom) : 0.0f;
      }
    }
    __syncthreads();
    if (col < Dk) {
      const int e = imin(jn, (quarter + 1) * (kBc / 4));
      for (int jj = quarter * (kBc / 4); jj < e; ++jj) acc += ls[jj] * ks[jj * ldk + col];
    }
  }
  if (quarter > 0) part[(quarter - 1) * kMaxDk + col] = acc;
  __syncthreads();
  if (quarter == 0 && col < Dk) {
    const float s = ((acc + part[col]) + part[kMaxDk + col]) + part[2 * kMaxDk + col];
    a.dq.head(rp.b, rp.h)[static_cast<int64_t>(rp.i) * a.dq.ld + col] = g.scale * s - sdx[col];
  }
}

// ---- backward: dk, dv, a block per key tile -------------------------------------------------------

struct LlaBwdKeyArgs {
  Heads q, k, v, dout;
  const float* m;       // [B, H, T]
  const float* delta;   // [B, H, T]
  const float* domega;  // [B, H, T]
  const float* rho;     // [B, H, T, Dk]
  const float* u;       // [B, H, T, Dk]
  const float* dmu;     // [B, H, T, Dk]
  HeadsOut dk, dv;
  Geom g;
};

size_t bwd_key_smem(int Dk, int Dv) {
  const int ldk = Dk + 1, ldv = Dv + 1;
  return carved(kBk * ldk) + carved(kBk * ldv) + 4 * carved(kBq * ldk) + carved(kBq * ldv) + 3 * carved(kBq) +
         5 * carved(kBk * (kBq + 1));
}

__global__ void lla_attention_bwd_keys_kernel(LlaBwdKeyArgs a) {
  constexpr int CK = kMaxDk / 8, CV = kMaxDv / 8;  // dk, dv columns per thread
  const Geom& g = a.g;
  const int Dk = g.Dk, Dv = g.Dv;
  const int bh = static_cast<int>(blockIdx.y), b = bh / g.H, h = bh % g.H;
  const int j0 = static_cast<int>(blockIdx.x) * kBk;
  const int keys = imin(kBk, g.S - j0);
  const int tid = static_cast<int>(threadIdx.x);
  const int ldk = Dk + 1, ldv = Dv + 1, ldc = kBq + 1;

  simt::SmemCarver carve;
  float* ks = carve.take<float>(kBk * ldk);
  float* vs = carve.take<float>(kBk * ldv);
  float* qs = carve.take<float>(kBq * ldk);
  float* rs = carve.take<float>(kBq * ldk);
  float* us = carve.take<float>(kBq * ldk);
  float* ms = carve.take<float>(kBq * ldk);
  float* gs = carve.take<float>(kBq * ldv);
  float* mrow = carve.take<float>(kBq);
  float* drow = carve.take<float>(kBq);
  float* orow = carve.take<float>(kBq);
  float* cq = carve.take<float>(kBk * ldc);
  float* cr = carve.take<float>(kBk * ldc);
  float* cu = carve.take<float>(kBk * ldc);
  float* cm = carve.take<float>(kBk * ldc);
  float* cv = carve.take<float>(kBk * ldc);

  load_rows(ks, ldk, Dk, a.k.head(b, h), a.k.ld, j0, keys, Dk, kBk);
  load_rows(vs, ldv, Dv, a.v.head(b, h), a.v.ld, j0, keys, Dv, kBk);
  const float* qb = a.q.head(b, h);
  const float* gb = a.dout.head(b, h);
  const int64_t rowh = static_cast<int64_t>(bh) * g.T;  // (b, h, 0) in [B, H, T]

  const int own = tid >> 3, cg = tid & 7;  // phase 2: key own, columns cg + 8 c
  float dk[CK], dv[CV];
  AL_UNROLL
  for (int c = 0; c < CK; ++c) dk[c] = 0.0f;
  AL_UNROLL
  for (int c = 0; c < CV; ++c) dv[c] = 0.0f;

  for (int i0 = first_query_seeing(g, j0); i0 < g.T; i0 += kBq) {
    const int in = imin(kBq, g.T - i0);
    __syncthreads();  // K, V loaded; every thread is done with the previous query tile
    load_rows(qs, ldk, Dk, qb, a.q.ld, i0, in, Dk, kBq);
    load_rows(gs, ldv, Dv, gb, a.dout.ld, i0, in, Dv, kBq);
    load_rows(rs, ldk, Dk, a.rho + rowh * Dk, Dk, i0, in, Dk, kBq);
    load_rows(us, ldk, Dk, a.u + rowh * Dk, Dk, i0, in, Dk, kBq);
    load_rows(ms, ldk, Dk, a.dmu + rowh * Dk, Dk, i0, in, Dk, kBq);
    if (tid < kBq) {
      const bool live = tid < in;
      mrow[tid] = live ? a.m[rowh + i0 + tid] : 0.0f;
      drow[tid] = live ? a.delta[rowh + i0 + tid] : 1.0f;
      orow[tid] = live ? a.domega[rowh + i0 + tid] : 0.0f;
    }
    __syncthreads();

    // Phase 1: the pair coefficients.
    for (int p = tid; p < kBk * kBq; p += kKeyThreads) {
      const int jj = p % kBk, ii = p / kBk;
      float fq = 0.0f, fr = 0.0f, fu = 0.0f, fm = 0.0f, fv = 0.0f;
      if (jj < keys && ii < in && j0 + jj < visible_keys(g, i0 + ii)) {
        const float* kr = ks + jj * ldk;
        const float* qr = qs + ii * ldk;
        const float w = expf(g.scale * dot_f(qr, kr, Dk) - mrow[ii]);
        const float gm = dot_f(gs + ii * ldv, vs + jj * ldv, Dv);
        const float rx = dot_x(rs + ii * ldk, kr, qr, Dk), ux = dot_x(us + ii * ldk, kr, qr, Dk),
                    mx = dot_x(ms + ii * ldk, kr, qr, Dk);
        const float dl_ = drow[ii];
        const float cc = gm * w / dl_;
        const float dl = w * (gm * (1.0f - rx) / dl_ + mx - ux * rx + orow[ii]);
        fq = g.scale * dl;
        fr = -cc - w * ux;
        fu = -w * rx;
        fm = w;
        fv = w * (1.0f - rx) / dl_;
      }
      const int e = jj * ldc + ii;
      cq[e] = fq, cr[e] = fr, cu[e] = fu, cm[e] = fm, cv[e] = fv;
    }
    __syncthreads();

    // Phase 2: dk, dv of key `own` over the tile's queries in order.
    for (int ii = 0; ii < in; ++ii) {
      const int e = own * ldc + ii;
      const float fq = cq[e], fr = cr[e], fu = cu[e], fm = cm[e], fv = cv[e];
      const float* qr = qs + ii * ldk;
      const float* rr = rs + ii * ldk;
      const float* ur = us + ii * ldk;
      const float* mr = ms + ii * ldk;
      const float* gr = gs + ii * ldv;
      AL_UNROLL
      for (int c = 0; c < CK; ++c) {
        const int d = cg + 8 * c;
        if (d < Dk) dk[c] += ((fq * qr[d] + fr * rr[d]) + fu * ur[d]) + fm * mr[d];
      }
      AL_UNROLL
      for (int c = 0; c < CV; ++c) {
        const int d = cg + 8 * c;
        if (d < Dv) dv[c] += fv * gr[d];
      }
    }
  }

  if (own < keys) {
    const int64_t j = j0 + own;
    float* kout = a.dk.head(b, h) + j * a.dk.ld;
    float* vout = a.dv.head(b, h) + j * a.dv.ld;
    AL_UNROLL
    for (int c = 0; c < CK; ++c) {
      const int d = cg + 8 * c;
      if (d < Dk) kout[d] = dk[c];
    }
    AL_UNROLL
    for (int c = 0; c < CV; ++c) {
      const int d = cg + 8 * c;
      if (d < Dv) vout[d] = dv[c];
    }
  }
}

// ---- backward: dlam = sum_i dlam_i (one block) ---------------------------------------------------

__global__ void lla_attention_dlam_kernel(const float* dlam_i, int64_t rows, float* dlam) {
  const int tid = static_cast<int>(threadIdx.x);
  simt::SmemCarver carve;
  double* seg = carve.take<double>(kSumThreads);
  const int64_t per = (rows + kSumThreads - 1) / kSumThreads;
  const int64_t b0 = tid * per < rows ? tid * per : rows, e0 = b0 + per < rows ? b0 + per : rows;
  double s = 0.0;
  for (int64_t r = b0; r < e0; ++r) s += dlam_i[r];
  seg[tid] = s;
  __syncthreads();
  if (tid == 0) {
    double tot = 0.0;
    for (int t = 0; t < kSumThreads; ++t) tot += seg[t];
    dlam[0] = static_cast<float>(tot);
  }
}

constexpr std::string_view kName = "lla_attention";

// Calls fn(std::integral_constant<int, DKP>) for Dk padded to 32 or 64.
template <class Fn>
void by_dk(int Dk, Fn&& fn) {
  if (Dk <= 32)
    fn(std::integral_constant<int, 32>{});
  else
    fn(std::integral_constant<int, 64>{});
}

void check_cuda_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lam) {
  check_tile_inputs(kName, q, k, v);
  AL_CHECK_SHAPE(q.size(3) <= kMaxDk && v.size(3) <= kMaxDv, kName, ": the CUDA kernels take Dk <= ", kMaxDk,
                 " and Dv <= ", kMaxDv, "; got q=", q, ", v=", v);
  AL_ASSERT(lam.is_contiguous() && lam.numel() == 1 && lam.dtype() == DType::f32 && lam.device() == q.device(), kName,
            ": lam must be a contiguous f32 [1] on q's device; got lam=", lam, " for q=", q);
  AL_CHECK_SHAPE(q.size(3) > 0 && q.size(0) * q.size(1) * q.size(2) < (int64_t{1} << 31), kName,
                 ": the CUDA kernels take Dk > 0 and B * H * T < 2^31; got q=", q);
}

}  // namespace

LlaAttentionOp::Forward LlaAttentionOp::forward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                const Tensor& lam, const AttentionMask& mask, double scale) {
  check(q, k, v, lam, mask);
  check_cuda_inputs(q, k, v, lam);
  const Geom g = tile_geom(q, k, v, mask, scale);
  const int64_t B = q.size(0), H = q.size(1);
  const Device dev = q.device();
  Forward f{empty_token_major(B, H, g.T, g.Dv, dev), Tensor::empty(Shape{B, H, g.T}, DType::f32, dev),
            Tensor::empty(Shape{B, H, g.T}, DType::f32, dev), Tensor::empty(Shape{B, H, g.T}, DType::f32, dev),
            Tensor::empty(Shape{B, H, g.T, g.Dk}, DType::f32, dev)};
  const int64_t rows = B * H * g.T;
  if (rows == 0) return f;
  const LlaFwdArgs fa{heads(q),
                      heads(k),
                      heads(v),
                      heads_out(f.out),
                      f.m.data<float>(),
                      f.omega.data<float>(),
                      f.delta.data<float>(),
                      f.rho.data<float>(),
                      lam.data<float>(),
                      g};
  by_dk(g.Dk, [&](auto dkp) {
    constexpr int DKP = decltype(dkp)::value;
    const size_t smem = fwd_smem<DKP>(g.Dv);
    AL_ASSERT(smem <= kSmemLimit, kName, ": forward shared memory ", smem);
    AL_CUDA_LAUNCH(lla_attention_fwd_kernel<DKP>, dim3(static_cast<unsigned>(rows)), dim3(kRowThreadsL), smem, fa);
  });
  return f;
}

LlaAttentionOp::Grads LlaAttentionOp::backward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                               const Tensor& lam, const Forward& saved, const Tensor& dout,
                                               const AttentionMask& mask, double scale, bool flashlla_grad) {
  check_cuda_inputs(q, k, v, lam);
  const Geom g = tile_geom(q, k, v, mask, scale);
  const int64_t B = q.size(0), H = q.size(1);
  const Device dev = q.device();
  const Shape rows_shape{B, H, g.T};
  AL_ASSERT(unit_last_stride(saved.out) && unit_last_stride(dout) && saved.out.shape() == Shape({B, H, g.T, g.Dv}) &&
                dout.shape() == saved.out.shape() && saved.m.is_contiguous() && saved.omega.is_contiguous() &&
                saved.delta.is_contiguous() && saved.rho.is_contiguous() && saved.m.shape() == rows_shape &&
                saved.omega.shape() == rows_shape && saved.delta.shape() == rows_shape &&
                saved.rho.shape() == Shape({B, H, g.T, g.Dk}) && dout.dtype() == DType::f32 &&
                saved.out.dtype() == DType::f32 && saved.m.dtype() == DType::f32 && saved.rho.dtype() == DType::f32 &&
                dout.device() == dev && saved.out.device() == dev && saved.rho.device() == dev,
            kName, ": backward got out=", saved.out, ", dout=", dout, ", m=", saved.m, ", rho=", saved.rho,
            " for q=", q, ", v=", v);
  const QkvGrads qkv = empty_qkv_grads(B, H, g.T, g.S, g.Dk, g.Dv, dev);
  Grads gr{qkv.dq, qkv.dk, qkv.dv, Tensor::empty(Shape{1}, DType::f32, dev)};
  const int64_t rows = B * H * g.T;
  if (rows == 0) {
    cuda::fill(gr.dq, 0.0), cuda::fill(gr.dk, 0.0), cuda::fill(gr.dv, 0.0), cuda::fill(gr.dlam, 0.0);
    return gr;
  }
  Tensor u = Tensor::empty(Shape{B, H, g.T, g.Dk}, DType::f32, dev);
  Tensor dmu = Tensor::empty(Shape{B, H, g.T, g.Dk}, DType::f32, dev);
  Tensor domega = Tensor::empty(rows_shape, DType::f32, dev);
  Tensor dlam_i = Tensor::empty(rows_shape, DType::f32, dev);

  const LlaBwdRowArgs ra{heads(q),
                         heads(k),
                         heads(v),
                         heads(dout),
                         heads(saved.out),
                         saved.m.data<float>(),
                         saved.omega.data<float>(),
                         saved.delta.data<float>(),
                         saved.rho.data<float>(),
                         lam.data<float>(),
                         heads_out(gr.dq),
                         u.data<float>(),
                         dmu.data<float>(),
                         domega.data<float>(),
                         dlam_i.data<float>(),
                         g,
                         flashlla_grad ? 1 : 0};
  by_dk(g.Dk, [&](auto dkp) {
    constexpr int DKP = decltype(dkp)::value;
    const size_t smem = bwd_row_smem<DKP>(g.Dv);
    AL_ASSERT(smem <= kSmemLimit, kName, ": backward row shared memory ", smem);
    AL_CUDA_LAUNCH(lla_attention_bwd_rows_kernel<DKP>, dim3(static_cast<unsigned>(rows)), dim3(kRowThreadsL), smem, ra);
  });

  const LlaBwdKeyArgs ka{heads(q),
                         heads(k),
                         heads(v),
                         heads(dout),
                         saved.m.data<float>(),
                         saved.delta.data<float>(),
                         domega.data<float>(),
                         saved.rho.data<float>(),
                         u.data<float>(),
                         dmu.data<float>(),
                         heads_out(gr.dk),
                         heads_out(gr.dv),
                         g};
  const size_t ksmem = bwd_key_smem(g.Dk, g.Dv);
  AL_ASSERT(ksmem <= kSmemLimit, kName, ": backward key shared memory ", ksmem);
  AL_CUDA_LAUNCH(lla_attention_bwd_keys_kernel, dim3(tile_count(g.S, kBk), static_cast<unsigned>(B * H)),
                 dim3(kKeyThreads), ksmem, ka);
  AL_CUDA_LAUNCH(lla_attention_dlam_kernel, dim3(1), dim3(kSumThreads), carved<double>(kSumThreads),
                 static_cast<const float*>(dlam_i.data<float>()), rows, gr.dlam.data<float>());
  return gr;
}

}  // namespace attnlab
