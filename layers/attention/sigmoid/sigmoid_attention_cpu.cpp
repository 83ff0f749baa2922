// CPU forward and backward of the fused sigmoid attention, f32 and f64: the tile structure of
// softmax_attention_cpu.cpp (FlashAttention-2 on the CPU) without the online softmax.
//
// Maths, per (b, h) (sigmoid_attention.h): s = scale Q K^T + b_i (b_i = 0, b[h] or -log n_i),
// P = sigmoid(s) on the visible keys and exactly 0 elsewhere (a masked score is never passed to
// sigmoid), out = P V. Backward recomputes P: dV = P^T dO, dP = dO V^T, dS = dP * (P - P * P),
// dQ = scale dS K, dK = scale dS^T Q, db[h] = sum of dS.
//
// Shapes: q [B, H, T, Dk], k [B, H, S, Dk], v [B, H, S, Dv], dout [B, H, T, Dv] read through
// per-tensor (b, h) strides and a row stride (Heads, Rows below), so token-major and
// fused-projection layouts need no copies; only the last dim must be unit-stride. out, dq, dk,
// dv are views of token-major memory, exactly like softmax's.
//
// Each (b, h) pair is one task for one thread (OpenMP over the B * H pairs), so the bits do not
// depend on the thread count; the per-head bias gradient is summed per pair (in double, in a
// fixed order) and the B pairs of a head are then added in order of b on one thread. Inside a
// pair, queries go in tiles of kBr rows and keys in tiles of kBc columns. Scratch is per task:
// one or two score-sized tiles, a query tile's accumulator, and k^T (and v^T in backward) of the
// pair ([D, S], so the tile products read contiguous rows); never a [T, S] matrix.
//
// The tile products run through the register-blocked micro-kernel written with GCC vector
// extensions (AVX2: 6 x 16 f32 outputs per kernel, AVX-512: 6 x 64). sigmoid is vectorized with
// the same Cephes-style e^x as softmax's: 1 / (1 + e^-x), e^-x clamped below overflow (sigmoid_v).
//
// The mask reduces to one number per query row: query i (absolute position S - T + i) sees
// exactly the keys [0, n_i) (causal: n_i = p + 1, or max(p + 1, prefix) inside a bidirectional
// prefix; not causal: S). n_i >= 1 and never decreases with i, so
//   - a query tile [i0, i1) needs the keys [0, n_{i1-1}) only: key tiles past that are skipped and
//     the last one is cut to width n_{i1-1} - j0;
//   - a key tile [j0, j1) is seen by the rows i >= first i with n_i > j0 only, which is where the
//     backward's query loop starts;
//   - a tile with j1 <= n_{i0} is fully visible (no masking); otherwise row r sees the columns
//     j < n_r - j0, and the tile's products are cut into 12-row / 12-key chunks (Tile below) so
//     that the invisible triangle of the causal diagonal is mostly not computed. Entries past a
//     row's visible columns are set to exactly 0 in P and dS before any product reads them, so a
//     masked key adds exactly 0 whatever its (finite) score, key and value.
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
#include <limits>
#include <utility>
#include <vector>

#include "layers/attention/sigmoid/sigmoid_attention.h"
#include "lib/cpu/parallel.h"
#include "lib/error.h"

namespace attnlab {

namespace {

// Tiles of 96 x 96 as softmax's (a multiple of the 6-row micro-kernel and of the vector widths).
constexpr int64_t kBr = 96;  // query rows per tile
constexpr int64_t kBc = 96;  // key columns per tile

// Vectors through GCC's vector extensions (any target): one register of the widest kind this build
// may use. V holds lanes of F, I as many integers of the same size (comparison results, bits).
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
constexpr int kNV = 4;  // C vectors per micro-kernel row: 6 x 4 zmm accumulators of 32 registers
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
constexpr int kNV = 2;  // 6 x 2 ymm accumulators of 16
#else
constexpr int kVecBytes = 16;
constexpr int kNV = 2;
#endif
constexpr int kR = 6;  // C rows per micro-kernel

template <typename F>
struct Vec;
template <>
struct Vec<float> {
  typedef float V __attribute__((vector_size(kVecBytes)));
  typedef int32_t I __attribute__((vector_size(kVecBytes)));
  using IE = int32_t;
};
template <>
struct Vec<double> {
  typedef double V __attribute__((vector_size(kVecBytes)));
  typedef int64_t I __attribute__((vector_size(kVecBytes)));
  using IE = int64_t;
};
template <typename F>
constexpr int64_t kLanes = kVecBytes / static_cast<int64_t>(sizeof(F));

template <typename F>
int64_t round_up_lanes(int64_t n) {
  return (n + kLanes<F> - 1) / kLanes<F> * kLanes<F>;
}

template <typename F, typename V = typename Vec<F>::V>
inline V vload(const F* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}
template <typename F, typename V = typename Vec<F>::V>
inline void vstore(F* p, const V& v) {
  __builtin_memcpy(p, &v, sizeof(V));
}
// Every lane = x: one broadcast (x - 0 is exactly x, even for -0; V{} + x is not, so it costs an add).
template <typename V, typename F>
inline V splat(F x) {
  return x - V{};
}
// All ones in the lanes i < n (n may be <= 0 or past the last lane).
template <typename F, typename I = typename Vec<F>::I>
inline I lanes_below(int64_t n) {
  I idx;
  for (int i = 0; i < static_cast<int>(kLanes<F>); ++i) idx[i] = i;
  const int64_t c = std::clamp<int64_t>(n, 0, kLanes<F>);
  return idx < splat<I>(static_cast<typename Vec<F>::IE>(c));
}

// e^x lane by lane: 2^n e^r with n = round(x / ln 2) (adding 1.5 * 2^mantissa-bits rounds, and
// leaves n in the low bits), r = x - n ln 2 in two parts, and a polynomial for e^r: Cephes' degree
// 6 for f32 (about 1 ulp), Taylor to degree 12 for f64 (a few ulp). 0 below the normal range,
// e^88.3 (f32) / e^709 (f64) above it (finite: the sigmoid below relies on that); NaN stays NaN.
inline Vec<float>::V exp_v(Vec<float>::V x) {
  using V = Vec<float>::V;
  using I = Vec<float>::I;
  const V lo = splat<V>(-87.3f), hi = splat<V>(88.3f), magic = splat<V>(12582912.0f);
  V xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const V t = xc * 1.44269504088896341f + magic;
  const V n = t - magic;
  V r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  V p = splat<V>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const V y = p * (r * r) + r + 1.0f;
  const I e = (((I)t - (I)magic) + 127) << 23;
  const V res = y * (V)e;
  return x < lo ? V{} : res;
}
inline Vec<double>::V exp_v(Vec<double>::V x) {
  using V = Vec<double>::V;
  using I = Vec<double>::I;
  const V lo = splat<V>(-708.0), hi = splat<V>(709.0), magic = splat<V>(6755399441055744.0);
  V xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const V t = xc * 1.4426950408889634074 + magic;
  const V n = t - magic;
  V r = xc - n * 6.93147180369123816490e-01;
  r = r - n * 1.90821492927058770002e-10;
  constexpr double kInvFact[13] = {1.0 / 479001600, 1.0 / 39916800, 1.0 / 3628800, 1.0 / 362880, 1.0 / 40320,
                                   1.0 / 5040,      1.0 / 720,      1.0 / 120,     1.0 / 24,     1.0 / 6,
                                   1.0 / 2,         1.0,            1.0};
  V p = splat<V>(kInvFact[0]);
  for (int i = 1; i < 13; ++i) p = p * r + kInvFact[i];
  const I e = (((I)t - (I)magic) + 1023) << 52;
  const V res = p * (V)e;
  return x < lo ? V{} : res;
}

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
  F total = 0;
  for (int i = 0; i < static_cast<int>(W); ++i) total += sum[i];
  return total;
}

// The tile products: C[M, N] = alpha A B (or C += alpha A B when `accumulate`), with
// A(i, k) = A[i * sai + k * sak] (so A or A^T of a row-major tile) and B a row-major [K, N] with
// leading dim ldb. A micro-kernel keeps kR rows x kNV vectors of C in registers over the whole K
// loop: per k, kNV loads of B, kR broadcasts of A and kR * kNV FMAs. Columns past the last whole
// vector go through a plain loop.
template <typename F, int R, int NV>
void micro(int64_t K, F alpha, const F* A, int64_t sai, int64_t sak, const F* B, int64_t ldb, bool accumulate, F* C,
           int64_t ldc) {
  using V = typename Vec<F>::V;
  constexpr int W = kVecBytes / sizeof(F);
  V c[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) c[r][v] = V{};
  for (int64_t k = 0; k < K; ++k) {
    V b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) __builtin_memcpy(&b[v], B + k * ldb + v * W, sizeof(V));
    const F* ak = A + k * sak;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const V a = splat<V>(ak[r * sai]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[r][v] += a * b[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      F* p = C + r * ldc + v * W;
      V out = c[r][v] * alpha;
      if (accumulate) {
        V old;
        __builtin_memcpy(&old, p, sizeof(V));
        out += old;
      }
      __builtin_memcpy(p, &out, sizeof(V));
    }
}

template <typename F, int R>
void micro_rows(int nv, int64_t K, F alpha, const F* A, int64_t sai, int64_t sak, const F* B, int64_t ldb,
                bool accumulate, F* C, int64_t ldc) {
  static_assert(kNV == 2 || kNV == 4);
  switch (nv) {
    case 1: return micro<F, R, 1>(K, alpha, A, sai, sak, B, ldb, accumulate, C, ldc);
    case 2: return micro<F, R, 2>(K, alpha, A, sai, sak, B, ldb, accumulate, C, ldc);
    case 3:
      if constexpr (kNV >= 3) return micro<F, R, 3>(K, alpha, A, sai, sak, B, ldb, accumulate, C, ldc);
      break;
    default:
      if constexpr (kNV >= 4) return micro<F, R, 4>(K, alpha, A, sai, sak, B, ldb, accumulate, C, ldc);
      break;
  }
}

template <typename F>
void tile_mm(int64_t M, int64_t N, int64_t K, F alpha, const F* A, int64_t sai, int64_t sak, const F* B, int64_t ldb,
             bool accumulate, F* C, int64_t ldc) {
  constexpr int64_t W = kLanes<F>;
  int64_t j = 0;
  while (N - j >= W) {
    const int nv = static_cast<int>(std::min<int64_t>(kNV, (N - j) / W));
    for (int64_t i = 0; i < M; i += kR) {
      const F* a = A + i * sai;
      const F* b = B + j;
      F* c = C + i * ldc + j;
      switch (std::min<int64_t>(kR, M - i)) {
        case 1: micro_rows<F, 1>(nv, K, alpha, a, sai, sak, b, ldb, accumulate, c, ldc); break;
        case 2: micro_rows<F, 2>(nv, K, alpha, a, sai, sak, b, ldb, accumulate, c, ldc); break;
        case 3: micro_rows<F, 3>(nv, K, alpha, a, sai, sak, b, ldb, accumulate, c, ldc); break;
        case 4: micro_rows<F, 4>(nv, K, alpha, a, sai, sak, b, ldb, accumulate, c, ldc); break;
        case 5: micro_rows<F, 5>(nv, K, alpha, a, sai, sak, b, ldb, accumulate, c, ldc); break;
        default: micro_rows<F, 6>(nv, K, alpha, a, sai, sak, b, ldb, accumulate, c, ldc); break;
      }
    }
    j += nv * W;
  }
  for (int64_t i = 0; i < M; ++i)
    for (int64_t jj = j; jj < N; ++jj) {
      F s = 0;
      for (int64_t k = 0; k < K; ++k) s += A[i * sai + k * sak] * B[k * ldb + jj];
      F& c = C[i * ldc + jj];
      c = accumulate ? c + alpha * s : alpha * s;
    }
}

// In-register transpose of W x W lanes in log2(W) butterfly stages: at stage b, rows r and r + b
// (r & b == 0) swap their off-diagonal b x b blocks.
template <typename V, int W, int B, size_t... L>
inline void butterfly(V& lo, V& hi, std::index_sequence<L...>) {
  const V a = lo, b = hi;
  lo = __builtin_shufflevector(a, b, ((L & B) == 0 ? L : W + L - B)...);
  hi = __builtin_shufflevector(a, b, ((L & B) == 0 ? L + B : W + L)...);
}
template <typename V, int W, int B = 1>
inline void transpose_lanes(V* r) {
  if constexpr (B < W) {
    for (int i = 0; i < W; ++i)
      if ((i & B) == 0) butterfly<V, W, B>(r[i], r[i + B], std::make_index_sequence<W>{});
    transpose_lanes<V, W, 2 * B>(r);
  }
}

// x [rows, cols] (leading dim ld) -> xt [cols, rows] (leading dim ldt), in W x W register blocks.
template <typename F>
void transpose_into(const F* x, int64_t rows, int64_t cols, int64_t ld, F* xt, int64_t ldt) {
  using V = typename Vec<F>::V;
  constexpr int W = static_cast<int>(kLanes<F>);
  const int64_t rw = rows / W * W, cw = cols / W * W;
  for (int64_t r0 = 0; r0 < rw; r0 += W)
    for (int64_t c0 = 0; c0 < cw; c0 += W) {
      V blk[W];
      for (int i = 0; i < W; ++i) blk[i] = vload(x + (r0 + i) * ld + c0);
      transpose_lanes<V, W>(blk);
      for (int i = 0; i < W; ++i) vstore(xt + (c0 + i) * ldt + r0, blk[i]);
    }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = r < rw ? cw : 0; c < cols; ++c) xt[c * ldt + r] = x[r * ld + c];
}

// n_i, the number of keys query i sees (the keys [0, n_i)); see the file comment.
std::vector<int64_t> visible_counts(std::string_view op, int64_t T, int64_t S, const AttentionMask& mask) {
  std::vector<int64_t> n(static_cast<size_t>(T));
  for (int64_t i = 0; i < T; ++i) {
    const int64_t p = S - T + i;
    int64_t c = S;
    if (mask.causal) c = std::min(S, p < mask.prefix ? std::max(p + 1, mask.prefix) : p + 1);
    AL_ASSERT(c >= 1 && (i == 0 || c >= n[static_cast<size_t>(i - 1)]), op, ": query ", i,
              " sees no key or fewer than the previous query (T=", T, ", S=", S, ")");
    n[static_cast<size_t>(i)] = c;
  }
  return n;
}

struct Dims {
  int64_t T, S, Dk, Dv;
};

// One (b, h) matrix: row i at p + i * ld, its elements unit-stride.
template <typename F>
struct Rows {
  F* p;
  int64_t ld;
  F* row(int64_t i) const { return p + i * ld; }
};

// A [B, H, rows, D] tensor whose last dim is unit-stride (any other strides: [B, T, H, D]
// memory permuted to [B, H, T, D], or a slice of a fused [B, T, 3, H, D] projection).
template <typename F>
struct Heads {
  F* p;
  int64_t sb, sh, ld;
  Heads(F* data, const Tensor& t) : p(data), sb(t.stride(0)), sh(t.stride(1)), ld(t.stride(2)) {}
  Rows<F> at(int64_t b, int64_t h) const { return {p + b * sb + h * sh, ld}; }
};

// The row bias of one (b, h): b_i = row[i] when `row` is set (neglog_visible: -log n_i, the same
// for every head), else `head` (b[h] in the per-head form, 0 in the zero form).
template <typename F>
struct RowBias {
  const F* row;
  F head;
  F at(int64_t i) const { return row ? row[i] : head; }
};

// Per-task scratch: one score tile and one dP tile (leading dim kBc), the output accumulator of a
// query tile, and k^T (and v^T in backward) of the current (b, h), their rows padded to whole
// vectors (the padding stays zero) so a ragged key tile is still computed in whole vectors.
template <typename F>
struct Scratch {
  int64_t sp;  // padded S: the leading dim of kt and vt
  std::vector<F> s, dp, acc, kt, vt;
  Scratch(const Dims& dims, bool backward)
      : sp(round_up_lanes<F>(dims.S) + kLanes<F>),  // one vector more: no power-of-two stride
        s(static_cast<size_t>(kBr * kBc)),
        dp(backward ? static_cast<size_t>(kBr * kBc) : 0),
        acc(backward ? 0 : static_cast<size_t>(kBr * dims.Dv)),
        kt(static_cast<size_t>(dims.Dk * sp)),
        vt(backward ? static_cast<size_t>(dims.Dv * sp) : 0) {}
};

// A tile of queries [i0, i0 + br) x keys [j0, j0 + bc) under the mask. Row r sees the tile's
// columns [0, lim(r)). When the tile is not fully visible (the causal diagonal, or the edge of a
// prefix), its products are cut into chunks so that little of the invisible triangle is computed:
// rows in chunks of kChunk, each chunk computing only the columns its last row sees (S, dP, and the
// products that contract over keys: P V and dS K); keys in chunks of kChunk, each chunk summing
// only over the rows that see its first key (P^T dO and dS^T Q). A fully visible tile is one chunk.
constexpr int64_t kChunk = 12;

struct Tile {
  const int64_t* n;  // n + i0: the visible-key counts of the tile's rows
  int64_t j0, br, bc;
  bool full;
  Tile(const int64_t* n_all, int64_t i0, int64_t j0_, int64_t br_, int64_t bc_)
      : n(n_all + i0), j0(j0_), br(br_), bc(bc_), full(n_all[i0] >= j0_ + bc_) {}
  int64_t lim(int64_t r) const { return full ? bc : std::clamp<int64_t>(n[r] - j0, 0, bc); }
  // fn(r0, rows, cols) over row chunks: rows [r0, r0 + rows) need the columns [0, cols), cols > 0.
  template <typename Fn>
  void row_chunks(Fn&& fn) const {
    if (full) return fn(int64_t{0}, br, bc);
    for (int64_t r0 = 0; r0 < br; r0 += kChunk) {
      const int64_t rows = std::min(kChunk, br - r0);
      const int64_t cols = lim(r0 + rows - 1);
      if (cols > 0) fn(r0, rows, cols);
    }
  }
  // fn(c0, cols, r0) over column chunks: columns [c0, c0 + cols) are seen by rows [r0, br) only.
  template <typename Fn>
  void col_chunks(Fn&& fn) const {
    if (full) return fn(int64_t{0}, bc, int64_t{0});
    for (int64_t c0 = 0; c0 < bc; c0 += kChunk) {
      const int64_t r0 = std::upper_bound(n, n + br, j0 + c0) - n;  // first row that sees key j0 + c0
      if (r0 < br) fn(c0, std::min(kChunk, bc - c0), r0);
    }
  }
};

// P = sigmoid(scale Q_I K_J^T + b_I) of one tile into s (leading dim kBc), 0 where masked.
template <typename F>
void tile_probabilities(const Tile& tile, Rows<const F> q, int64_t i0, const F* kt, int64_t sp, int64_t Dk, F scale,
                        const RowBias<F>& bias, F* s) {
  tile.row_chunks([&](int64_t r0, int64_t rows, int64_t cols) {
    tile_mm<F>(rows, round_up_lanes<F>(cols), Dk, scale, q.row(i0 + r0), q.ld, 1, kt + tile.j0, sp, false,
               s + r0 * kBc, kBc);
  });
  for (int64_t r = 0; r < tile.br; ++r) row_sigmoid(s + r * kBc, tile.lim(r), tile.bc, bias.at(i0 + r));
}

// One (b, h): q [T, Dk], k [S, Dk], v [S, Dv] -> out [T, Dv]; each matrix's rows are `ld`
// elements apart (its Rows below), its elements unit-stride.
template <typename F>
void forward_head(Rows<const F> q, Rows<const F> k, Rows<const F> v, Rows<F> out, const Dims& dm, F scale,
                  const int64_t* n, const RowBias<F>& bias, Scratch<F>& ws) {
  const int64_t Dv = dm.Dv, sp = ws.sp;
  F* s = ws.s.data();
  F* acc = ws.acc.data();
  F* kt = ws.kt.data();
  transpose_into(k.p, dm.S, dm.Dk, k.ld, kt, sp);
  for (int64_t i0 = 0; i0 < dm.T; i0 += kBr) {
    const int64_t br = std::min(kBr, dm.T - i0);
    const int64_t nmax = n[i0 + br - 1];
    std::fill(acc, acc + br * Dv, F(0));
    for (int64_t j0 = 0; j0 < nmax; j0 += kBc) {
      const Tile tile(n, i0, j0, br, std::min(kBc, nmax - j0));
      tile_probabilities(tile, q, i0, kt, sp, dm.Dk, scale, bias, s);
      // acc += P V_J
      tile.row_chunks([&](int64_t r0, int64_t rows, int64_t cols) {
        tile_mm<F>(rows, Dv, cols, F(1), s + r0 * kBc, kBc, 1, v.row(j0), v.ld, true, acc + r0 * Dv, Dv);
      });
    }
    for (int64_t r = 0; r < br; ++r) std::copy(acc + r * Dv, acc + (r + 1) * Dv, out.row(i0 + r));
  }
}

// One (b, h): dq [T, Dk], dk [S, Dk], dv [S, Dv] (rows as in forward_head); returns the sum of
// dS over the pair (its share of db[h]).
template <typename F>
double backward_head(Rows<const F> q, Rows<const F> k, Rows<const F> v, Rows<const F> dout, Rows<F> dq, Rows<F> dk,
                     Rows<F> dv, const Dims& dm, F scale, const int64_t* n, const RowBias<F>& bias, Scratch<F>& ws) {
  const int64_t T = dm.T, Dk = dm.Dk, Dv = dm.Dv, sp = ws.sp;
  for (int64_t i = 0; i < T; ++i) std::fill(dq.row(i), dq.row(i) + Dk, F(0));
  for (int64_t j = 0; j < dm.S; ++j) std::fill(dk.row(j), dk.row(j) + Dk, F(0));
  for (int64_t j = 0; j < dm.S; ++j) std::fill(dv.row(j), dv.row(j) + Dv, F(0));
  F* s = ws.s.data();
  F* dp = ws.dp.data();
  F* kt = ws.kt.data();
  F* vt = ws.vt.data();
  transpose_into(k.p, dm.S, Dk, k.ld, kt, sp);
  transpose_into(v.p, dm.S, Dv, v.ld, vt, sp);
  double dbias = 0;
  for (int64_t j0 = 0; j0 < dm.S; j0 += kBc) {
    const int64_t bc = std::min(kBc, dm.S - j0);
    const int64_t i_start = std::upper_bound(n, n + T, j0) - n;  // first query that sees key j0
    for (int64_t i0 = i_start; i0 < T; i0 += kBr) {
      const Tile tile(n, i0, j0, std::min(kBr, T - i0), bc);
      const int64_t br = tile.br;
      tile_probabilities(tile, q, i0, kt, sp, Dk, scale, bias, s);
      // dV_J += P^T dO_I
      tile.col_chunks([&](int64_t c0, int64_t cols, int64_t r0) {
        tile_mm<F>(cols, Dv, br - r0, F(1), s + r0 * kBc + c0, 1, kBc, dout.row(i0 + r0), dout.ld, true,
                   dv.row(j0 + c0), dv.ld);
      });
      // dP = dO_I V_J^T, then dS = dP * (P - P^2) in its place (0 where masked).
      tile.row_chunks([&](int64_t r0, int64_t rows, int64_t cols) {
        tile_mm<F>(rows, round_up_lanes<F>(cols), Dv, F(1), dout.row(i0 + r0), dout.ld, 1, vt + j0, sp, false,
                   dp + r0 * kBc, kBc);
      });
      for (int64_t r = 0; r < br; ++r) dbias += row_dsigmoid(s + r * kBc, dp + r * kBc, tile.lim(r), bc);
      // dQ_I += scale dS K_J;  dK_J += scale dS^T Q_I
      tile.row_chunks([&](int64_t r0, int64_t rows, int64_t cols) {
        tile_mm<F>(rows, Dk, cols, scale, dp + r0 * kBc, kBc, 1, k.row(j0), k.ld, true, dq.row(i0 + r0), dq.ld);
      });
      tile.col_chunks([&](int64_t c0, int64_t cols, int64_t r0) {
        tile_mm<F>(cols, Dk, br - r0, scale, dp + r0 * kBc + c0, 1, kBc, q.row(i0 + r0), q.ld, true,
                   dk.row(j0 + c0), dk.ld);
      });
    }
  }
  return dbias;
}

// (b, h) pairs per task: at least ~2^16 multiply-adds each, so tiny problems (gradcheck samples,
// short decode steps) run inline instead of paying for a parallel region. Depends on the shape
// only; each pair's arithmetic is the same however the pairs are grouped.
int64_t heads_grain(const Dims& dm) {
  const int64_t work = std::max<int64_t>(1, dm.T * dm.S * (dm.Dk + dm.Dv));
  return std::max<int64_t>(1, (int64_t{1} << 16) / work);
}

bool unit_last_stride(const Tensor& t) { return t.size(3) <= 1 || t.stride(3) == 1; }

Dims dims_of(std::string_view op, const Tensor& q, const Tensor& k, const Tensor& v) {
  AL_ASSERT(unit_last_stride(q) && unit_last_stride(k) && unit_last_stride(v), op,
            ": q, k, v need a unit-stride last dim; got q=", q, ", k=", k, ", v=", v);
  return {q.size(2), k.size(2), q.size(3), v.size(3)};
}

// A [B, H, rows, D] tensor stored as [B, rows, H, D]: the layout attention's output and gradients
// take, so that merging the heads back into [B, T, C] (and splitting a [B, T, 3C] projection) is a
// view, not a copy.
Tensor empty_token_major(int64_t B, int64_t H, int64_t rows, int64_t D, DType dtype) {
  return Tensor::empty(Shape{B, rows, H, D}, dtype).permute({0, 2, 1, 3});
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
    cpu::parallel_for(0, B * H, heads_grain(dm), [&](int64_t h0, int64_t h1) {
      Scratch<F> ws(dm, false);
      for (int64_t bh = h0; bh < h1; ++bh) {
        const int64_t b = bh / H, h = bh % H;
        forward_head<F>(hq.at(b, h), hk.at(b, h), hv.at(b, h), ho.at(b, h), dm, static_cast<F>(c), n.data(),
                        row_bias<F>(mode, neglog, pb, h), ws);
      }
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
  // Self-attention (T = S, Dk = Dv) puts dq, dk, dv in one [B, T, 3, H, D] buffer, the layout of
  // a fused q|k|v projection's gradient, so split_heads' backward takes it as it is. Every
  // element is written: zeroed per (b, h) by the thread that then accumulates into it.
  Grads g;
  if (dm.T == dm.S && dm.Dk == dm.Dv) {
    const int64_t T = dm.T, D = dm.Dk;
    const Tensor joint = Tensor::empty(Shape{B, T, 3, H, D}, q.dtype());
    auto part = [&](int64_t i) {
      return Tensor(joint.storage(), Shape{B, H, T, D}, {T * 3 * H * D, D, 3 * H * D, 1}, i * H * D, q.dtype());
    };
    g = {part(0), part(1), part(2), Tensor()};
  } else {
    g = {empty_token_major(B, H, dm.T, dm.Dk, q.dtype()), empty_token_major(B, H, dm.S, dm.Dk, q.dtype()),
         empty_token_major(B, H, dm.S, dm.Dv, q.dtype()), Tensor()};
  }
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
    cpu::parallel_for(0, B * H, heads_grain(dm), [&](int64_t h0, int64_t h1) {
      Scratch<F> ws(dm, true);
      for (int64_t bh = h0; bh < h1; ++bh) {
        const int64_t b = bh / H, h = bh % H;
        db_pairs[static_cast<size_t>(bh)] =
            backward_head<F>(hq.at(b, h), hk.at(b, h), hv.at(b, h), hdo.at(b, h), hdq.at(b, h), hdk.at(b, h),
                             hdv.at(b, h), dm, static_cast<F>(c), n.data(), row_bias<F>(mode, neglog, pb, h), ws);
      }
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
