// CPU forward and backward of the routing op (attnres.h), f32 and f64.
//
// Each token is independent: OpenMP over tokens, each token's rows read through the source
// pointer table (src[i] + token * D). Dots and the softmax accumulate in double.
//   forward, per token: pass 1 over sources: rho_i, z_i, the running max; softmax; pass 2:
//     out = r + gate * sum_i a_i v_i (r absent: out = gate * o).
//   backward, per token: pass 1: gv_i = <G, v_i>, z_i (recomputed from v_i, w, g, rho_i), and
//     dgate_tok = sum_i a_i gv_i = <G, o>; pass 2: dz_i = gate a_i (gv_i - dgate_tok) and
//     dv_i = a_i gate G + dz_i (w g - n_i z_i / D) / rho_i, adding dz_i n_i into the block's s.
//   The cross-token sums s [D] and dgate go through cpu::for_rows_summing_columns (fixed blocks of
//   tokens, added in order): the same bits on any thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "layers/residual/attnres/attnres.h"
#include "lib/cpu/parallel.h"
#include "lib/error.h"

namespace attnlab {

namespace {

constexpr const char* kName = "attnres";

template <typename T>
std::vector<const T*> pointers(const std::vector<Tensor>& src) {
  std::vector<const T*> p;
  p.reserve(src.size());
  for (const Tensor& s : src) p.push_back(s.data<T>());
  return p;
}

double gate_value(const Tensor& gate) { return gate.defined() ? gate.to(DType::f64).item<double>() : 1.0; }

}  // namespace

AttnResOp::Forward AttnResOp::forward(CpuTag, const std::vector<Tensor>& src, const Tensor& r, const Tensor& w,
                                      const Tensor& g, const Tensor& gate) {
  const Tensor& s0 = src.at(0);
  const int64_t N = static_cast<int64_t>(src.size()), B = s0.size(0), T = s0.size(1), D = s0.size(2);
  const int64_t BT = B * T;
  const DType dt = s0.dtype();
  Forward f{Tensor::empty(Shape{B, T, D}, dt), Tensor::empty(Shape{N, B, T}, dt), Tensor::empty(Shape{N, B, T}, dt)};
  const double gv = gate_value(gate);
  dispatch_float(dt, kName, [&](auto tag) {
    using F = decltype(tag);
    const std::vector<const F*> ps = pointers<F>(src);
    const F* pr = r.defined() ? r.data<F>() : nullptr;
    const F* pw = w.data<F>();
    const F* pg = g.data<F>();
    F* po = f.out.data<F>();
    F* pa = f.a.data<F>();
    F* prho = f.rho.data<F>();
    std::vector<double> wg(static_cast<size_t>(D));
    for (int64_t d = 0; d < D; ++d) wg[d] = static_cast<double>(pw[d]) * static_cast<double>(pg[d]);
    cpu::parallel_for(0, BT, cpu::row_grain(N * D), [&](int64_t t0, int64_t t1) {
      std::vector<double> z(static_cast<size_t>(N)), acc(static_cast<size_t>(D));
      for (int64_t t = t0; t < t1; ++t) {
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t i = 0; i < N; ++i) {
          const F* v = ps[i] + t * D;
          double ss = 0, zd = 0;
          for (int64_t d = 0; d < D; ++d) {
            const double x = static_cast<double>(v[d]);
            ss += x * x;
            zd += wg[d] * x;
          }
          // The saved rho is the rounded one, so backward's n_i is exactly forward's.
          const F rho = static_cast<F>(std::sqrt(ss / static_cast<double>(D) + kEps));
          prho[i * BT + t] = rho;
          z[i] = zd / static_cast<double>(rho);
          m = std::max(m, z[i]);
        }
        double l = 0;
        for (int64_t i = 0; i < N; ++i) l += (z[i] = std::exp(z[i] - m));
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t i = 0; i < N; ++i) {
          const F a = static_cast<F>(z[i] / l);
          pa[i * BT + t] = a;
          const F* v = ps[i] + t * D;
          for (int64_t d = 0; d < D; ++d) acc[d] += static_cast<double>(a) * static_cast<double>(v[d]);
        }
        F* o = po + t * D;
        const F* rr = pr ? pr + t * D : nullptr;
        for (int64_t d = 0; d < D; ++d) o[d] = static_cast<F>((rr ? static_cast<double>(rr[d]) : 0.0) + gv * acc[d]);
      }
    });
  });
  return f;
}

AttnResOp::Grads AttnResOp::backward(CpuTag, const std::vector<Tensor>& src, const Tensor& w, const Tensor& g,
                                     const Tensor& gate, const Tensor& a, const Tensor& rho, const Tensor& dout,
                                     bool need_src, bool need_wg, bool need_gate) {
  const Tensor& s0 = src.at(0);
  const int64_t N = static_cast<int64_t>(src.size()), B = s0.size(0), T = s0.size(1), D = s0.size(2);
  const int64_t BT = B * T;
  const DType dt = s0.dtype();
  need_gate = need_gate && gate.defined();
  Grads out;
  if (need_src) out.dsrc = Tensor::empty(Shape{N, B, T, D}, dt);
  const double gv = gate_value(gate);
  dispatch_float(dt, kName, [&](auto tag) {
    using F = decltype(tag);
    const std::vector<const F*> ps = pointers<F>(src);
    const F* pw = w.data<F>();
    const F* pg = g.data<F>();
    const F* pa = a.data<F>();
    const F* prho = rho.data<F>();
    const F* pG = dout.data<F>();
    F* pds = need_src ? out.dsrc.data<F>() : nullptr;
    std::vector<double> wg(static_cast<size_t>(D));
    for (int64_t d = 0; d < D; ++d) wg[d] = static_cast<double>(pw[d]) * static_cast<double>(pg[d]);
    const double inv_d = 1.0 / static_cast<double>(D);
    // acc[0, D): s; acc[D]: dgate.
    const int64_t width = (need_wg ? D : 0) + 1;
    const std::vector<double> sums =
        cpu::for_rows_summing_columns(BT, cpu::row_grain(N * D), width, [&](int64_t t, double* acc) {
          thread_local std::vector<double> gvs, zs;
          gvs.resize(static_cast<size_t>(N));
          zs.resize(static_cast<size_t>(N));
          const F* G = pG + t * D;
          double go = 0;  // <G, o>
          for (int64_t i = 0; i < N; ++i) {
            const F* v = ps[i] + t * D;
            double dg_ = 0, zd = 0;
            for (int64_t d = 0; d < D; ++d) {
              const double x = static_cast<double>(v[d]);
              dg_ += static_cast<double>(G[d]) * x;
              zd += wg[d] * x;
            }
            gvs[i] = dg_;
            zs[i] = zd / static_cast<double>(prho[i * BT + t]);
            go += static_cast<double>(pa[i * BT + t]) * dg_;
          }
          acc[width - 1] += go;
          if (!need_src && !need_wg) return;
          for (int64_t i = 0; i < N; ++i) {
            const double ai = static_cast<double>(pa[i * BT + t]);
            const double rh = static_cast<double>(prho[i * BT + t]);
            const double dz = gv * ai * (gvs[i] - go);
            const F* v = ps[i] + t * D;
            if (need_wg) {
              const double c = dz / rh;
              for (int64_t d = 0; d < D; ++d) acc[d] += c * static_cast<double>(v[d]);
            }
            if (need_src) {
              F* ds = pds + (i * BT + t) * D;
              const double zi = zs[i], c = dz / rh, agate = ai * gv;
              for (int64_t d = 0; d < D; ++d)
                ds[d] = static_cast<F>(agate * static_cast<double>(G[d]) +
                                       c * (wg[d] - static_cast<double>(v[d]) / rh * zi * inv_d));
            }
          }
        });
    if (need_wg) {
      out.dw = Tensor::empty(Shape{D}, dt);
      out.dg = Tensor::empty(Shape{D}, dt);
      F* pdw = out.dw.data<F>();
      F* pdg = out.dg.data<F>();
      for (int64_t d = 0; d < D; ++d) {
        pdw[d] = static_cast<F>(static_cast<double>(pg[d]) * sums[d]);
        pdg[d] = static_cast<F>(static_cast<double>(pw[d]) * sums[d]);
      }
    }
    if (need_gate) out.dgate = Tensor::full(gate.shape(), sums[width - 1], dt);
  });
  return out;
}

}  // namespace attnlab
