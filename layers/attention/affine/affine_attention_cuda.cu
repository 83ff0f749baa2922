// CUDA forward and backward of the fused affine-scaled attention, f32 (kernel plan v1 of the spec:
// SoftmaxAttentionOp's CUDA kernels for the softmax part, unchanged; the kernels here do the rest).
//
// Maths, per (b, h) (glossary in layers/attention/common.h). Query i sees the keys [0, n_i)
// (n_i >= 1, non-decreasing, n_{T-1} = S); N_i = n_i (bias_norm visible) or S (full).
//   forward   z_i = <x_{b,i}, w_a[h]> + c_a[h], alpha_i = phi(z_i), beta_i = (abar_h - alpha_i) / N_i,
//             (O^sm, lse) = softmax forward, C_i = sum_{j < n_i} v_j, out_i = alpha_i O^sm_i + beta_i C_i.
//   backward  dalpha_i = <G_i, O^sm_i> - <G_i, C_i> / N_i, dz_i = dalpha_i phi'(z_i), dO^sm_i = alpha_i G_i;
//             softmax backward with dO^sm; dv_j += R_{f(j)}, R_i = sum_{i' >= i} beta_i' G_i' and f(j) the
//             first query that sees key j; dx_{b,i} = sum_h dz w_a[h]; dw_a[h] = sum_{b,i} dz x_{b,i};
//             dc_a[h] = sum_{b,i} dz.
//
// Shapes: q [B, H, T, Dk], k [B, H, S, Dk], v [B, H, S, Dv], dout [B, H, T, Dv] (any strides, unit-
// stride last dim); x [B, T, Dm], w_a [H, Dm], c_a [H] (optional), abar [H] contiguous. out
// [B, H, T, Dv] token-major (like softmax's); alpha, beta, dphi, dz [B, H, T] and dO^sm
// [B, H, T, Dv] contiguous; chunk sums [B*H, ceil(rows / 64), Dv] contiguous scratch.
//
// Launch shapes and what each thread does:
//   gate        grid ceil(B*T / 8), 256 threads: one warp per token row (b, i); for each head the
//               lanes stride over Dm and a 5-step xor tree sums (every lane gets the same bits);
//               lane 0 writes alpha, beta, phi'(z) of (b, h, i).
//   chunk sums  grid (ceil(rows / 64), B*H), 64 threads: thread d sums its column over the chunk's
//               64 rows in order (weighted by beta in backward: the chunks of beta G).
//   epilogue    grid (ceil(T / 64), B*H), 64 threads: thread d (and d + 64, ...) starts C at
//               n_{i0} from the chunk sums below it plus the rows of its own chunk, then walks the
//               tile's queries, adding keys up to n_i and writing out_i[d].
//   row dots    grid (ceil(T / 64), B*H), 64 threads, 2 x 64 x 65 floats of dynamic smem: the
//               epilogue's walk, each thread keeping its columns' share of <G_i, O^sm_i> and
//               <G_i, C_i> per row in shared memory and writing dO^sm; after a barrier thread r
//               sums row r's 64 shares in order and writes dz.
//   dv          grid (ceil(S / 64), B*H), 64 threads: thread d starts R at the first query that sees
//               the tile's last key (chunk sums above it plus the rest of its chunk), then walks the
//               keys down, adding the queries that start to see each key, and adds R to dv_j[d].
//   dx          grid-stride, 256 threads: one element (b, i, m) per thread, heads summed in order.
//   dw_a, dc_a  grid (ceil(B*T / 256), H), 128 threads: thread m sums dz x[., m] (m = Dm: dz alone)
//               over a chunk of 256 token rows into a partial; then grid-stride over (h, m), each
//               thread summing its partials in chunk order.
// Determinism: no atomics; every output element has one writer and every sum a fixed order.
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "layers/attention/affine/affine_attention.h"
#include "layers/attention/attention_tiles_cuda.h"
#include "layers/attention/softmax/softmax_attention.h"
#include "lib/cuda/kernel.h"
#include "lib/error.h"

namespace attnlab {

namespace {

// From attention_tiles_cuda.h (named one by one: this file has its own Geom and RowDotArgs).
using attention_cuda::clamped_prefix, attention_cuda::empty_token_major, attention_cuda::first_query_seeing,
    attention_cuda::heads, attention_cuda::heads_out, attention_cuda::Heads, attention_cuda::HeadsOut,
    attention_cuda::imin, attention_cuda::tile_count, attention_cuda::unit_last_stride, attention_cuda::visible_keys,
    attention_cuda::warp_sum;

constexpr int kGateThreads = 256;  // 8 warps, one token row each
constexpr int kColThreads = 64;    // the column-walking kernels: a thread per head-dim column
constexpr int kChunk = 64;         // rows per chunk sum
constexpr int kTile = 64;          // queries (or keys) per walking block; <= kColThreads (row dots)
// Row stride of the row dots' shared shares: odd, so the final per-row sums (thread r reads row r)
// hit 32 different banks.
constexpr int kShareLd = kColThreads + 1;
constexpr int kElemThreads = 256;
constexpr int kParamThreads = 128;
constexpr int kRowChunk = 256;  // token rows per dw_a / dc_a partial

struct Geom {
  int B, H, T, S, Dv, Dm;
  int causal;
  int prefix;   // clamped to [0, S]
  int full;     // bias_norm full: N_i = S
  int sigmoid;  // phi = sigmoid (else the linear clip)
};

__device__ inline float bias_norm(const Geom& g, int i) {
  return static_cast<float>(g.full ? g.S : visible_keys(g, i));
}

// ---- forward ------------------------------------------------------------------------------------

struct GateArgs {
  const float* x;              // [B, T, Dm]
  const float* w;              // [H, Dm]
  const float* c;              // [H] or null
  const float* abar;           // [H]
  float *alpha, *beta, *dphi;  // [B, H, T]
  Geom g;
  int64_t rows;  // B * T
};

__global__ void affine_gate_kernel(GateArgs a) {
  const Geom& g = a.g;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kGateThreads / 32) + (threadIdx.x >> 5);
  const bool valid = row < a.rows;  // warp-uniform: the shuffles run in whole warps either way
  const int64_t b = valid ? row / g.T : 0, i = valid ? row % g.T : 0;
  const float* xr = a.x + (valid ? row : 0) * g.Dm;
  for (int h = 0; h < g.H; ++h) {
    float acc = 0.0f;
    if (valid)
      for (int m = lane; m < g.Dm; m += 32) acc += xr[m] * a.w[static_cast<int64_t>(h) * g.Dm + m];
    acc = warp_sum(acc);
    if (valid && lane == 0) {
      const float z = acc + (a.c ? a.c[h] : 0.0f);
      float al, d;
      if (g.sigmoid) {
        al = 1.0f / (1.0f + expf(-z));
        d = al * (1.0f - al);
      } else {
        // Slope 0.1 strictly inside the kinks; clamped (slope 0) at and beyond them.
        const bool inside = z > -5.0f && z < 5.0f;
        al = inside ? z * 0.1f + 0.5f : (z >= 5.0f ? 1.0f : 0.0f);
        d = inside ? 0.1f : 0.0f;
      }
      const int64_t r = (b * g.H + h) * g.T + i;
      a.alpha[r] = al;
      a.dphi[r] = d;
      a.beta[r] = (a.abar[h] - al) / bias_norm(g, static_cast<int>(i));
    }
  }
}

struct ChunkArgs {
  Heads src;            // [B, H, rows, D]
  const float* weight;  // [B, H, rows] or null (weights 1)
  float* sums;          // [B * H, nchunks, D]
  int H, rows, D, nchunks;
};

__global__ void affine_chunk_sum_kernel(ChunkArgs a) {
  const int chunk = static_cast<int>(blockIdx.x), bh = static_cast<int>(blockIdx.y);
  const int b = bh / a.H, h = bh % a.H;
  const int r0 = chunk * kChunk, r1 = imin(a.rows, r0 + kChunk);
  const float* base = a.src.head(b, h);
  const float* wt = a.weight ? a.weight + static_cast<int64_t>(bh) * a.rows : nullptr;
  for (int d = static_cast<int>(threadIdx.x); d < a.D; d += kColThreads) {
    float s = 0.0f;
    for (int r = r0; r < r1; ++r) {
      const float x = base[static_cast<int64_t>(r) * a.src.ld + d];
      s += wt ? wt[r] * x : x;
    }
    a.sums[(static_cast<int64_t>(bh) * a.nchunks + chunk) * a.D + d] = s;
  }
}

// sum_{j < n} v_j[d] from the chunk sums of whole chunks below n and the rows of n's own chunk.
__device__ inline float prefix_at(const float* vsum, int nchunks, int D, const float* vb, int64_t ld, int n, int d,
                                  int64_t bh) {
  float c = 0.0f;
  const int whole = n / kChunk;
  for (int cc = 0; cc < whole; ++cc) c += vsum[(bh * nchunks + cc) * D + d];
  for (int j = whole * kChunk; j < n; ++j) c += vb[j * ld + d];
  return c;
}

struct EpilogueArgs {
  Heads v, osm;
  HeadsOut out;
  const float* vsum;  // chunk sums of v
  const float *alpha, *beta;
  Geom g;
  int nchunks;
};

__global__ void affine_fwd_epilogue_kernel(EpilogueArgs a) {
  const Geom& g = a.g;
  const int bh = static_cast<int>(blockIdx.y), b = bh / g.H, h = bh % g.H;
  const int i0 = static_cast<int>(blockIdx.x) * kTile, i1 = imin(g.T, i0 + kTile);
  const float* vb = a.v.head(b, h);
  const float* sb = a.osm.head(b, h);
  float* ob = a.out.head(b, h);
  const int64_t row0 = static_cast<int64_t>(bh) * g.T;
  const int n0 = visible_keys(g, i0);
  for (int d = static_cast<int>(threadIdx.x); d < g.Dv; d += kColThreads) {
    float c = prefix_at(a.vsum, a.nchunks, g.Dv, vb, a.v.ld, n0, d, bh);
    int j = n0;
    for (int i = i0; i < i1; ++i) {
      for (const int ni = visible_keys(g, i); j < ni; ++j) c += vb[j * a.v.ld + d];
      ob[i * a.out.ld + d] = a.alpha[row0 + i] * sb[i * a.osm.ld + d] + a.beta[row0 + i] * c;
    }
  }
}

// ---- backward -----------------------------------------------------------------------------------

struct RowDotArgs {
  Heads v, osm, dout;
  HeadsOut dsm;
  const float* vsum;
  const float *alpha, *dphi;
  float* dz;
  Geom g;
  int nchunks;
};

__global__ void affine_bwd_rowdot_kernel(RowDotArgs a) {
  const Geom& g = a.g;
  const int tid = static_cast<int>(threadIdx.x);
  const int bh = static_cast<int>(blockIdx.y), b = bh / g.H, h = bh % g.H;
  const int i0 = static_cast<int>(blockIdx.x) * kTile, i1 = imin(g.T, i0 + kTile);
  simt::SmemCarver carve;
  float* gs = carve.take<float>(kTile * kShareLd);  // [row][thread]: this thread's share of <G, O^sm>
  float* gc = carve.take<float>(kTile * kShareLd);  // ... and of <G, C>
  for (int r = 0; r < kTile; ++r) gs[r * kShareLd + tid] = gc[r * kShareLd + tid] = 0.0f;

  const float* vb = a.v.head(b, h);
  const float* sb = a.osm.head(b, h);
  const float* gb = a.dout.head(b, h);
  float* db = a.dsm.head(b, h);
  const int64_t row0 = static_cast<int64_t>(bh) * g.T;
  const int n0 = visible_keys(g, i0);
  for (int d = tid; d < g.Dv; d += kColThreads) {
    float c = prefix_at(a.vsum, a.nchunks, g.Dv, vb, a.v.ld, n0, d, bh);
    int j = n0;
    for (int i = i0; i < i1; ++i) {
      for (const int ni = visible_keys(g, i); j < ni; ++j) c += vb[j * a.v.ld + d];
      const float gv = gb[i * a.dout.ld + d];
      gs[(i - i0) * kShareLd + tid] += gv * sb[i * a.osm.ld + d];
      gc[(i - i0) * kShareLd + tid] += gv * c;
      db[i * a.dsm.ld + d] = a.alpha[row0 + i] * gv;
    }
  }
  __syncthreads();  // every thread's shares are written
  if (tid < i1 - i0) {
    float s = 0.0f, t = 0.0f;
    for (int u = 0; u < kColThreads; ++u) {
      s += gs[tid * kShareLd + u];
      t += gc[tid * kShareLd + u];
    }
    const int i = i0 + tid;
    a.dz[row0 + i] = (s - t / bias_norm(g, i)) * a.dphi[row0 + i];
  }
}

struct DvArgs {
  Heads dout;
  HeadsOut dv;
  const float* gsum;  // chunk sums of beta G over query chunks
  const float* beta;
  Geom g;
  int nchunks;
};

__global__ void affine_bwd_dv_kernel(DvArgs a) {
  const Geom& g = a.g;
  const int bh = static_cast<int>(blockIdx.y), b = bh / g.H, h = bh % g.H;
  const int j0 = static_cast<int>(blockIdx.x) * kTile, j1 = imin(g.S, j0 + kTile);
  const float* gb = a.dout.head(b, h);
  float* vb = a.dv.head(b, h);
  const float* be = a.beta + static_cast<int64_t>(bh) * g.T;
  const int ihi = first_query_seeing(g, j1 - 1);
  const int cstart = (ihi + kChunk - 1) / kChunk;  // the first chunk wholly at or after ihi
  const int iend = imin(g.T, cstart * kChunk);
  for (int d = static_cast<int>(threadIdx.x); d < g.Dv; d += kColThreads) {
    float r = 0.0f;
    for (int i = ihi; i < iend; ++i) r += be[i] * gb[i * a.dout.ld + d];
    for (int cc = cstart; cc < a.nchunks; ++cc) r += a.gsum[(static_cast<int64_t>(bh) * a.nchunks + cc) * g.Dv + d];
    int icur = ihi;  // r = sum_{i >= icur} beta_i G_i
    for (int j = j1 - 1; j >= j0; --j) {
      while (icur > 0 && visible_keys(g, icur - 1) > j) {
        --icur;
        r += be[icur] * gb[icur * a.dout.ld + d];
      }
      vb[j * a.dv.ld + d] += r;
    }
  }
}

struct DxArgs {
  const float* dz;  // [B, H, T]
  const float* w;   // [H, Dm]
  float* dx;        // [B, T, Dm]
  int H, T, Dm;
  int64_t n;  // B * T * Dm
};

__global__ void affine_bwd_dx_kernel(DxArgs a) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kElemThreads;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kElemThreads + threadIdx.x; e < a.n; e += stride) {
    const int64_t r = e / a.Dm, m = e % a.Dm, b = r / a.T, i = r % a.T;
    float acc = 0.0f;
    for (int h = 0; h < a.H; ++h) acc += a.dz[(b * a.H + h) * a.T + i] * a.w[h * a.Dm + m];
    a.dx[e] = acc;
  }
}

struct ParamArgs {
  const float* dz;  // [B, H, T]
  const float* x;   // [B, T, Dm]
  float* part;      // [nparts, H, Dm + 1]
  float *dw, *dc;   // [H, Dm], [H]
  int H, T, Dm, nparts;
  int64_t rows;  // B * T
};

__global__ void affine_bwd_param_partial_kernel(ParamArgs a) {
  const int part = static_cast<int>(blockIdx.x), h = static_cast<int>(blockIdx.y);
  const int64_t r0 = static_cast<int64_t>(part) * kRowChunk;
  const int64_t r1 = r0 + kRowChunk < a.rows ? r0 + kRowChunk : a.rows;
  for (int m = static_cast<int>(threadIdx.x); m <= a.Dm; m += kParamThreads) {
    float acc = 0.0f;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / a.T, i = r % a.T;
      const float dzv = a.dz[(b * a.H + h) * a.T + i];
      acc += m < a.Dm ? dzv * a.x[r * a.Dm + m] : dzv;
    }
    a.part[(static_cast<int64_t>(part) * a.H + h) * (a.Dm + 1) + m] = acc;
  }
}

__global__ void affine_bwd_param_final_kernel(ParamArgs a) {
  const int64_t n = static_cast<int64_t>(a.H) * (a.Dm + 1);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kElemThreads;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kElemThreads + threadIdx.x; e < n; e += stride) {
    const int64_t h = e / (a.Dm + 1), m = e % (a.Dm + 1);
    float acc = 0.0f;
    for (int p = 0; p < a.nparts; ++p) acc += a.part[static_cast<int64_t>(p) * n + e];
    if (m < a.Dm) {
      if (a.dw) a.dw[h * a.Dm + m] = acc;
    } else if (a.dc) {
      a.dc[h] = acc;
    }
  }
}

// ---- host side ----------------------------------------------------------------------------------

constexpr std::string_view kName = "affine_attention";

void check_cuda_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& x) {
  AL_CHECK_DTYPE(q.dtype() == DType::f32, kName, ": the CUDA kernels take f32 only; got q=", q, ", k=", k, ", v=", v,
                 ", x=", x);
  AL_CHECK_SHAPE(q.size(0) * q.size(1) <= 65535 && k.size(2) < (int64_t{1} << 30), kName,
                 ": the CUDA kernels take B * H <= 65535 and S < 2^30; got q=", q, ", k=", k, ", v=", v);
}

Geom geom_of(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& x, const AttentionMask& mask,
             const AffineOptions& o) {
  const int64_t S = k.size(2);
  const int64_t prefix = clamped_prefix(mask, S);
  return {static_cast<int>(q.size(0)),
          static_cast<int>(q.size(1)),
          static_cast<int>(q.size(2)),
          static_cast<int>(S),
          static_cast<int>(v.size(3)),
          static_cast<int>(x.size(2)),
          mask.causal ? 1 : 0,
          static_cast<int>(prefix),
          o.bias_norm == AffineBiasNorm::full ? 1 : 0,
          o.phi == AffinePhi::sigmoid ? 1 : 0};
}

// Chunk sums of src [B, H, rows, D] (weighted by weight [B, H, rows] when given).
Tensor chunk_sums(const Tensor& src, const float* weight, const Geom& g, int rows) {
  const int nchunks = static_cast<int>(tile_count(rows, kChunk));
  Tensor sums = Tensor::empty(Shape{static_cast<int64_t>(g.B) * g.H, nchunks, g.Dv}, DType::f32, src.device());
  const ChunkArgs args{heads(src), weight, sums.data<float>(), g.H, rows, g.Dv, nchunks};
  AL_CUDA_LAUNCH(affine_chunk_sum_kernel, dim3(static_cast<unsigned>(nchunks), static_cast<unsigned>(g.B * g.H)),
                 dim3(kColThreads), 0, args);
  return sums;
}

}  // namespace

AffineAttentionOp::Forward AffineAttentionOp::forward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                      const Tensor& x, const Tensor& w_a, const Tensor& c_a,
                                                      const Tensor& abar, const AttentionMask& mask,
                                                      const AffineOptions& options, double scale) {
  check(q, k, v, x, w_a, c_a, abar, mask);
  check_cuda_inputs(q, k, v, x);
  AL_ASSERT(unit_last_stride(q) && unit_last_stride(k) && unit_last_stride(v) && x.is_contiguous() &&
                w_a.is_contiguous() && (!c_a.defined() || c_a.is_contiguous()) && abar.is_contiguous(),
            kName, ": forward needs unit-stride q, k, v rows and contiguous x, w_a, c_a, abar; got q=", q, ", k=", k,
            ", v=", v, ", x=", x, ", w_a=", w_a, ", abar=", abar);
  const Geom g = geom_of(q, k, v, x, mask, options);
  SoftmaxAttentionOp::Forward sm = SoftmaxAttentionOp::forward(CudaTag{}, q, k, v, mask, scale);
  const int64_t B = g.B, H = g.H, T = g.T;
  Forward f;
  f.out = empty_token_major(B, H, T, g.Dv, q.device());
  f.saved.out_sm = sm.out;
  f.saved.lse = sm.lse;
  f.saved.alpha = Tensor::empty(Shape{B, H, T}, DType::f32, q.device());
  f.saved.beta = Tensor::empty(Shape{B, H, T}, DType::f32, q.device());
  f.saved.dphi = Tensor::empty(Shape{B, H, T}, DType::f32, q.device());
  if (B * H * T == 0) return f;

  const int64_t rows = B * T;
  const GateArgs gate{x.data<float>(),
                      w_a.data<float>(),
                      c_a.defined() ? c_a.data<float>() : nullptr,
                      abar.data<float>(),
                      f.saved.alpha.data<float>(),
                      f.saved.beta.data<float>(),
                      f.saved.dphi.data<float>(),
                      g,
                      rows};
  AL_CUDA_LAUNCH(affine_gate_kernel, dim3(cuda::blocks_for(rows, kGateThreads / 32, 0x7fffffffu)), dim3(kGateThreads),
                 0, gate);
  if (g.Dv == 0) return f;
  const Tensor vsum = chunk_sums(v, nullptr, g, g.S);
  const EpilogueArgs epi{heads(v),
                         heads(sm.out),
                         heads_out(f.out),
                         vsum.data<float>(),
                         f.saved.alpha.data<float>(),
                         f.saved.beta.data<float>(),
                         g,
                         static_cast<int>(vsum.size(1))};
  AL_CUDA_LAUNCH(affine_fwd_epilogue_kernel, dim3(tile_count(T, kTile), static_cast<unsigned>(B * H)),
                 dim3(kColThreads), 0, epi);
  return f;
}

AffineAttentionOp::Grads AffineAttentionOp::backward(CudaTag, const Tensor& q, const Tensor& k, const Tensor& v,
                                                     const Tensor& x, const Tensor& w_a, const Saved& saved,
                                                     const Tensor& dout, const AttentionMask& mask,
                                                     const AffineOptions& options, double scale, const Needs& needs) {
  check_cuda_inputs(q, k, v, x);
  const Geom g = geom_of(q, k, v, x, mask, options);
  const int64_t B = g.B, H = g.H, T = g.T;
  AL_ASSERT(unit_last_stride(dout) && dout.shape() == Shape({B, H, T, g.Dv}) && dout.dtype() == DType::f32 &&
                dout.device() == q.device() && saved.alpha.shape() == Shape({B, H, T}) && saved.alpha.is_contiguous() &&
                saved.beta.is_contiguous() && saved.dphi.is_contiguous() && x.is_contiguous() && w_a.is_contiguous(),
            kName, ": backward got dout=", dout, ", alpha=", saved.alpha, " for q=", q, ", v=", v, ", x=", x);
  Grads gr;
  const bool need_gate = needs.x || needs.w_a || needs.c_a;
  if (!needs.qkv && !need_gate) return gr;

  Tensor dz = Tensor::empty(Shape{B, H, T}, DType::f32, q.device());
  Tensor dsm = Tensor::empty(Shape{B, H, T, g.Dv}, DType::f32, q.device());
  if (B * H * T > 0 && g.Dv > 0) {
    const Tensor vsum = chunk_sums(v, nullptr, g, g.S);
    const RowDotArgs rd{heads(v),
                        heads(saved.out_sm),
                        heads(dout),
                        heads_out(dsm),
                        vsum.data<float>(),
                        saved.alpha.data<float>(),
                        saved.dphi.data<float>(),
                        dz.data<float>(),
                        g,
                        static_cast<int>(vsum.size(1))};
    AL_CUDA_LAUNCH(affine_bwd_rowdot_kernel, dim3(tile_count(T, kTile), static_cast<unsigned>(B * H)),
                   dim3(kColThreads), 2 * ((static_cast<size_t>(kTile) * kShareLd * sizeof(float) + 15) / 16 * 16), rd);
  } else if (B * H * T > 0) {
    dz.fill_(0.0);  // Dv = 0: out is empty, so every gradient through it is 0
  }

  if (needs.qkv) {
    SoftmaxAttentionOp::Grads sg =
        SoftmaxAttentionOp::backward(CudaTag{}, q, k, v, saved.out_sm, saved.lse, dsm, mask, scale);
    gr.dq = sg.dq, gr.dk = sg.dk, gr.dv = sg.dv;
    if (B * H * T > 0 && g.Dv > 0) {
      const Tensor gsum = chunk_sums(dout, saved.beta.data<float>(), g, g.T);
      const DvArgs dva{heads(dout),
                       heads_out(gr.dv),
                       gsum.data<float>(),
                       saved.beta.data<float>(),
                       g,
                       static_cast<int>(gsum.size(1))};
      AL_CUDA_LAUNCH(affine_bwd_dv_kernel, dim3(tile_count(g.S, kTile), static_cast<unsigned>(B * H)),
                     dim3(kColThreads), 0, dva);
    }
  }

  const int64_t rows = B * T;
  if (needs.x) {
    gr.dx = Tensor::empty(Shape{B, T, g.Dm}, DType::f32, q.device());
    const int64_t n = rows * g.Dm;
    if (n > 0) {
      const DxArgs dxa{dz.data<float>(), w_a.data<float>(), gr.dx.data<float>(), g.H, g.T, g.Dm, n};
      AL_CUDA_LAUNCH(affine_bwd_dx_kernel, dim3(cuda::blocks_for(n, kElemThreads)), dim3(kElemThreads), 0, dxa);
    }
  }
  if (needs.w_a || needs.c_a) {
    Tensor dw = Tensor::empty(Shape{H, g.Dm}, DType::f32, q.device());
    Tensor dc = Tensor::empty(Shape{H}, DType::f32, q.device());
    if (rows == 0) {
      dw.fill_(0.0), dc.fill_(0.0);
    } else if (H > 0) {
      const int nparts = static_cast<int>(tile_count(rows, kRowChunk));
      Tensor part = Tensor::empty(Shape{nparts, H, g.Dm + 1}, DType::f32, q.device());
      const ParamArgs pa{dz.data<float>(),
                         x.data<float>(),
                         part.data<float>(),
                         dw.data<float>(),
                         dc.data<float>(),
                         g.H,
                         g.T,
                         g.Dm,
                         nparts,
                         rows};
      AL_CUDA_LAUNCH(affine_bwd_param_partial_kernel, dim3(static_cast<unsigned>(nparts), static_cast<unsigned>(H)),
                     dim3(kParamThreads), 0, pa);
      AL_CUDA_LAUNCH(affine_bwd_param_final_kernel, dim3(cuda::blocks_for(H * (g.Dm + 1), kElemThreads)),
                     dim3(kElemThreads), 0, pa);
    }
    if (needs.w_a) gr.dw_a = dw;
    if (needs.c_a) gr.dc_a = dc;
  }
  return gr;
}

}  // namespace attnlab
