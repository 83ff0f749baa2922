// The kernels of kernels.h. Launch shapes:
//   sgemm    grid (ceil(n/16), ceil(m/16)), block (16,16), no dynamic shared memory
//   softmax  grid (rows), block (256), dynamic shared memory for cols + 32 floats (carved)
#include "tests/simt/kernels.h"

#include <cmath>
#include <random>

namespace simt = attnlab::simt;

namespace simt_test {
namespace {

constexpr int kTile = 16;
constexpr unsigned kFull = 0xffffffffu;

template <bool kRaw, bool kWar>
__global__ void sgemm_kernel(const float* a, const float* b, float* c, int m, int n, int k) {
  __shared__ float as[kTile][kTile];
  __shared__ float bs[kTile][kTile];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int row = blockIdx.y * kTile + ty, col = blockIdx.x * kTile + tx;
  float acc = 0.0f;
  for (int k0 = 0; k0 < k; k0 += kTile) {
    as[ty][tx] = (row < m && k0 + tx < k) ? a[row * k + k0 + tx] : 0.0f;
    bs[ty][tx] = (k0 + ty < k && col < n) ? b[(k0 + ty) * n + col] : 0.0f;
    if constexpr (kRaw) __syncthreads();  // the tiles are complete before anyone reads them
    for (int kk = 0; kk < kTile; ++kk) acc += as[ty][kk] * bs[kk][tx];
    if constexpr (kWar) __syncthreads();  // everyone has read them before the next loads
  }
  if (row < m && col < n) c[row * n + col] = acc;
}

template <bool kWar>
__global__ void softmax_kernel(const float* x, float* y, int cols) {
  simt::SmemCarver carve;
  float* row = carve.take<float>(cols);
  float* red = carve.take<float>(32);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, nwarps = blockDim.x / 32;
  const float* xr = x + static_cast<size_t>(blockIdx.x) * cols;
  float* yr = y + static_cast<size_t>(blockIdx.x) * cols;

  float m = -INFINITY;
  for (int c = tid; c < cols; c += blockDim.x) {
    row[c] = xr[c];
    m = fmaxf(m, row[c]);
  }
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(kFull, m, o));
  if (lane == 0) red[warp] = m;
  __syncthreads();
  m = lane < nwarps ? red[lane] : -INFINITY;
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_down_sync(kFull, m, o));
  m = __shfl_sync(kFull, m, 0);
  if constexpr (kWar) __syncthreads();  // every warp has read red[] before it is reused below

  float s = 0.0f;
  for (int c = tid; c < cols; c += blockDim.x) {
    const float e = __expf(row[c] - m);
    row[c] = e;
    s += e;
  }
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(kFull, s, o);
  if (lane == 0) red[warp] = s;
  __syncthreads();
  s = lane < nwarps ? red[lane] : 0.0f;
  for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(kFull, s, o);
  const float inv = 1.0f / __shfl_sync(kFull, s, 0);
  for (int c = tid; c < cols; c += blockDim.x) yr[c] = row[c] * inv;
}

}  // namespace

cudaError_t sgemm(const float* a, const float* b, float* c, int m, int n, int k, Barriers barriers) {
  const dim3 grid((n + kTile - 1) / kTile, (m + kTile - 1) / kTile), block(kTile, kTile);
  auto kernel = barriers.raw ? (barriers.war ? sgemm_kernel<true, true> : sgemm_kernel<true, false>)
                             : (barriers.war ? sgemm_kernel<false, true> : sgemm_kernel<false, false>);
  return simt::launch(kernel, grid, block, 0, nullptr, a, b, c, m, n, k);
}

cudaError_t softmax(const float* x, float* y, int rows, int cols, Barriers barriers) {
  const size_t smem = (static_cast<size_t>(cols) * sizeof(float) + 15) / 16 * 16 + 32 * sizeof(float);
  return simt::launch(barriers.war ? softmax_kernel<true> : softmax_kernel<false>, dim3(rows), dim3(256), smem,
                      nullptr, x, y, cols);
}

std::vector<double> sgemm_reference(const std::vector<float>& a, const std::vector<float>& b, int m, int n, int k) {
  std::vector<double> c(static_cast<size_t>(m) * n, 0.0);
  for (int i = 0; i < m; ++i)
    for (int p = 0; p < k; ++p)
      for (int j = 0; j < n; ++j) c[i * n + j] += static_cast<double>(a[i * k + p]) * b[p * n + j];
  return c;
}

std::vector<double> softmax_reference(const std::vector<float>& x, int rows, int cols) {
  std::vector<double> y(x.size());
  for (int r = 0; r < rows; ++r) {
    double m = -INFINITY, s = 0.0;
    for (int c = 0; c < cols; ++c) m = std::max(m, static_cast<double>(x[r * cols + c]));
    for (int c = 0; c < cols; ++c) s += std::exp(x[r * cols + c] - m);
    for (int c = 0; c < cols; ++c) y[r * cols + c] = std::exp(x[r * cols + c] - m) / s;
  }
  return y;
}

std::vector<float> random_vector(size_t n, unsigned seed, float lo, float hi) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

double max_abs_diff(const std::vector<float>& got, const std::vector<double>& want) {
  double d = 0.0;
  for (size_t i = 0; i < got.size(); ++i) d = std::max(d, std::abs(static_cast<double>(got[i]) - want[i]));
  return d;
}

}  // namespace simt_test
