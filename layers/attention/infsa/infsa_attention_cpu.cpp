// CPU forward and backward of the fused InfSA attention (infsa_attention.h), f32 and f64.
//
// The tile loops are cpu_tiles.h's (FlashAttention-2 on the CPU, shared with softmax) with the
// softmax taken out: no running max, no exp, no rescaling. Per (b, h), query i (position
// S - T + i) sees the keys [0, n_i) and the query rows [0, m_i), m_i = min(T, n_i - (S - T))
// >= i + 1 (a row sees the rows whose positions it sees; n_i and m_i never decrease with i).
//
// Forward, one pass over tiles of kBr queries x kBc keys (tiles wholly past n of the query tile's
// last row are skipped, the causal diagonal is cut into 12-row / 12-key chunks, see cpu_tiles.h):
//   S = c Q_I K_J^T;  A = relu(S) (0 where masked);  r_I += rowsum(A^2);  U_I += A V_J
// with U accumulated in out itself. Then a scan over the rows of the head (every row's energy is
// known only after the pass, and under a bidirectional prefix a row's R includes later rows):
//   R_i = r0 + sum_{i' < m_i} r_i',  F_i = sqrt(R_i + eps^2),  out_i = gamma U_i / F_i,
// and the carried energy r0 + sum_i r_i. r, R and the scan are in double.
// Backward, preprocess per row: delta_i = <dout_i, out_i>, dU_i = gamma dout_i / F_i,
// dR_i = -delta_i / (2 F_i^2), then the reverse scan dr_i' = sum_{i : m_i > i'} dR_i (a suffix sum
// read at the first row that sees row i'). Main loop, key tiles outer, query tiles inner, five
// tile products: S = c Q_I K_J^T (A = relu S); dV_J += A^T dU_I; dP = dU_I V_J^T;
// dS = [A > 0] (dP + 2 A dr); dQ_I += c dS K_J; dK_J += c dS^T Q_I. dtheta_h = (1 - gamma_h)
// sum_{b, i} delta_i: each (b, h) task writes its sum of delta, and the sums over b are added in
// a fixed order afterwards, so the bits do not depend on the thread count.
//
// Shapes, strided layouts, the tiles and the tile products are cpu_tiles.h's. Scratch is per task:
// the tile loops' (score and dP tiles, k^T and v^T of the pair) and O(T) row vectors (dU [T, Dv] in
// backward): never a [T, S] matrix.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "layers/attention/cpu_tiles.h"
#include "layers/attention/infsa/infsa_attention.h"
#include "lib/error.h"

namespace attnlab {

namespace {

using namespace attn_cpu;

constexpr std::string_view kName = "infsa_attention";

// s[j] = max(s[j], 0) for j < lim and 0 for lim <= j < bc (the masked and padded columns); returns
// the sum of squares of s[0, lim), the row's energy in this tile. The row holds whole vectors up to
// round_up_lanes(lim).
template <typename F>
F row_relu(F* s, int64_t lim, int64_t bc) {
  using V = typename Vec<F>::V;
  constexpr int64_t W = kLanes<F>;
  V sum{};
  int64_t j = 0;
  for (; j < lim; j += W) {
    const V x = vload(s + j);
    // !(x <= 0) rather than x > 0: a NaN score stays NaN instead of vanishing.
    const V a = ~(x <= V{}) & lanes_below<F>(lim - j) ? x : V{};
    vstore(s + j, a);
    sum += a * a;
  }
  if (j < bc) std::fill(s + j, s + bc, F(0));
  return lane_sum<F>(sum);
}

// ds[j] = [a_j > 0] (ds[j] + two_dr a_j) for j < lim and 0 for lim <= j < bc: dS from dP in place,
// given a row of A = relu(S) (written in whole vectors, like row_relu).
template <typename F>
void relu_grad_row(F* ds, const F* a, F two_dr, int64_t lim, int64_t bc) {
  using V = typename Vec<F>::V;
  constexpr int64_t W = kLanes<F>;
  const V t = splat<V>(two_dr);
  int64_t j = 0;
  for (; j < lim; j += W) {
    const V x = vload(a + j);
    const V g = vload(ds + j);
    vstore(ds + j, (x > V{}) & lanes_below<F>(lim - j) ? g + t * x : V{});
  }
  if (j < bc) std::fill(ds + j, ds + bc, F(0));
}

// m_i, the number of query rows row i sees (the rows [0, m_i)): those at positions < n_i.
std::vector<int64_t> visible_rows(const std::vector<int64_t>& n, int64_t T, int64_t S) {
  std::vector<int64_t> m(n.size());
  for (size_t i = 0; i < n.size(); ++i) m[i] = std::min(T, n[i] - (S - T));
  return m;
}

// Per-task scratch: the tile loops' (cpu_tiles.h), dU [T, Dv] and dr [T] in backward, and row
// vectors in double.
template <typename F>
struct Scratch : TileScratch<F> {
  std::vector<F> du, dr;
  std::vector<double> rows;  // forward: r_i then its prefix sums; backward: dR_i then suffix sums
  Scratch(const Dims& dims, bool backward)
      : TileScratch<F>(dims, backward),
        du(backward ? static_cast<size_t>(dims.T * dims.Dv) : 0),
        dr(backward ? static_cast<size_t>(dims.T) : 0),
        rows(static_cast<size_t>(dims.T + 1)) {}
};

// The per-head scalars of one call.
struct HeadScalars {
  double gamma;  // sigmoid(theta_h)
  double r0;     // energy carried from the rows before query 0 (forward only)
};

// One (b, h): q [T, Dk], k [S, Dk], v [S, Dv] -> out [T, Dv], F [T], and *r_final.
template <typename F>
void forward_head(Rows<const F> q, Rows<const F> k, Rows<const F> v, Rows<F> out, F* fout, F* r_final, HeadScalars hs,
                  const Dims& dm, F scale, const int64_t* n, const int64_t* m, Scratch<F>& ws) {
  const int64_t T = dm.T, Dv = dm.Dv;
  F* s = ws.s.data();
  double* r = ws.rows.data();
  transpose_into(k.p, dm.S, dm.Dk, k.ld, ws.kt.data(), ws.sp);
  for (int64_t i = 0; i < T; ++i) std::fill(out.row(i), out.row(i) + Dv, F(0));
  std::fill(r, r + T, 0.0);
  for (int64_t i0 = 0; i0 < T; i0 += kBr) {
    const int64_t br = std::min(kBr, T - i0);
    // A = relu(S) and the rows' energies; U_I += A V_J straight into out.
    forward_key_tiles(q, v, dm, scale, n, i0, br, ws, Rows<F>{out.row(i0), out.ld}, [&](const Tile& tile) {
      for (int64_t rr = 0; rr < br; ++rr) r[i0 + rr] += row_relu(s + rr * kBc, tile.lim(rr), tile.bc);
    });
  }
  // Prefix sums of the energies in place: r[i] = sum_{i' < i} r_i' (r[T] the total).
  double run = 0;
  for (int64_t i = 0; i <= T; ++i) {
    const double e = i < T ? r[i] : 0.0;
    r[i] = run;
    run += e;
  }
  constexpr double eps2 = InfsaAttentionOp::kEps * InfsaAttentionOp::kEps;
  for (int64_t i = 0; i < T; ++i) {
    const double f = std::sqrt(hs.r0 + r[m[i]] + eps2);
    fout[i] = static_cast<F>(f);
    const F g = static_cast<F>(hs.gamma / f);
    F* orow = out.row(i);
#pragma omp simd
    for (int64_t d = 0; d < Dv; ++d) orow[d] *= g;
  }
  *r_final = static_cast<F>(hs.r0 + r[T]);
}

// One (b, h): dq [T, Dk], dk [S, Dk], dv [S, Dv] (rows as in forward_head); returns sum_i delta_i.
template <typename F>
double backward_head(Rows<const F> q, Rows<const F> k, Rows<const F> v, Rows<const F> out, const F* fin,
                     Rows<const F> dout, Rows<F> dq, Rows<F> dk, Rows<F> dv, double gamma, const Dims& dm, F scale,
                     const int64_t* n, const int64_t* m, Scratch<F>& ws) {
  const int64_t T = dm.T, Dv = dm.Dv;
  F* s = ws.s.data();
  F* dp = ws.dp.data();
  F* du = ws.du.data();
  F* dr = ws.dr.data();
  double* dR = ws.rows.data();

  // Preprocess: delta, dU, dR; then the reverse scan for dr.
  double delta_sum = 0;
  for (int64_t i = 0; i < T; ++i) {
    const F* g = dout.row(i);
    const double delta = row_dot(g, out.row(i), Dv);
    delta_sum += delta;
    const double f = fin[i];
    dR[i] = -delta / (2 * f * f);
    const F c = static_cast<F>(gamma / f);
    F* u = du + i * Dv;
#pragma omp simd
    for (int64_t d = 0; d < Dv; ++d) u[d] = c * g[d];
  }
  // Suffix sums dR[i] = sum_{i'' >= i} dR_i''; row i' is seen by the rows i >= first(i'), the first
  // row with m_i > i' (first(i') <= i' since m_i >= i + 1, and it never decreases with i').
  dR[T] = 0;
  for (int64_t i = T - 1; i >= 0; --i) dR[i] += dR[i + 1];
  for (int64_t i = 0, first = 0; i < T; ++i) {
    while (m[first] <= i) ++first;
    dr[i] = static_cast<F>(dR[first]);
  }

  backward_tiles(
      q, k, v, Rows<const F>{du, Dv}, dq, dk, dv, dm, scale, n, ws,
      [&](const Tile& tile) {  // A = relu(c Q_I K_J^T), 0 where masked
        for (int64_t r = 0; r < tile.br; ++r) row_relu(s + r * kBc, tile.lim(r), tile.bc);
      },
      [&](const Tile& tile) {  // dS = [A > 0] (dP + 2 A dr) in dP's place (0 where masked: A is 0 there)
        for (int64_t r = 0; r < tile.br; ++r)
          relu_grad_row(dp + r * kBc, s + r * kBc, 2 * dr[tile.i0 + r], tile.lim(r), tile.bc);
      });
  return delta_sum;
}

template <typename F>
std::vector<double> gammas(const Tensor& theta) {
  AL_ASSERT(theta.is_contiguous() && theta.ndim() == 1, kName, ": theta must be a contiguous [H]; got ", theta);
  const F* t = theta.data<F>();
  std::vector<double> g(static_cast<size_t>(theta.size(0)));
  for (size_t h = 0; h < g.size(); ++h) g[h] = 1.0 / (1.0 + std::exp(-static_cast<double>(t[h])));
  return g;
}

}  // namespace

InfsaAttentionOp::Forward InfsaAttentionOp::forward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                    const Tensor& theta, const AttentionMask& mask, double scale,
                                                    const Tensor& r0) {
  check(q, k, v, theta, mask, r0);
  AL_ASSERT(!r0.defined() || r0.is_contiguous(), kName, ": r0 must be contiguous; got ", r0);
  const Dims dm = dims_of(kName, q, k, v);
  const int64_t B = q.size(0), H = q.size(1);
  Forward f{empty_token_major(B, H, dm.T, dm.Dv, q.dtype()), Tensor::empty(Shape{B, H, dm.T}, q.dtype()),
            Tensor::empty(Shape{B, H}, q.dtype())};
  if (B * H == 0) return f;
  if (dm.T == 0) {  // no rows: the carried energy passes through
    if (r0.defined())
      f.r.copy_(r0);
    else
      f.r.zero_();
    return f;
  }
  const std::vector<int64_t> n = visible_counts(kName, dm.T, dm.S, mask), m = visible_rows(n, dm.T, dm.S);
  dispatch_float(q.dtype(), kName, [&](auto tag) {
    using F = decltype(tag);
    const std::vector<double> g = gammas<F>(theta);
    const F* pr0 = r0.defined() ? r0.data<F>() : nullptr;
    const Heads<const F> hq(q.data<F>(), q), hk(k.data<F>(), k), hv(v.data<F>(), v);
    const Heads<F> ho(f.out.data<F>(), f.out);
    F* pf = f.F.data<F>();
    F* prf = f.r.data<F>();
    for_each_head<Scratch<F>>(B, H, heads_grain(dm), dm, false, [&](int64_t b, int64_t h, int64_t bh, Scratch<F>& ws) {
      const HeadScalars hs{g[static_cast<size_t>(h)], pr0 ? static_cast<double>(pr0[bh]) : 0.0};
      forward_head<F>(hq.at(b, h), hk.at(b, h), hv.at(b, h), ho.at(b, h), pf + bh * dm.T, prf + bh, hs, dm,
                      static_cast<F>(scale), n.data(), m.data(), ws);
    });
  });
  return f;
}

InfsaAttentionOp::Grads InfsaAttentionOp::backward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                   const Tensor& theta, const Tensor& out, const Tensor& F,
                                                   const Tensor& dout, const AttentionMask& mask, double scale) {
  const Dims dm = dims_of(kName, q, k, v);
  const int64_t B = q.size(0), H = q.size(1);
  AL_ASSERT(unit_last_stride(out) && F.is_contiguous() && unit_last_stride(dout) && out.shape() == dout.shape() &&
                out.shape() == Shape({B, H, dm.T, dm.Dv}) && F.shape() == Shape({B, H, dm.T}) &&
                out.dtype() == q.dtype() && F.dtype() == q.dtype() && dout.dtype() == q.dtype(),
            kName, ": backward got out=", out, ", F=", F, ", dout=", dout, " for q=", q, ", v=", v);
  const QkvGrads e = empty_qkv_grads(B, H, dm, q.dtype());
  Grads g{e.dq, e.dk, e.dv, Tensor()};
  g.dtheta = Tensor::zeros(Shape{H}, q.dtype());
  if (B * H * dm.T == 0) {
    g.dq.fill_(0.0), g.dk.fill_(0.0), g.dv.fill_(0.0);
    return g;
  }
  const std::vector<int64_t> n = visible_counts(kName, dm.T, dm.S, mask), m = visible_rows(n, dm.T, dm.S);
  dispatch_float(q.dtype(), kName, [&](auto tag) {
    using Fl = decltype(tag);
    const std::vector<double> gam = gammas<Fl>(theta);
    const Heads<const Fl> hq(q.data<Fl>(), q), hk(k.data<Fl>(), k), hv(v.data<Fl>(), v), ho(out.data<Fl>(), out),
        hdo(dout.data<Fl>(), dout);
    const Heads<Fl> hdq(g.dq.data<Fl>(), g.dq), hdk(g.dk.data<Fl>(), g.dk), hdv(g.dv.data<Fl>(), g.dv);
    const Fl* pf = F.data<Fl>();
    std::vector<double> delta_sums(static_cast<size_t>(B * H));
    for_each_head<Scratch<Fl>>(B, H, heads_grain(dm), dm, true, [&](int64_t b, int64_t h, int64_t bh, Scratch<Fl>& ws) {
      delta_sums[static_cast<size_t>(bh)] = backward_head<Fl>(
          hq.at(b, h), hk.at(b, h), hv.at(b, h), ho.at(b, h), pf + bh * dm.T, hdo.at(b, h), hdq.at(b, h), hdk.at(b, h),
          hdv.at(b, h), gam[static_cast<size_t>(h)], dm, static_cast<Fl>(scale), n.data(), m.data(), ws);
    });
    // dtheta_h = (1 - gamma_h) sum_b sum_i delta: the sums over b in a fixed order, on one thread.
    Fl* dth = g.dtheta.data<Fl>();
    for (int64_t h = 0; h < H; ++h) {
      double acc = 0;
      for (int64_t b = 0; b < B; ++b) acc += delta_sums[static_cast<size_t>(b * H + h)];
      dth[h] = static_cast<Fl>((1.0 - gam[static_cast<size_t>(h)]) * acc);
    }
  });
  return g;
}

}  // namespace attnlab
