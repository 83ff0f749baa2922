// CPU forward and backward of the fused sigmoid attention, f32 and f64: the tile loops of
// cpu_tiles.h (FlashAttention-2 on the CPU, shared with softmax) without the online softmax.
//
// Maths, per (b, h) (sigmoid_attention.h): s = scale Q K^T + b_i (b_i = 0, b[h] or -log n_i),
// P = sigmoid(s) on the visible keys and exactly 0 elsewhere (a masked score is never passed to
// sigmoid), out = P V. Backward recomputes P: dV = P^T dO, dP = dO V^T, dS = dP * (P - P * P),
// dQ = scale dS K, dK = scale dS^T Q, db[h] = sum of dS.
//
// Shapes, strided layouts, the mask (visible-key counts n_i), the tiles and their chunks on the
// causal diagonal, the tile products and the per-task scratch are cpu_tiles.h's; out, dq, dk, dv
// are views of token-major memory, exactly like softmax's. Entries past a row's visible columns
// are set to exactly 0 in P and dS before any product reads them, so a masked key adds exactly 0
// whatever its (finite) score, key and value. Each (b, h) pair is one task for one thread, so the
// bits do not depend on the thread count; the per-head bias gradient is summed per pair (in
// double, in a fixed order) and the B pairs of a head are then added in order of b on one thread.
// sigmoid is vectorized with cpu_tiles.h's Cephes-style e^x: 1 / (1 + e^-x), e^-x clamped below
// overflow (sigmoid_v).
//
// Forward, per query tile I: acc = 0; per key tile J: S = scale Q_I K_J^T, P = sigmoid(S + b_I)
// (masked: 0), acc += P V_J; out_I = acc. Unlike softmax nothing is rescaled and nothing is
// divided at the end: each key tile's terms are simply added.
// Backward, key tiles outer, query tiles inner: P as in forward, dV_J += P^T dO_I,
// dP = dO_I V_J^T, dS = dP * (P - P * P), dQ_I += scale dS K_J, dK_J += scale dS^T Q_I, and the
// row sums of dS into the pair's bias-gradient sum. Accumulation is in the compute type (float
// for f32) except the bias-gradient sums (double).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "layers/attention/cpu_tiles.h"
#include "layers/attention/sigmoid/sigmoid_attention.h"
#include "lib/error.h"

namespace attnlab {

namespace {

using namespace attn_cpu;

// sigmoid(x) = 1 / (1 + e^-x) lane by lane. e^-x is clamped below overflow (exp_v), so a very
// negative x gives 1 / (1 + ~1e38) (f32) or 1 / (1 + ~1e308) (f64), within 1e-38 / 1e-307 of the
// true value, and a very positive x gives exactly 1 (so p - p^2 = 0: a saturated weight passes
// no gradient); elsewhere the relative error is that of e^-x plus one rounding. NaN stays NaN.
// (A reciprocal estimate with Newton steps measured no faster than the division here: e^x is
// most of the cost.)
template <typename F, typename V = typename Vec<F>::V>
inline V sigmoid_v(V x) {
  return F(1) / (exp_v(-x) + F(1));
}

// s[j] = sigmoid(s[j] + bias) for j < lim and 0 for lim <= j < bc. s holds whole vectors up to
// round_up_lanes(lim) (<= kBc); lanes past lim are written as 0 whatever the score there was.
template <typename F>
void row_sigmoid(F* s, int64_t lim, int64_t bc, F bias) {
  using V = typename Vec<F>::V;
  constexpr int64_t W = kLanes<F>;
  const V b = splat<V>(bias);
  int64_t j = 0;
  for (; j + W <= lim; j += W) vstore(s + j, sigmoid_v<F>(vload(s + j) + b));
  if (j < lim) {
    vstore(s + j, lanes_below<F>(lim - j) ? sigmoid_v<F>(vload(s + j) + b) : V{});
    j += W;
  }
  if (j < bc) std::fill(s + j, s + bc, F(0));
}

// ds[j] = dp[j] * (p[j] - p[j]^2) for j < lim (the rounding of the spec: one FMA-able product),
// 0 for lim <= j < bc; returns the sum of ds[0, lim).
template <typename F>
F row_dsigmoid(const F* p, F* ds, int64_t lim, int64_t bc) {
  using V = typename Vec<F>::V;
  constexpr int64_t W = kLanes<F>;
  V sum{};
  int64_t j = 0;
  for (; j + W <= lim; j += W) {
    const V pv = vload(p + j);
    const V d = vload(ds + j) * (pv - pv * pv);
    vstore(ds + j, d);
    sum += d;
  }
  if (j < lim) {
    const V pv = vload(p + j);
    const V d = vload(ds + j) * (pv - pv * pv);
    const V dm = lanes_below<F>(lim - j) ? d : V{};
    vstore(ds + j, dm);
    sum += dm;
    j += W;
  }
  if (j < bc) std::fill(ds + j, ds + bc, F(0));
  return lane_sum<F>(sum);
}

// The row bias of one (b, h): b_i = row[i] when `row` is set (neglog_visible: -log n_i, the same
// for every head), else `head` (b[h] in the per-head form, 0 in the zero form).
template <typename F>
struct RowBias {
  const F* row;
  F head;
  F at(int64_t i) const { return row ? row[i] : head; }
};

// Per-task scratch: the tile loops' (cpu_tiles.h) and, in forward, the output accumulator of a
// query tile.
template <typename F>
struct Scratch : TileScratch<F> {
  std::vector<F> acc;
  Scratch(const Dims& dims, bool backward)
      : TileScratch<F>(dims, backward), acc(backward ? 0 : static_cast<size_t>(kBr * dims.Dv)) {}
};

// P = sigmoid(S + b_I) of one tile in s (leading dim kBc), 0 where masked.
template <typename F>
void tile_sigmoid(const Tile& tile, const RowBias<F>& bias, F* s) {
  for (int64_t r = 0; r < tile.br; ++r) row_sigmoid(s + r * kBc, tile.lim(r), tile.bc, bias.at(tile.i0 + r));
}

// One (b, h): q [T, Dk], k [S, Dk], v [S, Dv] -> out [T, Dv].
template <typename F>
void forward_head(Rows<const F> q, Rows<const F> k, Rows<const F> v, Rows<F> out, const Dims& dm, F scale,
                  const int64_t* n, const RowBias<F>& bias, Scratch<F>& ws) {
  const int64_t Dv = dm.Dv;
  F* s = ws.s.data();
  F* acc = ws.acc.data();
  transpose_into(k.p, dm.S, dm.Dk, k.ld, ws.kt.data(), ws.sp);
  for (int64_t i0 = 0; i0 < dm.T; i0 += kBr) {
    const int64_t br = std::min(kBr, dm.T - i0);
    std::fill(acc, acc + br * Dv, F(0));
    forward_key_tiles(q, v, dm, scale, n, i0, br, ws, Rows<F>{acc, Dv},
                      [&](const Tile& tile) { tile_sigmoid(tile, bias, s); });
    for (int64_t r = 0; r < br; ++r) std::copy(acc + r * Dv, acc + (r + 1) * Dv, out.row(i0 + r));
  }
}

// One (b, h): dq [T, Dk], dk [S, Dk], dv [S, Dv]; returns the sum of dS over the pair (its share
// of db[h]).
template <typename F>
double backward_head(Rows<const F> q, Rows<const F> k, Rows<const F> v, Rows<const F> dout, Rows<F> dq, Rows<F> dk,
                     Rows<F> dv, const Dims& dm, F scale, const int64_t* n, const RowBias<F>& bias, Scratch<F>& ws) {
  F* s = ws.s.data();
  F* dp = ws.dp.data();
  double dbias = 0;
  backward_tiles(
      q, k, v, dout, dq, dk, dv, dm, scale, n, ws, [&](const Tile& tile) { tile_sigmoid(tile, bias, s); },
      [&](const Tile& tile) {  // dS = dP * (P - P^2) in dP's place (0 where masked)
        for (int64_t r = 0; r < tile.br; ++r) dbias += row_dsigmoid(s + r * kBc, dp + r * kBc, tile.lim(r), tile.bc);
      });
  return dbias;
}

// -log n_i per query row in F (neglog_visible), else empty.
template <typename F>
std::vector<F> neglog_rows(SigmoidBias mode, const std::vector<int64_t>& n) {
  std::vector<F> rb;
  if (mode != SigmoidBias::neglog_visible) return rb;
  rb.reserve(n.size());
  for (int64_t c : n) rb.push_back(static_cast<F>(-std::log(static_cast<double>(c))));
  return rb;
}

// The row bias of head h: neglog rows, b[h], or 0.
template <typename F>
RowBias<F> row_bias(SigmoidBias mode, const std::vector<F>& neglog, const F* b, int64_t h) {
  if (mode == SigmoidBias::neglog_visible) return {neglog.data(), F(0)};
  if (mode == SigmoidBias::per_head) return {nullptr, b[h]};
  return {nullptr, F(0)};
}

}  // namespace

Tensor SigmoidAttentionOp::forward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v, SigmoidBias mode,
                                   const Tensor& bias, const AttentionMask& mask, double scale) {
  check(q, k, v, mode, bias, mask);
  const std::string_view op = name(mode);
  const Dims dm = dims_of(op, q, k, v);
  const int64_t B = q.size(0), H = q.size(1);
  Tensor out = empty_token_major(B, H, dm.T, dm.Dv, q.dtype());
  if (B * H * dm.T == 0) return out;
  const std::vector<int64_t> n = visible_counts(op, dm.T, dm.S, mask);
  const double c = attention_scale(scale, dm.Dk);
  const Tensor bc = mode == SigmoidBias::per_head ? bias.contiguous() : Tensor();
  dispatch_float(q.dtype(), op, [&](auto tag) {
    using F = decltype(tag);
    const Heads<const F> hq(q.data<F>(), q), hk(k.data<F>(), k), hv(v.data<F>(), v);
    const Heads<F> ho(out.data<F>(), out);
    const std::vector<F> neglog = neglog_rows<F>(mode, n);
    const F* pb = bc.defined() ? bc.data<F>() : nullptr;
    for_each_head<Scratch<F>>(B, H, heads_grain(dm), dm, false, [&](int64_t b, int64_t h, int64_t, Scratch<F>& ws) {
      forward_head<F>(hq.at(b, h), hk.at(b, h), hv.at(b, h), ho.at(b, h), dm, static_cast<F>(c), n.data(),
                      row_bias<F>(mode, neglog, pb, h), ws);
    });
  });
  return out;
}

SigmoidAttentionOp::Grads SigmoidAttentionOp::backward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                       SigmoidBias mode, const Tensor& bias, const Tensor& dout,
                                                       const AttentionMask& mask, double scale, bool need_db) {
  const std::string_view op = name(mode);
  const Dims dm = dims_of(op, q, k, v);
  const int64_t B = q.size(0), H = q.size(1);
  AL_ASSERT(unit_last_stride(dout) && dout.shape() == Shape({B, H, dm.T, dm.Dv}) && dout.dtype() == q.dtype(), op,
            ": backward got dout=", dout, " for q=", q, ", v=", v);
  const QkvGrads e = empty_qkv_grads(B, H, dm, q.dtype());
  Grads g{e.dq, e.dk, e.dv, Tensor()};
  const bool want_db = need_db && mode == SigmoidBias::per_head;
  if (want_db) g.db = Tensor::zeros(Shape{H}, q.dtype());
  if (B * H * dm.T == 0) {
    g.dq.fill_(0.0), g.dk.fill_(0.0), g.dv.fill_(0.0);
    return g;
  }
  const std::vector<int64_t> n = visible_counts(op, dm.T, dm.S, mask);
  const double c = attention_scale(scale, dm.Dk);
  const Tensor bc = mode == SigmoidBias::per_head ? bias.contiguous() : Tensor();
  std::vector<double> db_pairs(static_cast<size_t>(B * H), 0.0);  // the sum of dS of each (b, h)
  dispatch_float(q.dtype(), op, [&](auto tag) {
    using F = decltype(tag);
    const Heads<const F> hq(q.data<F>(), q), hk(k.data<F>(), k), hv(v.data<F>(), v), hdo(dout.data<F>(), dout);
    const Heads<F> hdq(g.dq.data<F>(), g.dq), hdk(g.dk.data<F>(), g.dk), hdv(g.dv.data<F>(), g.dv);
    const std::vector<F> neglog = neglog_rows<F>(mode, n);
    const F* pb = bc.defined() ? bc.data<F>() : nullptr;
    for_each_head<Scratch<F>>(B, H, heads_grain(dm), dm, true, [&](int64_t b, int64_t h, int64_t bh, Scratch<F>& ws) {
      db_pairs[static_cast<size_t>(bh)] =
          backward_head<F>(hq.at(b, h), hk.at(b, h), hv.at(b, h), hdo.at(b, h), hdq.at(b, h), hdk.at(b, h),
                           hdv.at(b, h), dm, static_cast<F>(c), n.data(), row_bias<F>(mode, neglog, pb, h), ws);
    });
    if (want_db) {
      F* db = g.db.data<F>();
      for (int64_t h = 0; h < H; ++h) {
        double sum = 0;
        for (int64_t b = 0; b < B; ++b) sum += db_pairs[static_cast<size_t>(b * H + h)];
        db[h] = static_cast<F>(sum);
      }
    }
  });
  return g;
}

}  // namespace attnlab
