// CPU forward and backward of the fused affine-scaled attention, f32 and f64 (kernel plan v1 of
// the spec: the softmax part is SoftmaxAttentionOp's flash-style kernels, unchanged; this file adds
// the gate, the scans and the epilogues around it).
//
// Per (b, h), with n_i the keys query i sees (keys [0, n_i), n_i >= 1, non-decreasing in i,
// n_{T-1} = S) and N_i = n_i (visible) or S (full):
//   forward   z_i = <x_{b,i}, w_a[h]> + c_a[h], alpha_i = phi(z_i), beta_i = (abar_h - alpha_i) / N_i;
//             (O^sm, lse) = softmax forward;  C_i = sum_{j < n_i} v_j by one pass over the keys
//             (a running sum that is read out whenever it reaches n_i);
//             out_i = alpha_i O^sm_i + beta_i C_i.
//   backward  the same pass recomputes C_i: dalpha_i = <G_i, O^sm_i> - <G_i, C_i> / N_i,
//             dz_i = dalpha_i phi'(z_i), dO^sm_i = alpha_i G_i; softmax backward (dq, dk, dv);
//             then a pass over the queries from the last: R = sum_{i' >= i} beta_i' G_i', added to
//             dv_j for the keys j in [n_{i-1}, n_i) (exactly those whose first reader is query i);
//             dx = dz w_a, dw_a = dz^T x (dz as [B*T, H]) and dc_a[h] = sum_{b,i} dz.
// The gate's products (z = x w_a^T, dx, dw_a) are one cpu::gemm each over all tokens and heads
// (deterministic on any thread count, and far faster than per-(b, h) dot products at Dm ~ 512).
// The scans, the row dots and dc_a keep their running sums in double. Each scan task owns whole
// (b, h) pairs, so the bits do not depend on the thread count. Extra memory: [B, H, T] row
// scalars, z and dz [B*T, H], dO^sm [B, H, T, Dv] and one Dv-vector per task.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "layers/attention/affine/affine_attention.h"
#include "layers/attention/softmax/softmax_attention.h"
#include "lib/cpu/gemm.h"
#include "lib/cpu/parallel.h"
#include "lib/error.h"

namespace attnlab {

namespace {

constexpr std::string_view kName = "affine_attention";

// n_i for every query row (the mask reduced to one number per row, as in softmax_attention_cpu.cpp).
std::vector<int64_t> visible_counts(int64_t T, int64_t S, const AttentionMask& mask) {
  std::vector<int64_t> n(static_cast<size_t>(T));
  for (int64_t i = 0; i < T; ++i) {
    const int64_t p = S - T + i;
    int64_t c = S;
    if (mask.causal) c = std::min(S, p < mask.prefix ? std::max(p + 1, mask.prefix) : p + 1);
    n[static_cast<size_t>(i)] = c;
  }
  return n;
}

// One (b, h) matrix of a [B, H, rows, D] tensor with a unit-stride last dim: row r at p + r * ld.
template <typename F>
struct Heads {
  F* p;
  int64_t sb, sh, ld;
  Heads(F* data, const Tensor& t) : p(data), sb(t.stride(0)), sh(t.stride(1)), ld(t.stride(2)) {}
  F* row(int64_t b, int64_t h, int64_t r) const { return p + b * sb + h * sh + r * ld; }
};

// (b, h) pairs per task: enough rows of work that a task is worth a thread; depends on the shape only.
int64_t pairs_grain(int64_t rows, int64_t D) {
  return std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(1, rows * D));
}

Tensor empty_token_major(int64_t B, int64_t H, int64_t rows, int64_t D, DType dtype) {
  return Tensor::empty(Shape{B, rows, H, D}, dtype).permute({0, 2, 1, 3});
}

bool unit_last_stride(const Tensor& t) { return t.size(3) <= 1 || t.stride(3) == 1; }

}  // namespace

AffineAttentionOp::Forward AffineAttentionOp::forward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                      const Tensor& x, const Tensor& w_a, const Tensor& c_a,
                                                      const Tensor& abar, const AttentionMask& mask,
                                                      const AffineOptions& options, double scale) {
  check(q, k, v, x, w_a, c_a, abar, mask);
  AL_ASSERT(unit_last_stride(q) && unit_last_stride(k) && unit_last_stride(v) && x.is_contiguous() &&
                w_a.is_contiguous() && (!c_a.defined() || c_a.is_contiguous()) && abar.is_contiguous(),
            kName, ": forward needs unit-stride q, k, v rows and contiguous x, w_a, c_a, abar; got q=", q, ", k=", k,
            ", v=", v, ", x=", x, ", w_a=", w_a, ", abar=", abar);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), S = k.size(2), Dv = v.size(3), Dm = x.size(2);
  SoftmaxAttentionOp::Forward sm = SoftmaxAttentionOp::forward(CpuTag{}, q, k, v, mask, scale);
  Forward f;
  f.out = empty_token_major(B, H, T, Dv, q.dtype());
  f.saved.out_sm = sm.out;
  f.saved.lse = sm.lse;
  f.saved.alpha = Tensor::empty(Shape{B, H, T}, q.dtype());
  f.saved.beta = Tensor::empty(Shape{B, H, T}, q.dtype());
  f.saved.dphi = Tensor::empty(Shape{B, H, T}, q.dtype());
  if (B * H * T == 0) return f;
  const std::vector<int64_t> n = visible_counts(T, S, mask);
  const bool full = options.bias_norm == AffineBiasNorm::full;
  const bool sigmoid = options.phi == AffinePhi::sigmoid;
  // The gate's products for every token and head at once: z [B*T, H] = x [B*T, Dm] w_a^T.
  Tensor zt = Tensor::empty(Shape{B * T, H}, q.dtype());
  dispatch_float(q.dtype(), kName, [&](auto tag) {
    using F = decltype(tag);
    if (Dm == 0)
      zt.fill_(0.0);
    else
      cpu::gemm<F>(false, true, B * T, H, Dm, F(1), x.data<F>(), Dm, w_a.data<F>(), Dm, F(0), zt.data<F>(), H);
  });
  dispatch_float(q.dtype(), kName, [&](auto tag) {
    using F = decltype(tag);
    const Heads<const F> hv(v.data<F>(), v), hsm(sm.out.data<F>(), sm.out);
    const Heads<F> ho(f.out.data<F>(), f.out);
    const F* pz = zt.data<F>();
    const F* pc = c_a.defined() ? c_a.data<F>() : nullptr;
    const F* pab = abar.data<F>();
    F* pa = f.saved.alpha.data<F>();
    F* pbeta = f.saved.beta.data<F>();
    F* pd = f.saved.dphi.data<F>();
    cpu::parallel_for(0, B * H, pairs_grain(T + S, Dv), [&](int64_t p0, int64_t p1) {
      std::vector<double> run(static_cast<size_t>(Dv));
      for (int64_t bh = p0; bh < p1; ++bh) {
        const int64_t b = bh / H, h = bh % H;
        // The gate: z, alpha, phi'(z), beta for every query row.
        for (int64_t i = 0; i < T; ++i) {
          const F z = pz[(b * T + i) * H + h] + (pc ? pc[h] : F(0));
          F a, d;
          if (sigmoid) {
            a = F(1) / (F(1) + std::exp(-z));
            d = a * (F(1) - a);
          } else {
            // Strictly inside the kinks the slope is 0.1; at and beyond them alpha is clamped.
            const bool inside = z > F(-5) && z < F(5);
            a = inside ? z * F(0.1) + F(0.5) : (z >= F(5) ? F(1) : F(0));
            d = inside ? F(0.1) : F(0);
          }
          const int64_t r = bh * T + i;
          pa[r] = a;
          pd[r] = d;
          pbeta[r] = (pab[h] - a) / static_cast<F>(full ? S : n[static_cast<size_t>(i)]);
        }
        // The epilogue: one pass over the keys keeps C = sum_{j < jc} v_j.
        std::fill(run.begin(), run.end(), 0.0);
        int64_t jc = 0;
        for (int64_t i = 0; i < T; ++i) {
          for (; jc < n[static_cast<size_t>(i)]; ++jc) {
            const F* vr = hv.row(b, h, jc);
#pragma omp simd
            for (int64_t d = 0; d < Dv; ++d) run[static_cast<size_t>(d)] += vr[d];
          }
          const F a = pa[bh * T + i], be = pbeta[bh * T + i];
          const F* sr = hsm.row(b, h, i);
          F* orow = ho.row(b, h, i);
#pragma omp simd
          for (int64_t d = 0; d < Dv; ++d) orow[d] = a * sr[d] + be * static_cast<F>(run[static_cast<size_t>(d)]);
        }
      }
    });
  });
  return f;
}

AffineAttentionOp::Grads AffineAttentionOp::backward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                     const Tensor& x, const Tensor& w_a, const Saved& saved,
                                                     const Tensor& dout, const AttentionMask& mask,
                                                     const AffineOptions& options, double scale, const Needs& needs) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), S = k.size(2), Dv = v.size(3), Dm = x.size(2);
  AL_ASSERT(unit_last_stride(dout) && dout.shape() == Shape({B, H, T, Dv}) && dout.dtype() == q.dtype() &&
                saved.alpha.shape() == Shape({B, H, T}) && saved.alpha.is_contiguous() && saved.beta.is_contiguous() &&
                saved.dphi.is_contiguous() && x.is_contiguous() && w_a.is_contiguous(),
            kName, ": backward got dout=", dout, ", alpha=", saved.alpha, " for q=", q, ", v=", v, ", x=", x);
  Grads g;
  const bool need_gate = needs.x || needs.w_a || needs.c_a;
  if (!needs.qkv && !need_gate) return g;
  const DType dt = q.dtype();
  Tensor dz = Tensor::empty(Shape{B, T, H}, dt);       // token-major: the GEMMs below read it as [B*T, H]
  Tensor dsm = Tensor::empty(Shape{B, H, T, Dv}, dt);  // dO^sm = alpha G
  const std::vector<int64_t> n = visible_counts(T, S, mask);
  const bool full = options.bias_norm == AffineBiasNorm::full;
  const int64_t grain = pairs_grain(T + S, Dv);

  dispatch_float(dt, kName, [&](auto tag) {
    using F = decltype(tag);
    const Heads<const F> hv(v.data<F>(), v), hsm(saved.out_sm.data<F>(), saved.out_sm), hg(dout.data<F>(), dout);
    const Heads<F> hdsm(dsm.data<F>(), dsm);
    const F* pa = saved.alpha.data<F>();
    const F* pd = saved.dphi.data<F>();
    F* pdz = dz.data<F>();
    // Pass 1: C by the forward's scan, the row dots, dz and dO^sm.
    cpu::parallel_for(0, B * H, grain, [&](int64_t p0, int64_t p1) {
      std::vector<double> run(static_cast<size_t>(Dv));
      for (int64_t bh = p0; bh < p1; ++bh) {
        const int64_t b = bh / H, h = bh % H;
        std::fill(run.begin(), run.end(), 0.0);
        int64_t jc = 0;
        for (int64_t i = 0; i < T; ++i) {
          for (; jc < n[static_cast<size_t>(i)]; ++jc) {
            const F* vr = hv.row(b, h, jc);
#pragma omp simd
            for (int64_t d = 0; d < Dv; ++d) run[static_cast<size_t>(d)] += vr[d];
          }
          const F* gr = hg.row(b, h, i);
          const F* sr = hsm.row(b, h, i);
          double gs = 0, gc = 0;
#pragma omp simd reduction(+ : gs, gc)
          for (int64_t d = 0; d < Dv; ++d) {
            gs += static_cast<double>(gr[d]) * sr[d];
            gc += static_cast<double>(gr[d]) * run[static_cast<size_t>(d)];
          }
          const int64_t r = bh * T + i;
          const double nrm = static_cast<double>(full ? S : n[static_cast<size_t>(i)]);
          pdz[(b * T + i) * H + h] = static_cast<F>((gs - gc / nrm) * pd[r]);
          const F a = pa[r];
          F* dr = hdsm.row(b, h, i);
#pragma omp simd
          for (int64_t d = 0; d < Dv; ++d) dr[d] = a * gr[d];
        }
      }
    });
  });

  if (needs.qkv) {
    SoftmaxAttentionOp::Grads sg =
        SoftmaxAttentionOp::backward(CpuTag{}, q, k, v, saved.out_sm, saved.lse, dsm, mask, scale);
    g.dq = sg.dq, g.dk = sg.dk, g.dv = sg.dv;
  }

  dispatch_float(dt, kName, [&](auto tag) {
    using F = decltype(tag);
    if (needs.qkv) {
      // Pass 2: dv_j += sum_{i : n_i > j} beta_i G_i, the queries taken from the last.
      const Heads<const F> hg(dout.data<F>(), dout);
      const Heads<F> hdv(g.dv.data<F>(), g.dv);
      const F* pbeta = saved.beta.data<F>();
      cpu::parallel_for(0, B * H, grain, [&](int64_t p0, int64_t p1) {
        std::vector<double> rs(static_cast<size_t>(Dv));
        for (int64_t bh = p0; bh < p1; ++bh) {
          const int64_t b = bh / H, h = bh % H;
          std::fill(rs.begin(), rs.end(), 0.0);
          for (int64_t i = T - 1; i >= 0; --i) {
            const F be = pbeta[bh * T + i];
            const F* gr = hg.row(b, h, i);
#pragma omp simd
            for (int64_t d = 0; d < Dv; ++d) rs[static_cast<size_t>(d)] += static_cast<double>(be) * gr[d];
            // The keys whose first reader is query i (n_{T-1} = S: every key has one).
            const int64_t j0 = i > 0 ? n[static_cast<size_t>(i - 1)] : 0;
            for (int64_t j = j0; j < n[static_cast<size_t>(i)]; ++j) {
              F* dr = hdv.row(b, h, j);
#pragma omp simd
              for (int64_t d = 0; d < Dv; ++d) dr[d] += static_cast<F>(rs[static_cast<size_t>(d)]);
            }
          }
        }
      });
    }
    const F* pdz = dz.data<F>();
    if (needs.x) {
      // dx [B*T, Dm] = dz [B*T, H] w_a [H, Dm]
      g.dx = Tensor::empty(Shape{B, T, Dm}, dt);
      cpu::gemm<F>(false, false, B * T, Dm, H, F(1), pdz, H, w_a.data<F>(), Dm, F(0), g.dx.data<F>(), Dm);
    }
    if (needs.w_a) {
      // dw_a [H, Dm] = dz^T [H, B*T] x [B*T, Dm]
      g.dw_a = Tensor::empty(Shape{H, Dm}, dt);
      if (B * T == 0)
        g.dw_a.fill_(0.0);
      else
        cpu::gemm<F>(true, false, H, Dm, B * T, F(1), pdz, H, x.data<F>(), Dm, F(0), g.dw_a.data<F>(), Dm);
    }
    if (needs.c_a) {
      // dc_a[h] = sum over the B*T rows of dz, in row order.
      g.dc_a = Tensor::empty(Shape{H}, dt);
      std::vector<double> acc(static_cast<size_t>(H), 0.0);
      for (int64_t r = 0; r < B * T; ++r)
        for (int64_t h = 0; h < H; ++h) acc[static_cast<size_t>(h)] += pdz[r * H + h];
      F* pdc = g.dc_a.data<F>();
      for (int64_t h = 0; h < H; ++h) pdc[h] = static_cast<F>(acc[static_cast<size_t>(h)]);
    }
  });
  return g;
}

}  // namespace attnlab
