// CUDA forward and backward of the chunkwise KDA core op (kda_attention.h), f32.
//
// Maths, per (b, h) (spec: shared/specs/attention_kda_lla.md A6, A7), chunks of C tokens
// (C = 32 for Dk <= 64, else 16; the CPU's 64 differs only by rounding).
// Inside chunk n (rows r = 0..C-1; a ragged last chunk is padded with zero q, k, v, g, beta, so
// its padded rows carry G = G_last, W = U = Kd = 0 and leave the state as the CPU computes it):
//   G_r = sum_{j <= r} g_j (chunk-local), Gamma = exp(G), gamma_C = exp(G_{C-1}),
//   E_ij = exp(G_i - G_j) (<= 1 for i >= j when g <= 0: no exp(+G) is ever formed),
//   Akk_ij = sum_d k_id k_jd E_ij,d (i > j), L = Diag(beta) Akk, Tinv = (I + L)^-1,
//   Aqk_ij = s sum_d q_id k_jd E_ij,d (j <= i),
//   W = Tinv Diag(beta) (K o Gamma), U = Tinv Diag(beta) V, Kd = K o exp(G_{C-1} - G);
// then in chunk order, S entering chunk n (h_n; S_0 = s0 or 0):
//   Delta = U - W S,  S <- Diag(gamma_C) S + Kd^T Delta,
//   O = s (Q o Gamma) S + Aqk Delta.
// Backward (A7), dS = gradient of the state leaving the chunk (dstate for the last one):
//   reverse over chunks: dDelta = Aqk^T dO + Kd dS, dS <- s (Q o Gamma)^T dO + Diag(gamma_C) dS - W^T dDelta
//   (ds0 = the dS that leaves chunk 0); then per chunk, with S = h_n and dS = dS of chunk n:
//   dA = s Tril(dO Delta^T), dW = -dDelta S^T, dTinv = Tril(dDelta (Diag(beta) V)^T + dW (Diag(beta) (K o Gamma))^T),
//   dv = Diag(beta) Tinv^T dDelta, Y = Tinv^T dW, R = Diag(beta) Y, dk += R o Gamma, dG += R o K o Gamma,
//   dbeta = rowsum((Tinv^T dDelta) o V) + rowsum(Y o K o Gamma) + rowsum(dL o Akk),
//   dL = StrictTril(-Tinv^T dTinv Tinv^T), M = Diag(beta) dL, pair terms of M (Akk) and dA (Aqk),
//   P = dO S^T: dq += s P o Gamma, dG += s P o Q o Gamma; Pk = Delta dS^T: dk += Pk o exp(G_C - G),
//   dG -= Pk o Kd, dG_{C-1} += sum_r Pk_r o Kd_r + gamma_C o rowsum(dS o S); dg = reverse chunk cumsum of dG.
//
// Shapes: q, k, g [B, H, T, Dk], v, dout [B, H, T, Dv] (any strides, a unit-stride last dim);
// beta [B, H, T], s0, dstate [B, H, Dk, Dv] (made contiguous here). out, dq, dk, dv, dg, dbeta,
// state, ds0 contiguous. f32 only, Dk, Dv <= 128, any T >= 1.
// Scratch (device, f32), Tp = N C padded rows per head: G, W, Kd [B*H, Tp, Dk]; U [B*H, Tp, Dv];
// Tinv, Aqk [B*H, N, C, C]; the backward adds Akk [B*H, N, C, C], Delta and dDelta
// [B*H, Tp, Dv], the chunk-start states h and the per-chunk dS [B*H, N, Dk, Dv] (spec A7's
// recompute policy). Memory linear in T; the forward keeps no per-chunk state.
//
// Launch shapes (128 threads = 4 warps, 8 C in the backward chunk kernel; ld = Dk | 1, an odd row
// stride; shared memory quoted at (C, Dk) = (16, 128) / (32, 64), the largest each C serves):
//   prep       grid (N, B*H). Loads K, Q, g of the chunk (zeros past T); thread d < Dk runs the
//              cumsum of column d; threads take (i, j) pairs for Akk, Aqk (a Dk dot with the
//              pairwise exp); thread j < C solves column j of Tinv by forward substitution (the
//              columns are independent) while the others form beta K Gamma; then elements of W,
//              Kd [C, Dk] and U [C, Dv] (a <= C dot each). smem K, Q, G [C, ld] + 2 [C, C+1] + beta
//              = 26.4 / 32.8 KiB.
//   sweep      grid (ceil(Dv / 32), B*H): a block owns a 32-column tile of the state in shared memory
//              and walks the chunks in order: Delta = U - W S (C x 32 elements, Dk dots; the forward
//              also sums s (Q o Gamma) S there), then the state update (Dk x 32 elements, C dots; the
//              forward adds Aqk Delta and stores its output tile in the same phase). Backward: stores
//              h_n and Delta instead. smem S [Dk, 33], W, Kd [C, ld], U/Delta [C, 33], gamma [Dk],
//              forward also s Q o Gamma [C, ld], Aqk [C, C+1] = 44.3 / 41.1 KiB (forward).
//   bwd sweep  grid (ceil(Dv / 32), B*H): the reverse walk with dS's tile in shared memory; stores
//              dS per chunk, dDelta, ds0. smem dS [Dk, 33], s Q o Gamma, W, Kd [C, ld], Aqk, dO and
//              dDelta tiles, gamma = 46.4 / 45.2 KiB.
//   bwd chunk  grid (N, B*H), 8 C threads. Thread t owns row r = t / 8 of the chunk and columns
//              cg + 8 m (cg = t % 8) of every [C, D] or [C, C] quantity, so a row sum is a local sum
//              plus 3 xor shuffles inside the row's 8 lanes. Phase 1 walks Dv in 16-column tiles
//              (h_n, dS, dO, Delta, dDelta, V tiles in shared memory) accumulating dW, P, Pk, dA and
//              the Delta part of dTinv in registers and writing dv; phase 2 reuses that shared
//              memory for K, Q, G and one [C, Dk] exchange tile (dW, then Pk o Kd, then dG) and does
//              the rest in C x C and C x Dk element passes, ending with the reverse cumsum (thread
//              d < Dk). smem max(phase 1, phase 2) + 5 [C, C+1] + small = 38.2 / 53.6 KiB (the
//              launch opts in above 48 KiB; sm_80 and sm_90 allow it).
// Determinism: no atomics; every element is written by one thread and every sum runs in a fixed
// order (the shuffle trees too), so results do not depend on scheduling.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

#include "layers/attention/attention_tiles_cuda.h"
#include "layers/attention/kda/kda_attention.h"
#include "lib/cuda/kernel.h"
#include "lib/error.h"

namespace attnlab {

namespace {

using attention_cuda::carved, attention_cuda::group_sum, attention_cuda::heads, attention_cuda::Heads,
    attention_cuda::imin, attention_cuda::unit_last_stride;

constexpr int kThreads = 128;  // every kernel but the backward chunk kernel (8 C)
constexpr int kTile = 32;      // state columns per block in the sweeps and the output kernel
constexpr int kBwdTile = 16;   // Dv columns per step of the backward chunk kernel's phase 1
constexpr int kMaxD = 128;
constexpr int kLdT = kTile + 1;
constexpr int kLdB = kBwdTile + 1;
// The largest Dk a chunk length serves (by_chunk below picks C from Dk), and the columns
// cg + 8 m a thread of the backward chunk kernel owns in a [C, Dk] pass.
template <int C>
__host__ __device__ constexpr int max_dk() {
  return C == 32 ? 64 : kMaxD;
}
template <int C>
__host__ __device__ constexpr int own_cols() {
  return max_dk<C>() / 8;
}

struct Geom {
  int H = 0, T = 0, Dk = 0, Dv = 0;
  int N = 0;  // chunks
  float scale = 0.0f;
};

__host__ __device__ inline int ld_k(int dk) { return dk | 1; }  // odd: the rows spread over the banks

// Row t of head bh in the padded [B*H, N*C, D] scratch.
template <int C>
__device__ inline int64_t prow(const Geom& g, int bh, int t) {
  return static_cast<int64_t>(bh) * g.N * C + t;
}
// Offset of chunk n's [C, C] matrix in [B*H, N, C, C] scratch.
template <int C>
__device__ inline int64_t cc_off(const Geom& g, int bh, int n) {
  return (static_cast<int64_t>(bh) * g.N + n) * C * C;
}
// Offset of chunk n's [Dk, Dv] state in [B*H, N, Dk, Dv] scratch.
__device__ inline int64_t st_off(const Geom& g, int bh, int n) {
  return (static_cast<int64_t>(bh) * g.N + n) * g.Dk * g.Dv;
}

// ---- prep: chunk-local quantities -----------------------------------------------------------------

struct PrepArgs {
  Heads q = {}, k = {}, v = {}, g = {};
  const float* beta = nullptr;  // [B, H, T]
  float* G = nullptr;           // [B*H, Tp, Dk]
  float* W = nullptr;           // [B*H, Tp, Dk]
  float* U = nullptr;           // [B*H, Tp, Dv]
  float* Kd = nullptr;          // [B*H, Tp, Dk]
  float* Tinv = nullptr;        // [B*H, N, C, C]
  float* Akk = nullptr;         // [B*H, N, C, C] or null (forward)
  float* Aqk = nullptr;         // [B*H, N, C, C], scaled by s
  Geom geo = {};
};

template <int C>
__global__ void __launch_bounds__(kThreads) kda_prep_kernel(PrepArgs a) {
  const Geom& g = a.geo;
  constexpr int LdC = C + 1;
  const int n = static_cast<int>(blockIdx.x), bh = static_cast<int>(blockIdx.y), b = bh / g.H, h = bh % g.H;
  const int tid = static_cast<int>(threadIdx.x);
  const int t0 = n * C, rows = imin(C, g.T - t0);
  const int ldk = ld_k(g.Dk);

  simt::SmemCarver carve;
  float* ks = carve.take<float>(C * ldk);
  float* qs = carve.take<float>(C * ldk);  // Q, then beta K Gamma
  float* gs = carve.take<float>(C * ldk);  // g, then G
  float* A = carve.take<float>(C * LdC);   // Akk
  float* ti = carve.take<float>(C * LdC);
  float* bs = carve.take<float>(C);

  const float* kb = a.k.head(b, h) + static_cast<int64_t>(t0) * a.k.ld;
  const float* qb = a.q.head(b, h) + static_cast<int64_t>(t0) * a.q.ld;
  const float* gb = a.g.head(b, h) + static_cast<int64_t>(t0) * a.g.ld;
  for (int e = tid; e < C * g.Dk; e += kThreads) {
    const int r = e / g.Dk, d = e % g.Dk;
    const bool in = r < rows;
    ks[r * ldk + d] = in ? kb[static_cast<int64_t>(r) * a.k.ld + d] : 0.0f;
    qs[r * ldk + d] = in ? qb[static_cast<int64_t>(r) * a.q.ld + d] : 0.0f;
    gs[r * ldk + d] = in ? gb[static_cast<int64_t>(r) * a.g.ld + d] : 0.0f;
  }
  if (tid < C) bs[tid] = tid < rows ? a.beta[static_cast<int64_t>(bh) * g.T + t0 + tid] : 0.0f;
  __syncthreads();

  const int64_t p0 = prow<C>(g, bh, t0);
  if (tid < g.Dk) {
    float acc = 0.0f;
    for (int r = 0; r < C; ++r) {
      acc += gs[r * ldk + tid];
      gs[r * ldk + tid] = acc;
      a.G[(p0 + r) * g.Dk + tid] = acc;
    }
  }
  __syncthreads();

  const int64_t cc = cc_off<C>(g, bh, n);
  for (int e = tid; e < C * C; e += kThreads) {
    const int i = e / C, j = e % C;
    float akk = 0.0f, aqk = 0.0f;
    if (j <= i) {
      for (int d = 0; d < g.Dk; ++d) {
        const float kj = ks[j * ldk + d] * expf(gs[i * ldk + d] - gs[j * ldk + d]);
        aqk += qs[i * ldk + d] * kj;
        akk += ks[i * ldk + d] * kj;
      }
    }
    if (j == i) akk = 0.0f;  // L is strictly lower
    A[i * LdC + j] = akk;
    if (a.Akk) a.Akk[cc + e] = akk;
    a.Aqk[cc + e] = g.scale * aqk;
  }
  __syncthreads();

  // (I + L) X = I, row i: X_ij = -beta_i sum_{m=j}^{i-1} Akk_im X_mj; column j needs only column j.
  if (tid < C) {
    const int j = tid;
    for (int i = 0; i < C; ++i) {
      float x = i == j ? 1.0f : 0.0f;
      if (i > j) {
        float s = 0.0f;
        for (int m = j; m < i; ++m) s += A[i * LdC + m] * ti[m * LdC + j];
        x = -bs[i] * s;
      }
      ti[i * LdC + j] = x;
    }
  }
  for (int e = tid; e < C * g.Dk; e += kThreads) {  // Q is consumed: qs <- beta K Gamma
    const int r = e / g.Dk, d = e % g.Dk;
    qs[r * ldk + d] = bs[r] * ks[r * ldk + d] * expf(gs[r * ldk + d]);
  }
  __syncthreads();

  for (int e = tid; e < C * C; e += kThreads) a.Tinv[cc + e] = ti[(e / C) * LdC + e % C];
  for (int e = tid; e < C * g.Dk; e += kThreads) {
    const int r = e / g.Dk, d = e % g.Dk;
    float w = 0.0f;
    for (int j = 0; j <= r; ++j) w += ti[r * LdC + j] * qs[j * ldk + d];
    a.W[(p0 + r) * g.Dk + d] = w;
    a.Kd[(p0 + r) * g.Dk + d] = ks[r * ldk + d] * expf(gs[(C - 1) * ldk + d] - gs[r * ldk + d]);
  }
  const float* vb = a.v.head(b, h) + static_cast<int64_t>(t0) * a.v.ld;
  for (int e = tid; e < C * g.Dv; e += kThreads) {
    const int r = e / g.Dv, c = e % g.Dv;
    float u = 0.0f;
    for (int j = 0; j <= r && j < rows; ++j) u += ti[r * LdC + j] * (bs[j] * vb[static_cast<int64_t>(j) * a.v.ld + c]);
    a.U[(p0 + r) * g.Dv + c] = u;
  }
}

// ---- sweep: chunk-start states and Delta, in chunk order --------------------------------------------

struct SweepArgs {
  Heads q = {};                // read only with `out`
  const float* W = nullptr;    // [B*H, Tp, Dk]
  const float* U = nullptr;    // [B*H, Tp, Dv]
  const float* Kd = nullptr;   // [B*H, Tp, Dk]
  const float* G = nullptr;    // [B*H, Tp, Dk]
  const float* Aqk = nullptr;  // [B*H, N, C, C], read only with `out`
  const float* s0 = nullptr;   // [B*H, Dk, Dv] or null
  float* h = nullptr;          // [B*H, N, Dk, Dv] or null (backward: the chunk-start states)
  float* D = nullptr;          // [B*H, Tp, Dv] or null (backward: Delta)
  float* out = nullptr;        // [B, H, T, Dv] or null (forward)
  float* state = nullptr;      // [B*H, Dk, Dv] or null
  Geom geo = {};
};

// Forward (out given): O = s (Q o Gamma) S + Aqk Delta per chunk, the S part computed with Delta
// (both read S before its update) and the Aqk part with the state update (both read Delta).
template <int C>
__global__ void __launch_bounds__(kThreads) kda_sweep_kernel(SweepArgs a) {
  const Geom& g = a.geo;
  constexpr int LdC = C + 1;
  constexpr int kOwnOut = C * kTile / kThreads;  // output elements per thread
  const int c0 = static_cast<int>(blockIdx.x) * kTile, bh = static_cast<int>(blockIdx.y), b = bh / g.H, h = bh % g.H;
  const int cols = imin(kTile, g.Dv - c0);
  const int tid = static_cast<int>(threadIdx.x);
  const int ldk = ld_k(g.Dk);
  const bool with_out = a.out != nullptr;  // block-uniform

  simt::SmemCarver carve;
  float* S = carve.take<float>(g.Dk * kLdT);
  float* ws = carve.take<float>(C * ldk);
  float* kds = carve.take<float>(C * ldk);
  float* dt = carve.take<float>(C * kLdT);  // U, then Delta (each element in place by its thread)
  float* gam = carve.take<float>(g.Dk);
  float* qg = with_out ? carve.take<float>(C * ldk) : nullptr;  // s Q o Gamma
  float* A = with_out ? carve.take<float>(C * LdC) : nullptr;   // Aqk

  const int64_t sbase = static_cast<int64_t>(bh) * g.Dk * g.Dv + c0;
  for (int e = tid; e < g.Dk * kTile; e += kThreads) {
    const int d = e / kTile, c = e % kTile;
    S[d * kLdT + c] = (a.s0 && c < cols) ? a.s0[sbase + static_cast<int64_t>(d) * g.Dv + c] : 0.0f;
  }
  const float* qh = with_out ? a.q.head(b, h) : nullptr;
  for (int n = 0; n < g.N; ++n) {
    const int t0 = n * C, rows = imin(C, g.T - t0);
    const int64_t p0 = prow<C>(g, bh, t0);
    __syncthreads();  // the previous state update is done and its tiles are consumed
    for (int e = tid; e < C * g.Dk; e += kThreads) {
      const int r = e / g.Dk, d = e % g.Dk;
      const int64_t pe = (p0 + r) * g.Dk + d;
      ws[r * ldk + d] = a.W[pe];
      kds[r * ldk + d] = a.Kd[pe];
      if (with_out)
        qg[r * ldk + d] = r < rows ? g.scale * qh[static_cast<int64_t>(t0 + r) * a.q.ld + d] * expf(a.G[pe]) : 0.0f;
    }
    for (int e = tid; e < C * kTile; e += kThreads) {
      const int r = e / kTile, c = e % kTile;
      dt[r * kLdT + c] = c < cols ? a.U[(p0 + r) * g.Dv + c0 + c] : 0.0f;
    }
    if (with_out) {
      const int64_t cc = cc_off<C>(g, bh, n);
      for (int e = tid; e < C * C; e += kThreads) A[(e / C) * LdC + e % C] = a.Aqk[cc + e];
    }
    if (tid < g.Dk) gam[tid] = expf(a.G[(p0 + C - 1) * g.Dk + tid]);
    if (a.h) {
      float* hn = a.h + st_off(g, bh, n) + c0;
      for (int e = tid; e < g.Dk * kTile; e += kThreads) {
        const int d = e / kTile, c = e % kTile;
        if (c < cols) hn[static_cast<int64_t>(d) * g.Dv + c] = S[d * kLdT + c];
      }
    }
    __syncthreads();
    float o[kOwnOut];  // element e = tid + m kThreads of the chunk's [C, 32] output tile
    AL_UNROLL
    for (int m = 0; m < kOwnOut; ++m) {
      const int e = tid + m * kThreads, r = e / kTile, c = e % kTile;
      float x = dt[r * kLdT + c], y = 0.0f;
      for (int d = 0; d < g.Dk; ++d) {
        const float sv = S[d * kLdT + c];
        x -= ws[r * ldk + d] * sv;
        if (with_out) y += qg[r * ldk + d] * sv;
      }
      dt[r * kLdT + c] = x;
      o[m] = y;
      if (a.D && c < cols) a.D[(p0 + r) * g.Dv + c0 + c] = x;
    }
    __syncthreads();
    if (with_out) {
      float* ob = a.out + (static_cast<int64_t>(bh) * g.T + t0) * g.Dv + c0;
      AL_UNROLL
      for (int m = 0; m < kOwnOut; ++m) {
        const int e = tid + m * kThreads, r = e / kTile, c = e % kTile;
        float y = o[m];
        for (int j = 0; j <= r; ++j) y += A[r * LdC + j] * dt[j * kLdT + c];
        if (r < rows && c < cols) ob[static_cast<int64_t>(r) * g.Dv + c] = y;
      }
    }
    for (int e = tid; e < g.Dk * kTile; e += kThreads) {
      const int d = e / kTile, c = e % kTile;
      float x = gam[d] * S[d * kLdT + c];
      for (int r = 0; r < C; ++r) x += kds[r * ldk + d] * dt[r * kLdT + c];
      S[d * kLdT + c] = x;
    }
  }
  if (a.state) {  // each element was last written by this same thread: no barrier needed
    for (int e = tid; e < g.Dk * kTile; e += kThreads) {
      const int d = e / kTile, c = e % kTile;
      if (c < cols) a.state[sbase + static_cast<int64_t>(d) * g.Dv + c] = S[d * kLdT + c];
    }
  }
}

// ---- backward sweep: dS per chunk and dDelta, in reverse chunk order ---------------------------------

struct BwdSweepArgs {
  Heads q = {}, dout = {};
  const float* G = nullptr;       // [B*H, Tp, Dk]
  const float* W = nullptr;       // [B*H, Tp, Dk]
  const float* Kd = nullptr;      // [B*H, Tp, Dk]
  const float* Aqk = nullptr;     // [B*H, N, C, C]
  const float* dstate = nullptr;  // [B*H, Dk, Dv] or null
  float* dSn = nullptr;           // [B*H, N, Dk, Dv]: gradient of the state leaving chunk n
  float* dD = nullptr;            // [B*H, Tp, Dv]: dDelta
  float* ds0 = nullptr;           // [B*H, Dk, Dv]
  Geom geo = {};
};

template <int C>
__global__ void __launch_bounds__(kThreads, 1) kda_bwd_sweep_kernel(BwdSweepArgs a) {
  const Geom& g = a.geo;
  constexpr int LdC = C + 1;
  const int c0 = static_cast<int>(blockIdx.x) * kTile, bh = static_cast<int>(blockIdx.y), b = bh / g.H, h = bh % g.H;
  const int cols = imin(kTile, g.Dv - c0);
  const int tid = static_cast<int>(threadIdx.x);
  const int ldk = ld_k(g.Dk);

  simt::SmemCarver carve;
  float* dS = carve.take<float>(g.Dk * kLdT);
  float* qg = carve.take<float>(C * ldk);
  float* ws = carve.take<float>(C * ldk);
  float* kds = carve.take<float>(C * ldk);
  float* A = carve.take<float>(C * LdC);
  float* dot = carve.take<float>(C * kLdT);
  float* ddt = carve.take<float>(C * kLdT);
  float* gam = carve.take<float>(g.Dk);

  const int64_t sbase = static_cast<int64_t>(bh) * g.Dk * g.Dv + c0;
  for (int e = tid; e < g.Dk * kTile; e += kThreads) {
    const int d = e / kTile, c = e % kTile;
    dS[d * kLdT + c] = (a.dstate && c < cols) ? a.dstate[sbase + static_cast<int64_t>(d) * g.Dv + c] : 0.0f;
  }
  const float* qh = a.q.head(b, h);
  const float* oh = a.dout.head(b, h);
  for (int n = g.N - 1; n >= 0; --n) {
    const int t0 = n * C, rows = imin(C, g.T - t0);
    const int64_t p0 = prow<C>(g, bh, t0);
    __syncthreads();  // the previous dS update is done and its tiles are consumed
    for (int e = tid; e < C * g.Dk; e += kThreads) {
      const int r = e / g.Dk, d = e % g.Dk;
      const int64_t pe = (p0 + r) * g.Dk + d;
      qg[r * ldk + d] = r < rows ? g.scale * qh[static_cast<int64_t>(t0 + r) * a.q.ld + d] * expf(a.G[pe]) : 0.0f;
      ws[r * ldk + d] = a.W[pe];
      kds[r * ldk + d] = a.Kd[pe];
    }
    const int64_t cc = cc_off<C>(g, bh, n);
    for (int e = tid; e < C * C; e += kThreads) A[(e / C) * LdC + e % C] = a.Aqk[cc + e];
    for (int e = tid; e < C * kTile; e += kThreads) {
      const int r = e / kTile, c = e % kTile;
      dot[r * kLdT + c] = (r < rows && c < cols) ? oh[static_cast<int64_t>(t0 + r) * a.dout.ld + c0 + c] : 0.0f;
    }
    if (tid < g.Dk) gam[tid] = expf(a.G[(p0 + C - 1) * g.Dk + tid]);
    float* dsn = a.dSn + st_off(g, bh, n) + c0;
    for (int e = tid; e < g.Dk * kTile; e += kThreads) {
      const int d = e / kTile, c = e % kTile;
      if (c < cols) dsn[static_cast<int64_t>(d) * g.Dv + c] = dS[d * kLdT + c];
    }
    __syncthreads();
    for (int e = tid; e < C * kTile; e += kThreads) {
      const int r = e / kTile, c = e % kTile;
      float x = 0.0f;
      for (int i = r; i < C; ++i) x += A[i * LdC + r] * dot[i * kLdT + c];
      for (int d = 0; d < g.Dk; ++d) x += kds[r * ldk + d] * dS[d * kLdT + c];
      ddt[r * kLdT + c] = x;
      if (c < cols) a.dD[(p0 + r) * g.Dv + c0 + c] = x;
    }
    __syncthreads();
    for (int e = tid; e < g.Dk * kTile; e += kThreads) {
      const int d = e / kTile, c = e % kTile;
      float x = gam[d] * dS[d * kLdT + c];
      for (int r = 0; r < C; ++r) x += qg[r * ldk + d] * dot[r * kLdT + c] - ws[r * ldk + d] * ddt[r * kLdT + c];
      dS[d * kLdT + c] = x;
    }
  }
  for (int e = tid; e < g.Dk * kTile; e += kThreads) {  // own elements: no barrier needed
    const int d = e / kTile, c = e % kTile;
    if (c < cols) a.ds0[sbase + static_cast<int64_t>(d) * g.Dv + c] = dS[d * kLdT + c];
  }
}

// ---- backward per chunk: dq, dk, dv, dg, dbeta --------------------------------------------------------

struct BwdChunkArgs {
  Heads q = {}, k = {}, v = {}, dout = {};
  const float* beta = nullptr;  // [B, H, T]
  const float* G = nullptr;     // [B*H, Tp, Dk]
  const float* Tinv = nullptr;  // [B*H, N, C, C]
  const float* Akk = nullptr;   // [B*H, N, C, C]
  const float* h = nullptr;     // [B*H, N, Dk, Dv]
  const float* dSn = nullptr;   // [B*H, N, Dk, Dv]
  const float* D = nullptr;     // [B*H, Tp, Dv]
  const float* dD = nullptr;    // [B*H, Tp, Dv]
  float* dq = nullptr;          // [B, H, T, Dk] contiguous, like dk, dg
  float* dk = nullptr;
  float* dg = nullptr;
  float* dv = nullptr;     // [B, H, T, Dv]
  float* dbeta = nullptr;  // [B, H, T]
  Geom geo = {};
};

// Floats of the phase-shared pool: phase 1 tiles, then phase 2 tiles.
template <int C>
__host__ __device__ inline int bwd_pool_floats(int dk) {
  const int p1 = 2 * dk * kLdB + 4 * C * kLdB;
  const int p2 = 4 * C * ld_k(dk);
  return p1 > p2 ? p1 : p2;
}

template <int C>
__global__ void __launch_bounds__(8 * C, 1) kda_bwd_chunk_kernel(BwdChunkArgs a) {
  const Geom& g = a.geo;
  constexpr int LdC = C + 1;
  constexpr int kBT = 8 * C;  // threads: 8 lanes per row of the chunk
  constexpr int kOwn = own_cols<C>();
  const int n = static_cast<int>(blockIdx.x), bh = static_cast<int>(blockIdx.y), b = bh / g.H, h = bh % g.H;
  const int t0 = n * C, rows = imin(C, g.T - t0);
  const int tid = static_cast<int>(threadIdx.x);
  const int r = tid >> 3, cg = tid & 7;  // own row, column group
  const int ldk = ld_k(g.Dk);
  const float scale = g.scale;

  simt::SmemCarver carve;
  float* pool = carve.take<float>(bwd_pool_floats<C>(g.Dk));
  float* ti = carve.take<float>(C * LdC);
  float* ak = carve.take<float>(C * LdC);   // Akk, then M = Diag(beta) dL (own elements in place)
  float* sdA = carve.take<float>(C * LdC);  // s Tril(dO Delta^T)
  float* sdT = carve.take<float>(C * LdC);  // dTinv (lower)
  float* sZ = carve.take<float>(C * LdC);   // dTinv Tinv^T
  float* bs = carve.take<float>(C);
  float* dbs = carve.take<float>(C);
  float* scol = carve.take<float>(g.Dk);
  // Phase 1 views of the pool.
  float* Ss = pool;                // h_n tile [Dk, kLdB]
  float* dSs = Ss + g.Dk * kLdB;   // dS tile
  float* dOt = dSs + g.Dk * kLdB;  // [C, kLdB] tiles
  float* Dt = dOt + C * kLdB;
  float* dDt = Dt + C * kLdB;
  float* Vt = dDt + C * kLdB;
  // Phase 2 views.
  float* Ks = pool;
  float* Qs = Ks + C * ldk;
  float* Gs = Qs + C * ldk;
  float* X = Gs + C * ldk;  // dW, then Pk o Kd, then dG

  const int64_t cc = cc_off<C>(g, bh, n);
  for (int e = tid; e < C * C; e += kBT) {
    const int i = e / C, j = e % C;
    ti[i * LdC + j] = a.Tinv[cc + e];
    ak[i * LdC + j] = a.Akk[cc + e];
  }
  if (tid < C) {
    bs[tid] = tid < rows ? a.beta[static_cast<int64_t>(bh) * g.T + t0 + tid] : 0.0f;
    dbs[tid] = 0.0f;
  }

  const int64_t p0 = prow<C>(g, bh, t0);
  const int64_t so = st_off(g, bh, n);
  const float* vh = a.v.head(b, h) + static_cast<int64_t>(t0) * a.v.ld;
  const float* oh = a.dout.head(b, h) + static_cast<int64_t>(t0) * a.dout.ld;
  float* dvb = a.dv + (static_cast<int64_t>(bh) * g.T + t0) * g.Dv;

  // Phase 1: the sums over Dv.
  float dW[kOwn], P[kOwn], Pk[kOwn];  // columns d = cg + 8 m of row r
  float dA[C / 8], dT1[C / 8];        // columns j = cg + 8 m of row r
  AL_UNROLL
  for (int m = 0; m < kOwn; ++m) dW[m] = P[m] = Pk[m] = 0.0f;
  AL_UNROLL
  for (int m = 0; m < C / 8; ++m) dA[m] = dT1[m] = 0.0f;
  float dsS = 0.0f;  // thread d < Dk: rowsum(dS o S)_d
  for (int c0 = 0; c0 < g.Dv; c0 += kBwdTile) {
    const int cols = imin(kBwdTile, g.Dv - c0);
    __syncthreads();  // the previous tiles are consumed (and the C x C matrices are loaded)
    for (int e = tid; e < g.Dk * kBwdTile; e += kBT) {
      const int d = e / kBwdTile, c = e % kBwdTile;
      const bool in = c < cols;
      const int64_t o = so + static_cast<int64_t>(d) * g.Dv + c0 + c;
      Ss[d * kLdB + c] = in ? a.h[o] : 0.0f;
      dSs[d * kLdB + c] = in ? a.dSn[o] : 0.0f;
    }
    for (int e = tid; e < C * kBwdTile; e += kBT) {
      const int i = e / kBwdTile, c = e % kBwdTile;
      const bool in = c < cols, inr = in && i < rows;
      const int64_t o = (p0 + i) * g.Dv + c0 + c;
      dOt[i * kLdB + c] = inr ? oh[static_cast<int64_t>(i) * a.dout.ld + c0 + c] : 0.0f;
      Vt[i * kLdB + c] = inr ? vh[static_cast<int64_t>(i) * a.v.ld + c0 + c] : 0.0f;
      Dt[i * kLdB + c] = in ? a.D[o] : 0.0f;
      dDt[i * kLdB + c] = in ? a.dD[o] : 0.0f;
    }
    __syncthreads();
    AL_UNROLL
    for (int m = 0; m < kOwn; ++m) {
      const int d = cg + 8 * m;
      if (d < g.Dk) {
        float sw = 0.0f, sp = 0.0f, spk = 0.0f;
        for (int c = 0; c < cols; ++c) {
          const float s = Ss[d * kLdB + c];
          sw += dDt[r * kLdB + c] * s;
          sp += dOt[r * kLdB + c] * s;
          spk += Dt[r * kLdB + c] * dSs[d * kLdB + c];
        }
        dW[m] -= sw;
        P[m] += sp;
        Pk[m] += spk;
      }
    }
    AL_UNROLL
    for (int m = 0; m < C / 8; ++m) {
      const int j = cg + 8 * m;
      if (j <= r) {
        float sa = 0.0f, st = 0.0f;
        for (int c = 0; c < cols; ++c) {
          sa += dOt[r * kLdB + c] * Dt[j * kLdB + c];
          st += dDt[r * kLdB + c] * Vt[j * kLdB + c];
        }
        dA[m] += sa;
        dT1[m] += st;
      }
    }
    if (tid < g.Dk)
      for (int c = 0; c < cols; ++c) dsS += dSs[tid * kLdB + c] * Ss[tid * kLdB + c];
    // dv = Diag(beta) Tinv^T dDelta on the tile; rowsum((Tinv^T dDelta) o V) into dbeta.
    float part = 0.0f;
    AL_UNROLL
    for (int m = 0; m < kBwdTile / 8; ++m) {
      const int c = cg + 8 * m;
      float x = 0.0f;
      for (int i = r; i < C; ++i) x += ti[i * LdC + r] * dDt[i * kLdB + c];
      if (r < rows && c < cols) dvb[static_cast<int64_t>(r) * g.Dv + c0 + c] = bs[r] * x;
      part += x * Vt[r * kLdB + c];
    }
    part = group_sum(part);
    if (cg == 0) dbs[r] += part;
  }
  __syncthreads();  // phase 1's tiles are consumed: the pool becomes K, Q, G, X

  // Phase 2.
  const float* kh = a.k.head(b, h) + static_cast<int64_t>(t0) * a.k.ld;
  const float* qh = a.q.head(b, h) + static_cast<int64_t>(t0) * a.q.ld;
  for (int e = tid; e < C * g.Dk; e += kBT) {
    const int i = e / g.Dk, d = e % g.Dk;
    const bool in = i < rows;
    Ks[i * ldk + d] = in ? kh[static_cast<int64_t>(i) * a.k.ld + d] : 0.0f;
    Qs[i * ldk + d] = in ? qh[static_cast<int64_t>(i) * a.q.ld + d] : 0.0f;
    Gs[i * ldk + d] = a.G[(p0 + i) * g.Dk + d];
  }
  AL_UNROLL
  for (int m = 0; m < kOwn; ++m) {
    const int d = cg + 8 * m;
    if (d < g.Dk) X[r * ldk + d] = dW[m];
  }
  AL_UNROLL
  for (int m = 0; m < C / 8; ++m) {
    const int j = cg + 8 * m;
    sdA[r * LdC + j] = j <= r ? scale * dA[m] : 0.0f;
    sdT[r * LdC + j] = j <= r ? bs[j] * dT1[m] : 0.0f;
  }
  __syncthreads();

  // The inter-chunk terms, the state-write terms and the W terms of the own row's elements.
  float dQ[kOwn], dK[kOwn], dG[kOwn];
  float part = 0.0f;
  AL_UNROLL
  for (int m = 0; m < kOwn; ++m) {
    const int d = cg + 8 * m;
    dQ[m] = dK[m] = dG[m] = 0.0f;
    if (d < g.Dk) {
      const float gr = Gs[r * ldk + d], kr = Ks[r * ldk + d], qr = Qs[r * ldk + d];
      const float gam = expf(gr), ed = expf(Gs[(C - 1) * ldk + d] - gr);
      dQ[m] = scale * P[m] * gam;
      dG[m] = scale * P[m] * qr * gam;
      const float pkkd = Pk[m] * kr * ed;
      dK[m] = Pk[m] * ed;
      dG[m] -= pkkd;
      Pk[m] = pkkd;  // kept for the column sum
      float y = 0.0f;
      for (int i = r; i < C; ++i) y += ti[i * LdC + r] * X[i * ldk + d];
      const float R = bs[r] * y;
      dK[m] += R * gam;
      dG[m] += R * kr * gam;
      part += y * kr * gam;
    }
  }
  part = group_sum(part);
  if (cg == 0) dbs[r] += part;
  // dTinv += dW (Diag(beta) (K o Gamma))^T on the lower triangle.
  AL_UNROLL
  for (int m = 0; m < C / 8; ++m) {
    const int j = cg + 8 * m;
    if (j <= r) {
      float s = 0.0f;
      for (int d = 0; d < g.Dk; ++d) s += X[r * ldk + d] * Ks[j * ldk + d] * expf(Gs[j * ldk + d]);
      sdT[r * LdC + j] += bs[j] * s;
    }
  }
  __syncthreads();

  // Z = dTinv Tinv^T; X <- Pk o Kd (X's dW is consumed).
  AL_UNROLL
  for (int m = 0; m < C / 8; ++m) {
    const int j = cg + 8 * m;
    const int top = imin(r, j);
    float s = 0.0f;
    for (int i = 0; i <= top; ++i) s += sdT[r * LdC + i] * ti[j * LdC + i];
    sZ[r * LdC + j] = s;
  }
  AL_UNROLL
  for (int m = 0; m < kOwn; ++m) {
    const int d = cg + 8 * m;
    if (d < g.Dk) X[r * ldk + d] = Pk[m];
  }
  __syncthreads();

  // dL = StrictTril(-Tinv^T Z); dbeta += rowsum(dL o Akk); ak <- M = Diag(beta) dL (own elements).
  part = 0.0f;
  AL_UNROLL
  for (int m = 0; m < C / 8; ++m) {
    const int j = cg + 8 * m;
    float mm = 0.0f;
    if (j < r) {
      float s = 0.0f;
      for (int i = r; i < C; ++i) s += ti[i * LdC + r] * sZ[i * LdC + j];
      const float dl = -s;
      part += dl * ak[r * LdC + j];
      mm = bs[r] * dl;
    }
    ak[r * LdC + j] = mm;
  }
  part = group_sum(part);
  if (cg == 0) dbs[r] += part;
  if (tid < g.Dk) {  // the dG_{C-1} extras: sum_r Pk_r o Kd_r + gamma_C o rowsum(dS o S)
    float s = 0.0f;
    for (int i = 0; i < C; ++i) s += X[i * ldk + tid];
    scol[tid] = s + expf(Gs[(C - 1) * ldk + tid]) * dsS;
  }
  __syncthreads();

  // Pair terms: row r as the query/first index (j <= r) and as the key/second index (i >= r).
  const int64_t orow = (static_cast<int64_t>(bh) * g.T + t0 + r) * g.Dk;
  AL_UNROLL
  for (int m = 0; m < kOwn; ++m) {
    const int d = cg + 8 * m;
    if (d < g.Dk) {
      const float gr = Gs[r * ldk + d], kr = Ks[r * ldk + d], qr = Qs[r * ldk + d];
      float dq = dQ[m], dk = dK[m], dg = dG[m];
      for (int j = 0; j <= r; ++j) {
        const float kjE = Ks[j * ldk + d] * expf(gr - Gs[j * ldk + d]);
        const float mw = ak[r * LdC + j], aw = sdA[r * LdC + j];  // mw = 0 at j = r
        dk += mw * kjE;
        dq += aw * kjE;
        dg += (mw * kr + aw * qr) * kjE;
      }
      for (int i = r; i < C; ++i) {
        const float E = expf(Gs[i * ldk + d] - gr);
        const float mw = ak[i * LdC + r], aw = sdA[i * LdC + r];
        const float w = (mw * Ks[i * ldk + d] + aw * Qs[i * ldk + d]) * E;
        dk += w;
        dg -= w * kr;
      }
      X[r * ldk + d] = dg;  // X's Pk o Kd was consumed by the column sums before the last barrier
      if (r < rows) {
        a.dq[orow + d] = dq;
        a.dk[orow + d] = dk;
      }
    }
  }
  __syncthreads();
  // dg = reverse chunk-local cumsum of dG, the extras entering at the chunk's last (padded) row.
  if (tid < g.Dk) {
    float acc = scol[tid];
    for (int i = C - 1; i >= 0; --i) {
      acc += X[i * ldk + tid];
      if (i < rows) a.dg[(static_cast<int64_t>(bh) * g.T + t0 + i) * g.Dk + tid] = acc;
    }
  }
  if (tid < rows) a.dbeta[static_cast<int64_t>(bh) * g.T + t0 + tid] = dbs[tid];
}

// ---- host side ------------------------------------------------------------------------------------

constexpr std::string_view kName = "kda";

void check_cuda_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g) {
  AL_CHECK_DTYPE(q.dtype() == DType::f32, kName, ": the CUDA kernels take f32 only; got q=", q, ", k=", k, ", v=", v);
  AL_ASSERT(unit_last_stride(q) && unit_last_stride(k) && unit_last_stride(v) && unit_last_stride(g), kName,
            ": q, k, v, g need a unit-stride last dim; got q=", q, ", k=", k, ", v=", v, ", g=", g);
  AL_CHECK_SHAPE(q.size(3) <= kMaxD && v.size(3) <= kMaxD, kName, ": the CUDA kernels take Dk, Dv <= ", kMaxD,
                 "; got q=", q, ", v=", v);
  AL_CHECK_SHAPE(q.size(0) * q.size(1) <= 65535 && q.size(2) < (int64_t{1} << 30), kName,
                 ": the CUDA kernels take B * H <= 65535 and T < 2^30; got q=", q);
}

// Calls fn(std::integral_constant<int, C>{}) with the chunk length for this head dim: 32 keeps
// every block's shared memory within the 48 KiB a launch gets without an opt-in up to Dk = 64
// (the backward chunk kernel excepted: 53.6 KiB there), 16 above that.
template <class Fn>
void by_chunk(int Dk, Fn&& fn) {
  if (Dk <= max_dk<32>())
    fn(std::integral_constant<int, 32>{});
  else
    fn(std::integral_constant<int, 16>{});
}

template <int C>
Geom geom_of(const Tensor& q, const Tensor& v, double scale) {
  Geom g;
  g.H = static_cast<int>(q.size(1));
  g.T = static_cast<int>(q.size(2));
  g.Dk = static_cast<int>(q.size(3));
  g.Dv = static_cast<int>(v.size(3));
  g.N = (g.T + C - 1) / C;
  g.scale = static_cast<float>(scale);
  return g;
}

inline unsigned dv_tiles(const Geom& g) { return static_cast<unsigned>((g.Dv + kTile - 1) / kTile); }

// The chunk quantities and the forward sweep. Forward (fw given): out and the final state, no
// h or Delta scratch. Backward (fw null): h and Delta for the backward kernels, and Akk.
struct Scratch {
  Tensor G = {}, W = {}, U = {}, Kd = {}, Tinv = {}, Akk = {}, Aqk = {}, h = {}, D = {};
};

template <int C>
Scratch run_forward_pass(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& beta,
                         const Tensor& s0, const Geom& geo, int64_t BH, KdaAttentionOp::Forward* fw) {
  constexpr int LdC = C + 1;
  const bool backward = fw == nullptr;
  const Device dev = q.device();
  const int64_t Tp = static_cast<int64_t>(geo.N) * C;
  Scratch s;
  s.G = Tensor::empty(Shape{BH, Tp, geo.Dk}, DType::f32, dev);
  s.W = Tensor::empty(Shape{BH, Tp, geo.Dk}, DType::f32, dev);
  s.Kd = Tensor::empty(Shape{BH, Tp, geo.Dk}, DType::f32, dev);
  s.U = Tensor::empty(Shape{BH, Tp, geo.Dv}, DType::f32, dev);
  s.Tinv = Tensor::empty(Shape{BH, geo.N, C, C}, DType::f32, dev);
  s.Aqk = Tensor::empty(Shape{BH, geo.N, C, C}, DType::f32, dev);
  if (backward) {
    s.Akk = Tensor::empty(Shape{BH, geo.N, C, C}, DType::f32, dev);
    s.D = Tensor::empty(Shape{BH, Tp, geo.Dv}, DType::f32, dev);
    s.h = Tensor::empty(Shape{BH, geo.N, geo.Dk, geo.Dv}, DType::f32, dev);
  }

  PrepArgs pa;
  pa.q = heads(q);
  pa.k = heads(k);
  pa.v = heads(v);
  pa.g = heads(g);
  pa.beta = beta.data<float>();
  pa.G = s.G.data<float>();
  pa.W = s.W.data<float>();
  pa.U = s.U.data<float>();
  pa.Kd = s.Kd.data<float>();
  pa.Tinv = s.Tinv.data<float>();
  pa.Akk = backward ? s.Akk.data<float>() : nullptr;
  pa.Aqk = s.Aqk.data<float>();
  pa.geo = geo;
  const int ldk = ld_k(geo.Dk);
  const size_t prep_smem = 3 * carved(C * ldk) + 2 * carved(C * LdC) + carved(C);
  AL_CUDA_LAUNCH(kda_prep_kernel<C>, dim3(static_cast<unsigned>(geo.N), static_cast<unsigned>(BH)), dim3(kThreads),
                 prep_smem, pa);

  SweepArgs sa;
  sa.q = heads(q);
  sa.W = s.W.data<float>();
  sa.U = s.U.data<float>();
  sa.Kd = s.Kd.data<float>();
  sa.G = s.G.data<float>();
  sa.Aqk = s.Aqk.data<float>();
  sa.s0 = s0.defined() ? s0.data<float>() : nullptr;
  sa.h = backward ? s.h.data<float>() : nullptr;
  sa.D = backward ? s.D.data<float>() : nullptr;
  sa.out = backward ? nullptr : fw->out.data<float>();
  sa.state = backward ? nullptr : fw->state.data<float>();
  sa.geo = geo;
  size_t sweep_smem = carved(geo.Dk * kLdT) + 2 * carved(C * ldk) + carved(C * kLdT) + carved(geo.Dk);
  if (!backward) sweep_smem += carved(C * ldk) + carved(C * LdC);
  AL_CUDA_LAUNCH(kda_sweep_kernel<C>, dim3(dv_tiles(geo), static_cast<unsigned>(BH)), dim3(kThreads), sweep_smem, sa);
  return s;
}

template <int C>
void run_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& beta,
                 const Tensor& s0, double scale, KdaAttentionOp::Forward& fw) {
  const Geom geo = geom_of<C>(q, v, scale);
  run_forward_pass<C>(q, k, v, g, beta, s0, geo, q.size(0) * q.size(1), &fw);
}

template <int C>
void run_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& beta,
                  const Tensor& s0, const Tensor& dout, const Tensor& dstate, double scale, KdaAttentionOp::Grads& gr) {
  constexpr int LdC = C + 1;
  const Geom geo = geom_of<C>(q, v, scale);
  const int64_t BH = q.size(0) * q.size(1);
  const Device dev = q.device();
  const Scratch s = run_forward_pass<C>(q, k, v, g, beta, s0, geo, BH, nullptr);

  const int64_t Tp = static_cast<int64_t>(geo.N) * C;
  Tensor dSn = Tensor::empty(Shape{BH, geo.N, geo.Dk, geo.Dv}, DType::f32, dev);
  Tensor dD = Tensor::empty(Shape{BH, Tp, geo.Dv}, DType::f32, dev);
  const int ldk = ld_k(geo.Dk);

  BwdSweepArgs ba;
  ba.q = heads(q);
  ba.dout = heads(dout);
  ba.G = s.G.data<float>();
  ba.W = s.W.data<float>();
  ba.Kd = s.Kd.data<float>();
  ba.Aqk = s.Aqk.data<float>();
  ba.dstate = dstate.defined() ? dstate.data<float>() : nullptr;
  ba.dSn = dSn.data<float>();
  ba.dD = dD.data<float>();
  ba.ds0 = gr.ds0.data<float>();
  ba.geo = geo;
  const size_t sweep_smem =
      carved(geo.Dk * kLdT) + 3 * carved(C * ldk) + carved(C * LdC) + 2 * carved(C * kLdT) + carved(geo.Dk);
  AL_CUDA_LAUNCH(kda_bwd_sweep_kernel<C>, dim3(dv_tiles(geo), static_cast<unsigned>(BH)), dim3(kThreads), sweep_smem,
                 ba);

  BwdChunkArgs ca;
  ca.q = heads(q);
  ca.k = heads(k);
  ca.v = heads(v);
  ca.dout = heads(dout);
  ca.beta = beta.data<float>();
  ca.G = s.G.data<float>();
  ca.Tinv = s.Tinv.data<float>();
  ca.Akk = s.Akk.data<float>();
  ca.h = s.h.data<float>();
  ca.dSn = dSn.data<float>();
  ca.D = s.D.data<float>();
  ca.dD = dD.data<float>();
  ca.dq = gr.dq.data<float>();
  ca.dk = gr.dk.data<float>();
  ca.dg = gr.dg.data<float>();
  ca.dv = gr.dv.data<float>();
  ca.dbeta = gr.dbeta.data<float>();
  ca.geo = geo;
  const size_t chunk_smem = carved(bwd_pool_floats<C>(geo.Dk)) + 5 * carved(C * LdC) + 2 * carved(C) + carved(geo.Dk);
  AL_CUDA_LAUNCH(kda_bwd_chunk_kernel<C>, dim3(static_cast<unsigned>(geo.N), static_cast<unsigned>(BH)), dim3(8 * C),
                 chunk_smem, ca);
}

}  // namespace

KdaAttentionOp::Forward KdaAttentionOp::forward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                const Tensor& g, const Tensor& beta, const Tensor& s0, double scale) {
  check(q, k, v, g, beta, s0);
  check_cuda_inputs(q, k, v, g);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), Dk = q.size(3), Dv = v.size(3);
  const Device dev = q.device();
  Forward fw{Tensor::empty(Shape{B, H, T, Dv}, DType::f32, dev), Tensor::empty(Shape{B, H, Dk, Dv}, DType::f32, dev)};
  if (B * H == 0) return fw;
  if (T == 0 || Dv == 0 || Dk == 0) {
    if (s0.defined())
      fw.state.copy_(s0);
    else
      fw.state.zero_();
    if (T > 0) fw.out.zero_();
    return fw;
  }
  const Tensor bc = beta.contiguous();
  const Tensor s0c = s0.defined() ? s0.contiguous() : Tensor();
  by_chunk(static_cast<int>(Dk),
           [&](auto chunk) { run_forward<decltype(chunk)::value>(q, k, v, g, bc, s0c, scale, fw); });
  return fw;
}

KdaAttentionOp::Grads KdaAttentionOp::backward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                               const Tensor& g, const Tensor& beta, const Tensor& s0,
                                               const Tensor& dout, const Tensor& dstate, double scale) {
  check(q, k, v, g, beta, s0);
  check_cuda_inputs(q, k, v, g);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), Dk = q.size(3), Dv = v.size(3);
  const Device dev = q.device();
  AL_ASSERT(dout.dtype() == q.dtype() && dout.device() == dev && dout.shape() == Shape({B, H, T, Dv}) &&
                unit_last_stride(dout),
            kName, ": backward got dout=", dout, " for q=", q, ", v=", v);
  AL_ASSERT(!dstate.defined() ||
                (dstate.dtype() == q.dtype() && dstate.device() == dev && dstate.shape() == Shape({B, H, Dk, Dv})),
            kName, ": backward got dstate=", dstate, " for q=", q, ", v=", v);
  Grads gr{Tensor::empty(Shape{B, H, T, Dk}, DType::f32, dev), Tensor::empty(Shape{B, H, T, Dk}, DType::f32, dev),
           Tensor::empty(Shape{B, H, T, Dv}, DType::f32, dev), Tensor::empty(Shape{B, H, T, Dk}, DType::f32, dev),
           Tensor::empty(Shape{B, H, T}, DType::f32, dev),     Tensor::empty(Shape{B, H, Dk, Dv}, DType::f32, dev)};
  if (B * H == 0) return gr;
  if (T == 0 || Dv == 0 || Dk == 0) {
    for (Tensor* t : {&gr.dq, &gr.dk, &gr.dv, &gr.dg, &gr.dbeta}) t->zero_();
    if (dstate.defined())
      gr.ds0.copy_(dstate);
    else
      gr.ds0.zero_();
    return gr;
  }
  const Tensor bc = beta.contiguous();
  const Tensor s0c = s0.defined() ? s0.contiguous() : Tensor();
  const Tensor dsc = dstate.defined() ? dstate.contiguous() : Tensor();
  by_chunk(static_cast<int>(Dk),
           [&](auto chunk) { run_backward<decltype(chunk)::value>(q, k, v, g, bc, s0c, dout, dsc, scale, gr); });
  return gr;
}

}  // namespace attnlab
