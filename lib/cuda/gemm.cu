// CUDA GEMM (lib/cuda/gemm.h): our tiled shared-memory kernel, cuBLAS on real GPUs, and matmul
// on CUDA tensors.
//
// Maths, row-major as cpu::gemm: for each batch entry z < batch,
//   C_z[M, N] = alpha * op(A_z)[M, K] @ op(B_z)[K, N] + beta * C_z
// with op(A)[m][k] = A[m * lda + k] (A[k * lda + m] when trans_a), op(B)[k][n] = B[k * ldb + n]
// (B[n * ldb + k] when trans_b), C[m][n] = C[m * ldc + n], X_z = X + z * stride_x.
//
// Tiled kernel, launch shape:
//   grid  (ceil(M / 64), ceil(N / 64), batch)   one block per 64x64 tile of one C_z; batches of
//                                               more than 65535 are split over several launches
//   block 256 threads, seen as 16 x 16 (tx = tid % 16, ty = tid / 16)
//   smem  dynamic, carved: As[16][65] and Bs[16][65] of the accumulator type (8.3 KB for f32,
//         16.6 KB for f64), k-major so the inner loop reads one row of each per k step.
// Each thread owns the 4x4 outputs C[m0 + ty + 16 i][n0 + tx + 16 j], i, j < 4: strided rather
// than a 4x4 square, so a warp's 16 tx read 16 consecutive Bs entries (no bank conflicts) and
// write 16 consecutive C entries (coalesced). Per k-tile of 16, every thread loads 4 elements of
// op(A) and 4 of op(B) into shared memory (zero past the ragged edges of M, N and K), then one
// barrier (the tiles are complete), 16 rank-1 updates of its 4x4 accumulators from registers,
// and a second barrier (nobody still reads the tiles the next k-tile overwrites). The loaders
// walk memory in its contiguous direction (k when A is row-major, m when it is transposed), so
// consecutive threads read consecutive addresses. Rows of As/Bs are padded to 65 so that the
// k-fastest stores of an untransposed A hit different banks.
// Accumulation is in the output type (f32 for bf16 inputs, which are widened on load), in k
// order, each output by one thread: results do not depend on the launch or the schedule.
// Threads outside M x N still take part in loads and barriers; only their stores are masked.
//
// cuBLAS is column-major: a row-major C[M, N] is a column-major C^T[N, M] with the same ldc, so
// we ask cuBLAS for C^T = op(B)^T op(A)^T, i.e. (op_b, op_a, N, M, K, B, ldb, A, lda).
#include "lib/cuda/kernel.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "lib/cpu/gemm.h"
#include "lib/cuda/gemm.h"
#include "lib/cuda/libraries.h"
#include "lib/error.h"

namespace attnlab::cuda {

namespace {

constexpr int kTileM = 64, kTileN = 64, kTileK = 16;
constexpr int kThreads = 256;            // 16 x 16
constexpr int kSide = 16;                // threads per side of the block
constexpr int kPer = kTileM / kSide;     // 4 outputs per thread along each side
constexpr int kRowA = kTileM + 1;        // padded row length of As (see the top comment)
constexpr int kRowB = kTileN + 1;
constexpr unsigned kMaxGridZ = 65535;
static_assert(kTileM == kTileN && kSide * kSide == kThreads, "square tiles, one thread per 4x4 outputs");
static_assert(kTileM * kTileK % kThreads == 0 && kTileN * kTileK % kThreads == 0, "whole loads per thread");

template <typename TIn, typename TAcc>
struct TiledArgs {
  const TIn* a;
  const TIn* b;
  TAcc* c;
  int64_t lda, ldb, ldc;
  int64_t stride_a, stride_b, stride_c;
  int M, N, K;
  TAcc alpha, beta;
  bool trans_a, trans_b;
};

// Loaded values in the accumulator's precision: bf16 is widened to f32.
__device__ inline float widen(float x) { return x; }
__device__ inline double widen(double x) { return x; }
__device__ inline float widen(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename TIn, typename TAcc>
__global__ void gemm_tiled_kernel(TiledArgs<TIn, TAcc> p) {
  simt::SmemCarver carve;
  TAcc* as = carve.take<TAcc>(kTileK * kRowA);  // as[k * kRowA + m] = op(A)[m0 + m][k0 + k]
  TAcc* bs = carve.take<TAcc>(kTileK * kRowB);  // bs[k * kRowB + n] = op(B)[k0 + k][n0 + n]

  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % kSide, ty = tid / kSide;
  const int m0 = static_cast<int>(blockIdx.x) * kTileM, n0 = static_cast<int>(blockIdx.y) * kTileN;
  const int64_t z = blockIdx.z;
  const TIn* a = p.a + z * p.stride_a;
  const TIn* b = p.b + z * p.stride_b;
  TAcc* c = p.c + z * p.stride_c;

  TAcc acc[kPer][kPer];
  for (int i = 0; i < kPer; ++i)
    for (int j = 0; j < kPer; ++j) acc[i][j] = TAcc(0);

  for (int k0 = 0; k0 < p.K; k0 += kTileK) {
    for (int r = 0; r < kTileM * kTileK / kThreads; ++r) {
      const int e = tid + r * kThreads;
      // Consecutive threads take consecutive addresses: along m for a transposed A, else along k.
      const int m = p.trans_a ? e % kTileM : e / kTileK;
      const int k = p.trans_a ? e / kTileM : e % kTileK;
      const int gm = m0 + m, gk = k0 + k;
      TAcc v = TAcc(0);
      if (gm < p.M && gk < p.K)
        v = static_cast<TAcc>(widen(p.trans_a ? a[static_cast<int64_t>(gk) * p.lda + gm]
                                              : a[static_cast<int64_t>(gm) * p.lda + gk]));
      as[k * kRowA + m] = v;
    }
    for (int r = 0; r < kTileN * kTileK / kThreads; ++r) {
      const int e = tid + r * kThreads;
      // Along n for a row-major B, along k for a transposed one.
      const int n = p.trans_b ? e / kTileK : e % kTileN;
      const int k = p.trans_b ? e % kTileK : e / kTileN;
      const int gn = n0 + n, gk = k0 + k;
      TAcc v = TAcc(0);
      if (gn < p.N && gk < p.K)
        v = static_cast<TAcc>(widen(p.trans_b ? b[static_cast<int64_t>(gn) * p.ldb + gk]
                                              : b[static_cast<int64_t>(gk) * p.ldb + gn]));
      bs[k * kRowB + n] = v;
    }
    __syncthreads();  // both tiles are complete before anyone reads them

    for (int k = 0; k < kTileK; ++k) {
      TAcc ra[kPer], rb[kPer];
      for (int i = 0; i < kPer; ++i) ra[i] = as[k * kRowA + ty + kSide * i];
      for (int j = 0; j < kPer; ++j) rb[j] = bs[k * kRowB + tx + kSide * j];
      for (int i = 0; i < kPer; ++i)
        for (int j = 0; j < kPer; ++j) acc[i][j] += ra[i] * rb[j];
    }
    __syncthreads();  // everyone has read the tiles before the next k-tile overwrites them
  }

  for (int i = 0; i < kPer; ++i) {
    const int gm = m0 + ty + kSide * i;
    if (gm >= p.M) continue;
    TAcc* row = c + static_cast<int64_t>(gm) * p.ldc;
    for (int j = 0; j < kPer; ++j) {
      const int gn = n0 + tx + kSide * j;
      if (gn >= p.N) continue;
      // beta == 0 must not read C: it may be uninitialised (NaN stays out of the result).
      TAcc out = p.alpha * acc[i][j];
      if (p.beta != TAcc(0)) out += p.beta * row[gn];
      row[gn] = out;
    }
  }
}

size_t round16(size_t bytes) { return (bytes + 15) / 16 * 16; }

template <typename TIn, typename TAcc>
void launch_tiled(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, TAcc alpha, const TIn* A, int64_t lda,
                  int64_t stride_a, const TIn* B, int64_t ldb, int64_t stride_b, TAcc beta, TAcc* C, int64_t ldc,
                  int64_t stride_c, int64_t batch) {
  const int64_t tiles_m = (M + kTileM - 1) / kTileM, tiles_n = (N + kTileN - 1) / kTileN;
  AL_CHECK_SHAPE(K <= INT_MAX && tiles_m * kTileM <= INT_MAX && tiles_n <= 65535, "cuda gemm (tiled): M=", M,
                 ", N=", N, ", K=", K, " exceed the kernel's limits (M, K < 2^31, N <= ", 65535 * kTileN, ")");
  const size_t smem = round16(sizeof(TAcc) * kTileK * kRowA) + round16(sizeof(TAcc) * kTileK * kRowB);
  void (*gemm_tiled)(TiledArgs<TIn, TAcc>) = &gemm_tiled_kernel<TIn, TAcc>;
  for (int64_t z0 = 0; z0 < batch; z0 += kMaxGridZ) {
    const int64_t nz = std::min<int64_t>(kMaxGridZ, batch - z0);
    TiledArgs<TIn, TAcc> p{A + z0 * stride_a,
                           B + z0 * stride_b,
                           C + z0 * stride_c,
                           lda,
                           ldb,
                           ldc,
                           stride_a,
                           stride_b,
                           stride_c,
                           static_cast<int>(M),
                           static_cast<int>(N),
                           static_cast<int>(K),
                           alpha,
                           beta,
                           trans_a,
                           trans_b};
    const dim3 grid(static_cast<unsigned>(tiles_m), static_cast<unsigned>(tiles_n), static_cast<unsigned>(nz));
    AL_CUDA_LAUNCH(gemm_tiled, grid, dim3(kThreads), smem, p);
  }
}

// ---- cuBLAS -----------------------------------------------------------------------------

#if !ATTNLAB_SIMT_EMULATED


// One handle per device, created on first use and kept for the life of the process (destroying
// it from a static destructor could run after the CUDA context is gone). The mutex covers the
// whole call: a handle carries its stream, and cuBLAS calls only enqueue work, so it is short.
std::mutex g_cublas_mutex;
std::vector<cublasHandle_t> g_cublas_handles;

template <typename Fn>
void with_cublas(Fn&& fn) {
  int device = 0;
  AL_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(g_cublas_mutex);
  if (g_cublas_handles.size() <= static_cast<size_t>(device)) g_cublas_handles.resize(device + 1, nullptr);
  cublasHandle_t& handle = g_cublas_handles[static_cast<size_t>(device)];
  if (handle == nullptr) AL_CUBLAS_CHECK(cublasCreate(&handle));
  AL_CUBLAS_CHECK(cublasSetStream(handle, current_stream()));
  fn(handle);
}

cublasOperation_t cublas_op(bool trans) { return trans ? CUBLAS_OP_T : CUBLAS_OP_N; }

void check_int_sizes(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc, int64_t batch) {
  for (int64_t v : {M, N, K, lda, ldb, ldc, batch})
    AL_CHECK_SHAPE(v <= INT_MAX, "cuda gemm (cublas): sizes must fit in int; got M=", M, ", N=", N, ", K=", K,
                   ", lda=", lda, ", ldb=", ldb, ", ldc=", ldc, ", batch=", batch);
}

void cublas_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 int64_t sa, const float* B, int64_t ldb, int64_t sb, float beta, float* C, int64_t ldc, int64_t sc,
                 int64_t batch) {
  check_int_sizes(M, N, K, lda, ldb, ldc, batch);
  with_cublas([&](cublasHandle_t h) {
    AL_CUBLAS_CHECK(cublasSgemmStridedBatched(h, cublas_op(tb), cublas_op(ta), static_cast<int>(N),
                                              static_cast<int>(M), static_cast<int>(K), &alpha, B,
                                              static_cast<int>(ldb), sb, A, static_cast<int>(lda), sa, &beta, C,
                                              static_cast<int>(ldc), sc, static_cast<int>(batch)));
  });
}

void cublas_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
                 int64_t sa, const double* B, int64_t ldb, int64_t sb, double beta, double* C, int64_t ldc,
                 int64_t sc, int64_t batch) {
  check_int_sizes(M, N, K, lda, ldb, ldc, batch);
  with_cublas([&](cublasHandle_t h) {
    AL_CUBLAS_CHECK(cublasDgemmStridedBatched(h, cublas_op(tb), cublas_op(ta), static_cast<int>(N),
                                              static_cast<int>(M), static_cast<int>(K), &alpha, B,
                                              static_cast<int>(ldb), sb, A, static_cast<int>(lda), sa, &beta, C,
                                              static_cast<int>(ldc), sc, static_cast<int>(batch)));
  });
}

void cublas_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const __nv_bfloat16* A,
                 int64_t lda, int64_t sa, const __nv_bfloat16* B, int64_t ldb, int64_t sb, float beta, float* C,
                 int64_t ldc, int64_t sc, int64_t batch) {
  check_int_sizes(M, N, K, lda, ldb, ldc, batch);
  with_cublas([&](cublasHandle_t h) {
    AL_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        h, cublas_op(tb), cublas_op(ta), static_cast<int>(N), static_cast<int>(M), static_cast<int>(K), &alpha, B,
        CUDA_R_16BF, static_cast<int>(ldb), sb, A, CUDA_R_16BF, static_cast<int>(lda), sa, &beta, C, CUDA_R_32F,
        static_cast<int>(ldc), sc, static_cast<int>(batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  });
}

#endif  // !ATTNLAB_SIMT_EMULATED

// ---- engine choice ----------------------------------------------------------------------

constexpr uint8_t kUnset = 0xff;
std::atomic<uint8_t> g_default_engine{kUnset};

GemmEngine builtin_engine() { return ATTNLAB_SIMT_EMULATED ? GemmEngine::tiled : GemmEngine::cublas; }

void check_available(GemmEngine engine, const char* where) {
  AL_CHECK_DEVICE(engine != GemmEngine::cublas || has_cublas(), where,
                  ": cuBLAS is not available on the simt emulator (CUDA kernels on the CPU); use GemmEngine::tiled");
}

GemmEngine engine_from_environment() {
  const char* env = std::getenv("ATTNLAB_GEMM");
  if (env == nullptr || *env == '\0') return builtin_engine();
  const std::string v(env);
  GemmEngine e = GemmEngine::automatic;
  if (v == "tiled") e = GemmEngine::tiled;
  else if (v == "cublas") e = GemmEngine::cublas;
  else AL_CHECK_CONFIG(v == "automatic", "ATTNLAB_GEMM must be tiled, cublas or automatic; got '", v, "'");
  if (e == GemmEngine::automatic) return builtin_engine();
  check_available(e, "ATTNLAB_GEMM=cublas");
  return e;
}

GemmEngine resolve(GemmEngine engine) {
  if (engine == GemmEngine::automatic) return default_gemm_engine();
  check_available(engine, "cuda gemm");
  return engine;
}

// A stored matrix of `rows` x `cols` with leading dim `ld`: BLAS wants ld >= max(1, cols). When
// the matrix has at most one row (or no columns) ld is never used to step, so any value is
// replaced by a legal one; otherwise a short ld is the caller's error.
int64_t checked_ld(int64_t ld, int64_t rows, int64_t cols, const char* name) {
  if (rows <= 1 || cols == 0) return std::max<int64_t>(ld, std::max<int64_t>(cols, 1));
  AL_CHECK_SHAPE(ld >= cols, "cuda gemm: ", name, " = ", ld, " is shorter than a row of its matrix (", rows, " x ",
                 cols, ")");
  return ld;
}

template <typename TIn, typename TAcc, typename TCublasIn>
void gemm_any(bool ta, bool tb, int64_t M, int64_t N, int64_t K, TAcc alpha, const TIn* A, int64_t lda, int64_t sa,
              const TIn* B, int64_t ldb, int64_t sb, TAcc beta, TAcc* C, int64_t ldc, int64_t sc, int64_t batch,
              GemmEngine engine) {
  AL_CHECK_SHAPE(M >= 0 && N >= 0 && K >= 0 && batch >= 0, "cuda gemm: sizes must be >= 0; got M=", M, ", N=", N,
                 ", K=", K, ", batch=", batch);
  const GemmEngine e = resolve(engine);
  if (M == 0 || N == 0 || batch == 0) return;
  AL_CHECK_SHAPE(batch == 1 || sc != 0, "cuda gemm: stride_c = 0 would make ", batch, " products write one C");
  lda = checked_ld(lda, ta ? K : M, ta ? M : K, "lda");
  ldb = checked_ld(ldb, tb ? N : K, tb ? K : N, "ldb");
  ldc = checked_ld(ldc, M, N, "ldc");
  if (batch == 1) sa = sb = sc = 0;
  if (e == GemmEngine::tiled) {
    launch_tiled<TCublasIn, TAcc>(ta, tb, M, N, K, alpha, reinterpret_cast<const TCublasIn*>(A), lda, sa,
                                  reinterpret_cast<const TCublasIn*>(B), ldb, sb, beta, C, ldc, sc, batch);
    return;
  }
#if !ATTNLAB_SIMT_EMULATED
  cublas_gemm(ta, tb, M, N, K, alpha, reinterpret_cast<const TCublasIn*>(A), lda, sa,
              reinterpret_cast<const TCublasIn*>(B), ldb, sb, beta, C, ldc, sc, batch);
#endif
}

}  // namespace

const char* gemm_engine_name(GemmEngine engine) {
  switch (engine) {
    case GemmEngine::tiled: return "tiled";
    case GemmEngine::cublas: return "cublas";
    case GemmEngine::automatic: break;
  }
  return "automatic";
}

bool has_cublas() { return !ATTNLAB_SIMT_EMULATED; }

void set_default_gemm_engine(GemmEngine engine) {
  if (engine == GemmEngine::automatic) engine = builtin_engine();
  check_available(engine, "set_default_gemm_engine");
  g_default_engine.store(static_cast<uint8_t>(engine));
}

GemmEngine default_gemm_engine() {
  uint8_t e = g_default_engine.load();
  if (e == kUnset) {
    const uint8_t from_env = static_cast<uint8_t>(engine_from_environment());
    // A concurrent first call resolves the same value; keep whichever landed first.
    g_default_engine.compare_exchange_strong(e, from_env);
    e = g_default_engine.load();
  }
  return static_cast<GemmEngine>(e);
}

void gemm_strided_batched(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                          int64_t lda, int64_t stride_a, const float* B, int64_t ldb, int64_t stride_b, float beta,
                          float* C, int64_t ldc, int64_t stride_c, int64_t batch, GemmEngine engine) {
  gemm_any<float, float, float>(trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc,
                                stride_c, batch, engine);
}

void gemm_strided_batched(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
                          int64_t lda, int64_t stride_a, const double* B, int64_t ldb, int64_t stride_b, double beta,
                          double* C, int64_t ldc, int64_t stride_c, int64_t batch, GemmEngine engine) {
  gemm_any<double, double, double>(trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C,
                                   ldc, stride_c, batch, engine);
}

void gemm_strided_batched(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const bf16* A,
                          int64_t lda, int64_t stride_a, const bf16* B, int64_t ldb, int64_t stride_b, float beta,
                          float* C, int64_t ldc, int64_t stride_c, int64_t batch, GemmEngine engine) {
  static_assert(sizeof(bf16) == sizeof(__nv_bfloat16), "attnlab::bf16 and __nv_bfloat16 share their bits");
  gemm_any<bf16, float, __nv_bfloat16>(trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C,
                                       ldc, stride_c, batch, engine);
}

// ---- matmul on tensors ------------------------------------------------------------------

namespace {

// One batch dim after simplification: its size and the element strides of a, b and c along it.
struct BatchDim {
  int64_t size, sa, sb, sc;
};

}  // namespace

void matmul_into(Tensor& out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, double beta,
                 GemmEngine engine) {
  const Shape shape = cpu::matmul_shape(a, b, trans_a, trans_b, "cuda::matmul");
  const DType out_dtype = a.dtype() == DType::bf16 ? DType::f32 : a.dtype();
  AL_CHECK_DTYPE(a.dtype() == DType::f32 || a.dtype() == DType::f64 || a.dtype() == DType::bf16,
                 "cuda::matmul: operands must be f32, f64 or bf16; got a=", a, ", b=", b);
  AL_CHECK_DEVICE(a.device().is_cuda() && b.device() == a.device() && out.device() == a.device(),
                  "cuda::matmul: a, b and out must be on one CUDA device; got a=", a, ", b=", b, ", out=", out);
  AL_CHECK_SHAPE(out.shape() == shape && out.is_contiguous() && out.dtype() == out_dtype,
                 "cuda::matmul_into: out must be contiguous ", shape, " ", out_dtype, "; got out=", out);
  const int64_t M = shape.at(-2), N = shape.at(-1), K = a.size(trans_a ? -2 : -1);
  if (shape.numel() == 0) return;

  const cpu::GemmOperand oa = cpu::gemm_operand(a, trans_a), ob = cpu::gemm_operand(b, trans_b);
  const int64_t nbatch = shape.ndim() - 2;
  const Shape batch_shape(std::vector<int64_t>(shape.begin(), shape.end() - 2));
  auto batch_strides = [&](const Tensor& x) {
    Shape xb(std::vector<int64_t>(x.shape().begin(), x.shape().end() - 2));
    std::vector<int64_t> xs(x.strides().begin(), x.strides().end() - 2);
    return broadcast_strides(xb, xs, batch_shape);
  };
  const std::vector<int64_t> sa = batch_strides(oa.t), sb = batch_strides(ob.t);
  // Drop size-1 dims and merge a dim into the one outside it when all three strides continue
  // across the boundary: the innermost dim left is the strided batch of one GEMM call, and any
  // others are looped over here.
  std::vector<BatchDim> dims;
  for (int64_t d = 0; d < nbatch; ++d) {
    const size_t du = static_cast<size_t>(d);
    const BatchDim cur{batch_shape[d], sa[du], sb[du], out.stride(d)};
    if (cur.size == 1) continue;
    if (!dims.empty()) {
      BatchDim& prev = dims.back();
      if (prev.sa == cur.sa * cur.size && prev.sb == cur.sb * cur.size && prev.sc == cur.sc * cur.size) {
        prev = {prev.size * cur.size, cur.sa, cur.sb, cur.sc};
        continue;
      }
    }
    dims.push_back(cur);
  }
  const BatchDim inner = dims.empty() ? BatchDim{1, 0, 0, 0} : dims.back();
  if (!dims.empty()) dims.pop_back();
  int64_t outer = 1;
  for (const BatchDim& d : dims) outer *= d.size;

  auto run = [&](auto in_tag, auto acc_tag) {
    using TIn = decltype(in_tag);
    using TAcc = decltype(acc_tag);
    const TIn* pa = oa.t.template data<TIn>();
    const TIn* pb = ob.t.template data<TIn>();
    TAcc* pc = out.data<TAcc>();
    for (int64_t i = 0; i < outer; ++i) {
      int64_t off_a = 0, off_b = 0, off_c = 0;
      for (int64_t d = static_cast<int64_t>(dims.size()), rest = i; d-- > 0;) {
        const BatchDim& bd = dims[static_cast<size_t>(d)];
        const int64_t idx = rest % bd.size;
        rest /= bd.size;
        off_a += idx * bd.sa;
        off_b += idx * bd.sb;
        off_c += idx * bd.sc;
      }
      gemm_strided_batched(oa.trans, ob.trans, M, N, K, TAcc(1), pa + off_a, oa.ld, inner.sa, pb + off_b, ob.ld,
                           inner.sb, static_cast<TAcc>(beta), pc + off_c, std::max<int64_t>(N, 1), inner.sc,
                           inner.size, engine);
    }
  };
  switch (a.dtype()) {
    case DType::f32: run(float{}, float{}); break;
    case DType::f64: run(double{}, double{}); break;
    default: run(bf16{}, float{}); break;
  }
}

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, GemmEngine engine) {
  const DType out_dtype = a.dtype() == DType::bf16 ? DType::f32 : a.dtype();
  Tensor out = Tensor::empty(cpu::matmul_shape(a, b, trans_a, trans_b, "cuda::matmul"), out_dtype, a.device());
  matmul_into(out, a, b, trans_a, trans_b, 0.0, engine);
  return out;
}

}  // namespace attnlab::cuda
