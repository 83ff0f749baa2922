// CUDA forward and backward of linear, on x seen as R = numel(x) / K rows, f32 and f64, and
// bf16 x and w for mixed precision. The products go through cuda::gemm (lib/cuda/gemm.h: cuBLAS
// on a GPU, the tiled kernel on the emulator); the only kernels here are the bias gradient's
// column sums.
//
//   forward:  y [R, N] = b (each row, cuda::copy_strided broadcasting b), then
//             y += x [R, K] w[N, K]^T by one GEMM with beta = 1 (beta = 0 without a bias)
//   backward: dx [R, K] = dy [R, N] w [N, K];  dw [N, K] = dy^T x;  db [N] = sum_r dy[r, :]
//
// bf16 x and w (f32 b, dy, y and gradients): the GEMMs' bf16-operand overloads, f32 accumulation
// and f32 C (the bias is written into y first as for f32). Backward rounds dy to bf16 for the two
// GEMMs (cuda::copy_strided converts, rounding to nearest even like lib/dtype.h) and sums the f32
// dy for db.
//
// db, deterministically, in two passes (the split depends on R and N only, never on the device):
//   column_sums_chunk  grid (ceil(N / 32), ceil(R / 512)), block 256 = 32 columns x 8 row lanes,
//                      smem 8 x 32 accumulators (carved). Thread (lane, col) sums rows
//                      lane, lane + 8, ... of its 512-row chunk for its column in row order (a
//                      warp reads 32 consecutive columns of one row: coalesced), then lane 0
//                      adds the 8 lane sums in lane order: into db when there is one chunk, into
//                      partial[chunk, col] otherwise.
//   column_sums_finish grid ceil(N / 256) (grid-stride), block 256: thread col adds the chunks'
//                      partial sums in chunk order into db.
// Sums accumulate in double (f32 dy included), as cpu::column_sums does.
#include "lib/cuda/kernel.h"

#include <algorithm>

#include "autograd/ops/linear/linear.h"
#include "lib/cuda/gemm.h"
#include "lib/cuda/runtime.h"
#include "lib/cuda/tensor_kernels.h"

namespace attnlab {

namespace {

constexpr int kColsPerBlock = 32;  // one warp's width of columns
constexpr int kRowLanes = 8;       // 256 threads = 32 columns x 8 row lanes
constexpr int kSumThreads = kColsPerBlock * kRowLanes;
constexpr int64_t kChunkRows = 512;

template <typename T>
__global__ void column_sums_chunk(const T* x, int64_t rows, int64_t cols, T* out, double* partial) {
  simt::SmemCarver carve;
  double* lane_sums = carve.take<double>(kSumThreads);  // lane_sums[lane * 32 + tx]
  const int tx = static_cast<int>(threadIdx.x) % kColsPerBlock, lane = static_cast<int>(threadIdx.x) / kColsPerBlock;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kColsPerBlock + tx;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kChunkRows;
  const int64_t r1 = rows < r0 + kChunkRows ? rows : r0 + kChunkRows;
  double s = 0.0;
  if (col < cols)
    for (int64_t r = r0 + lane; r < r1; r += kRowLanes) s += static_cast<double>(x[r * cols + col]);
  lane_sums[lane * kColsPerBlock + tx] = s;
  __syncthreads();  // every lane's sum is in shared memory before lane 0 adds them
  if (lane == 0 && col < cols) {
    double t = 0.0;
    for (int l = 0; l < kRowLanes; ++l) t += lane_sums[l * kColsPerBlock + tx];
    if (partial == nullptr) out[col] = static_cast<T>(t);
    else partial[static_cast<int64_t>(blockIdx.y) * cols + col] = t;
  }
}

template <typename T>
__global__ void column_sums_finish(const double* partial, int64_t chunks, int64_t cols, T* out) {
  for (int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; col < cols;
       col += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double t = 0.0;
    for (int64_t c = 0; c < chunks; ++c) t += partial[c * cols + col];
    out[col] = static_cast<T>(t);
  }
}

// out[N] = column sums of the contiguous x[R, N] (device pointers on `device`).
template <typename T>
void column_sums(const T* x, int64_t rows, int64_t cols, T* out, Device device) {
  if (cols == 0) return;
  if (rows == 0) {
    cuda::memset_zero(out, sizeof(T) * static_cast<size_t>(cols));
    return;
  }
  const int64_t chunks = (rows + kChunkRows - 1) / kChunkRows;
  AL_CHECK_SHAPE(chunks <= 65535 && (cols + kColsPerBlock - 1) / kColsPerBlock <= 0x7fffffff,
                 "linear: bias gradient of ", rows, " x ", cols, " is beyond the column-sum kernel's grid");
  const dim3 grid(static_cast<unsigned>((cols + kColsPerBlock - 1) / kColsPerBlock), static_cast<unsigned>(chunks));
  const size_t smem = sizeof(double) * kSumThreads;
  void (*chunk_kernel)(const T*, int64_t, int64_t, T*, double*) = &column_sums_chunk<T>;
  if (chunks == 1) {
    AL_CUDA_LAUNCH(chunk_kernel, grid, dim3(kSumThreads), smem, x, rows, cols, out, static_cast<double*>(nullptr));
    return;
  }
  Tensor partial = Tensor::empty(Shape{chunks, cols}, DType::f64, device);
  AL_CUDA_LAUNCH(chunk_kernel, grid, dim3(kSumThreads), smem, x, rows, cols, out, partial.data<double>());
  void (*finish_kernel)(const double*, int64_t, int64_t, T*) = &column_sums_finish<T>;
  AL_CUDA_LAUNCH(finish_kernel, dim3(cuda::blocks_for(cols, kSumThreads)), dim3(kSumThreads), 0,
                 static_cast<const double*>(partial.data<double>()), chunks, cols, out);
}

int64_t rows_of(const Tensor& x) { return x.numel() / std::max<int64_t>(1, x.size(-1)); }

void check_cuda_dtype(const Tensor& x) {
  AL_CHECK_DTYPE(x.dtype() == DType::f32 || x.dtype() == DType::f64 || x.dtype() == DType::bf16,
                 "linear: CUDA needs f32, f64 or bf16 x; got x=", x);
}

// bf16 operands come with f32 companions (the op's check allows nothing else; this guards the
// Tensor-level entry points).
void check_mixed(const Tensor& x, const Tensor& w, const Tensor& other, const char* other_name) {
  AL_CHECK_DTYPE(w.dtype() == DType::bf16 && (!other.defined() || other.dtype() == DType::f32),
                 "linear: bf16 x needs bf16 w and f32 ", other_name, "; got x=", x, ", w=", w, ", ", other_name, "=",
                 other.defined() ? other.str() : std::string("undefined"));
}

}  // namespace

Tensor LinearOp::forward(CudaTag, const Tensor& x, const Tensor& w, const Tensor& b) {
  check_cuda_dtype(x);
  const bool half = x.dtype() == DType::bf16;
  if (half) check_mixed(x, w, b, "b");
  const DType out = half ? DType::f32 : x.dtype();
  const int64_t R = rows_of(x), K = x.size(-1), N = w.size(0);
  std::vector<int64_t> dims = x.shape().dims();
  dims.back() = N;
  Tensor y = Tensor::empty(Shape(std::move(dims)), out, x.device());
  if (b.defined() && R * N > 0) {
    Tensor rows = y.view(Shape{R, N});
    cuda::copy_strided(rows, b);  // b [N] broadcast over the rows
  }
  const int64_t ldx = std::max<int64_t>(K, 1), ldy = std::max<int64_t>(N, 1);
  if (half) {
    cuda::gemm(false, true, R, N, K, 1.0f, x.data<bf16>(), ldx, w.data<bf16>(), ldx, b.defined() ? 1.0f : 0.0f,
               y.data<float>(), ldy);
    return y;
  }
  dispatch_float(x.dtype(), "linear", [&](auto tag) {
    using T = decltype(tag);
    cuda::gemm(false, true, R, N, K, T(1), x.data<T>(), ldx, w.data<T>(), ldx, b.defined() ? T(1) : T(0),
               y.data<T>(), ldy);
  });
  return y;
}

LinearOp::Grads LinearOp::backward(CudaTag, const Tensor& x, const Tensor& w, const Tensor& dy, bool need_dx,
                                   bool need_dw, bool need_db) {
  check_cuda_dtype(x);
  const bool half = x.dtype() == DType::bf16;
  if (half) check_mixed(x, w, dy, "dy");
  const DType out = half ? DType::f32 : x.dtype();
  const int64_t R = rows_of(x), K = x.size(-1), N = w.size(0);
  const int64_t ldy = std::max<int64_t>(N, 1), ldx = std::max<int64_t>(K, 1);
  Grads g;
  if (need_dx) g.dx = Tensor::empty(x.shape(), out, x.device());
  if (need_dw) g.dw = Tensor::empty(w.shape(), out, w.device());
  if (half && (need_dx || need_dw)) {
    const Tensor dyh = dy.to(DType::bf16);  // the rounding both GEMMs read
    const bf16* pdy = dyh.data<bf16>();
    if (need_dx) cuda::gemm(false, false, R, K, N, 1.0f, pdy, ldy, w.data<bf16>(), ldx, 0.0f, g.dx.data<float>(), ldx);
    if (need_dw) cuda::gemm(true, false, N, K, R, 1.0f, pdy, ldy, x.data<bf16>(), ldx, 0.0f, g.dw.data<float>(), ldx);
  }
  dispatch_float(out, "linear", [&](auto tag) {
    using T = decltype(tag);
    const T* pdy = dy.data<T>();
    if (!half && need_dx)
      cuda::gemm(false, false, R, K, N, T(1), pdy, ldy, w.data<T>(), ldx, T(0), g.dx.data<T>(), ldx);
    if (!half && need_dw)
      cuda::gemm(true, false, N, K, R, T(1), pdy, ldy, x.data<T>(), ldx, T(0), g.dw.data<T>(), ldx);
    if (need_db) {
      g.db = Tensor::empty(Shape{N}, out, x.device());
      column_sums<T>(pdy, R, N, g.db.data<T>(), x.device());
    }
  });
  return g;
}

}  // namespace attnlab
