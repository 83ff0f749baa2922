// CPU forward and backward of the fused InfSA attention (infsa_attention.h), f32 and f64.
//
// The structure is softmax_attention_cpu.cpp's (FlashAttention-2 on the CPU) with the softmax
// taken out: no running max, no exp, no rescaling. Per (b, h), query i (position S - T + i) sees
// the keys [0, n_i) and the query rows [0, m_i), m_i = min(T, n_i - (S - T)) >= i + 1 (a row sees
// the rows whose positions it sees; n_i and m_i never decrease with i).
//
// Forward, one pass over tiles of kBr queries x kBc keys (tiles wholly past n of the query tile's
// last row are skipped, the causal diagonal is cut into 12-row / 12-key chunks, see Tile):
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
// q, k, v, out, dout and the gradients are read and written through per-tensor (b, h) strides and
// a row stride, so token-major and fused-projection layouts need no copies; only the last dim
// must be unit-stride. Scratch is per task: two score-sized tiles, k^T and v^T of the pair, and
// O(T) row vectors (dU [T, Dv] in backward): never a [T, S] matrix.
// The tile products go through softmax's register-blocked micro-kernel (GCC vector extensions).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "layers/attention/infsa/infsa_attention.h"
#include "lib/cpu/parallel.h"
#include "lib/error.h"

namespace attnlab {

namespace {

constexpr std::string_view kName = "infsa_attention";
// Tiles of 96 x 96 as in softmax (a multiple of the 6-row micro-kernel and of the vector widths).
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
  F total = 0;
  for (int i = 0; i < static_cast<int>(W); ++i) total += sum[i];
  return total;
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
std::vector<int64_t> visible_counts(int64_t T, int64_t S, const AttentionMask& mask) {
  std::vector<int64_t> n(static_cast<size_t>(T));
  for (int64_t i = 0; i < T; ++i) {
    const int64_t p = S - T + i;
    int64_t c = S;
    if (mask.causal) c = std::min(S, p < mask.prefix ? std::max(p + 1, mask.prefix) : p + 1);
    AL_ASSERT(c >= 1 && (i == 0 || c >= n[static_cast<size_t>(i - 1)]), kName, ": query ", i,
              " sees no key or fewer than the previous query (T=", T, ", S=", S, ")");
    n[static_cast<size_t>(i)] = c;
  }
  return n;
}

// m_i, the number of query rows row i sees (the rows [0, m_i)): those at positions < n_i.
std::vector<int64_t> visible_rows(const std::vector<int64_t>& n, int64_t T, int64_t S) {
  std::vector<int64_t> m(n.size());
  for (size_t i = 0; i < n.size(); ++i) m[i] = std::min(T, n[i] - (S - T));
  return m;
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

// A [B, H, rows, D] tensor whose last dim is unit-stride (any other strides).
template <typename F>
struct Heads {
  F* p;
  int64_t sb, sh, ld;
  Heads(F* data, const Tensor& t) : p(data), sb(t.stride(0)), sh(t.stride(1)), ld(t.stride(2)) {}
  Rows<F> at(int64_t b, int64_t h) const { return {p + b * sb + h * sh, ld}; }
};

// Per-task scratch: the score tile and the dP tile (leading dim kBc), k^T (and v^T in backward)
// of the current (b, h) with rows padded to whole vectors (the padding stays zero, so a ragged key
// tile is still computed in whole vectors), dU [T, Dv] in backward, and row vectors in double.
template <typename F>
struct Scratch {
  int64_t sp;  // padded S: the leading dim of kt and vt
  std::vector<F> s, dp, kt, vt, du, dr;
  std::vector<double> rows;  // forward: r_i then its prefix sums; backward: dR_i then suffix sums
  Scratch(const Dims& dims, bool backward)
      : sp(round_up_lanes<F>(dims.S) + kLanes<F>),  // one vector more: no power-of-two stride
        s(static_cast<size_t>(kBr * kBc)),
        dp(backward ? static_cast<size_t>(kBr * kBc) : 0),
        kt(static_cast<size_t>(dims.Dk * sp)),
        vt(backward ? static_cast<size_t>(dims.Dv * sp) : 0),
        du(backward ? static_cast<size_t>(dims.T * dims.Dv) : 0),
        dr(backward ? static_cast<size_t>(dims.T) : 0),
        rows(static_cast<size_t>(dims.T + 1)) {}
};

// A tile of queries [i0, i0 + br) x keys [j0, j0 + bc) under the mask. Row r sees the tile's
// columns [0, lim(r)). When the tile is not fully visible (the causal diagonal, or the edge of a
// prefix), its products are cut into chunks so that little of the invisible triangle is computed:
// rows in chunks of kChunk, each chunk computing only the columns its last row sees (S, dP, and the
// products that contract over keys: A V and dS K); keys in chunks of kChunk, each chunk summing
// only over the rows that see its first key (A^T dU and dS^T Q). A fully visible tile is one chunk.
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

// The per-head scalars of one call.
struct HeadScalars {
  double gamma;  // sigmoid(theta_h)
  double r0;     // energy carried from the rows before query 0 (forward only)
};

// One (b, h): q [T, Dk], k [S, Dk], v [S, Dv] -> out [T, Dv], F [T], and *r_final.
template <typename F>
void forward_head(Rows<const F> q, Rows<const F> k, Rows<const F> v, Rows<F> out, F* fout, F* r_final,
                  HeadScalars hs, const Dims& dm, F scale, const int64_t* n, const int64_t* m, Scratch<F>& ws) {
  const int64_t T = dm.T, Dv = dm.Dv, sp = ws.sp;
  F* s = ws.s.data();
  F* kt = ws.kt.data();
  double* r = ws.rows.data();
  transpose_into(k.p, dm.S, dm.Dk, k.ld, kt, sp);
  for (int64_t i = 0; i < T; ++i) std::fill(out.row(i), out.row(i) + Dv, F(0));
  std::fill(r, r + T, 0.0);
  for (int64_t i0 = 0; i0 < T; i0 += kBr) {
    const int64_t br = std::min(kBr, T - i0);
    const int64_t nmax = n[i0 + br - 1];
    for (int64_t j0 = 0; j0 < nmax; j0 += kBc) {
      const Tile tile(n, i0, j0, br, std::min(kBc, nmax - j0));
      // S = c Q_I K_J^T, in whole vectors (columns past the visible ones are zeroed by row_relu).
      tile.row_chunks([&](int64_t r0, int64_t rows, int64_t cols) {
        tile_mm<F>(rows, round_up_lanes<F>(cols), dm.Dk, scale, q.row(i0 + r0), q.ld, 1, kt + j0, sp, false,
                   s + r0 * kBc, kBc);
      });
      for (int64_t rr = 0; rr < br; ++rr) r[i0 + rr] += row_relu(s + rr * kBc, tile.lim(rr), tile.bc);
      // U_I += A V_J, straight into out
      tile.row_chunks([&](int64_t r0, int64_t rows, int64_t cols) {
        tile_mm<F>(rows, Dv, cols, F(1), s + r0 * kBc, kBc, 1, v.row(j0), v.ld, true, out.row(i0 + r0), out.ld);
      });
    }
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
  const int64_t T = dm.T, Dk = dm.Dk, Dv = dm.Dv, sp = ws.sp;
  for (int64_t i = 0; i < T; ++i) std::fill(dq.row(i), dq.row(i) + Dk, F(0));
  for (int64_t j = 0; j < dm.S; ++j) std::fill(dk.row(j), dk.row(j) + Dk, F(0));
  for (int64_t j = 0; j < dm.S; ++j) std::fill(dv.row(j), dv.row(j) + Dv, F(0));
  F* s = ws.s.data();
  F* dp = ws.dp.data();
  F* kt = ws.kt.data();
  F* vt = ws.vt.data();
  F* du = ws.du.data();
  F* dr = ws.dr.data();
  double* dR = ws.rows.data();
  transpose_into(k.p, dm.S, Dk, k.ld, kt, sp);
  transpose_into(v.p, dm.S, Dv, v.ld, vt, sp);

  // Preprocess: delta, dU, dR; then the reverse scan for dr.
  double delta_sum = 0;
  for (int64_t i = 0; i < T; ++i) {
    const F* g = dout.row(i);
    const F* o = out.row(i);
    double delta = 0;
#pragma omp simd reduction(+ : delta)
    for (int64_t d = 0; d < Dv; ++d) delta += static_cast<double>(g[d]) * o[d];
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

  for (int64_t j0 = 0; j0 < dm.S; j0 += kBc) {
    const int64_t bc = std::min(kBc, dm.S - j0);
    const int64_t i_start = std::upper_bound(n, n + T, j0) - n;  // first query that sees key j0
    for (int64_t i0 = i_start; i0 < T; i0 += kBr) {
      const Tile tile(n, i0, j0, std::min(kBr, T - i0), bc);
      const int64_t br = tile.br;
      // A = relu(c Q_I K_J^T), 0 where masked.
      tile.row_chunks([&](int64_t r0, int64_t rows, int64_t cols) {
        tile_mm<F>(rows, round_up_lanes<F>(cols), Dk, scale, q.row(i0 + r0), q.ld, 1, kt + j0, sp, false,
                   s + r0 * kBc, kBc);
      });
      for (int64_t r = 0; r < br; ++r) row_relu(s + r * kBc, tile.lim(r), bc);
      // dV_J += A^T dU_I
      tile.col_chunks([&](int64_t c0, int64_t cols, int64_t r0) {
        tile_mm<F>(cols, Dv, br - r0, F(1), s + r0 * kBc + c0, 1, kBc, du + (i0 + r0) * Dv, Dv, true,
                   dv.row(j0 + c0), dv.ld);
      });
      // dP = dU_I V_J^T, then dS = [A > 0] (dP + 2 A dr) in its place (0 where masked: A is 0 there).
      tile.row_chunks([&](int64_t r0, int64_t rows, int64_t cols) {
        tile_mm<F>(rows, round_up_lanes<F>(cols), Dv, F(1), du + (i0 + r0) * Dv, Dv, 1, vt + j0, sp, false,
                   dp + r0 * kBc, kBc);
      });
      for (int64_t r = 0; r < br; ++r) relu_grad_row(dp + r * kBc, s + r * kBc, 2 * dr[i0 + r], tile.lim(r), bc);
      // dQ_I += c dS K_J;  dK_J += c dS^T Q_I
      tile.row_chunks([&](int64_t r0, int64_t rows, int64_t cols) {
        tile_mm<F>(rows, Dk, cols, scale, dp + r0 * kBc, kBc, 1, k.row(j0), k.ld, true, dq.row(i0 + r0), dq.ld);
      });
      tile.col_chunks([&](int64_t c0, int64_t cols, int64_t r0) {
        tile_mm<F>(cols, Dk, br - r0, scale, dp + r0 * kBc + c0, 1, kBc, q.row(i0 + r0), q.ld, true,
                   dk.row(j0 + c0), dk.ld);
      });
    }
  }
  return delta_sum;
}

// (b, h) pairs per task: at least ~2^16 multiply-adds each, so tiny problems run inline instead
// of paying for a parallel region. Depends on the shape only.
int64_t heads_grain(const Dims& dm) {
  const int64_t work = std::max<int64_t>(1, dm.T * dm.S * (dm.Dk + dm.Dv));
  return std::max<int64_t>(1, (int64_t{1} << 16) / work);
}

bool unit_last_stride(const Tensor& t) { return t.size(3) <= 1 || t.stride(3) == 1; }

Dims dims_of(const Tensor& q, const Tensor& k, const Tensor& v) {
  AL_ASSERT(unit_last_stride(q) && unit_last_stride(k) && unit_last_stride(v), kName,
            ": q, k, v need a unit-stride last dim; got q=", q, ", k=", k, ", v=", v);
  return {q.size(2), k.size(2), q.size(3), v.size(3)};
}

// A [B, H, rows, D] tensor stored as [B, rows, H, D] (see softmax_attention_cpu.cpp): merging the
// heads back into [B, T, C] is then a view.
Tensor empty_token_major(int64_t B, int64_t H, int64_t rows, int64_t D, DType dtype) {
  return Tensor::empty(Shape{B, rows, H, D}, dtype).permute({0, 2, 1, 3});
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
  const Dims dm = dims_of(q, k, v);
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
  const std::vector<int64_t> n = visible_counts(dm.T, dm.S, mask), m = visible_rows(n, dm.T, dm.S);
  dispatch_float(q.dtype(), kName, [&](auto tag) {
    using F = decltype(tag);
    const std::vector<double> g = gammas<F>(theta);
    const F* pr0 = r0.defined() ? r0.data<F>() : nullptr;
    const Heads<const F> hq(q.data<F>(), q), hk(k.data<F>(), k), hv(v.data<F>(), v);
    const Heads<F> ho(f.out.data<F>(), f.out);
    F* pf = f.F.data<F>();
    F* prf = f.r.data<F>();
    cpu::parallel_for(0, B * H, heads_grain(dm), [&](int64_t h0, int64_t h1) {
      Scratch<F> ws(dm, false);
      for (int64_t bh = h0; bh < h1; ++bh) {
        const int64_t b = bh / H, h = bh % H;
        const HeadScalars hs{g[static_cast<size_t>(h)], pr0 ? static_cast<double>(pr0[bh]) : 0.0};
        forward_head<F>(hq.at(b, h), hk.at(b, h), hv.at(b, h), ho.at(b, h), pf + bh * dm.T, prf + bh, hs, dm,
                        static_cast<F>(scale), n.data(), m.data(), ws);
      }
    });
  });
  return f;
}

InfsaAttentionOp::Grads InfsaAttentionOp::backward(CpuTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                   const Tensor& theta, const Tensor& out, const Tensor& F,
                                                   const Tensor& dout, const AttentionMask& mask, double scale) {
  const Dims dm = dims_of(q, k, v);
  const int64_t B = q.size(0), H = q.size(1);
  AL_ASSERT(unit_last_stride(out) && F.is_contiguous() && unit_last_stride(dout) && out.shape() == dout.shape() &&
                out.shape() == Shape({B, H, dm.T, dm.Dv}) && F.shape() == Shape({B, H, dm.T}) &&
                out.dtype() == q.dtype() && F.dtype() == q.dtype() && dout.dtype() == q.dtype(),
            kName, ": backward got out=", out, ", F=", F, ", dout=", dout, " for q=", q, ", v=", v);
  // Self-attention (T = S, Dk = Dv) puts dq, dk, dv in one [B, T, 3, H, D] buffer, the layout of
  // a fused q|k|v projection's gradient (as softmax_attention does). Every element is written.
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
  g.dtheta = Tensor::zeros(Shape{H}, q.dtype());
  if (B * H * dm.T == 0) {
    g.dq.fill_(0.0), g.dk.fill_(0.0), g.dv.fill_(0.0);
    return g;
  }
  const std::vector<int64_t> n = visible_counts(dm.T, dm.S, mask), m = visible_rows(n, dm.T, dm.S);
  dispatch_float(q.dtype(), kName, [&](auto tag) {
    using Fl = decltype(tag);
    const std::vector<double> gam = gammas<Fl>(theta);
    const Heads<const Fl> hq(q.data<Fl>(), q), hk(k.data<Fl>(), k), hv(v.data<Fl>(), v), ho(out.data<Fl>(), out),
        hdo(dout.data<Fl>(), dout);
    const Heads<Fl> hdq(g.dq.data<Fl>(), g.dq), hdk(g.dk.data<Fl>(), g.dk), hdv(g.dv.data<Fl>(), g.dv);
    const Fl* pf = F.data<Fl>();
    std::vector<double> delta_sums(static_cast<size_t>(B * H));
    cpu::parallel_for(0, B * H, heads_grain(dm), [&](int64_t h0, int64_t h1) {
      Scratch<Fl> ws(dm, true);
      for (int64_t bh = h0; bh < h1; ++bh) {
        const int64_t b = bh / H, h = bh % H;
        delta_sums[static_cast<size_t>(bh)] = backward_head<Fl>(
            hq.at(b, h), hk.at(b, h), hv.at(b, h), ho.at(b, h), pf + bh * dm.T, hdo.at(b, h), hdq.at(b, h),
            hdk.at(b, h), hdv.at(b, h), gam[static_cast<size_t>(h)], dm, static_cast<Fl>(scale), n.data(), m.data(),
            ws);
      }
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
