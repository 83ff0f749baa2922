// CPU forward and backward of the fused softmax attention (FlashAttention-2 on the CPU), f32 and f64.
//
// The tile machinery is cpu_tiles.h's: the strided (b, h) layouts, the mask as per-row visible-key
// counts n_i, 96 x 96 tiles cut into chunks on the causal diagonal, the register-blocked tile
// products, one task per (b, h) so the bits do not depend on the thread count. This file holds
// softmax's own part: the online-softmax row statistics (with a vectorized exp), the epilogue and
// the backward's dS. Scratch adds a query tile's accumulator, the row statistics m and l, and one
// T-vector in backward; never a [T, S] matrix.
//
// Forward (online softmax): S = scale Q_I K_J^T; per row m' = max(m, rowmax S), P = exp(S - m'),
// l = e^(m - m') l + rowsum P, acc = e^(m - m') acc + P V_J; then out = acc / l, lse = m + log l.
// Backward (recompute, key tiles outer, query tiles inner): D_i = <dout_i, out_i>;
// P = exp(S - lse), dV_J += P^T dO_I, dP = dO_I V_J^T, dS = P * (dP - D), dQ_I += scale dS K_J,
// dK_J += scale dS^T Q_I. All accumulation is in the compute type (float for f32), except D_i
// (double).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "layers/attention/cpu_tiles.h"
#include "layers/attention/softmax/softmax_attention.h"
#include "lib/error.h"

namespace attnlab {

namespace {

using namespace attn_cpu;

constexpr std::string_view kName = "softmax_attention";

// Row helpers on a score-tile row s, which holds whole vectors up to round_up_lanes(lim).
// The max of s[0, lim) (lanes past lim count as -inf).
template <typename F>
F row_max(const F* s, int64_t lim) {
  using V = typename Vec<F>::V;
  constexpr int64_t W = kLanes<F>;
  const V ninf = splat<V>(-std::numeric_limits<F>::infinity());
  V mx = ninf;
  for (int64_t j = 0; j < lim; j += W) {
    const V x = vload(s + j);
    const V xm = lanes_below<F>(lim - j) ? x : ninf;
    mx = xm > mx ? xm : mx;
  }
  F m = mx[0];
  for (int i = 1; i < static_cast<int>(W); ++i) m = std::max<F>(m, mx[i]);
  return m;
}

// s[j] = exp(s[j] - shift) for j < lim and 0 for lim <= j < bc; returns the sum of s[0, lim).
template <typename F>
F row_exp(F* s, int64_t lim, int64_t bc, F shift) {
  using V = typename Vec<F>::V;
  constexpr int64_t W = kLanes<F>;
  const V sh = splat<V>(shift);
  V sum{};
  int64_t j = 0;
  for (; j < lim; j += W) {
    const V e = exp_v(vload(s + j) - sh);
    const V em = lanes_below<F>(lim - j) ? e : V{};
    vstore(s + j, em);
    sum += em;
  }
  if (j < bc) std::fill(s + j, s + bc, F(0));
  return lane_sum<F>(sum);
}

// Per-task scratch: the tile loops' (cpu_tiles.h), the output accumulator of a query tile and its
// row statistics m, l in forward, and D [T] in backward.
template <typename F>
struct Scratch : TileScratch<F> {
  std::vector<F> acc, m, l, d;
  Scratch(const Dims& dims, bool backward)
      : TileScratch<F>(dims, backward),
        acc(backward ? 0 : static_cast<size_t>(kBr * dims.Dv)),
        m(static_cast<size_t>(kBr)),
        l(static_cast<size_t>(kBr)),
        d(backward ? static_cast<size_t>(dims.T) : 0) {}
};

// One (b, h): q [T, Dk], k [S, Dk], v [S, Dv] -> out [T, Dv], lse [T].
template <typename F>
void forward_head(Rows<const F> q, Rows<const F> k, Rows<const F> v, Rows<F> out, F* lse, const Dims& dm, F scale,
                  const int64_t* n, Scratch<F>& ws) {
  const int64_t Dv = dm.Dv;
  F* s = ws.s.data();
  F* acc = ws.acc.data();
  F* m = ws.m.data();
  F* l = ws.l.data();
  transpose_into(k.p, dm.S, dm.Dk, k.ld, ws.kt.data(), ws.sp);
  for (int64_t i0 = 0; i0 < dm.T; i0 += kBr) {
    const int64_t br = std::min(kBr, dm.T - i0);
    std::fill(m, m + br, -std::numeric_limits<F>::infinity());
    std::fill(l, l + br, F(0));
    std::fill(acc, acc + br * Dv, F(0));
    forward_key_tiles(q, v, dm, scale, n, i0, br, ws, Rows<F>{acc, Dv}, [&](const Tile& tile) {
      // The online softmax (columns of S past the visible ones are never read).
      for (int64_t r = 0; r < br; ++r) {
        F* sr = s + r * kBc;
        const int64_t lim = tile.lim(r);
        if (lim == 0) {  // keys past this row's (only after tile 0, so m and l are set)
          std::fill(sr, sr + tile.bc, F(0));
          continue;
        }
        const F m_old = m[r];
        const F m_new = std::max(m_old, row_max(sr, lim));
        const F sum = row_exp(sr, lim, tile.bc, m_new);
        if (m_old == m_new) {
          l[r] += sum;
        } else {
          const F alpha = std::exp(m_old - m_new);  // 0 on the first tile (m_old = -inf)
          l[r] = alpha * l[r] + sum;
          F* ar = acc + r * Dv;
#pragma omp simd
          for (int64_t d = 0; d < Dv; ++d) ar[d] *= alpha;
        }
        m[r] = m_new;
      }
    });
    for (int64_t r = 0; r < br; ++r) {
      const F inv = F(1) / l[r];
      const F* ar = acc + r * Dv;
      F* orow = out.row(i0 + r);
#pragma omp simd
      for (int64_t d = 0; d < Dv; ++d) orow[d] = ar[d] * inv;
      lse[i0 + r] = m[r] + std::log(l[r]);
    }
  }
}

// One (b, h): dq [T, Dk], dk [S, Dk], dv [S, Dv].
template <typename F>
void backward_head(Rows<const F> q, Rows<const F> k, Rows<const F> v, Rows<const F> out, const F* lse,
                   Rows<const F> dout, Rows<F> dq, Rows<F> dk, Rows<F> dv, const Dims& dm, F scale, const int64_t* n,
                   Scratch<F>& ws) {
  F* s = ws.s.data();
  F* dp = ws.dp.data();
  F* dd = ws.d.data();
  for (int64_t i = 0; i < dm.T; ++i) dd[i] = static_cast<F>(row_dot(dout.row(i), out.row(i), dm.Dv));
  backward_tiles(
      q, k, v, dout, dq, dk, dv, dm, scale, n, ws,
      [&](const Tile& tile) {  // P = exp(S - lse), 0 where masked
        for (int64_t r = 0; r < tile.br; ++r) row_exp(s + r * kBc, tile.lim(r), tile.bc, lse[tile.i0 + r]);
      },
      [&](const Tile& tile) {  // dS = P * (dP - D) (0 where masked: P is 0 there)
        for (int64_t r = 0; r < tile.br; ++r) {
          const F* pr = s + r * kBc;
          F* dsr = dp + r * kBc;
          const F di = dd[tile.i0 + r];
          const int64_t lim = tile.lim(r);
#pragma omp simd
          for (int64_t j = 0; j < lim; ++j) dsr[j] = pr[j] * (dsr[j] - di);
          std::fill(dsr + lim, dsr + tile.bc, F(0));
        }
      });
}

}  // namespace

SoftmaxAttentionOp::Forward SoftmaxAttentionOp::forward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                        const AttentionMask& mask, double scale) {
  check(q, k, v, mask);
  const Dims dm = dims_of(kName, q, k, v);
  const int64_t B = q.size(0), H = q.size(1);
  Forward f{empty_token_major(B, H, dm.T, dm.Dv, q.dtype()), Tensor::empty(Shape{B, H, dm.T}, q.dtype())};
  if (B * H * dm.T == 0) return f;
  const std::vector<int64_t> n = visible_counts(kName, dm.T, dm.S, mask);
  const double c = attention_scale(scale, dm.Dk);
  dispatch_float(q.dtype(), kName, [&](auto tag) {
    using F = decltype(tag);
    const Heads<const F> hq(q.data<F>(), q), hk(k.data<F>(), k), hv(v.data<F>(), v);
    const Heads<F> ho(f.out.data<F>(), f.out);
    F* pl = f.lse.data<F>();
    for_each_head<Scratch<F>>(B, H, heads_grain(dm), dm, false, [&](int64_t b, int64_t h, int64_t bh, Scratch<F>& ws) {
      forward_head<F>(hq.at(b, h), hk.at(b, h), hv.at(b, h), ho.at(b, h), pl + bh * dm.T, dm, static_cast<F>(c),
                      n.data(), ws);
    });
  });
  return f;
}

SoftmaxAttentionOp::Grads SoftmaxAttentionOp::backward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                       const Tensor& out, const Tensor& lse, const Tensor& dout,
                                                       const AttentionMask& mask, double scale) {
  const Dims dm = dims_of(kName, q, k, v);
  const int64_t B = q.size(0), H = q.size(1);
  AL_ASSERT(unit_last_stride(out) && lse.is_contiguous() && unit_last_stride(dout) && out.shape() == dout.shape() &&
                out.shape() == Shape({B, H, dm.T, dm.Dv}) && lse.shape() == Shape({B, H, dm.T}) &&
                out.dtype() == q.dtype() && lse.dtype() == q.dtype() && dout.dtype() == q.dtype(),
            kName, ": backward got out=", out, ", lse=", lse, ", dout=", dout, " for q=", q, ", v=", v);
  const QkvGrads e = empty_qkv_grads(B, H, dm, q.dtype());
  Grads g{e.dq, e.dk, e.dv};
  if (B * H * dm.T == 0) {
    g.dq.fill_(0.0), g.dk.fill_(0.0), g.dv.fill_(0.0);
    return g;
  }
  const std::vector<int64_t> n = visible_counts(kName, dm.T, dm.S, mask);
  const double c = attention_scale(scale, dm.Dk);
  dispatch_float(q.dtype(), kName, [&](auto tag) {
    using F = decltype(tag);
    const Heads<const F> hq(q.data<F>(), q), hk(k.data<F>(), k), hv(v.data<F>(), v), ho(out.data<F>(), out),
        hdo(dout.data<F>(), dout);
    const Heads<F> hdq(g.dq.data<F>(), g.dq), hdk(g.dk.data<F>(), g.dk), hdv(g.dv.data<F>(), g.dv);
    const F* pl = lse.data<F>();
    for_each_head<Scratch<F>>(B, H, heads_grain(dm), dm, true, [&](int64_t b, int64_t h, int64_t bh, Scratch<F>& ws) {
      backward_head<F>(hq.at(b, h), hk.at(b, h), hv.at(b, h), ho.at(b, h), pl + bh * dm.T, hdo.at(b, h), hdq.at(b, h),
                       hdk.at(b, h), hdv.at(b, h), dm, static_cast<F>(c), n.data(), ws);
    });
  });
  return g;
}

}  // namespace attnlab
