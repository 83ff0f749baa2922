// CPU forward and backward of local linear attention (lla_attention.h), f32 and f64.
//
// Maths per (b, h) (lla_attention.h; spec shared/specs/attention_kda_lla.md B1, B4): query i sees
// the keys [0, n_i) (cpu_tiles.h's visible_counts); x_ij = k_j - q_i; c = scale.
//   w_ij = exp(c q_i.k_j - m_i), omega_i = sum_j w_ij, mut_i = sum_j w_ij k_j, mu_i = mut_i - omega_i q_i
//   Sigma_i = Sigma~_i - mut_i q_i^T - q_i mut_i^T + omega_i q_i q_i^T + lam omega_i I,
//   Sigma~_i = sum_j w_ij k_j k_j^T;  rho_i = Sigma_i^-1 mu_i;  delta_i = omega_i - mu_i.rho_i
//   out_i = sum_j w_ij (1 - rho_i.x_ij) / delta_i v_j
//
// Forward, one task per (b, h, tile of kRows query rows), keys [0, nmax) of the tile's last row:
//   scores S = c Q K^T [br, nmax] (one row buffer per tile row, never [T, S]); m_i = the row's
//   visible max; W = exp(S - m) (0 where masked); omega = rowsum W; mut = W K; Sigma~ = W KK, KK
//   the packed upper triangles of k_j k_j^T (Dk (Dk + 1) / 2 columns) built per chunk of kKeyChunk
//   keys: the n^2 Dk^2 / 2 part, one register-blocked GEMM (cpu_tiles.h's tile_mm). Per row, in
//   double: Sigma_i, its Cholesky factor, rho_i, delta_i. Then R = rho K^T, C = W o (1 + rho.q - R)
//   / delta in W's place, out = C V.
// Backward (spec B4 with the passes of B6, exact solves), given dout:
//   kernel 1, per (b, h, query tile): recompute W, omega, mut, Sigma~ and the factor (the forward's
//     saved m keeps the weights identical); gw = (dout V^T) o W, tau' = rowsum gw, t' = gw K; per row
//     b = dout_i.out_i / delta, t = (t' - tau' q) / delta, u = Sigma^-1 (b mu - t) (the one extra
//     solve, same factor), dmu = u + b rho, domega = -b - lam u.rho (FlashLLA: -b),
//     dlam_i = -omega u.rho (FlashLLA: 0); then R, U, M = (rho, u, dmu) K^T and
//     dl = gw (1 - rho.x) / delta + W o (dmu.x - (u.x)(rho.x) + domega)  (x-dots from R - rho.q, ...)
//     dq_i = c sum_j dl_ij k_j + tau rho + (rho.mu) u + (u.mu) rho - omega dmu.
//     Hands kernel 2 rho, u, dmu (rows and transposed) and the row scalars.
//   kernel 2, per (b, h, key tile of kBk keys), over the query rows that see it in tiles of kBq
//     (keys x queries): recompute W, gw, the x-dots, then
//     dv_j = sum_i c_ij dout_i,
//     dk_j = sum_i c dl_ij q_i - (gw_ij / delta_i + w_ij u_i.x_ij) rho_i - w_ij (rho_i.x_ij) u_i
//            + w_ij dmu_i.
//   dlam = sum of the rows' terms in one fixed order.
// Every output element is written by one task and every sum runs in an order fixed by the shape,
// so the bits do not depend on the thread count. Memory: O(T (Dk + 1)) row state and per-thread
// scratch of a few [kRows, S] row buffers, [kRows, Dk^2 / 2] and [kKeyChunk, Dk^2 / 2].
// Solves, delta and the dout.out products are in double; the tile products in F.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "layers/attention/cpu_tiles.h"
#include "layers/attention/lla/lla_attention.h"
#include "lib/cpu/parallel.h"
#include "lib/error.h"

namespace attnlab {

namespace {

using namespace attn_cpu;

constexpr std::string_view kName = "lla_attention";
// Rows per batched solve: one per lane of a double vector (see cholesky_lanes).
constexpr int64_t kL = kLanes<double>;
using VD = Vec<double>::V;

// lla_conditioning's one-row Cholesky (the kernels use the batched form below).
// In-place Cholesky of the SPD a [n, n] (row-major, lower triangle used): a = L L^T with L in the
// lower triangle. Right-looking: after column j is scaled, the trailing lower triangle takes the
// rank-1 update row by row, contiguous and independent (vectorised), instead of the dot-product
// form's dependent chains. Returns false when a pivot is not positive.
bool cholesky(double* a, int64_t n) {
  std::vector<double> col(static_cast<size_t>(n));
  double* c = col.data();
  for (int64_t j = 0; j < n; ++j) {
    const double d = a[j * n + j];
    if (!(d > 0.0)) return false;
    const double l = std::sqrt(d), inv = 1.0 / l;
    a[j * n + j] = l;
    for (int64_t i = j + 1; i < n; ++i) c[i] = a[i * n + j] *= inv;
    for (int64_t i = j + 1; i < n; ++i) {
      const double lij = c[i];
      double* ai = a + i * n;
#pragma omp simd
      for (int64_t k = j + 1; k <= i; ++k) ai[k] -= lij * c[k];
    }
  }
  return true;
}

// x = (L L^T)^-1 b in place, L from cholesky(): forward substitution by row dot products, back
// substitution by column updates (both contiguous in L's rows).
void cholesky_solve(const double* l, int64_t n, double* x) {
  for (int64_t i = 0; i < n; ++i) {
    const double* li = l + i * n;
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t p = 0; p < i; ++p) s += li[p] * x[p];
    x[i] = (x[i] - s) / li[i];
  }
  for (int64_t i = n - 1; i >= 0; --i) {
    const double* li = l + i * n;
    const double xi = x[i] / li[i];
    x[i] = xi;
#pragma omp simd
    for (int64_t p = 0; p < i; ++p) x[p] -= li[p] * xi;
  }
}

double lam_value(const Tensor& lam) { return lam.to_vector<double>()[0]; }

// lla_conditioning's rows: one query row's statistics (arithmetic in double): weights w_j over the n visible keys, omega,
// mut = sum w k, mu = mut - omega q, Sigma (Cholesky-factored in place), rho, delta.
struct RowStats {
  std::vector<double> w, mut, mu, sig, rho, qd;
  double m = 0, omega = 0, delta = 0;
  explicit RowStats(int64_t S, int64_t Dk)
      : w(static_cast<size_t>(S)), mut(static_cast<size_t>(Dk)), mu(static_cast<size_t>(Dk)),
        sig(static_cast<size_t>(Dk * Dk)), rho(static_cast<size_t>(Dk)), qd(static_cast<size_t>(Dk)) {}
};

// Fills st for query row qi against keys k [0, n). With `m_given` the shift is taken as is
// (backward: the saved m), else it is the row max.
template <typename F>
void row_stats(const F* qi, Rows<const F> k, int64_t n, int64_t Dk, double scale, double lam, const double* m_given,
               RowStats& st) {
  for (int64_t d = 0; d < Dk; ++d) st.qd[static_cast<size_t>(d)] = qi[d];
  const double* q = st.qd.data();
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    const F* kj = k.row(j);
    double a = 0;
    for (int64_t d = 0; d < Dk; ++d) a += q[d] * kj[d];
    st.w[static_cast<size_t>(j)] = a * scale;
    m = std::max(m, a * scale);
  }
  if (m_given) m = *m_given;
  st.m = m;
  double omega = 0;
  std::fill(st.mut.begin(), st.mut.end(), 0.0);
  std::fill(st.sig.begin(), st.sig.end(), 0.0);
  double* sig = st.sig.data();
  for (int64_t j = 0; j < n; ++j) {
    const double wj = std::exp(st.w[static_cast<size_t>(j)] - m);
    st.w[static_cast<size_t>(j)] = wj;
    omega += wj;
    const F* kj = k.row(j);
    for (int64_t a = 0; a < Dk; ++a) {
      const double wk = wj * kj[a];
      st.mut[static_cast<size_t>(a)] += wk;
      for (int64_t b = 0; b <= a; ++b) sig[a * Dk + b] += wk * kj[b];
    }
  }
  st.omega = omega;
  for (int64_t a = 0; a < Dk; ++a) {
    st.mu[static_cast<size_t>(a)] = st.mut[static_cast<size_t>(a)] - omega * q[a];
    for (int64_t b = 0; b <= a; ++b)
      sig[a * Dk + b] += -st.mut[static_cast<size_t>(a)] * q[b] - q[a] * st.mut[static_cast<size_t>(b)] +
                         omega * q[a] * q[b];
    sig[a * Dk + a] += lam * omega;
  }
  AL_CHECK(cholesky(sig, Dk), kName, ": Sigma_i is not positive definite (lam * omega = ", lam * omega,
           "); a non-finite input?");
  st.rho = st.mu;
  cholesky_solve(sig, Dk, st.rho.data());
  double mr = 0;
  for (int64_t a = 0; a < Dk; ++a) mr += st.mu[static_cast<size_t>(a)] * st.rho[static_cast<size_t>(a)];
  st.delta = omega - mr;
}

// ---- tiles ----------------------------------------------------------------------------------------

// Query rows per forward / backward-kernel-1 task (a multiple of the 6-row micro-kernel), keys per
// packed k k^T chunk, and the key rows x query columns of a backward-kernel-2 tile.
constexpr int64_t kRows = 48;
constexpr int64_t kKeyChunk = 64;
constexpr int64_t kBk = 48;
constexpr int64_t kBq = 64;

// Packed upper triangle of a symmetric [Dk, Dk]: (a, b), a <= b, row by row.
inline int64_t packed_size(int64_t Dk) { return Dk * (Dk + 1) / 2; }

// kk[j, :] = the packed k_j k_j^T for the keys [j0, j0 + rows).
template <typename F>
void pack_outer(Rows<const F> k, int64_t j0, int64_t rows, int64_t Dk, F* kk) {
  const int64_t P = packed_size(Dk);
  for (int64_t j = 0; j < rows; ++j) {
    const F* kj = k.row(j0 + j);
    F* out = kk + j * P;
    for (int64_t a = 0; a < Dk; ++a) {
      const F ka = kj[a];
#pragma omp simd
      for (int64_t b = a; b < Dk; ++b) out[b - a] = ka * kj[b];
      out += Dk - a;
    }
  }
}

// Scores to weights in place: s[j] = exp(s[j] - m) for j < n and 0 for n <= j < npad (whole
// vectors; npad >= round_up_lanes(n)). Returns sum_j w_j (lanes summed in order).
template <typename F>
F row_exp(F* s, int64_t n, int64_t npad, F m) {
  using V = typename Vec<F>::V;
  constexpr int64_t W = kLanes<F>;
  const V mv = splat<V>(m);
  V acc{};
  int64_t j = 0;
  for (; j < n; j += W) {
    const V e = lanes_below<F>(n - j) ? exp_v(vload(s + j) - mv) : V{};
    vstore(s + j, e);
    acc += e;
  }
  if (j < npad) std::fill(s + j, s + npad, F(0));
  return lane_sum<F>(acc);
}

// The per-thread scratch. Row buffers [kRows, sp] (sp: S padded to whole vectors plus one, so the
// leading dim is never a power of two) hold one query tile's weights and the other per-pair
// quantities; never a [T, S] matrix. k^T and v^T of the current (b, h), [D, sp], padding zero.
template <typename F>
struct Scratch {
  int64_t sp, P;
  std::vector<F> kt, vt, w, g, r, u, mm, sig, kk, rows;
  std::vector<double> a;  // kL rows' Sigma_i in double, lane-interleaved
  Scratch(int64_t S, int64_t Dk, int64_t Dv, bool backward)
      : sp(round_up_lanes<F>(S) + kLanes<F>),
        P(packed_size(Dk)),
        kt(static_cast<size_t>(Dk * sp)),
        vt(backward ? static_cast<size_t>(Dv * sp) : 0),
        w(static_cast<size_t>(kRows * sp)),
        g(backward ? static_cast<size_t>(kRows * sp) : 0),
        r(static_cast<size_t>(kRows * sp)),
        u(backward ? static_cast<size_t>(kRows * sp) : 0),
        mm(backward ? static_cast<size_t>(kRows * sp) : 0),
        sig(static_cast<size_t>(kRows * P)),
        kk(static_cast<size_t>(kKeyChunk * P)),
        rows(static_cast<size_t>(kRows * (4 * Dk + 4))),
        a(static_cast<size_t>(Dk * Dk * kL)) {}
};

// One query tile's moments over its visible keys [0, nmax): the weights w [br, sp] (0 where
// masked), omega, mut = W K [br, Dk] and the packed Sigma~ = sum_j w_ij k_j k_j^T [br, P]. With
// m_given the row shifts are taken from it, else they are the rows' visible maxima, written to m.
template <typename F>
void tile_moments(Rows<const F> q, Rows<const F> k, int64_t Dk, F scale, const int64_t* n, int64_t i0, int64_t br,
                  const F* m_given, F* m, F* omega, F* mut, Scratch<F>& ws) {
  const int64_t nmax = n[i0 + br - 1], npad = round_up_lanes<F>(nmax), sp = ws.sp, P = ws.P;
  F* w = ws.w.data();
  tile_mm<F>(br, npad, Dk, scale, q.row(i0), q.ld, 1, ws.kt.data(), sp, false, w, sp);
  for (int64_t r = 0; r < br; ++r) {
    F* s = w + r * sp;
    const int64_t ni = n[i0 + r];
    F mi;
    if (m_given) {
      mi = m_given[r];
    } else {
      mi = s[0];
      for (int64_t j = 1; j < ni; ++j) mi = std::max(mi, s[j]);
    }
    m[r] = mi;
    omega[r] = row_exp(s, ni, npad, mi);
  }
  // mut = W K; Sigma~ = W (k k^T), the packed outer products built per chunk of keys.
  tile_mm<F>(br, Dk, nmax, w, sp, 1, k.p, k.ld, false, mut, Dk);
  F* sig = ws.sig.data();
  for (int64_t j0 = 0; j0 < nmax; j0 += kKeyChunk) {
    const int64_t bc = std::min(kKeyChunk, nmax - j0);
    pack_outer(k, j0, bc, Dk, ws.kk.data());
    tile_mm<F>(br, P, bc, w + j0, sp, 1, ws.kk.data(), P, j0 > 0, sig, P);
  }
}

// ---- batched solves ------------------------------------------------------------------------------
// The per-row Cholesky factorisations and solves run kL rows at a time, one row per vector lane
// (element (x, y) of the kL matrices at a[(x * n + y) * kL + lane]): every scalar step of the
// factorisation becomes one vector operation, so the Dk^3 / 6 steps are neither scalar nor
// latency-bound chains. Lanes past the last row hold the identity (their results are unused).

// In place: a = L L^T per lane, L in the lower triangle. False when a pivot is not positive.
bool cholesky_lanes(double* a, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    double* ajj = a + (j * n + j) * kL;
    VD l;
    for (int64_t e = 0; e < kL; ++e) {
      if (!(ajj[e] > 0.0)) return false;
      l[e] = std::sqrt(ajj[e]);
    }
    vstore(ajj, l);
    const VD inv = 1.0 / l;
    for (int64_t i = j + 1; i < n; ++i) vstore(a + (i * n + j) * kL, vload(a + (i * n + j) * kL) * inv);
    for (int64_t i = j + 1; i < n; ++i) {
      const VD lij = vload(a + (i * n + j) * kL);
      for (int64_t k = j + 1; k <= i; ++k) {
        double* aik = a + (i * n + k) * kL;
        vstore(aik, vload(aik) - lij * vload(a + (k * n + j) * kL));
      }
    }
  }
  return true;
}

// x = (L L^T)^-1 x per lane (x[d * kL + lane]), L from cholesky_lanes.
void solve_lanes(const double* a, int64_t n, double* x) {
  for (int64_t i = 0; i < n; ++i) {
    VD s = vload(x + i * kL);
    for (int64_t p = 0; p < i; ++p) s -= vload(a + (i * n + p) * kL) * vload(x + p * kL);
    vstore(x + i * kL, s / vload(a + (i * n + i) * kL));
  }
  for (int64_t i = n - 1; i >= 0; --i) {
    const VD xi = vload(x + i * kL) / vload(a + (i * n + i) * kL);
    vstore(x + i * kL, xi);
    for (int64_t p = 0; p < i; ++p) vstore(x + p * kL, vload(x + p * kL) - vload(a + (i * n + p) * kL) * xi);
  }
}

// Rows [r0, r0 + cnt) of a query tile (cnt <= kL), one per lane: Sigma_i = Sigma~ - mut q^T -
// q mut^T + omega q q^T + lam omega I in double from the packed Sigma~ [br, P], factored in place;
// mu = mut - omega q (0 in unused lanes).
template <typename F>
void factor_lanes(const F* sig, int64_t P, const F* mut, const F* omega, Rows<const F> q, int64_t i0, int64_t r0,
                  int64_t cnt, int64_t Dk, double lam, double* a, double* mu) {
  for (int64_t e = 0; e < kL; ++e) {
    if (e >= cnt) {
      for (int64_t x = 0; x < Dk; ++x) {
        mu[x * kL + e] = 0;
        for (int64_t y = 0; y <= x; ++y) a[(x * Dk + y) * kL + e] = x == y ? 1.0 : 0.0;
      }
      continue;
    }
    const int64_t r = r0 + e;
    const F* sp = sig + r * P;
    const F* mt = mut + r * Dk;
    const F* qi = q.row(i0 + r);
    const double om = omega[r];
    int64_t p = 0;
    for (int64_t x = 0; x < Dk; ++x) {
      const double mx = mt[x], qx = qi[x];
      mu[x * kL + e] = mx - om * qx;
      for (int64_t y = x; y < Dk; ++y, ++p) {
        const double my = mt[y], qy = qi[y];
        a[(y * Dk + x) * kL + e] = static_cast<double>(sp[p]) - mx * qy - qx * my + om * qx * qy;
      }
      a[(x * Dk + x) * kL + e] += lam * om;
    }
  }
  AL_CHECK(cholesky_lanes(a, Dk), kName, ": Sigma_i is not positive definite at a row of query tile ", i0,
           " (lam = ", lam, "); non-finite inputs?");
}

template <typename F>
LlaAttentionOp::Forward forward_impl(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lam,
                                     const AttentionMask& mask, double scale) {
  const Dims dm = dims_of(kName, q, k, v);
  const int64_t B = q.size(0), H = q.size(1), T = dm.T, S = dm.S, Dk = dm.Dk, Dv = dm.Dv;
  const std::vector<int64_t> n = visible_counts(kName, T, S, mask);
  const double lv = lam_value(lam);
  LlaAttentionOp::Forward f;
  f.out = empty_token_major(B, H, T, Dv, q.dtype());
  f.m = Tensor::empty(Shape{B, H, T}, q.dtype());
  f.omega = Tensor::empty(Shape{B, H, T}, q.dtype());
  f.delta = Tensor::empty(Shape{B, H, T}, q.dtype());
  f.rho = Tensor::empty(Shape{B, H, T, Dk}, q.dtype());
  const Heads<const F> hq(q.data<F>(), q), hk(k.data<F>(), k), hv(v.data<F>(), v);
  const Heads<F> ho(f.out.data<F>(), f.out);
  F* pm = f.m.data<F>();
  F* pw = f.omega.data<F>();
  F* pd = f.delta.data<F>();
  F* pr = f.rho.data<F>();
  const int64_t tiles = (T + kRows - 1) / kRows;
  const int64_t work = tiles * kRows * S * (packed_size(Dk) + Dk + Dv);
  cpu::parallel_for(0, B * H * tiles, heads_grain(work / tiles), [&](int64_t t0, int64_t t1) {
    Scratch<F> ws(S, Dk, Dv, false);
    std::vector<double> mu(static_cast<size_t>(Dk * kL)), rho(static_cast<size_t>(Dk * kL));
    int64_t cur = -1;  // the (b, h) whose k^T ws.kt holds
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t bh = task / tiles, i0 = (task % tiles) * kRows, br = std::min(kRows, T - i0);
      const int64_t b = bh / H, h = bh % H;
      const Rows<const F> qr = hq.at(b, h), kr = hk.at(b, h), vr = hv.at(b, h);
      if (bh != cur) transpose_into(kr.p, S, Dk, kr.ld, ws.kt.data(), ws.sp), cur = bh;
      F* m = pm + bh * T + i0;
      F* omega = pw + bh * T + i0;
      F* delta = pd + bh * T + i0;
      F* rho_out = pr + (bh * T + i0) * Dk;
      F* mut = ws.rows.data();  // [br, Dk]
      tile_moments(qr, kr, Dk, F(scale), n.data(), i0, br, static_cast<const F*>(nullptr), m, omega, mut, ws);
      // Per row: Sigma_i, its Cholesky factor, rho_i, delta_i (double); then the output's row
      // scalars: c_ij = w_ij (1 + rho.q - rho.k_j) / delta, i.e. (w_ij a_i - w_ij (rho.k_j) / delta).
      F* rq = ws.rows.data() + br * Dk;  // [br]: (1 + rho.q) / delta
      F* id = rq + br;                   // [br]: 1 / delta
      for (int64_t r0 = 0; r0 < br; r0 += kL) {
        const int64_t cnt = std::min(kL, br - r0);
        factor_lanes(ws.sig.data(), ws.P, mut, omega, qr, i0, r0, cnt, Dk, lv, ws.a.data(), mu.data());
        rho = mu;
        solve_lanes(ws.a.data(), Dk, rho.data());
        for (int64_t e = 0; e < cnt; ++e) {
          const int64_t r = r0 + e;
          const F* qi = qr.row(i0 + r);
          double mr = 0, rqd = 0;
          for (int64_t d = 0; d < Dk; ++d) {
            const double rd = rho[static_cast<size_t>(d * kL + e)];
            mr += mu[static_cast<size_t>(d * kL + e)] * rd;
            rho_out[r * Dk + d] = static_cast<F>(rd);
            rqd += static_cast<double>(rho_out[r * Dk + d]) * qi[d];
          }
          const double dl = static_cast<double>(omega[r]) - mr;
          delta[r] = static_cast<F>(dl);
          rq[r] = static_cast<F>((1.0 + rqd) / dl);
          id[r] = static_cast<F>(1.0 / dl);
        }
      }
      // R = rho K^T; c = w (1 + rho.q - R) / delta in place of w; out = C V.
      const int64_t nmax = n[static_cast<size_t>(i0 + br - 1)], npad = round_up_lanes<F>(nmax), sp = ws.sp;
      F* w = ws.w.data();
      F* rk = ws.r.data();
      tile_mm<F>(br, npad, Dk, rho_out, Dk, 1, ws.kt.data(), sp, false, rk, sp);
      for (int64_t r = 0; r < br; ++r) {
        F* wr = w + r * sp;
        const F* rr = rk + r * sp;
        const F a = rq[r], c = id[r];
#pragma omp simd
        for (int64_t j = 0; j < npad; ++j) wr[j] = wr[j] * (a - c * rr[j]);
      }
      const Rows<F> orow = ho.at(b, h);
      tile_mm<F>(br, Dv, nmax, w, sp, 1, vr.p, vr.ld, false, orow.row(i0), orow.ld);
    }
  });
  return f;
}

// The per-row quantities backward kernel 1 hands to kernel 2, per (b, h): rho, u, dmu row-major
// [T, Dk] and transposed [Dk, Tp]; row scalars [Tp] (zero-padded): m, 1/delta, domega and
// rho.q, u.q, dmu.q.
template <typename F>
struct RowState {
  int64_t Tp;
  std::vector<F> rho, u, dmu, rho_t, u_t, dmu_t, m, inv_delta, domega, rq, uq, mq;
  RowState(int64_t BH, int64_t T, int64_t Dk)
      : Tp(round_up_lanes<F>(T) + kLanes<F>),
        rho(static_cast<size_t>(BH * T * Dk)),
        u(rho.size()),
        dmu(rho.size()),
        rho_t(static_cast<size_t>(BH * Dk * Tp)),
        u_t(rho_t.size()),
        dmu_t(rho_t.size()),
        m(static_cast<size_t>(BH * Tp)),
        inv_delta(m.size()),
        domega(m.size()),
        rq(m.size()),
        uq(m.size()),
        mq(m.size()) {}
};

// Backward kernel 1, one query tile [i0, i0 + br) of one (b, h): recompute the moments, then
//   gw = (dout_i.v_j) w_ij; tau' = sum_j gw, t' = gw K;  b = dout_i.out_i / delta;
//   t = (t' - tau' q) / delta; u = Sigma^-1 (b mu - t); dmu = u + b rho; domega = -b - lam u.rho;
//   dl_ij = gw (1 - rho.x) / delta + w (dmu.x - (u.x)(rho.x) + domega)     (x = k_j - q_i)
//   dq_i = s sum_j dl_ij k_j + tau rho + (rho.mu) u + (u.mu) rho - omega dmu.
// Returns nothing; writes dq rows, the RowState rows and dlam_row.
template <typename F>
void backward_rows(Rows<const F> qr, Rows<const F> kr, Rows<const F> outr, Rows<const F> dor, Rows<F> dqr,
                   const Dims& dm, F scale, double lam, bool flashlla, const int64_t* n, int64_t bh, int64_t i0,
                   int64_t br, const F* m_saved, RowState<F>& st, double* dlam_row, Scratch<F>& ws,
                   std::vector<double>& tmp) {
  const int64_t T = dm.T, Dk = dm.Dk, Dv = dm.Dv, sp = ws.sp, Tp = st.Tp;
  const int64_t nmax = n[i0 + br - 1], npad = round_up_lanes<F>(nmax);
  F* mut = ws.rows.data();    // [br, Dk]
  F* tp = mut + br * Dk;      // [br, Dk]: t'
  F* omega = tp + br * Dk;    // [br]
  F* tau = omega + br;        // [br]
  F* mloc = tau + br;         // [br]
  tile_moments(qr, kr, Dk, scale, n, i0, br, m_saved, mloc, omega, mut, ws);
  F* w = ws.w.data();
  F* g = ws.g.data();
  // gw = (dO V^T) o w; tau' = rowsum gw; t' = gw K.
  tile_mm<F>(br, npad, Dv, dor.row(i0), dor.ld, 1, ws.vt.data(), sp, false, g, sp);
  for (int64_t r = 0; r < br; ++r) {
    F* gr = g + r * sp;
    const F* wr = w + r * sp;
    F acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < npad; ++j) {
      gr[j] *= wr[j];
      acc += gr[j];
    }
    tau[r] = acc;
  }
  tile_mm<F>(br, Dk, nmax, g, sp, 1, kr.p, kr.ld, false, tp, Dk);
  // Per row: the solves (double).
  double* mu = tmp.data();  // [Dk, kL] each, lane-interleaved
  double* rho = mu + Dk * kL;
  double* u = rho + Dk * kL;
  F* rho_f = st.rho.data() + (bh * T + i0) * Dk;
  F* u_f = st.u.data() + (bh * T + i0) * Dk;
  F* dmu_f = st.dmu.data() + (bh * T + i0) * Dk;
  F* base = ws.rows.data() + 2 * br * Dk + 3 * br;  // [br, Dk]: dq_i's closed-form part
  double scal[4 * kL];  // per lane: b, tau / delta, omega, delta
  for (int64_t r0 = 0; r0 < br; r0 += kL) {
    const int64_t cnt = std::min(kL, br - r0);
    factor_lanes(ws.sig.data(), ws.P, mut, omega, qr, i0, r0, cnt, Dk, lam, ws.a.data(), mu);
    for (int64_t x = 0; x < Dk * kL; ++x) rho[x] = mu[x];
    solve_lanes(ws.a.data(), Dk, rho);
    for (int64_t e = 0; e < kL; ++e) {
      if (e >= cnt) {
        for (int64_t d = 0; d < Dk; ++d) u[d * kL + e] = 0;
        continue;
      }
      const int64_t r = r0 + e, i = i0 + r;
      const F* qi = qr.row(i);
      double mr = 0;
      for (int64_t d = 0; d < Dk; ++d) mr += mu[d * kL + e] * rho[d * kL + e];
      const double om = omega[r], delta = om - mr;
      const double b = row_dot(dor.row(i), outr.row(i), Dv) / delta;
      scal[e] = b, scal[kL + e] = static_cast<double>(tau[r]) / delta, scal[2 * kL + e] = om, scal[3 * kL + e] = delta;
      for (int64_t d = 0; d < Dk; ++d)
        u[d * kL + e] = b * mu[d * kL + e] - (static_cast<double>(tp[r * Dk + d]) - tau[r] * qi[d]) / delta;
    }
    solve_lanes(ws.a.data(), Dk, u);
    for (int64_t e = 0; e < cnt; ++e) {
      const int64_t r = r0 + e, i = i0 + r, ri = bh * Tp + i;
      const F* qi = qr.row(i);
      const double b = scal[e], ta = scal[kL + e], om = scal[2 * kL + e], delta = scal[3 * kL + e];
      double ur = 0, rmu = 0, umu = 0, rq = 0, uq = 0, mq = 0;
      for (int64_t d = 0; d < Dk; ++d) {
        ur += u[d * kL + e] * rho[d * kL + e];
        rmu += rho[d * kL + e] * mu[d * kL + e];
        umu += u[d * kL + e] * mu[d * kL + e];
      }
      const double domega = flashlla ? -b : -b - lam * ur;
      dlam_row[i] = flashlla ? 0.0 : -om * ur;
      for (int64_t d = 0; d < Dk; ++d) {
        const double rd = rho[d * kL + e], ud = u[d * kL + e], dmu = ud + b * rd;
        base[r * Dk + d] = static_cast<F>(ta * rd + rmu * ud + umu * rd - om * dmu);
        rho_f[r * Dk + d] = static_cast<F>(rd);
        u_f[r * Dk + d] = static_cast<F>(ud);
        dmu_f[r * Dk + d] = static_cast<F>(dmu);
        st.rho_t[static_cast<size_t>((bh * Dk + d) * Tp + i)] = rho_f[r * Dk + d];
        st.u_t[static_cast<size_t>((bh * Dk + d) * Tp + i)] = u_f[r * Dk + d];
        st.dmu_t[static_cast<size_t>((bh * Dk + d) * Tp + i)] = dmu_f[r * Dk + d];
        rq += static_cast<double>(rho_f[r * Dk + d]) * qi[d];
        uq += static_cast<double>(u_f[r * Dk + d]) * qi[d];
        mq += static_cast<double>(dmu_f[r * Dk + d]) * qi[d];
      }
      st.m[static_cast<size_t>(ri)] = mloc[r];
      st.inv_delta[static_cast<size_t>(ri)] = static_cast<F>(1.0 / delta);
      st.domega[static_cast<size_t>(ri)] = static_cast<F>(domega);
      st.rq[static_cast<size_t>(ri)] = static_cast<F>(rq);
      st.uq[static_cast<size_t>(ri)] = static_cast<F>(uq);
      st.mq[static_cast<size_t>(ri)] = static_cast<F>(mq);
    }
  }
  // R = rho K^T, U = u K^T, M = dmu K^T; dl into w's place; dq = s dl K + base.
  F* rk = ws.r.data();
  F* uk = ws.u.data();
  F* mk = ws.mm.data();
  tile_mm<F>(br, npad, Dk, rho_f, Dk, 1, ws.kt.data(), sp, false, rk, sp);
  tile_mm<F>(br, npad, Dk, u_f, Dk, 1, ws.kt.data(), sp, false, uk, sp);
  tile_mm<F>(br, npad, Dk, dmu_f, Dk, 1, ws.kt.data(), sp, false, mk, sp);
  for (int64_t r = 0; r < br; ++r) {
    const int64_t ri = bh * Tp + i0 + r;
    const F rq = st.rq[static_cast<size_t>(ri)], uq = st.uq[static_cast<size_t>(ri)],
            mq = st.mq[static_cast<size_t>(ri)], id = st.inv_delta[static_cast<size_t>(ri)],
            dom = st.domega[static_cast<size_t>(ri)];
    F* wr = w + r * sp;
    const F* gr = g + r * sp;
    const F* rr = rk + r * sp;
    const F* ur = uk + r * sp;
    const F* mr = mk + r * sp;
#pragma omp simd
    for (int64_t j = 0; j < npad; ++j) {
      const F rx = rr[j] - rq, ux = ur[j] - uq, mx = mr[j] - mq;
      wr[j] = gr[j] * (F(1) - rx) * id + wr[j] * (mx - ux * rx + dom);
    }
  }
  for (int64_t r = 0; r < br; ++r) std::copy(base + r * Dk, base + (r + 1) * Dk, dqr.row(i0 + r));
  tile_mm<F>(br, Dk, nmax, scale, w, sp, 1, kr.p, kr.ld, true, dqr.row(i0), dqr.ld);
}

// Backward kernel 2, one key tile [j0, j0 + bk) of one (b, h), over the query rows that see it in
// tiles of kBq: with the tile oriented keys x queries (x = k_j - q_i),
//   w = exp(s q.k - m_i), gw = (dout_i.v_j) w, c = w (1 - rho.x) / delta,
//   dl = gw (1 - rho.x) / delta + w (dmu.x - (u.x)(rho.x) + domega)
//   dv_j += sum_i c dout_i
//   dk_j += sum_i s dl q_i - (gw / delta + w u.x) rho_i - w (rho.x) u_i + w dmu_i.
template <typename F>
void backward_keys(Rows<const F> qr, Rows<const F> kr, Rows<const F> vr, Rows<const F> dor, Rows<F> dkr, Rows<F> dvr,
                   const Dims& dm, F scale, const int64_t* n, int64_t bh, int64_t j0, int64_t bk,
                   const RowState<F>& st, const F* qt, const F* dot, std::vector<F>& buf) {
  using V = typename Vec<F>::V;
  constexpr int64_t W = kLanes<F>;
  const int64_t T = dm.T, Dk = dm.Dk, Dv = dm.Dv, Tp = st.Tp;
  constexpr int64_t ld = kBq;
  F* s = buf.data();
  F* g = s + kBk * ld;
  F* rk = g + kBk * ld;
  F* uk = rk + kBk * ld;
  F* mk = uk + kBk * ld;
  for (int64_t j = 0; j < bk; ++j) {
    std::fill(dkr.row(j0 + j), dkr.row(j0 + j) + Dk, F(0));
    std::fill(dvr.row(j0 + j), dvr.row(j0 + j) + Dv, F(0));
  }
  const F* rho_t = st.rho_t.data() + bh * Dk * Tp;
  const F* u_t = st.u_t.data() + bh * Dk * Tp;
  const F* dmu_t = st.dmu_t.data() + bh * Dk * Tp;
  const F* rho = st.rho.data() + bh * T * Dk;
  const F* u = st.u.data() + bh * T * Dk;
  const F* dmu = st.dmu.data() + bh * T * Dk;
  const int64_t first = std::upper_bound(n, n + T, j0) - n;  // the first row that sees key j0
  for (int64_t i0 = first; i0 < T; i0 += kBq) {
    const int64_t bq = std::min(kBq, T - i0), bqp = round_up_lanes<F>(bq);
    tile_mm<F>(bk, bqp, Dk, scale, kr.row(j0), kr.ld, 1, qt + i0, Tp, false, s, ld);
    tile_mm<F>(bk, bqp, Dv, vr.row(j0), vr.ld, 1, dot + i0, Tp, false, g, ld);
    tile_mm<F>(bk, bqp, Dk, kr.row(j0), kr.ld, 1, rho_t + i0, Tp, false, rk, ld);
    tile_mm<F>(bk, bqp, Dk, kr.row(j0), kr.ld, 1, u_t + i0, Tp, false, uk, ld);
    tile_mm<F>(bk, bqp, Dk, kr.row(j0), kr.ld, 1, dmu_t + i0, Tp, false, mk, ld);
    const size_t c0 = static_cast<size_t>(bh * Tp + i0);
    for (int64_t j = 0; j < bk; ++j) {
      // Key j0 + j is seen by the rows from lo on (lo - i0 may be negative or past the tile).
      const int64_t lo = (std::upper_bound(n, n + T, j0 + j) - n) - i0;
      F* sr = s + j * ld;
      F* gr = g + j * ld;
      F* rr = rk + j * ld;
      F* ur = uk + j * ld;
      F* mr = mk + j * ld;
      for (int64_t c = 0; c < bqp; c += W) {
        const auto vis = ~lanes_below<F>(lo - c) & lanes_below<F>(bq - c);
        const V w = vis ? exp_v(vload(sr + c) - vload(st.m.data() + c0 + c)) : V{};
        const V gw = vload(gr + c) * w;
        const V id = vload(st.inv_delta.data() + c0 + c);
        const V rx = vload(rr + c) - vload(st.rq.data() + c0 + c);
        const V ux = vload(ur + c) - vload(st.uq.data() + c0 + c);
        const V mx = vload(mr + c) - vload(st.mq.data() + c0 + c);
        const V one_rx = F(1) - rx;
        vstore(sr + c, w * one_rx * id);                                                        // c
        vstore(gr + c, gw * one_rx * id + w * (mx - ux * rx + vload(st.domega.data() + c0 + c)));  // dl
        vstore(rr + c, -(gw * id + w * ux));                                                    // rho_i's
        vstore(ur + c, -(w * rx));                                                              // u_i's
        vstore(mr + c, w);                                                                      // dmu_i's
      }
    }
    tile_mm<F>(bk, Dv, bq, s, ld, 1, dor.row(i0), dor.ld, true, dvr.row(j0), dvr.ld);
    tile_mm<F>(bk, Dk, bq, scale, g, ld, 1, qr.row(i0), qr.ld, true, dkr.row(j0), dkr.ld);
    tile_mm<F>(bk, Dk, bq, rk, ld, 1, rho + i0 * Dk, Dk, true, dkr.row(j0), dkr.ld);
    tile_mm<F>(bk, Dk, bq, uk, ld, 1, u + i0 * Dk, Dk, true, dkr.row(j0), dkr.ld);
    tile_mm<F>(bk, Dk, bq, mk, ld, 1, dmu + i0 * Dk, Dk, true, dkr.row(j0), dkr.ld);
  }
}

template <typename F>
LlaAttentionOp::Grads backward_impl(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lam,
                                    const LlaAttentionOp::Forward& saved, const Tensor& dout,
                                    const AttentionMask& mask, double scale, bool flashlla_grad) {
  const Dims dm = dims_of(kName, q, k, v);
  AL_ASSERT(unit_last_stride(saved.out) && unit_last_stride(dout) && saved.m.is_contiguous(), kName,
            ": saved tensors in an unexpected layout: out=", saved.out, ", dout=", dout, ", m=", saved.m);
  const int64_t B = q.size(0), H = q.size(1), T = dm.T, S = dm.S, Dk = dm.Dk, Dv = dm.Dv;
  const std::vector<int64_t> n = visible_counts(kName, T, S, mask);
  const double lv = lam_value(lam);
  QkvGrads gr = empty_qkv_grads(B, H, dm, q.dtype());
  const Heads<const F> hq(q.data<F>(), q), hk(k.data<F>(), k), hv(v.data<F>(), v), hdo(dout.data<F>(), dout),
      hout(saved.out.data<F>(), saved.out);
  const Heads<F> hdq(gr.dq.data<F>(), gr.dq), hdk(gr.dk.data<F>(), gr.dk), hdv(gr.dv.data<F>(), gr.dv);
  const F* pm = saved.m.data<F>();
  RowState<F> st(B * H, T, Dk);
  std::vector<double> dlam_row(static_cast<size_t>(B * H * T), 0.0);
  const F c = static_cast<F>(scale);

  // Kernel 1: per (b, h, query tile).
  const int64_t tiles = (T + kRows - 1) / kRows;
  const int64_t work = tiles * kRows * S * (packed_size(Dk) + 8 * Dk + Dv);
  cpu::parallel_for(0, B * H * tiles, heads_grain(work / tiles), [&](int64_t t0, int64_t t1) {
    Scratch<F> ws(S, Dk, Dv, true);
    std::vector<double> tmp(static_cast<size_t>(3 * Dk * kL));
    int64_t cur = -1;
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t bh = task / tiles, i0 = (task % tiles) * kRows, br = std::min(kRows, T - i0);
      const int64_t b = bh / H, h = bh % H;
      const Rows<const F> kr = hk.at(b, h), vr = hv.at(b, h);
      if (bh != cur) {
        transpose_into(kr.p, S, Dk, kr.ld, ws.kt.data(), ws.sp);
        transpose_into(vr.p, S, Dv, vr.ld, ws.vt.data(), ws.sp);
        cur = bh;
      }
      backward_rows(hq.at(b, h), kr, hout.at(b, h), hdo.at(b, h), hdq.at(b, h), dm, c, lv, flashlla_grad, n.data(),
                    bh, i0, br, pm + bh * T + i0, st, dlam_row.data() + bh * T, ws, tmp);
    }
  });

  // Kernel 2: per (b, h, key tile).
  const int64_t ktiles = (S + kBk - 1) / kBk;
  cpu::parallel_for(0, B * H * ktiles, heads_grain(work / ktiles), [&](int64_t t0, int64_t t1) {
    std::vector<F> buf(static_cast<size_t>(5 * kBk * kBq));
    std::vector<F> qt(static_cast<size_t>(Dk * st.Tp)), dot(static_cast<size_t>(Dv * st.Tp));
    int64_t cur = -1;
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t bh = task / ktiles, j0 = (task % ktiles) * kBk, bk = std::min(kBk, S - j0);
      const int64_t b = bh / H, h = bh % H;
      const Rows<const F> qr = hq.at(b, h), dor = hdo.at(b, h);
      if (bh != cur) {
        transpose_into(qr.p, T, Dk, qr.ld, qt.data(), st.Tp);
        transpose_into(dor.p, T, Dv, dor.ld, dot.data(), st.Tp);
        cur = bh;
      }
      backward_keys(qr, hk.at(b, h), hv.at(b, h), dor, hdk.at(b, h), hdv.at(b, h), dm, c, n.data(), bh, j0, bk, st,
                    qt.data(), dot.data(), buf);
    }
  });

  // dlam: the rows' terms summed in one fixed order.
  double dl = 0;
  for (double x : dlam_row) dl += x;
  return LlaAttentionOp::Grads{gr.dq, gr.dk, gr.dv, Tensor::full(Shape{1}, dl, q.dtype())};
}

}  // namespace

LlaAttentionOp::Forward LlaAttentionOp::forward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                const Tensor& lam, const AttentionMask& mask, double scale) {
  return dispatch_float(q.dtype(), kName, [&](auto tag) {
    return forward_impl<decltype(tag)>(q, k, v, lam, mask, scale);
  });
}

LlaAttentionOp::Grads LlaAttentionOp::backward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                               const Tensor& lam, const Forward& saved, const Tensor& dout,
                                               const AttentionMask& mask, double scale, bool flashlla_grad) {
  return dispatch_float(q.dtype(), kName, [&](auto tag) {
    return backward_impl<decltype(tag)>(q, k, v, lam, saved, dout, mask, scale, flashlla_grad);
  });
}

LlaConditioning lla_conditioning(const Tensor& q_in, const Tensor& k_in, const Tensor& lam_in,
                                 const AttentionMask& mask, double scale) {
  AL_CHECK_SHAPE(q_in.defined() && k_in.defined() && q_in.ndim() == 4 && k_in.ndim() == 4, kName,
                 ": lla_conditioning needs q [B, H, T, Dk] and k [B, H, S, Dk]; got q=", q_in, ", k=", k_in);
  // v only enters the shape checks: k stands in for it.
  LlaAttentionOp::check(q_in, k_in, k_in, lam_in, mask);
  const Tensor q = q_in.to(Device::cpu()).to(DType::f64).contiguous();
  const Tensor k = k_in.to(Device::cpu()).to(DType::f64).contiguous();
  const double lv = lam_in.to(Device::cpu()).to_vector<double>()[0];
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), S = k.size(2), Dk = q.size(3);
  const double c = attention_scale(scale, Dk);
  const std::vector<int64_t> n = visible_counts(kName, T, S, mask);
  const int64_t rows = B * H * T;
  std::vector<double> ratio(static_cast<size_t>(rows)), cond(static_cast<size_t>(rows));
  const double* pq = q.data<double>();
  const double* pk = k.data<double>();
  cpu::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    RowStats st(S, Dk);
    std::vector<double> a(static_cast<size_t>(Dk * Dk));
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t bh = r / T, i = r % T;
      row_stats(pq + r * Dk, Rows<const double>{pk + bh * S * Dk, Dk}, n[static_cast<size_t>(i)], Dk, c, lv, nullptr,
                st);
      ratio[static_cast<size_t>(r)] = st.delta / st.omega;
      // The extreme eigenvalues of Sigma_i: its Cholesky factor's singular values squared. Cyclic
      // Jacobi on the symmetric Sigma_i = L L^T (small Dk: a diagnostic, not a kernel).
      const double* l = st.sig.data();
      for (int64_t x = 0; x < Dk; ++x)
        for (int64_t y = 0; y < Dk; ++y) {
          double s = 0;
          for (int64_t p = 0; p <= std::min(x, y); ++p) s += l[x * Dk + p] * l[y * Dk + p];
          a[static_cast<size_t>(x * Dk + y)] = s;
        }
      for (int sweep = 0; sweep < 60; ++sweep) {
        double off = 0, diag = 0;
        for (int64_t x = 0; x < Dk; ++x)
          for (int64_t y = 0; y < Dk; ++y)
            (x == y ? diag : off) += a[static_cast<size_t>(x * Dk + y)] * a[static_cast<size_t>(x * Dk + y)];
        if (off <= 1e-30 * diag) break;
        for (int64_t x = 0; x < Dk; ++x)
          for (int64_t y = x + 1; y < Dk; ++y) {
            const double axy = a[static_cast<size_t>(x * Dk + y)];
            if (axy == 0.0) continue;
            const double axx = a[static_cast<size_t>(x * Dk + x)], ayy = a[static_cast<size_t>(y * Dk + y)];
            const double theta = (ayy - axx) / (2 * axy);
            const double tt = (theta >= 0 ? 1.0 : -1.0) / (std::abs(theta) + std::sqrt(theta * theta + 1));
            const double cs = 1 / std::sqrt(tt * tt + 1), sn = tt * cs;
            for (int64_t z = 0; z < Dk; ++z) {  // columns x, y
              const double zx = a[static_cast<size_t>(z * Dk + x)], zy = a[static_cast<size_t>(z * Dk + y)];
              a[static_cast<size_t>(z * Dk + x)] = cs * zx - sn * zy;
              a[static_cast<size_t>(z * Dk + y)] = sn * zx + cs * zy;
            }
            for (int64_t z = 0; z < Dk; ++z) {  // rows x, y
              const double xz = a[static_cast<size_t>(x * Dk + z)], yz = a[static_cast<size_t>(y * Dk + z)];
              a[static_cast<size_t>(x * Dk + z)] = cs * xz - sn * yz;
              a[static_cast<size_t>(y * Dk + z)] = sn * xz + cs * yz;
            }
          }
      }
      double lo = std::numeric_limits<double>::infinity(), hi = 0;
      for (int64_t x = 0; x < Dk; ++x) {
        lo = std::min(lo, a[static_cast<size_t>(x * Dk + x)]);
        hi = std::max(hi, a[static_cast<size_t>(x * Dk + x)]);
      }
      cond[static_cast<size_t>(r)] = hi / lo;
    }
  });
  LlaConditioning out;
  out.delta_ratio_min = std::numeric_limits<double>::infinity();
  for (int64_t r = 0; r < rows; ++r) {
    out.delta_ratio_min = std::min(out.delta_ratio_min, ratio[static_cast<size_t>(r)]);
    out.delta_ratio_mean += ratio[static_cast<size_t>(r)] / static_cast<double>(rows);
    out.cond_mean += cond[static_cast<size_t>(r)] / static_cast<double>(rows);
    out.cond_max = std::max(out.cond_max, cond[static_cast<size_t>(r)]);
  }
  return out;
}

}  // namespace attnlab
