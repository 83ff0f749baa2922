// The flash-style tile machinery that the fused CPU kernels of the attention variants share
// (FlashAttention-2 on the CPU): one copy of the vector types, the register-blocked tile products,
// the transposes, the per-row visible-key counts, the tile loops of forward and backward, and the
// strided layouts. A variant's *_cpu.cpp keeps only what is its own: the elementwise function
// that turns a score tile into weights, its row statistics, its epilogue and its backward formula.
// softmax, sigmoid and infsa run the tile loops below; linear_infsa (chunked, not tiled) uses the
// tile products, the transposes and the layouts.
//
// Shapes, per (b, h) pair: q [T, Dk], k [S, Dk], v [S, Dv], out and dout [T, Dv], query i at
// absolute position S - T + i (S >= T). Each matrix is read and written through per-tensor (b, h)
// strides and a row stride (Heads, Rows), so token-major and fused-projection layouts need no
// copies; only the last dim must be unit-stride.
//
// The mask reduces to one number per query row: query i (position p = S - T + i) sees exactly the
// keys [0, n_i) (causal: n_i = p + 1, or max(p + 1, prefix) inside a bidirectional prefix; not
// causal: S). n_i >= 1 and n_i never decreases with i, so
//   - a query tile [i0, i1) needs the keys [0, n_{i1-1}) only: key tiles past that are skipped and
//     the last one is cut to width n_{i1-1} - j0;
//   - a key tile [j0, j1) is seen by the rows i >= first i with n_i > j0 only, which is where the
//     backward's query loop starts;
//   - a tile with j1 <= n_{i0} is fully visible (no masking); otherwise row r sees the columns
//     j < n_r - j0, and the tile's products are cut into 12-row / 12-key chunks (Tile) so that the
//     invisible triangle of the causal diagonal is mostly not computed.
//
// The tile loops, queries in tiles I of kBr rows and keys in tiles J of kBc columns:
//   forward   per key tile J of a query tile I: S = scale Q_I K_J^T; P = weights(S), the variant's
//             (exactly 0 where masked); acc_I += P V_J
//   backward  key tiles outer, query tiles inner: S and P as in forward; dV_J += P^T G_I;
//             dP = G_I V_J^T; dS = grad(P, dP), the variant's (exactly 0 where masked);
//             dQ_I += scale dS K_J; dK_J += scale dS^T Q_I
// with G the gradient that reaches P V (dout, or a variant's rescaled dout). Scratch is per task:
// the score and dP tiles and k^T, v^T of the pair ([D, S], so the tile products read contiguous
// rows; TileScratch); never a [T, S] matrix.
//
// The tile products run through a register-blocked micro-kernel written with GCC vector extensions
// (so any target; AVX2 gives 6 x 16 f32 outputs per kernel, AVX-512 6 x 64): cpu::gemm (OpenBLAS
// or Eigen) costs a call, packing and a thread check per 96^3 tile, and measured slower at these
// sizes. Each (b, h) pair is one task for one thread (for_each_head), so the bits do not depend on
// the thread count.
//
// Everything here is inline or a template over F = float or double. The vector width follows the
// build's target flags (kVecBytes), so every file that includes this one must be built with the
// same flags (they are: one library target).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

#include "layers/attention/common.h"
#include "lib/cpu/parallel.h"
#include "lib/error.h"
#include "lib/tensor.h"

namespace attnlab::attn_cpu {

// ---- vectors --------------------------------------------------------------------------------------

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
// The sum of the lanes, in lane order.
template <typename F, typename V = typename Vec<F>::V>
inline F lane_sum(const V& v) {
  F total = 0;
  for (int i = 0; i < static_cast<int>(kLanes<F>); ++i) total += v[i];
  return total;
}

// e^x lane by lane: 2^n e^r with n = round(x / ln 2) (adding 1.5 * 2^mantissa-bits rounds, and
// leaves n in the low bits), r = x - n ln 2 in two parts, and a polynomial for e^r: Cephes' degree
// 6 for f32 (about 1 ulp), Taylor to degree 12 for f64 (a few ulp). 0 below the normal range,
// e^88.3 (f32) / e^709 (f64) above it (finite: sigmoid's 1 / (1 + e^-x) relies on that); NaN
// stays NaN.
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
  constexpr double kInvFact[13] = {
      1.0 / 479001600, 1.0 / 39916800, 1.0 / 3628800, 1.0 / 362880, 1.0 / 40320, 1.0 / 5040, 1.0 / 720,
      1.0 / 120,       1.0 / 24,       1.0 / 6,       1.0 / 2,      1.0,         1.0};
  V p = splat<V>(kInvFact[0]);
  for (int i = 1; i < 13; ++i) p = p * r + kInvFact[i];
  const I e = (((I)t - (I)magic) + 1023) << 52;
  const V res = p * (V)e;
  return x < lo ? V{} : res;
}

// ---- the tile products ----------------------------------------------------------------------------

// C[M, N] = alpha A B (or C += alpha A B when `accumulate`), with A(i, k) = A[i * sai + k * sak]
// (so A or A^T of a row-major tile) and B a row-major [K, N] with leading dim ldb. A micro-kernel
// keeps kR rows x kNV vectors of C in registers over the whole K loop: per k, kNV loads of B, kR
// broadcasts of A and kR * kNV FMAs. Columns past the last whole vector go through a plain loop.
// kScale = false is the unscaled product C (+)= A B (alpha unused; the overload below).
template <typename F, int R, int NV, bool kScale>
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
      V out;
      if constexpr (kScale)
        out = c[r][v] * alpha;
      else
        out = c[r][v];
      if (accumulate) {
        V old;
        __builtin_memcpy(&old, p, sizeof(V));
        out += old;
      }
      __builtin_memcpy(p, &out, sizeof(V));
    }
}

template <typename F, int R, bool kScale>
void micro_rows(int nv, int64_t K, F alpha, const F* A, int64_t sai, int64_t sak, const F* B, int64_t ldb,
                bool accumulate, F* C, int64_t ldc) {
  static_assert(kNV == 2 || kNV == 4);
  switch (nv) {
    case 1: return micro<F, R, 1, kScale>(K, alpha, A, sai, sak, B, ldb, accumulate, C, ldc);
    case 2: return micro<F, R, 2, kScale>(K, alpha, A, sai, sak, B, ldb, accumulate, C, ldc);
    case 3:
      if constexpr (kNV >= 3) return micro<F, R, 3, kScale>(K, alpha, A, sai, sak, B, ldb, accumulate, C, ldc);
      break;
    default:
      if constexpr (kNV >= 4) return micro<F, R, 4, kScale>(K, alpha, A, sai, sak, B, ldb, accumulate, C, ldc);
      break;
  }
}

template <typename F, bool kScale = true>
void tile_mm(int64_t M, int64_t N, int64_t K, F alpha, const F* A, int64_t sai, int64_t sak, const F* B, int64_t ldb,
             bool accumulate, F* C, int64_t ldc) {
  constexpr int64_t W = kLanes<F>;
  if constexpr (!kScale) {
    if (K == 0) {  // an empty sum: C = 0 (or unchanged)
      if (!accumulate)
        for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, F(0));
      return;
    }
  }
  int64_t j = 0;
  while (N - j >= W) {
    const int nv = static_cast<int>(std::min<int64_t>(kNV, (N - j) / W));
    for (int64_t i = 0; i < M; i += kR) {
      const F* a = A + i * sai;
      const F* b = B + j;
      F* c = C + i * ldc + j;
      switch (std::min<int64_t>(kR, M - i)) {
        case 1: micro_rows<F, 1, kScale>(nv, K, alpha, a, sai, sak, b, ldb, accumulate, c, ldc); break;
        case 2: micro_rows<F, 2, kScale>(nv, K, alpha, a, sai, sak, b, ldb, accumulate, c, ldc); break;
        case 3: micro_rows<F, 3, kScale>(nv, K, alpha, a, sai, sak, b, ldb, accumulate, c, ldc); break;
        case 4: micro_rows<F, 4, kScale>(nv, K, alpha, a, sai, sak, b, ldb, accumulate, c, ldc); break;
        case 5: micro_rows<F, 5, kScale>(nv, K, alpha, a, sai, sak, b, ldb, accumulate, c, ldc); break;
        default: micro_rows<F, 6, kScale>(nv, K, alpha, a, sai, sak, b, ldb, accumulate, c, ldc); break;
      }
    }
    j += nv * W;
  }
  for (int64_t i = 0; i < M; ++i)
    for (int64_t jj = j; jj < N; ++jj) {
      F s = 0;
      for (int64_t k = 0; k < K; ++k) s += A[i * sai + k * sak] * B[k * ldb + jj];
      F& c = C[i * ldc + jj];
      if constexpr (kScale)
        c = accumulate ? c + alpha * s : alpha * s;
      else
        c = accumulate ? c + s : s;
    }
}

// C[M, N] = A B (or C += A B when `accumulate`): the product above without a scale. An empty sum
// (K = 0) gives C = 0 (or leaves C as it is) without reading A or B.
template <typename F>
void tile_mm(int64_t M, int64_t N, int64_t K, const F* A, int64_t sai, int64_t sak, const F* B, int64_t ldb,
             bool accumulate, F* C, int64_t ldc) {
  tile_mm<F, false>(M, N, K, F(1), A, sai, sak, B, ldb, accumulate, C, ldc);
}

// ---- transposes -----------------------------------------------------------------------------------

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

// ---- layouts --------------------------------------------------------------------------------------

struct Dims {
  int64_t T, S, Dk, Dv;
  int64_t off() const { return S - T; }  // the position of query 0
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

inline bool unit_last_stride(const Tensor& t) { return t.size(3) <= 1 || t.stride(3) == 1; }

// The dims of q [B, H, T, Dk], k [B, H, S, Dk], v [B, H, S, Dv] (already checked), which must have
// a unit-stride last dim; `op` names the op in the error.
inline Dims dims_of(std::string_view op, const Tensor& q, const Tensor& k, const Tensor& v) {
  AL_ASSERT(unit_last_stride(q) && unit_last_stride(k) && unit_last_stride(v), op,
            ": q, k, v need a unit-stride last dim; got q=", q, ", k=", k, ", v=", v);
  return {q.size(2), k.size(2), q.size(3), v.size(3)};
}

// A [B, H, rows, D] tensor stored as [B, rows, H, D]: the layout attention's output and gradients
// take, so that merging the heads back into [B, T, C] (and splitting a [B, T, 3C] projection) is a
// view, not a copy.
inline Tensor empty_token_major(int64_t B, int64_t H, int64_t rows, int64_t D, DType dtype) {
  return Tensor::empty(Shape{B, rows, H, D}, dtype).permute({0, 2, 1, 3});
}

struct QkvGrads {
  Tensor dq, dk, dv;
};

// dq [B, H, T, Dk], dk [B, H, S, Dk], dv [B, H, S, Dv] for a backward, not initialised: the kernels
// write every element (each (b, h) is zeroed by the thread that then accumulates into it).
// Self-attention (T = S, Dk = Dv) puts the three in one [B, T, 3, H, D] buffer, the layout of a
// fused q|k|v projection's gradient, so split_heads' backward takes it as it is; otherwise each is
// token-major.
inline QkvGrads empty_qkv_grads(int64_t B, int64_t H, const Dims& dm, DType dtype) {
  if (dm.T == dm.S && dm.Dk == dm.Dv) {
    const int64_t T = dm.T, D = dm.Dk;
    const Tensor joint = Tensor::empty(Shape{B, T, 3, H, D}, dtype);
    auto part = [&](int64_t i) {
      return Tensor(joint.storage(), Shape{B, H, T, D}, {T * 3 * H * D, D, 3 * H * D, 1}, i * H * D, dtype);
    };
    return {part(0), part(1), part(2)};
  }
  return {empty_token_major(B, H, dm.T, dm.Dk, dtype), empty_token_major(B, H, dm.S, dm.Dk, dtype),
          empty_token_major(B, H, dm.S, dm.Dv, dtype)};
}

// sum_d a[d] b[d] in double: a dot product of two rows (<dout_i, out_i>).
template <typename F>
double row_dot(const F* a, const F* b, int64_t n) {
  double acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t d = 0; d < n; ++d) acc += static_cast<double>(a[d]) * b[d];
  return acc;
}

// (b, h) pairs per task for `work` multiply-adds per pair: at least ~2^16 per task, so tiny problems
// (gradcheck samples, short decode steps) run inline instead of paying for a parallel region.
// Depends on the shape only; each pair's arithmetic is the same however the pairs are grouped.
inline int64_t heads_grain(int64_t work) {
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, work));
}
// ... for the tile loops: T S (Dk + Dv) per pair.
inline int64_t heads_grain(const Dims& dm) { return heads_grain(dm.T * dm.S * (dm.Dk + dm.Dv)); }

// fn(b, h, bh, ws) for every (b, h) pair of B x H (bh = b H + h), over OpenMP in tasks of `grain`
// pairs, with one Scratch(dm, backward) per task.
template <typename Scratch, typename Fn>
void for_each_head(int64_t B, int64_t H, int64_t grain, const Dims& dm, bool backward, Fn&& fn) {
  cpu::parallel_for(0, B * H, grain, [&](int64_t h0, int64_t h1) {
    Scratch ws(dm, backward);
    for (int64_t bh = h0; bh < h1; ++bh) fn(bh / H, bh % H, bh, ws);
  });
}

// ---- the mask and the tiles -----------------------------------------------------------------------

// n_i, the number of keys query i sees (the keys [0, n_i)); see the file comment.
inline std::vector<int64_t> visible_counts(std::string_view op, int64_t T, int64_t S, const AttentionMask& mask) {
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

// Tiles of 96 x 96 (a multiple of the 6-row micro-kernel and of the vector widths) measured a
// little faster than 64 x 64 at T = 128..1024, D = 64; both are 36 KiB score tiles in f32.
constexpr int64_t kBr = 96;  // query rows per tile
constexpr int64_t kBc = 96;  // key columns per tile

// A tile of queries [i0, i0 + br) x keys [j0, j0 + bc) under the mask. Row r sees the tile's
// columns [0, lim(r)). When the tile is not fully visible (the causal diagonal, or the edge of a
// prefix), its products are cut into chunks so that little of the invisible triangle is computed:
// rows in chunks of kChunk, each chunk computing only the columns its last row sees (S, dP, and the
// products that contract over keys: P V and dS K); keys in chunks of kChunk, each chunk summing
// only over the rows that see its first key (P^T G and dS^T Q). A fully visible tile is one chunk.
constexpr int64_t kChunk = 12;

struct Tile {
  const int64_t* n;  // n + i0: the visible-key counts of the tile's rows
  int64_t i0, j0, br, bc;
  bool full;
  Tile(const int64_t* n_all, int64_t i0_, int64_t j0_, int64_t br_, int64_t bc_)
      : n(n_all + i0_), i0(i0_), j0(j0_), br(br_), bc(bc_), full(n_all[i0_] >= j0_ + bc_) {}
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

// Per-task scratch of the tile loops: the score tile s and (backward) the dP tile dp, [kBr, kBc];
// k^T (and v^T in backward) of the current (b, h), [D, sp] with rows padded to whole vectors (the
// padding stays zero) so a ragged key tile is still computed in whole vectors. A variant's Scratch
// derives from it with its own row statistics.
template <typename F>
struct TileScratch {
  int64_t sp;  // padded S: the leading dim of kt and vt
  std::vector<F> s, dp, kt, vt;
  TileScratch(const Dims& dims, bool backward)
      : sp(round_up_lanes<F>(dims.S) + kLanes<F>),  // one vector more: no power-of-two stride
        s(static_cast<size_t>(kBr * kBc)),
        dp(backward ? static_cast<size_t>(kBr * kBc) : 0),
        kt(static_cast<size_t>(dims.Dk * sp)),
        vt(backward ? static_cast<size_t>(dims.Dv * sp) : 0) {}
};

// s = alpha X_I Y_J^T for a tile (leading dim kBc): X's rows [tile.i0, tile.i0 + br), yt = Y^T
// [D, sp]. Whole vectors per row chunk: a row's columns [lim, round_up_lanes(lim)) hold scores of
// keys it does not see (or padding zeros), and the columns past its chunk's width are not written.
template <typename F>
void tile_scores(const Tile& tile, Rows<const F> x, const F* yt, int64_t sp, int64_t D, F alpha, F* s) {
  tile.row_chunks([&](int64_t r0, int64_t rows, int64_t cols) {
    tile_mm<F>(rows, round_up_lanes<F>(cols), D, alpha, x.row(tile.i0 + r0), x.ld, 1, yt + tile.j0, sp, false,
               s + r0 * kBc, kBc);
  });
}

// Forward over the key tiles that the query tile [i0, i0 + br) sees: per key tile,
// S = scale Q_I K_J^T into ws.s, weights(tile) turns ws.s into the variant's weights P in place
// (exactly 0 in each row r's columns [tile.lim(r), tile.bc): no product reads past them), then
// acc += P V_J, acc the query tile's [br, Dv] rows (any row stride). ws.kt must hold k^T.
template <typename F, typename Weights>
void forward_key_tiles(Rows<const F> q, Rows<const F> v, const Dims& dm, F scale, const int64_t* n, int64_t i0,
                       int64_t br, TileScratch<F>& ws, Rows<F> acc, Weights&& weights) {
  F* s = ws.s.data();
  const int64_t nmax = n[i0 + br - 1];
  for (int64_t j0 = 0; j0 < nmax; j0 += kBc) {
    const Tile tile(n, i0, j0, br, std::min(kBc, nmax - j0));
    tile_scores(tile, q, ws.kt.data(), ws.sp, dm.Dk, scale, s);
    weights(tile);
    // acc += P V_J
    tile.row_chunks([&](int64_t r0, int64_t rows, int64_t cols) {
      tile_mm<F>(rows, dm.Dv, cols, F(1), s + r0 * kBc, kBc, 1, v.row(j0), v.ld, true, acc.row(r0), acc.ld);
    });
  }
}

// Backward of one (b, h), key tiles outer and query tiles inner (from the first query that sees
// the key tile): S = scale Q_I K_J^T into ws.s and weights(tile) as in forward; dV_J += P^T G_I;
// dP = G_I V_J^T into ws.dp; grad(tile) turns ws.dp into dS in place (given P in ws.s; exactly 0 in
// each row r's columns [tile.lim(r), tile.bc)); dQ_I += scale dS K_J; dK_J += scale dS^T Q_I.
// g [T, Dv] is the gradient that reaches P V. Zeroes dq, dk, dv and fills ws.kt, ws.vt first.
template <typename F, typename Weights, typename Grad>
void backward_tiles(Rows<const F> q, Rows<const F> k, Rows<const F> v, Rows<const F> g, Rows<F> dq, Rows<F> dk,
                    Rows<F> dv, const Dims& dm, F scale, const int64_t* n, TileScratch<F>& ws, Weights&& weights,
                    Grad&& grad) {
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
  for (int64_t j0 = 0; j0 < dm.S; j0 += kBc) {
    const int64_t bc = std::min(kBc, dm.S - j0);
    const int64_t i_start = std::upper_bound(n, n + T, j0) - n;  // first query that sees key j0
    for (int64_t i0 = i_start; i0 < T; i0 += kBr) {
      const Tile tile(n, i0, j0, std::min(kBr, T - i0), bc);
      const int64_t br = tile.br;
      tile_scores(tile, q, kt, sp, Dk, scale, s);
      weights(tile);
      // dV_J += P^T G_I
      tile.col_chunks([&](int64_t c0, int64_t cols, int64_t r0) {
        tile_mm<F>(cols, Dv, br - r0, F(1), s + r0 * kBc + c0, 1, kBc, g.row(i0 + r0), g.ld, true, dv.row(j0 + c0),
                   dv.ld);
      });
      // dP = G_I V_J^T, then dS in its place.
      tile_scores(tile, g, vt, sp, Dv, F(1), dp);
      grad(tile);
      // dQ_I += scale dS K_J;  dK_J += scale dS^T Q_I
      tile.row_chunks([&](int64_t r0, int64_t rows, int64_t cols) {
        tile_mm<F>(rows, Dk, cols, scale, dp + r0 * kBc, kBc, 1, k.row(j0), k.ld, true, dq.row(i0 + r0), dq.ld);
      });
      tile.col_chunks([&](int64_t c0, int64_t cols, int64_t r0) {
        tile_mm<F>(cols, Dk, br - r0, scale, dp + r0 * kBc + c0, 1, kBc, q.row(i0 + r0), q.ld, true, dk.row(j0 + c0),
                   dk.ld);
      });
    }
  }
}

}  // namespace attnlab::attn_cpu
