// CPU forward and backward of local linear attention (lla_attention.h), f32 and f64.
// (First version: one task per (b, h), one query row at a time, arithmetic in double.)
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

// In-place Cholesky of the SPD a [n, n] (row-major, lower triangle used): a = L L^T with L in the
// lower triangle. Returns false when a pivot is not positive.
bool cholesky(double* a, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    double d = a[j * n + j];
    for (int64_t p = 0; p < j; ++p) d -= a[j * n + p] * a[j * n + p];
    if (!(d > 0.0)) return false;
    const double l = std::sqrt(d);
    a[j * n + j] = l;
    for (int64_t i = j + 1; i < n; ++i) {
      double s = a[i * n + j];
      for (int64_t p = 0; p < j; ++p) s -= a[i * n + p] * a[j * n + p];
      a[i * n + j] = s / l;
    }
  }
  return true;
}

// x = (L L^T)^-1 b in place, L from cholesky().
void cholesky_solve(const double* l, int64_t n, double* x) {
  for (int64_t i = 0; i < n; ++i) {
    double s = x[i];
    for (int64_t p = 0; p < i; ++p) s -= l[i * n + p] * x[p];
    x[i] = s / l[i * n + i];
  }
  for (int64_t i = n - 1; i >= 0; --i) {
    double s = x[i];
    for (int64_t p = i + 1; p < n; ++p) s -= l[p * n + i] * x[p];
    x[i] = s / l[i * n + i];
  }
}

double lam_value(const Tensor& lam) { return lam.to_vector<double>()[0]; }

// One query row's statistics (arithmetic in double): weights w_j over the n visible keys, omega,
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
  cpu::parallel_for(0, B * H, 1, [&](int64_t h0, int64_t h1) {
    RowStats st(S, Dk);
    std::vector<double> acc(static_cast<size_t>(Dv));
    for (int64_t bh = h0; bh < h1; ++bh) {
      const Rows<const F> qr = hq.at(bh / H, bh % H), kr = hk.at(bh / H, bh % H), vr = hv.at(bh / H, bh % H);
      const Rows<F> orow = ho.at(bh / H, bh % H);
      for (int64_t i = 0; i < T; ++i) {
        const int64_t ni = n[static_cast<size_t>(i)];
        row_stats(qr.row(i), kr, ni, Dk, scale, lv, nullptr, st);
        double rq = 0;
        for (int64_t d = 0; d < Dk; ++d) rq += st.rho[static_cast<size_t>(d)] * st.qd[static_cast<size_t>(d)];
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j = 0; j < ni; ++j) {
          const F* kj = kr.row(j);
          double rk = 0;
          for (int64_t d = 0; d < Dk; ++d) rk += st.rho[static_cast<size_t>(d)] * kj[d];
          const double cij = st.w[static_cast<size_t>(j)] * (1.0 - rk + rq) / st.delta;
          const F* vj = vr.row(j);
          for (int64_t d = 0; d < Dv; ++d) acc[static_cast<size_t>(d)] += cij * vj[d];
        }
        F* o = orow.row(i);
        for (int64_t d = 0; d < Dv; ++d) o[d] = static_cast<F>(acc[static_cast<size_t>(d)]);
        const int64_t r = bh * T + i;
        pm[r] = static_cast<F>(st.m);
        pw[r] = static_cast<F>(st.omega);
        pd[r] = static_cast<F>(st.delta);
        for (int64_t d = 0; d < Dk; ++d) pr[r * Dk + d] = static_cast<F>(st.rho[static_cast<size_t>(d)]);
      }
    }
  });
  return f;
}

template <typename F>
LlaAttentionOp::Grads backward_impl(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lam,
                                    const LlaAttentionOp::Forward& saved, const Tensor& dout,
                                    const AttentionMask& mask, double scale, bool flashlla_grad) {
  const Dims dm = dims_of(kName, q, k, v);
  const int64_t B = q.size(0), H = q.size(1), T = dm.T, S = dm.S, Dk = dm.Dk, Dv = dm.Dv;
  const std::vector<int64_t> n = visible_counts(kName, T, S, mask);
  const double lv = lam_value(lam);
  QkvGrads g = empty_qkv_grads(B, H, dm, q.dtype());
  const Heads<const F> hq(q.data<F>(), q), hk(k.data<F>(), k), hv(v.data<F>(), v), hdo(dout.data<F>(), dout);
  const Heads<F> hdq(g.dq.data<F>(), g.dq), hdk(g.dk.data<F>(), g.dk), hdv(g.dv.data<F>(), g.dv);
  const Tensor mc = saved.m.contiguous();
  const F* pm = mc.data<F>();
  std::vector<double> dlam_row(static_cast<size_t>(B * H * T), 0.0);
  cpu::parallel_for(0, B * H, 1, [&](int64_t h0, int64_t h1) {
    RowStats st(S, Dk);
    std::vector<double> dk(static_cast<size_t>(S * Dk)), dv(static_cast<size_t>(S * Dv));
    std::vector<double> gam(static_cast<size_t>(S)), dout_d(static_cast<size_t>(Dv)), t(static_cast<size_t>(Dk)),
        u(static_cast<size_t>(Dk)), dmu(static_cast<size_t>(Dk)), dq(static_cast<size_t>(Dk));
    for (int64_t bh = h0; bh < h1; ++bh) {
      const Rows<const F> qr = hq.at(bh / H, bh % H), kr = hk.at(bh / H, bh % H), vr = hv.at(bh / H, bh % H),
                          dor = hdo.at(bh / H, bh % H);
      std::fill(dk.begin(), dk.end(), 0.0);
      std::fill(dv.begin(), dv.end(), 0.0);
      for (int64_t i = 0; i < T; ++i) {
        const int64_t ni = n[static_cast<size_t>(i)];
        const double mi = static_cast<double>(pm[bh * T + i]);
        row_stats(qr.row(i), kr, ni, Dk, scale, lv, &mi, st);
        const double* qd = st.qd.data();
        const double* rho = st.rho.data();
        const double delta = st.delta, omega = st.omega;
        for (int64_t d = 0; d < Dv; ++d) dout_d[static_cast<size_t>(d)] = dor.row(i)[d];
        double rq = 0;
        for (int64_t d = 0; d < Dk; ++d) rq += rho[d] * qd[d];
        // gamma_j, c_j, C_j; tau, t; b = sum_j gamma_j c_j / delta.
        double tau = 0, bsum = 0;
        std::fill(t.begin(), t.end(), 0.0);
        for (int64_t j = 0; j < ni; ++j) {
          const F* kj = kr.row(j);
          const F* vj = vr.row(j);
          double gj = 0;
          for (int64_t d = 0; d < Dv; ++d) gj += dout_d[static_cast<size_t>(d)] * vj[d];
          gam[static_cast<size_t>(j)] = gj;
          double rk = 0;
          for (int64_t d = 0; d < Dk; ++d) rk += rho[d] * kj[d];
          const double wj = st.w[static_cast<size_t>(j)];
          const double cj = wj * (1.0 - rk + rq) / delta;
          const double Cj = gj * wj / delta;
          tau += Cj;
          bsum += gj * cj;
          for (int64_t d = 0; d < Dk; ++d) t[static_cast<size_t>(d)] += Cj * kj[d];
          double* dvj = dv.data() + j * Dv;
          for (int64_t d = 0; d < Dv; ++d) dvj[d] += cj * dout_d[static_cast<size_t>(d)];
        }
        for (int64_t d = 0; d < Dk; ++d) t[static_cast<size_t>(d)] -= tau * qd[d];
        const double b = bsum / delta;
        // u = Sigma^-1 (-t + b mu); dmu = u + b rho; domega = -b - lam u.rho (exact).
        for (int64_t d = 0; d < Dk; ++d) u[static_cast<size_t>(d)] = -t[static_cast<size_t>(d)] + b * st.mu[static_cast<size_t>(d)];
        cholesky_solve(st.sig.data(), Dk, u.data());
        double ur = 0, rmu = 0, umu = 0;
        for (int64_t d = 0; d < Dk; ++d) {
          dmu[static_cast<size_t>(d)] = u[static_cast<size_t>(d)] + b * rho[d];
          ur += u[static_cast<size_t>(d)] * rho[d];
          rmu += rho[d] * st.mu[static_cast<size_t>(d)];
          umu += u[static_cast<size_t>(d)] * st.mu[static_cast<size_t>(d)];
        }
        const double domega = flashlla_grad ? -b : -b - lv * ur;
        dlam_row[static_cast<size_t>(bh * T + i)] = flashlla_grad ? 0.0 : -omega * ur;
        // dq = s sum_j dl_j k_j - sum_j dx_j, sum_j dx_j = -tau rho - (rho.mu) u - (u.mu) rho + omega dmu.
        for (int64_t d = 0; d < Dk; ++d)
          dq[static_cast<size_t>(d)] = tau * rho[d] + rmu * u[static_cast<size_t>(d)] + umu * rho[d] -
                                       omega * dmu[static_cast<size_t>(d)];
        double uq = 0, mq = 0;
        for (int64_t d = 0; d < Dk; ++d) {
          uq += u[static_cast<size_t>(d)] * qd[d];
          mq += dmu[static_cast<size_t>(d)] * qd[d];
        }
        for (int64_t j = 0; j < ni; ++j) {
          const F* kj = kr.row(j);
          double rk = 0, uk = 0, mk = 0;
          for (int64_t d = 0; d < Dk; ++d) {
            rk += rho[d] * kj[d];
            uk += u[static_cast<size_t>(d)] * kj[d];
            mk += dmu[static_cast<size_t>(d)] * kj[d];
          }
          const double rx = rk - rq, ux = uk - uq, mx = mk - mq;
          const double wj = st.w[static_cast<size_t>(j)], gj = gam[static_cast<size_t>(j)];
          const double dw = gj * (1.0 - rx) / delta + mx - ux * rx + domega;
          const double dl = wj * dw;
          const double Cj = gj * wj / delta;
          double* dkj = dk.data() + j * Dk;
          for (int64_t d = 0; d < Dk; ++d) {
            dq[static_cast<size_t>(d)] += scale * dl * kj[d];
            const double dx = -Cj * rho[d] - wj * (rx * u[static_cast<size_t>(d)] + ux * rho[d]) +
                              wj * dmu[static_cast<size_t>(d)];
            dkj[d] += scale * dl * qd[d] + dx;
          }
        }
        F* dqi = hdq.at(bh / H, bh % H).row(i);
        for (int64_t d = 0; d < Dk; ++d) dqi[d] = static_cast<F>(dq[static_cast<size_t>(d)]);
      }
      const Rows<F> dkr = hdk.at(bh / H, bh % H), dvr = hdv.at(bh / H, bh % H);
      for (int64_t j = 0; j < S; ++j) {
        for (int64_t d = 0; d < Dk; ++d) dkr.row(j)[d] = static_cast<F>(dk[static_cast<size_t>(j * Dk + d)]);
        for (int64_t d = 0; d < Dv; ++d) dvr.row(j)[d] = static_cast<F>(dv[static_cast<size_t>(j * Dv + d)]);
      }
    }
  });
  double dl = 0;
  for (double x : dlam_row) dl += x;
  LlaAttentionOp::Grads out{g.dq, g.dk, g.dv, Tensor::full(Shape{1}, dl, q.dtype())};
  return out;
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
