// Device-side reductions that the row-wise kernels share (softmax, cross_entropy, layer_norm,
// rms_norm, l2_normalize), and the deterministic two-pass column sums of the norm and conv
// backwards (layer_norm, rms_norm, causal_conv1d). Included by .cu files after lib/cuda/kernel.h;
// C++17, like every header a .cu file includes.
//
// Row shape: a row of n elements belongs to a group of G threads, G a multiple of 32, about 4
// elements per thread, at most 512 (row_shape()).
//   G = 32  (n <= 128): block (32, 8), one warp per row, grid ceil(R / 8); warp shuffles only.
//   G > 32:            block (G, 1), one block per row, grid R; warp shuffles, then the per-warp
//                      partials through 32 floats of (the caller's static) shared memory.
// A row kernel computes its row as blockIdx.x * blockDim.y + threadIdx.y; thread j of a group
// takes elements j, j + G, ... (coalesced). Rows past R (the ragged last block of the warp-per-row
// shape) must run with zero length rather than return, so every thread reaches every shuffle and
// barrier of group_sum / group_max.
//
// Column sums, out[z][c] = sum_r term(z, r, c) over R rows and C columns for Z sums z, in two
// passes with no atomics (every sum has a fixed order given R and C, so results are deterministic):
//   column_partials_kernel  pass 1. Block (32, 8), grid (ceil(C / 32), P, Z): block (bx, p, z) sums
//     rows [p K, (p + 1) K) of columns bx*32 .. bx*32 + 31, thread (tx, ty) taking rows ty,
//     ty + 8, ... of column tx; the 8 partials of a column are added in order through shared
//     memory and stored to partial[z, p, c]. K = column_chunk(R) = max(64, ceil(R / 256)), so
//     P = ceil(R / K) <= 256.
//   column_finish_kernel    pass 2. Block 256 over c (grid-strided), grid (ceil(C / 256), Z): each
//     thread adds partial[z, 0..P-1, c] in order and hands the sum to the op's store.
// column_sums() allocates the partials and launches both.
#pragma once

#include <cmath>
#include <cstdint>

#include "lib/cuda/kernel.h"
#include "lib/tensor.h"

namespace attnlab::cuda {

constexpr unsigned kFullMask = 0xffffffffu;

struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Butterfly reduction: every lane ends with the same value (a + b == b + a bit for bit).
template <class Op>
__device__ inline float warp_reduce(float v, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}
__device__ inline float warp_sum(float v) { return warp_reduce(v, SumOp{}); }
__device__ inline float warp_max(float v) { return warp_reduce(v, MaxOp{}); }

// The reduction of v over the row group, returned to every thread of it; `init` is op's identity.
// `red` is 32 floats of shared memory. blockDim.x is the group size: 32 (a warp, no barrier
// needed) or the whole block (blockDim.y == 1); the branch is block-uniform. The first barrier
// keeps a previous call's readers of `red` ahead of this call's writers; every thread then
// combines the warp partials in the same order, so all agree without a third barrier.
template <class Op>
__device__ inline float group_reduce(float v, float* red, float init, Op op) {
  v = warp_reduce(v, op);
  if (blockDim.x == 32) return v;
  __syncthreads();
  if ((threadIdx.x & 31u) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float t = init;
  for (unsigned w = 0; w < (blockDim.x >> 5); ++w) t = op(t, red[w]);
  return t;
}
__device__ inline float group_sum(float v, float* red) { return group_reduce(v, red, 0.f, SumOp{}); }
__device__ inline float group_max(float v, float* red) { return group_reduce(v, red, -INFINITY, MaxOp{}); }

// The row of a row-shape launch this thread's group works on: `len` elements from `base` (a row of
// n elements in a contiguous [rows, n] array). Idle rows past `rows` get len = 0 and base = 0, so
// their threads still reach every shuffle and barrier; they must store nothing (live is false).
struct GroupRow {
  int64_t row;
  bool live;
  int64_t len, base;
};
__device__ inline GroupRow group_row(int64_t rows, int64_t n) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool live = row < rows;
  return {row, live, live ? n : 0, (live ? row : 0) * n};
}

// Softmax's normaliser of a row xr[0, len) over the group: m = max_j x_j, s = sum_j exp(x_j - m)
// (m = -inf, s = 0 for len = 0).
__device__ inline void group_max_sumexp(const float* xr, int64_t len, float* red, float& m, float& s) {
  m = -INFINITY;
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x) m = fmaxf(m, xr[j]);
  m = group_max(m, red);
  s = 0.f;
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x) s += expf(xr[j] - m);
  s = group_sum(s, red);
}

struct RowShape {
  dim3 grid, block;
};

// The launch shape for `rows` rows of n elements (see the top of this file).
inline RowShape row_shape(int64_t rows, int64_t n) {
  int64_t g = ((n + 3) / 4 + 31) / 32 * 32;
  g = g < 32 ? 32 : (g > 512 ? 512 : g);
  if (g == 32) return {dim3(static_cast<unsigned>((rows + 7) / 8)), dim3(32, 8)};
  return {dim3(static_cast<unsigned>(rows)), dim3(static_cast<unsigned>(g))};
}

// ---- two-pass column sums ------------------------------------------------------------------

constexpr unsigned kColX = 32, kColY = 8, kColFinishThreads = 256;

// Rows per pass-1 block of the column sums.
inline int64_t column_chunk(int64_t rows) {
  const int64_t k = (rows + 255) / 256;
  return k < 64 ? 64 : k;
}

// Pass 1. `term(acc, z, r, c)` adds row r's term of sum z at column c to acc (r < rows, c < C);
// it may add nothing. z = blockIdx.z, the launch's slice (the op maps it to its own sum index).
template <class Term>
__global__ void column_partials_kernel(Term term, float* __restrict__ partial, int64_t rows, int64_t C,
                                       int64_t chunk) {
  __shared__ float red[kColY][kColX + 1];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColX + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t r1 = r0 + chunk < rows ? r0 + chunk : rows;
  const int64_t z = blockIdx.z;
  float acc = 0.f;
  if (c < C) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kColY) term(acc, z, r, c);
  }
  red[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float s = 0.f;
    for (unsigned k = 0; k < kColY; ++k) s += red[k][threadIdx.x];
    partial[(static_cast<int64_t>(blockIdx.z) * gridDim.y + blockIdx.y) * C + c] = s;
  }
}

// Pass 2. `store(z, c, s)` writes the finished sum z at column c.
template <class Store>
__global__ void column_finish_kernel(Store store, const float* __restrict__ partial, int64_t parts, int64_t C) {
  const int64_t z = blockIdx.y;
  const float* pz = partial + z * parts * C;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < C;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int64_t k = 0; k < parts; ++k) s += pz[k * C + c];
    store(z, c, s);
  }
}

// Runs both passes for nz sums over rows x C (rows, C, nz > 0); the partials live on `device`.
// Term and Store are small structs of device pointers and sizes, passed to the kernels by value.
template <class Term, class Store>
void column_sums(const Term& term, const Store& store, int64_t rows, int64_t C, int64_t nz, Device device) {
  const int64_t chunk = column_chunk(rows);
  const int64_t parts = (rows + chunk - 1) / chunk;
  Tensor partial = Tensor::empty(Shape{nz, parts, C}, DType::f32, device);
  const dim3 grid1(static_cast<unsigned>((C + kColX - 1) / kColX), static_cast<unsigned>(parts),
                   static_cast<unsigned>(nz));
  AL_CUDA_LAUNCH(column_partials_kernel<Term>, grid1, dim3(kColX, kColY), 0, term, partial.data<float>(), rows, C,
                 chunk);
  const dim3 grid2(blocks_for(C, kColFinishThreads), static_cast<unsigned>(nz));
  AL_CUDA_LAUNCH(column_finish_kernel<Store>, grid2, dim3(kColFinishThreads), 0, store,
                 static_cast<const float*>(partial.data<float>()), parts, C);
}

}  // namespace attnlab::cuda
