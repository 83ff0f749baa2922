// CPU forward and backward of the fused linear-InfSA attention, f32 and f64: form (B) (chunked linear
// attention, below) and form (A) (the exact prefix form, tiled; its own section near the end).
//
// Maths per (b, h) (see linear_infsa_attention.h): off = S - T, query i at position off + i,
//   f_i = relu(qbar_i) [Dk] (qbar the running energy-weighted mean query), g_j = relu(c k_j) [Dk],
//   num_i = sum_{j <= off + i} <f_i, g_j> v_j,  den_i = sum_{j <= off + i} <f_i, g_j>,
//   out_i = gamma num_i / (den_i + eps).
//
// Chunked forward (chunks of kC = 64 queries; chunk [i0, i0 + cn) sees the keys [j0, j0 + cn),
// j0 = off + i0, inside the chunk and everything before through the state):
//   S = sum_{j < off} g_j v_j^T [Dk, Dv], z = sum_{j < off} g_j [Dk]        (the keys before query 0)
//   per chunk:  A = (F G^T) o M  [cn, cn], M the lower triangle with the diagonal
//               num = F S + A V,  den = F z + rowsum A
//               S += G^T V,  z += colsum G
// with F, G, V the chunk's rows of f, g, v.
//
// Backward, for dout = G_i (per row): dnum_i = gamma dout_i / (den_i + eps),
// dden_i = -<dout_i, out_i> / (den_i + eps), dA_ij = <dnum_i, v_j> + dden_i on visible pairs, and
//   df_i = sum_j dA_ij g_j    -> per chunk: dA G + dNum S_prev^T + dden z_prev^T
//   dg_j = sum_i dA_ij f_i    -> per chunk: dA^T F + V dS_next^T + dz_next
//   dv_j = sum_i A_ij dnum_i  -> per chunk: A^T dNum + G dS_next
// where S_prev, z_prev hold the keys before the chunk (pass 1 runs forward over the chunks and
// saves them, S^T [Dv, Dk] and z per chunk: T / 64 x Dv x Dk scratch, linear in T) and
// dS_next = sum f_i dnum_i^T, dz_next = sum dden_i f_i over the queries after the chunk (pass 2,
// reverse over the chunks, computes everything else, recomputing A).
// The keys before query 0 get dg = dS v + dz, dv = dS^T g with the states over all queries.
// The triangular products ((F G^T) o M, (dNum V^T) o M, and those with A, dA or their transposes)
// go in blocks of 12 rows that compute only the part of the triangle they need.
// Then dk = c dg o [k > 0], and the prefix-mean chain rule (spec 3.8 (A)'s backward with f = relu(qbar)):
//   dqbar_i = df_i o [qbar_i > 0],  dP_i = dqbar_i / N_i,  dN_i = -<dqbar_i, qbar_i> / N_i
//   (= -<dqbar_i, f_i> / N_i: dqbar is 0 where qbar <= 0, so f stands in for qbar),
//   gP_s = sum_{i >= s} dP_i,  gN_s = sum_{i >= s} dN_i   (reverse scans)
//   dq_s = c (n_s gP_s + (<gP_s, q~_s> + gN_s) q~_s / n_s)   (0 for a zero query, n_s = 0)
//   dtheta_h = (1 - gamma_h) sum_{b, i} <dout_i, out_i>.
// The prefix mean (n, P, N, qbar) and the row scalars of the chain rule run in double in both
// dtypes (O(T D) work): the relu masks of qbar then follow the exact values, not f32 rounding.
//
// Each (b, h) pair is one task (OpenMP over the B * H pairs): the bits do not depend on the
// thread count, and dtheta's per-pair partial sums are added in (b) order after the loop. Scratch
// is per task and linear in T (the prefix mean, relu'd k and its transpose, the saved states);
// never a [T, S] matrix. The tile products, transposes and strided layouts are cpu_tiles.h's
// (the register-blocked vector micro-kernel the quadratic variants use).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

#include "layers/attention/cpu_tiles.h"
#include "layers/attention/linear_infsa/linear_infsa_attention.h"
#include "lib/error.h"

namespace attnlab {

namespace {

using namespace attn_cpu;

constexpr std::string_view kName = "linear_infsa_attention";
constexpr std::string_view kPrefixName = "linear_infsa_prefix_attention";
constexpr int64_t kC = 64;  // queries per chunk (a multiple of every vector width)

// Per-task scratch, sized once per task for the call's dims; `sp` is the padded key count, the
// leading dim of the transposed keys (and values), whose padding columns stay zero so a ragged
// chunk still runs in whole vectors.
template <typename F>
struct Scratch {
  int64_t sp;
  std::vector<F> f, g, gt, a, acc, state, state_t, z;
  // backward only: v^T, the row gradients dnum, dden, the dA tile, df, dg, dz, the states before
  // each chunk (S^T [Dv, Dk] and z [Dk] per chunk), and the prefix mean's n, N in double.
  std::vector<F> vt, dnum, dden, da, df, dg, dz, st_saved, z_saved;
  std::vector<double> nrm, nrun;
  Scratch(const Dims& d, bool backward)
      : sp(round_up_lanes<F>(d.S) + kLanes<F>),
        f(static_cast<size_t>(d.T * d.Dk)),
        g(static_cast<size_t>(d.S * d.Dk)),
        gt(static_cast<size_t>(d.Dk * sp), F(0)),
        a(static_cast<size_t>(kC * kC)),
        acc(backward ? 0 : static_cast<size_t>(kC * d.Dv)),
        state(static_cast<size_t>(d.Dk * d.Dv)),
        state_t(static_cast<size_t>(d.Dk * d.Dv)),
        z(static_cast<size_t>(d.Dk)) {
    if (!backward) return;
    const int64_t chunks = (d.T + kC - 1) / kC;
    vt.assign(static_cast<size_t>(d.Dv * sp), F(0));
    dnum.resize(static_cast<size_t>(d.T * d.Dv));
    dden.resize(static_cast<size_t>(d.T));
    da.resize(static_cast<size_t>(kC * kC));
    df.resize(static_cast<size_t>(d.T * d.Dk));
    dg.resize(static_cast<size_t>(d.S * d.Dk));
    dz.resize(static_cast<size_t>(d.Dk));
    st_saved.resize(static_cast<size_t>(chunks * d.Dv * d.Dk));
    z_saved.resize(static_cast<size_t>(chunks * d.Dk));
    nrm.resize(static_cast<size_t>(d.T));
    nrun.resize(static_cast<size_t>(d.T));
  }
};

// The prefix mean of one (b, h), in double: n_i = ||c q_i||, P_i = p0 + sum n_s c q_s,
// N_i = n0 + sum n_s, qbar_i = P_i / N_i (0 where N_i <= 0); f = relu(qbar) (kRelu) or qbar in F.
// Backward also keeps n and N (non-null pointers). Returns the final P in `P` (in: p0) and N (in: n0).
template <bool kRelu, typename F>
void prefix_mean(Rows<const F> q, const Dims& dm, double c, double* P, double& N, F* f, double* nrm, double* nrun) {
  const int64_t Dk = dm.Dk;
  for (int64_t i = 0; i < dm.T; ++i) {
    const F* qi = q.row(i);
    double ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t d = 0; d < Dk; ++d) ss += static_cast<double>(qi[d]) * qi[d];
    const double n = c * std::sqrt(ss);  // ||c q|| with c > 0
    const double nc = n * c;
#pragma omp simd
    for (int64_t d = 0; d < Dk; ++d) P[d] += nc * static_cast<double>(qi[d]);
    N += n;
    const double inv = N > 0 ? 1.0 / N : 0.0;
    F* fi = f + i * Dk;
#pragma omp simd
    for (int64_t d = 0; d < Dk; ++d) {
      const F x = static_cast<F>(P[d] * inv);
      fi[d] = !kRelu || x > F(0) ? x : F(0);
    }
    if (nrm) nrm[i] = n, nrun[i] = N;
  }
}

// g = relu(c k) [S, Dk] and its transpose gt [Dk, sp].
template <typename F>
void relu_keys(Rows<const F> k, const Dims& dm, double c, Scratch<F>& ws) {
  const F cf = static_cast<F>(c);
  for (int64_t j = 0; j < dm.S; ++j) {
    const F* kj = k.row(j);
    F* gj = ws.g.data() + j * dm.Dk;
#pragma omp simd
    for (int64_t d = 0; d < dm.Dk; ++d) {
      const F x = cf * kj[d];
      gj[d] = x > F(0) ? x : F(0);
    }
  }
  transpose_into(ws.g.data(), dm.S, dm.Dk, dm.Dk, ws.gt.data(), ws.sp);
}

// The triangular products of a chunk go in blocks of kRB rows (of the product's output), each
// computing only the part of the triangle it needs, so little of the masked half is computed.
constexpr int64_t kRB = 12;

// X = (P Q^T) o M [cn, cn] (leading dim kC): row r keeps the columns j <= r, the rest of the row up
// to the whole vector past cn is zero. P [cn, K] (leading dim ldp), Qt = Q^T [K, *] (leading dim
// ldq), both with unit-stride rows.
template <typename F>
void lower_product(int64_t cn, int64_t K, const F* p, int64_t ldp, const F* qt, int64_t ldq, F* x) {
  const int64_t w = round_up_lanes<F>(cn);
  for (int64_t r0 = 0; r0 < cn; r0 += kRB) {
    const int64_t rows = std::min(kRB, cn - r0);
    tile_mm<F>(rows, round_up_lanes<F>(r0 + rows), K, p + r0 * ldp, ldp, 1, qt, ldq, false, x + r0 * kC, kC);
  }
  for (int64_t r = 0; r < cn; ++r) std::fill(x + r * kC + r + 1, x + r * kC + w, F(0));
}

// C [cn, N] (+)= X B for X lower-triangular [cn, cn] (leading dim kC): row block [r0, r0 + rows)
// needs the first r0 + rows rows of B [cn, N] (leading dim ldb).
template <typename F>
void lower_times(int64_t cn, int64_t N, const F* x, const F* b, int64_t ldb, bool accumulate, F* c, int64_t ldc) {
  for (int64_t r0 = 0; r0 < cn; r0 += kRB) {
    const int64_t rows = std::min(kRB, cn - r0);
    tile_mm<F>(rows, N, r0 + rows, x + r0 * kC, kC, 1, b, ldb, accumulate, c + r0 * ldc, ldc);
  }
}

// C [cn, N] (+)= X^T B for X lower-triangular [cn, cn] (leading dim kC): output row block
// [j0, j0 + rows) is a sum over the rows i >= j0 of X and B [cn, N] (leading dim ldb).
template <typename F>
void lower_t_times(int64_t cn, int64_t N, const F* x, const F* b, int64_t ldb, bool accumulate, F* c, int64_t ldc) {
  for (int64_t j0 = 0; j0 < cn; j0 += kRB) {
    const int64_t rows = std::min(kRB, cn - j0);
    tile_mm<F>(rows, N, cn - j0, x + j0 * kC + j0, 1, kC, b + j0 * ldb, ldb, accumulate, c + j0 * ldc, ldc);
  }
}

// z[d] += sum over the rows [0, rows) of x [rows, D] (row stride ld), scaled per row by w (or 1).
template <typename F>
void add_col_sums(F* z, const F* x, int64_t rows, int64_t D, int64_t ld, const F* w = nullptr) {
  for (int64_t r = 0; r < rows; ++r) {
    const F s = w ? w[r] : F(1);
    const F* xr = x + r * ld;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) z[d] += s * xr[d];
  }
}

// x[r][d] += w[r] y[d] (w null: 1) for r < rows (x's row stride ld).
template <typename F>
void add_outer(F* x, int64_t rows, int64_t D, int64_t ld, const F* w, const F* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const F s = w ? w[r] : F(1);
    F* xr = x + r * ld;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) xr[d] += s * y[d];
  }
}

// The prefix-mean chain rule of one (b, h), from dqbar = d (kRelu: d o [f > 0], d the gradient of
// f = relu(qbar)) and x = qbar (or f = relu(qbar), the same inside <dqbar, x>):
//   dP_i = dqbar_i / N_i, dN_i = -<dqbar_i, x_i> / N_i, gP, gN their reverse cumulative sums,
//   dq_s = c (n_s gP_s + (<gP_s, c q_s> + gN_s) c q_s / n_s)  (0 for a zero query, n_s = 0).
template <bool kRelu, typename F>
void prefix_mean_backward(Rows<const F> q, const Dims& dm, double c, const F* d, const F* x, const double* nrm,
                          const double* nrun, Rows<F> dq) {
  const int64_t Dk = dm.Dk;
  std::vector<double> gP(static_cast<size_t>(Dk), 0.0);
  double* gp = gP.data();
  double gN = 0;
  for (int64_t s = dm.T - 1; s >= 0; --s) {
    const double Ns = nrun[s];
    if (Ns > 0) {
      const double inv = 1.0 / Ns;
      const F* xs = x + s * Dk;
      const F* ds = d + s * Dk;
      double dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t k = 0; k < Dk; ++k) {
        const double on = !kRelu || xs[k] > F(0) ? 1.0 : 0.0;  // a 0/1 factor: the loop vectorizes
        const double dqb = on * static_cast<double>(ds[k]);
        gp[k] += dqb * inv;
        dot += dqb * static_cast<double>(xs[k]);
      }
      gN -= dot * inv;
    }
    const double n = nrm[s];
    const F* qs = q.row(s);
    F* o = dq.row(s);
    if (n > 0) {
      double gq = 0;
#pragma omp simd reduction(+ : gq)
      for (int64_t k = 0; k < Dk; ++k) gq += gp[k] * static_cast<double>(qs[k]);
      const double coef = (c * gq + gN) * c * c / n, cn = c * n;
#pragma omp simd
      for (int64_t k = 0; k < Dk; ++k) o[k] = static_cast<F>(cn * gp[k] + coef * static_cast<double>(qs[k]));
    } else {
      std::fill(o, o + Dk, F(0));  // a zero query: no energy, and the subgradient 0 at the kink
    }
  }
}

// One (b, h): q [T, Dk], k [S, Dk], v [S, Dv] -> out [T, Dv], den [T], p [Dk], n.
// The carried query prefix p0 [Dk] in double (zeros when absent).
template <typename F>
std::vector<double> carried_p(const F* p0, int64_t Dk) {
  std::vector<double> P(static_cast<size_t>(Dk), 0.0);
  for (int64_t d = 0; d < Dk; ++d) P[d] = p0 ? static_cast<double>(p0[d]) : 0.0;
  return P;
}

// The backward's row scalars, the same for both forms with den = the row normaliser:
// du_i = gamma dout_i / (den_i + eps), dden_i = -<dout_i, out_i> / (den_i + eps). Returns
// sum_i <dout_i, out_i>, this head's share of dtheta.
template <typename F>
double row_scalars(Rows<const F> dout, Rows<const F> out, const F* den, int64_t T, int64_t Dv, double gamma, F* du,
                   F* dden) {
  double delta_sum = 0;
  for (int64_t i = 0; i < T; ++i) {
    const F* go = dout.row(i);
    const double dot = row_dot(go, out.row(i), Dv);
    delta_sum += dot;
    const double inv = 1.0 / (static_cast<double>(den[i]) + LinearInfsaAttentionOp::kEps);
    dden[i] = static_cast<F>(-dot * inv);
    const F s = static_cast<F>(gamma * inv);
    F* d = du + i * Dv;
#pragma omp simd
    for (int64_t e = 0; e < Dv; ++e) d[e] = s * go[e];
  }
  return delta_sum;
}

template <typename F>
void forward_head(Rows<const F> q, Rows<const F> k, Rows<const F> v, Rows<F> out, F* den, F* p_out, F* n_out,
                  const F* p0, const F* n0, const Dims& dm, double c, double gamma, Scratch<F>& ws) {
  const int64_t T = dm.T, Dk = dm.Dk, Dv = dm.Dv, off = dm.off();
  std::vector<double> P = carried_p<F>(p0, Dk);
  double N = n0 ? static_cast<double>(*n0) : 0.0;
  F* f = ws.f.data();
  prefix_mean<true, F>(q, dm, c, P.data(), N, f, nullptr, nullptr);
  for (int64_t d = 0; d < Dk; ++d) p_out[d] = static_cast<F>(P[d]);
  *n_out = static_cast<F>(N);

  relu_keys(k, dm, c, ws);
  const F* g = ws.g.data();
  F* st = ws.state.data();  // S [Dk, Dv]
  F* z = ws.z.data();
  F* a = ws.a.data();
  F* acc = ws.acc.data();
  // The keys before query 0.
  tile_mm<F>(Dk, Dv, off, g, 1, Dk, v.row(0), v.ld, false, st, Dv);
  std::fill(z, z + Dk, F(0));
  add_col_sums(z, g, off, Dk, Dk);

  for (int64_t i0 = 0; i0 < T; i0 += kC) {
    const int64_t cn = std::min(kC, T - i0), j0 = off + i0;
    const F* fc = f + i0 * Dk;
    lower_product(cn, Dk, fc, Dk, ws.gt.data() + j0, ws.sp, a);         // A = (F G^T) o M
    tile_mm<F>(cn, Dv, Dk, fc, Dk, 1, st, Dv, false, acc, Dv);          // F S_prev
    lower_times(cn, Dv, a, v.row(j0), v.ld, true, acc, Dv);             // + A V
    for (int64_t r = 0; r < cn; ++r) {
      const F* fr = fc + r * Dk;
      const F* ar = a + r * kC;
      double s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j <= r; ++j) s += ar[j];
#pragma omp simd reduction(+ : s)
      for (int64_t d = 0; d < Dk; ++d) s += static_cast<double>(fr[d]) * z[d];
      den[i0 + r] = static_cast<F>(s);
      const F scale = static_cast<F>(gamma / (s + LinearInfsaAttentionOp::kEps));
      const F* accr = acc + r * Dv;
      F* o = out.row(i0 + r);
#pragma omp simd
      for (int64_t d = 0; d < Dv; ++d) o[d] = scale * accr[d];
    }
    if (i0 + cn == T) break;  // the last chunk's keys feed no later chunk
    tile_mm<F>(Dk, Dv, cn, g + j0 * Dk, 1, Dk, v.row(j0), v.ld, true, st, Dv);  // S += G^T V
    add_col_sums(z, g + j0 * Dk, cn, Dk, Dk);
  }
}

// One (b, h) backward: dq [T, Dk], dk [S, Dk], dv [S, Dv]; returns sum_i <dout_i, out_i>.
template <typename F>
double backward_head(Rows<const F> q, Rows<const F> k, Rows<const F> v, Rows<const F> out, const F* den,
                     Rows<const F> dout, Rows<F> dq, Rows<F> dk, Rows<F> dv, const F* p0, const F* n0, const Dims& dm,
                     double c, double gamma, Scratch<F>& ws) {
  const int64_t T = dm.T, S = dm.S, Dk = dm.Dk, Dv = dm.Dv, off = dm.off(), sp = ws.sp;
  std::vector<double> P = carried_p<F>(p0, Dk);
  double N = n0 ? static_cast<double>(*n0) : 0.0;
  F* f = ws.f.data();
  prefix_mean<true, F>(q, dm, c, P.data(), N, f, ws.nrm.data(), ws.nrun.data());
  relu_keys(k, dm, c, ws);
  transpose_into(v.p, S, Dv, v.ld, ws.vt.data(), sp);
  const F* g = ws.g.data();
  const F* vt = ws.vt.data();
  F* dnum = ws.dnum.data();
  F* dden = ws.dden.data();
  F* a = ws.a.data();
  F* da = ws.da.data();
  F* df = ws.df.data();
  F* dg = ws.dg.data();
  F* z = ws.z.data();
  F* dz = ws.dz.data();
  const int64_t DvDk = Dv * Dk;

  // Row scalars: dnum = gamma dout / (den + eps), dden = -<dout, out> / (den + eps).
  const double delta_sum = row_scalars<F>(dout, out, den, T, Dv, gamma, dnum, dden);

  // Pass 1, forward over chunks: the state before each chunk, S^T [Dv, Dk] and z, saved.
  F* st_t = ws.state_t.data();
  tile_mm<F>(Dv, Dk, off, v.row(0), 1, v.ld, g, Dk, false, st_t, Dk);
  std::fill(z, z + Dk, F(0));
  add_col_sums(z, g, off, Dk, Dk);
  const int64_t chunks = (T + kC - 1) / kC;
  for (int64_t ci = 0; ci < chunks; ++ci) {
    const int64_t i0 = ci * kC, cn = std::min(kC, T - i0), j0 = off + i0;
    std::copy(st_t, st_t + DvDk, ws.st_saved.data() + ci * DvDk);
    std::copy(z, z + Dk, ws.z_saved.data() + ci * Dk);
    if (ci + 1 == chunks) break;  // the last chunk's keys feed no later chunk
    tile_mm<F>(Dv, Dk, cn, v.row(j0), 1, v.ld, g + j0 * Dk, Dk, true, st_t, Dk);  // S^T += V^T G
    add_col_sums(z, g + j0 * Dk, cn, Dk, Dk);
  }

  // Pass 2, reverse over chunks with dS = sum f_i dnum_i^T [Dk, Dv] and dz = sum dden_i f_i over
  // the queries after each chunk:
  //   df = dA G + dNum S_prev^T + dden z_prev,  dg = dA^T F + V dS^T + dz,  dv = A^T dNum + G dS.
  F* ds = ws.state.data();      // dS [Dk, Dv]
  F* ds_t = ws.state_t.data();  // dS^T [Dv, Dk], refreshed from dS per chunk
  std::fill(ds, ds + Dk * Dv, F(0));
  std::fill(dz, dz + Dk, F(0));
  for (int64_t ci = chunks - 1; ci >= 0; --ci) {
    const int64_t i0 = ci * kC, cn = std::min(kC, T - i0), j0 = off + i0;
    const F* fc = f + i0 * Dk;
    const F* dnc = dnum + i0 * Dv;
    const F* gc = g + j0 * Dk;
    lower_product(cn, Dk, fc, Dk, ws.gt.data() + j0, sp, a);  // A = (F G^T) o M
    lower_product(cn, Dv, dnc, Dv, vt + j0, sp, da);           // dNum V^T, then + dden, o M
    for (int64_t r = 0; r < cn; ++r) {
      F* dr = da + r * kC;
      const F e = dden[i0 + r];
#pragma omp simd
      for (int64_t j = 0; j <= r; ++j) dr[j] += e;
    }
    F* dfc = df + i0 * Dk;
    tile_mm<F>(cn, Dk, Dv, dnc, Dv, 1, ws.st_saved.data() + ci * DvDk, Dk, false, dfc, Dk);  // dNum S_prev^T
    lower_times(cn, Dk, da, gc, Dk, true, dfc, Dk);                                         // + dA G
    add_outer(dfc, cn, Dk, Dk, dden + i0, ws.z_saved.data() + ci * Dk);                     // + dden z_prev

    transpose_into(ds, Dk, Dv, Dv, ds_t, Dk);
    F* dgc = dg + j0 * Dk;
    tile_mm<F>(cn, Dk, Dv, v.row(j0), v.ld, 1, ds_t, Dk, false, dgc, Dk);  // V dS^T
    lower_t_times(cn, Dk, da, fc, Dk, true, dgc, Dk);                     // + dA^T F
    add_outer(dgc, cn, Dk, Dk, static_cast<const F*>(nullptr), dz);       // + dz

    tile_mm<F>(cn, Dv, Dk, gc, Dk, 1, ds, Dv, false, dv.row(j0), dv.ld);  // G dS
    lower_t_times(cn, Dv, a, dnc, Dv, true, dv.row(j0), dv.ld);           // + A^T dNum

    tile_mm<F>(Dk, Dv, cn, fc, 1, Dk, dnc, Dv, true, ds, Dv);  // dS += F^T dNum
    add_col_sums(dz, fc, cn, Dk, Dk, dden + i0);
  }
  // The keys before query 0 are seen by every query.
  if (off > 0) {
    transpose_into(ds, Dk, Dv, Dv, ds_t, Dk);
    tile_mm<F>(off, Dk, Dv, v.row(0), v.ld, 1, ds_t, Dk, false, dg, Dk);
    add_outer(dg, off, Dk, Dk, static_cast<const F*>(nullptr), dz);
    tile_mm<F>(off, Dv, Dk, g, Dk, 1, ds, Dv, false, dv.row(0), dv.ld);
  }
  const F cf = static_cast<F>(c);
  for (int64_t j = 0; j < S; ++j) {
    const F* gj = g + j * Dk;
    const F* dgj = dg + j * Dk;
    F* o = dk.row(j);
#pragma omp simd
    for (int64_t d = 0; d < Dk; ++d) {
      const F on = gj[d] > F(0) ? F(1) : F(0);  // a 0/1 factor, not a select: it vectorizes
      o[d] = on * (cf * dgj[d]);
    }
  }

  prefix_mean_backward<true, F>(q, dm, c, df, f, ws.nrm.data(), ws.nrun.data(), dq);
  return delta_sum;
}

// ---- form (A): the exact prefix form ------------------------------------------------------------
//
// Per (b, h), per query tile I of kC rows [i0, i0 + cn): the keys [0, off + i0) are visible to every
// row of the tile (full blocks of kC keys), the keys [off + i0, off + i0 + cn) form the causal
// diagonal block (lower-triangular, through the row-block helpers above). With Qb = qbar rows and
// K~ = c k:
//   forward   s = Qb K~_J^T, e = relu(s), Z += rowsum e, U += e V_J;  out = gamma U / (Z + eps)
//   backward  s, e again; dP = dU V_J^T; ds = (dP + dZ) o [s > 0];
//             dv_J += e^T dU, dqbar_I += ds K~_J, dk~_J += ds^T Qb   (dk~, dv summed over I in order)
// then dk = c dk~ and the prefix-mean chain rule with dqbar.

// Scratch of one task: qbar (signed), c k and its transpose, v^T, the score and dP tiles, a query
// tile's U, and in backward dU, dZ, dqbar, dk~ and the prefix mean's n, N.
template <typename F>
struct PrefixScratch {
  int64_t sp;
  std::vector<F> qb, ks, kt, vt, s, dp, acc, du, dz, dqb, dks;
  std::vector<double> nrm, nrun;
  PrefixScratch(const Dims& d, bool backward)
      : sp(round_up_lanes<F>(d.S) + kLanes<F>),
        qb(static_cast<size_t>(d.T * d.Dk)),
        ks(static_cast<size_t>(d.S * d.Dk)),
        kt(static_cast<size_t>(d.Dk * sp), F(0)),
        s(static_cast<size_t>(kC * kC)),
        acc(backward ? 0 : static_cast<size_t>(kC * d.Dv)) {
    if (!backward) return;
    vt.assign(static_cast<size_t>(d.Dv * sp), F(0));
    dp.resize(static_cast<size_t>(kC * kC));
    du.resize(static_cast<size_t>(d.T * d.Dv));
    dz.resize(static_cast<size_t>(d.T));
    dqb.resize(static_cast<size_t>(d.T * d.Dk));
    dks.resize(static_cast<size_t>(d.S * d.Dk));
    nrm.resize(static_cast<size_t>(d.T));
    nrun.resize(static_cast<size_t>(d.T));
  }
};

// ks = c k [S, Dk] and its transpose kt [Dk, sp].
template <typename F>
void scaled_keys(Rows<const F> k, const Dims& dm, double c, PrefixScratch<F>& ws) {
  const F cf = static_cast<F>(c);
  for (int64_t j = 0; j < dm.S; ++j) {
    const F* kj = k.row(j);
    F* o = ws.ks.data() + j * dm.Dk;
#pragma omp simd
    for (int64_t d = 0; d < dm.Dk; ++d) o[d] = cf * kj[d];
  }
  transpose_into(ws.ks.data(), dm.S, dm.Dk, dm.Dk, ws.kt.data(), ws.sp);
}

// Calls fn(j0, bw, diagonal) for the key blocks the query tile [i0, i0 + cn) sees: full blocks
// over [0, off + i0), then the diagonal block [off + i0, off + i0 + cn).
template <typename Fn>
void key_blocks(int64_t off, int64_t i0, int64_t cn, Fn&& fn) {
  const int64_t nfull = off + i0;
  for (int64_t j0 = 0; j0 < nfull; j0 += kC) fn(j0, std::min(kC, nfull - j0), false);
  fn(nfull, cn, true);
}

template <typename F>
void prefix_forward_head(Rows<const F> q, Rows<const F> k, Rows<const F> v, Rows<F> out, F* zout, F* p_out, F* n_out,
                         const F* p0, const F* n0, const Dims& dm, double c, double gamma, PrefixScratch<F>& ws) {
  const int64_t T = dm.T, Dk = dm.Dk, Dv = dm.Dv, off = dm.off(), sp = ws.sp;
  std::vector<double> P = carried_p<F>(p0, Dk);
  double N = n0 ? static_cast<double>(*n0) : 0.0;
  F* qb = ws.qb.data();
  prefix_mean<false, F>(q, dm, c, P.data(), N, qb, nullptr, nullptr);
  for (int64_t d = 0; d < Dk; ++d) p_out[d] = static_cast<F>(P[d]);
  *n_out = static_cast<F>(N);
  scaled_keys(k, dm, c, ws);
  F* s = ws.s.data();
  F* acc = ws.acc.data();
  double zrow[kC];
  for (int64_t i0 = 0; i0 < T; i0 += kC) {
    const int64_t cn = std::min(kC, T - i0);
    const F* qi = qb + i0 * Dk;
    std::fill(acc, acc + cn * Dv, F(0));
    std::fill(zrow, zrow + cn, 0.0);
    key_blocks(off, i0, cn, [&](int64_t j0, int64_t bw, bool diagonal) {
      if (diagonal)
        lower_product(cn, Dk, qi, Dk, ws.kt.data() + j0, sp, s);
      else
        tile_mm<F>(cn, round_up_lanes<F>(bw), Dk, qi, Dk, 1, ws.kt.data() + j0, sp, false, s, kC);
      for (int64_t r = 0; r < cn; ++r) {
        F* sr = s + r * kC;
        double z = 0;
#pragma omp simd reduction(+ : z)
        for (int64_t j = 0; j < bw; ++j) {
          const F e = sr[j] > F(0) ? sr[j] : F(0);  // masked entries are 0 already
          sr[j] = e;
          z += e;
        }
        zrow[r] += z;
      }
      if (diagonal)
        lower_times(cn, Dv, s, v.row(j0), v.ld, true, acc, Dv);
      else
        tile_mm<F>(cn, Dv, bw, s, kC, 1, v.row(j0), v.ld, true, acc, Dv);
    });
    for (int64_t r = 0; r < cn; ++r) {
      zout[i0 + r] = static_cast<F>(zrow[r]);
      const F scale = static_cast<F>(gamma / (zrow[r] + LinearInfsaAttentionOp::kEps));
      const F* ar = acc + r * Dv;
      F* o = out.row(i0 + r);
#pragma omp simd
      for (int64_t d = 0; d < Dv; ++d) o[d] = scale * ar[d];
    }
  }
}

template <typename F>
double prefix_backward_head(Rows<const F> q, Rows<const F> k, Rows<const F> v, Rows<const F> out, const F* zs,
                            Rows<const F> dout, Rows<F> dq, Rows<F> dk, Rows<F> dv, const F* p0, const F* n0,
                            const Dims& dm, double c, double gamma, PrefixScratch<F>& ws) {
  const int64_t T = dm.T, S = dm.S, Dk = dm.Dk, Dv = dm.Dv, off = dm.off(), sp = ws.sp;
  std::vector<double> P = carried_p<F>(p0, Dk);
  double N = n0 ? static_cast<double>(*n0) : 0.0;
  F* qb = ws.qb.data();
  prefix_mean<false, F>(q, dm, c, P.data(), N, qb, ws.nrm.data(), ws.nrun.data());
  scaled_keys(k, dm, c, ws);
  transpose_into(v.p, S, Dv, v.ld, ws.vt.data(), sp);
  F* s = ws.s.data();
  F* dp = ws.dp.data();
  F* du = ws.du.data();
  F* dz = ws.dz.data();
  F* dqb = ws.dqb.data();
  F* dks = ws.dks.data();
  const F* ks = ws.ks.data();

  // dU = gamma dout / (Z + eps), dZ = -<dout, out> / (Z + eps).
  const double delta_sum = row_scalars<F>(dout, out, zs, T, Dv, gamma, du, dz);
  std::fill(dqb, dqb + T * Dk, F(0));
  std::fill(dks, dks + S * Dk, F(0));
  for (int64_t j = 0; j < S; ++j) std::fill(dv.row(j), dv.row(j) + Dv, F(0));

  for (int64_t i0 = 0; i0 < T; i0 += kC) {
    const int64_t cn = std::min(kC, T - i0);
    const F* qi = qb + i0 * Dk;
    const F* dui = du + i0 * Dv;
    F* dqi = dqb + i0 * Dk;
    key_blocks(off, i0, cn, [&](int64_t j0, int64_t bw, bool diagonal) {
      if (diagonal) {
        lower_product(cn, Dk, qi, Dk, ws.kt.data() + j0, sp, s);
        lower_product(cn, Dv, dui, Dv, ws.vt.data() + j0, sp, dp);
      } else {
        tile_mm<F>(cn, round_up_lanes<F>(bw), Dk, qi, Dk, 1, ws.kt.data() + j0, sp, false, s, kC);
        tile_mm<F>(cn, round_up_lanes<F>(bw), Dv, dui, Dv, 1, ws.vt.data() + j0, sp, false, dp, kC);
      }
      // e = relu(s) in s; ds = (dP + dZ) o [s > 0] in dp (masked entries: s = 0, so e = ds = 0).
      for (int64_t r = 0; r < cn; ++r) {
        F* sr = s + r * kC;
        F* pr = dp + r * kC;
        const F e0 = dz[i0 + r];
#pragma omp simd
        for (int64_t j = 0; j < bw; ++j) {
          const F on = sr[j] > F(0) ? F(1) : F(0);
          pr[j] = on * (pr[j] + e0);
          sr[j] = on * sr[j];
        }
      }
      if (diagonal) {
        lower_t_times(cn, Dv, s, dui, Dv, true, dv.row(j0), dv.ld);  // dv_J += e^T dU
        lower_times(cn, Dk, dp, ks + j0 * Dk, Dk, true, dqi, Dk);     // dqbar_I += ds K~
        lower_t_times(cn, Dk, dp, qi, Dk, true, dks + j0 * Dk, Dk);   // dk~_J += ds^T Qb
      } else {
        tile_mm<F>(bw, Dv, cn, s, 1, kC, dui, Dv, true, dv.row(j0), dv.ld);
        tile_mm<F>(cn, Dk, bw, dp, kC, 1, ks + j0 * Dk, Dk, true, dqi, Dk);
        tile_mm<F>(bw, Dk, cn, dp, 1, kC, qi, Dk, true, dks + j0 * Dk, Dk);
      }
    });
  }
  const F cf = static_cast<F>(c);
  for (int64_t j = 0; j < S; ++j) {
    const F* src = dks + j * Dk;
    F* o = dk.row(j);
#pragma omp simd
    for (int64_t d = 0; d < Dk; ++d) o[d] = cf * src[d];
  }
  prefix_mean_backward<false, F>(q, dm, c, dqb, qb, ws.nrm.data(), ws.nrun.data(), dq);
  return delta_sum;
}

// (b, h) pairs per task of the chunked form (cpu_tiles.h's heads_grain): S (kC + Dk + Dv) (Dk + Dv)
// multiply-adds per pair. The prefix form takes the tile loops' grain, heads_grain(dm).
int64_t chunked_heads_grain(const Dims& dm) { return heads_grain(dm.S * (kC + dm.Dk + dm.Dv) * (dm.Dk + dm.Dv)); }

template <typename F>
std::vector<double> gammas(const Tensor& theta) {
  const F* th = theta.data<F>();
  std::vector<double> g(static_cast<size_t>(theta.numel()));
  for (size_t h = 0; h < g.size(); ++h) g[h] = 1.0 / (1.0 + std::exp(-static_cast<double>(th[h])));
  return g;
}

// dq, dk, dv (cpu_tiles.h's empty_qkv_grads: the kernels write every element) and dtheta (zeros)
// for a backward.
LinearInfsaAttentionOp::Grads empty_grads(const Tensor& q, const Dims& dm) {
  const int64_t H = q.size(1);
  const QkvGrads e = empty_qkv_grads(q.size(0), H, dm, q.dtype());
  return {e.dq, e.dk, e.dv, Tensor::zeros(Shape{H}, q.dtype())};
}

// dtheta_h = gamma_h (1 - gamma_h) sum <dout, num / (den + eps)> = (1 - gamma_h) sum <dout, out>,
// from the per-(b, h) sums delta, added over b in order.
template <typename F>
void write_dtheta(Tensor& dtheta, const std::vector<double>& gam, const std::vector<double>& delta, int64_t B,
                  int64_t H) {
  F* dth = dtheta.data<F>();
  for (int64_t h = 0; h < H; ++h) {
    double s = 0;
    for (int64_t b = 0; b < B; ++b) s += delta[static_cast<size_t>(b * H + h)];
    dth[h] = static_cast<F>((1.0 - gam[static_cast<size_t>(h)]) * s);
  }
}

// The two forms differ only in their per-(b, h) functions, scratch and work grain; the drivers
// below (outputs, dispatch, the loop over (b, h), dtheta) serve both.
struct ChunkedForm {
  template <typename F>
  using Work = Scratch<F>;
  static int64_t grain(const Dims& dm) { return chunked_heads_grain(dm); }
  template <typename F, typename... A>
  static void forward(A&&... a) {
    forward_head<F>(std::forward<A>(a)...);
  }
  template <typename F, typename... A>
  static double backward(A&&... a) {
    return backward_head<F>(std::forward<A>(a)...);
  }
};

struct PrefixForm {
  template <typename F>
  using Work = PrefixScratch<F>;
  static int64_t grain(const Dims& dm) { return heads_grain(dm); }
  template <typename F, typename... A>
  static void forward(A&&... a) {
    prefix_forward_head<F>(std::forward<A>(a)...);
  }
  template <typename F, typename... A>
  static double backward(A&&... a) {
    return prefix_backward_head<F>(std::forward<A>(a)...);
  }
};

template <typename Form>
LinearInfsaAttentionOp::Forward run_forward(std::string_view name, const Tensor& q, const Tensor& k, const Tensor& v,
                                            const Tensor& theta, const Tensor& p0, const Tensor& n0, double scale) {
  const Dims dm = dims_of(name, q, k, v);
  const int64_t B = q.size(0), H = q.size(1);
  LinearInfsaAttentionOp::Forward fw{empty_token_major(B, H, dm.T, dm.Dv, q.dtype()),
                                     Tensor::empty(Shape{B, H, dm.T}, q.dtype()),
                                     Tensor::empty(Shape{B, H, dm.Dk}, q.dtype()), Tensor::empty(Shape{B, H}, q.dtype())};
  if (B * H == 0) return fw;
  const double c = attention_scale(scale, dm.Dk);
  dispatch_float(q.dtype(), name, [&](auto tag) {
    using F = decltype(tag);
    const Heads<const F> hq(q.data<F>(), q), hk(k.data<F>(), k), hv(v.data<F>(), v);
    const Heads<F> ho(fw.out.data<F>(), fw.out);
    F* pden = fw.den.data<F>();
    F* pp = fw.p.data<F>();
    F* pn = fw.n.data<F>();
    const F* pp0 = p0.defined() ? p0.data<F>() : nullptr;
    const F* pn0 = n0.defined() ? n0.data<F>() : nullptr;
    const std::vector<double> gam = gammas<F>(theta);
    using Work = typename Form::template Work<F>;
    for_each_head<Work>(B, H, Form::grain(dm), dm, false, [&](int64_t b, int64_t h, int64_t bh, Work& ws) {
      Form::template forward<F>(hq.at(b, h), hk.at(b, h), hv.at(b, h), ho.at(b, h), pden + bh * dm.T, pp + bh * dm.Dk,
                                pn + bh, pp0 ? pp0 + bh * dm.Dk : nullptr, pn0 ? pn0 + bh : nullptr, dm, c,
                                gam[static_cast<size_t>(h)], ws);
    });
  });
  return fw;
}

template <typename Form>
LinearInfsaAttentionOp::Grads run_backward(std::string_view name, const Tensor& q, const Tensor& k, const Tensor& v,
                                           const Tensor& theta, const Tensor& p0, const Tensor& n0, const Tensor& out,
                                           const Tensor& den, const Tensor& dout, double scale) {
  const Dims dm = dims_of(name, q, k, v);
  const int64_t B = q.size(0), H = q.size(1);
  AL_ASSERT(unit_last_stride(out) && den.is_contiguous() && unit_last_stride(dout) && out.shape() == dout.shape() &&
                out.shape() == Shape({B, H, dm.T, dm.Dv}) && den.shape() == Shape({B, H, dm.T}) &&
                out.dtype() == q.dtype() && den.dtype() == q.dtype() && dout.dtype() == q.dtype(),
            name, ": backward got out=", out, ", den=", den, ", dout=", dout, " for q=", q, ", v=", v);
  LinearInfsaAttentionOp::Grads gr = empty_grads(q, dm);
  if (B * H * dm.T == 0) {
    gr.dq.fill_(0.0), gr.dk.fill_(0.0), gr.dv.fill_(0.0);
    return gr;
  }
  const double c = attention_scale(scale, dm.Dk);
  dispatch_float(q.dtype(), name, [&](auto tag) {
    using F = decltype(tag);
    const Heads<const F> hq(q.data<F>(), q), hk(k.data<F>(), k), hv(v.data<F>(), v), ho(out.data<F>(), out),
        hdo(dout.data<F>(), dout);
    const Heads<F> hdq(gr.dq.data<F>(), gr.dq), hdk(gr.dk.data<F>(), gr.dk), hdv(gr.dv.data<F>(), gr.dv);
    const F* pden = den.data<F>();
    const F* pp0 = p0.defined() ? p0.data<F>() : nullptr;
    const F* pn0 = n0.defined() ? n0.data<F>() : nullptr;
    const std::vector<double> gam = gammas<F>(theta);
    std::vector<double> delta(static_cast<size_t>(B * H), 0.0);
    using Work = typename Form::template Work<F>;
    for_each_head<Work>(B, H, Form::grain(dm), dm, true, [&](int64_t b, int64_t h, int64_t bh, Work& ws) {
      delta[static_cast<size_t>(bh)] = Form::template backward<F>(
          hq.at(b, h), hk.at(b, h), hv.at(b, h), ho.at(b, h), pden + bh * dm.T, hdo.at(b, h), hdq.at(b, h),
          hdk.at(b, h), hdv.at(b, h), pp0 ? pp0 + bh * dm.Dk : nullptr, pn0 ? pn0 + bh : nullptr, dm, c,
          gam[static_cast<size_t>(h)], ws);
    });
    write_dtheta<F>(gr.dtheta, gam, delta, B, H);
  });
  return gr;
}

}  // namespace

LinearInfsaAttentionOp::Forward LinearInfsaAttentionOp::forward(CpuTag, const Tensor& q, const Tensor& k,
                                                                const Tensor& v, const Tensor& theta, const Tensor& p0,
                                                                const Tensor& n0, double scale) {
  check(q, k, v, theta, AttentionMask{}, p0, n0);
  return run_forward<ChunkedForm>(kName, q, k, v, theta, p0, n0, scale);
}

LinearInfsaAttentionOp::Grads LinearInfsaAttentionOp::backward(CpuTag, const Tensor& q, const Tensor& k,
                                                               const Tensor& v, const Tensor& theta, const Tensor& p0,
                                                               const Tensor& n0, const Tensor& out, const Tensor& den,
                                                               const Tensor& dout, double scale) {
  return run_backward<ChunkedForm>(kName, q, k, v, theta, p0, n0, out, den, dout, scale);
}

// ---- form (A) -------------------------------------------------------------------------------------

LinearInfsaAttentionOp::Forward LinearInfsaPrefixOp::forward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                             const Tensor& theta, const Tensor& p0, const Tensor& n0,
                                                             double scale) {
  check(q, k, v, theta, AttentionMask{}, p0, n0);
  return run_forward<PrefixForm>(kPrefixName, q, k, v, theta, p0, n0, scale);
}

LinearInfsaAttentionOp::Grads LinearInfsaPrefixOp::backward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                            const Tensor& theta, const Tensor& p0, const Tensor& n0,
                                                            const Tensor& out, const Tensor& den, const Tensor& dout,
                                                            double scale) {
  return run_backward<PrefixForm>(kPrefixName, q, k, v, theta, p0, n0, out, den, dout, scale);
}

}  // namespace attnlab
