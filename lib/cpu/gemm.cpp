#include "lib/cpu/gemm.h"

#include <Eigen/Core>
#include <algorithm>

#if ATTNLAB_WITH_BLAS
#include <cblas.h>
#endif

#include "lib/cpu/parallel.h"
#include "lib/error.h"

namespace attnlab::cpu {

template <typename T>
void gemm_eigen(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
                const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Stride = Eigen::OuterStride<>;
  using CMap = Eigen::Map<const Mat, Eigen::Unaligned, Stride>;
  Eigen::Map<Mat, Eigen::Unaligned, Stride> c(C, M, N, Stride(ldc));
  if (K == 0) {
    if (beta == T(0)) c.setZero(); else c *= beta;
    return;
  }
  CMap a(A, trans_a ? K : M, trans_a ? M : K, Stride(lda));
  CMap b(B, trans_b ? N : K, trans_b ? K : N, Stride(ldb));
  auto run = [&](const auto& opa, const auto& opb) {
    if (beta == T(0)) {
      c.noalias() = alpha * (opa * opb);
    } else {
      if (beta != T(1)) c *= beta;
      c.noalias() += alpha * (opa * opb);
    }
  };
  if (!trans_a && !trans_b) run(a, b);
  else if (trans_a && !trans_b) run(a.transpose(), b);
  else if (!trans_a && trans_b) run(a, b.transpose());
  else run(a.transpose(), b.transpose());
}

#if ATTNLAB_WITH_BLAS
namespace {
// Below this many multiply-adds OpenBLAS's dispatch costs more than Eigen's inlined kernel.
constexpr double kBlasMinWork = 32.0 * 32.0 * 32.0;

CBLAS_TRANSPOSE cblas_op(bool trans) { return trans ? CblasTrans : CblasNoTrans; }

void blas_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
               const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, cblas_op(ta), cblas_op(tb), static_cast<blasint>(M), static_cast<blasint>(N),
              static_cast<blasint>(K), alpha, A, static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C,
              static_cast<blasint>(ldc));
}
void blas_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
               const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, cblas_op(ta), cblas_op(tb), static_cast<blasint>(M), static_cast<blasint>(N),
              static_cast<blasint>(K), alpha, A, static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C,
              static_cast<blasint>(ldc));
}
}  // namespace
#endif

namespace {

// Runs fn with the OpenMP thread count of this context set to 1, so that OpenBLAS (OpenMP build)
// and Eigen, which size their teams from omp_get_max_threads(), compute on this thread alone.
template <typename Fn>
void on_one_thread(Fn&& fn) {
#ifdef _OPENMP
  if (in_parallel()) return fn();  // both already stay on one thread inside a parallel region
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  fn();
  omp_set_num_threads(saved);
#else
  fn();
#endif
}

// How many tiles C is cut into: a function of the shape only. A BLAS gives different bits when
// it splits a product differently (OpenBLAS does, by thread count and by block size), so gemm
// cuts C itself, the same way on any thread count, and runs each tile on one thread: the same
// bits on 1 or N threads. Each tile repacks the operand that it shares with the others, so
// tiles stay few and large: 2 from ~2 MFLOP (both cores busy), 4 and 8 only for long sides.
int64_t tile_count(int64_t M, int64_t N, int64_t K) {
  const double work = static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K);
  const int64_t side = std::max(M, N);
  if (work < double(1 << 20) || side < 64) return 1;
  if (work < double(1 << 26) || side < 2048) return 2;
  if (work < double(1 << 28) || side < 8192) return 4;
  return 8;
}

template <typename T>
void gemm_one(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
              const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
#if ATTNLAB_WITH_BLAS
  // BLAS wants leading dims >= 1 even for empty operands; Eigen handles those cases.
  if (static_cast<double>(M) * N * K >= kBlasMinWork && lda > 0 && ldb > 0 && ldc > 0) {
    blas_gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
#endif
  gemm_eigen(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  const int64_t tiles = tile_count(M, N, K);
  // Cut the longer side of C into tiles of whole 16-row (or column) kernel blocks.
  const bool by_rows = M >= N;
  const int64_t side = by_rows ? M : N;
  const int64_t step = ((side + tiles - 1) / tiles + 15) / 16 * 16;
  const int64_t count = (side + step - 1) / std::max<int64_t>(step, 1);
  auto tile = [&](int64_t t) {
    const int64_t s0 = t * step, n = std::min(step, side - s0);
    if (by_rows) {
      const T* a = trans_a ? A + s0 : A + s0 * lda;  // rows s0.. of op(A)
      gemm_one<T>(trans_a, trans_b, n, N, K, alpha, a, lda, B, ldb, beta, C + s0 * ldc, ldc);
    } else {
      const T* b = trans_b ? B + s0 * ldb : B + s0;  // columns s0.. of op(B)
      gemm_one<T>(trans_a, trans_b, M, n, K, alpha, A, lda, b, ldb, beta, C + s0, ldc);
    }
  };
  if (count <= 1) {
    on_one_thread([&] { gemm_one<T>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc); });
    return;
  }
  parallel_for(0, count, 1, [&](int64_t t0, int64_t t1) {
    on_one_thread([&] {
      for (int64_t t = t0; t < t1; ++t) tile(t);
    });
  });
}

const char* gemm_backend() { return ATTNLAB_WITH_BLAS ? "OpenBLAS" : "Eigen"; }

template void gemm_eigen<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                                int64_t, float, float*, int64_t);
template void gemm_eigen<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                                 const double*, int64_t, double, double*, int64_t);
template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                          float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t, const double*,
                           int64_t, double, double*, int64_t);

Shape matmul_shape(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, const char* op) {
  AL_CHECK_SHAPE(a.ndim() >= 2 && b.ndim() >= 2, op, ": both operands need at least 2 dims; got a=", a, ", b=", b);
  AL_CHECK_DTYPE(a.dtype() == b.dtype(), op, ": dtypes must match; got a=", a, ", b=", b);
  const int64_t M = a.size(trans_a ? -1 : -2), Ka = a.size(trans_a ? -2 : -1);
  const int64_t Kb = b.size(trans_b ? -1 : -2), N = b.size(trans_b ? -2 : -1);
  AL_CHECK_SHAPE(Ka == Kb, op, ": inner dimensions must agree (", Ka, " vs ", Kb, ", trans_a=", trans_a,
                 ", trans_b=", trans_b, "); got a=", a, ", b=", b);
  Shape batch_a(std::vector<int64_t>(a.shape().begin(), a.shape().end() - 2));
  Shape batch_b(std::vector<int64_t>(b.shape().begin(), b.shape().end() - 2));
  std::vector<int64_t> out = broadcast_shapes(batch_a, batch_b, op).dims();
  out.push_back(M);
  out.push_back(N);
  return Shape(std::move(out));
}

GemmOperand gemm_operand(const Tensor& x, bool trans) {
  const int64_t r = x.size(-2), c = x.size(-1);
  const int64_t sr = x.stride(-2), sc = x.stride(-1);
  if ((sc == 1 || c == 1) && sr >= std::max<int64_t>(c, 1)) return {x, trans, sr};
  if ((sr == 1 || r == 1) && sc >= std::max<int64_t>(r, 1)) return {x, !trans, sc};  // column-major storage
  Tensor packed = x.contiguous();
  return {packed, trans, std::max<int64_t>(c, 1)};
}

void matmul_into(Tensor& out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, double beta) {
  const Shape shape = matmul_shape(a, b, trans_a, trans_b);
  AL_CHECK_SHAPE(out.shape() == shape && out.is_contiguous() && out.dtype() == a.dtype(),
                 "matmul_into: out must be contiguous ", shape, " ", a.dtype(), "; got out=", out);
  const int64_t M = shape.at(-2), N = shape.at(-1), K = a.size(trans_a ? -2 : -1);
  const int64_t batch = shape.numel() / std::max<int64_t>(M * N, 1);
  const Shape batch_shape(std::vector<int64_t>(shape.begin(), shape.end() - 2));
  // Batch strides of each operand, broadcast to the output's batch shape.
  auto batch_strides = [&](const Tensor& x) {
    Shape xb(std::vector<int64_t>(x.shape().begin(), x.shape().end() - 2));
    std::vector<int64_t> xs(x.strides().begin(), x.strides().end() - 2);
    return broadcast_strides(xb, xs, batch_shape);
  };
  const GemmOperand oa = gemm_operand(a, trans_a), ob = gemm_operand(b, trans_b);
  const std::vector<int64_t> sa = batch_strides(oa.t), sb = batch_strides(ob.t);
  auto offsets = [&](int64_t i, int64_t& off_a, int64_t& off_b) {
    off_a = off_b = 0;
    for (int64_t d = batch_shape.ndim(); d-- > 0;) {
      const int64_t idx = i % batch_shape[d];
      i /= batch_shape[d];
      off_a += idx * sa[static_cast<size_t>(d)];
      off_b += idx * sb[static_cast<size_t>(d)];
    }
  };
  dispatch_float(a.dtype(), "matmul", [&](auto tag) {
    using T = decltype(tag);
    const T* pa = oa.t.template data<T>();
    const T* pb = ob.t.template data<T>();
    T* pc = out.data<T>();
    auto one = [&](int64_t i) {
      int64_t off_a, off_b;
      offsets(i, off_a, off_b);
      gemm<T>(oa.trans, ob.trans, M, N, K, T(1), pa + off_a, oa.ld, pb + off_b, ob.ld, static_cast<T>(beta),
              pc + i * M * N, std::max<int64_t>(N, 1));
    };
    // Products under ~2 MFLOP do not feed Eigen's threads; spread the batch instead.
    const bool small = static_cast<double>(M) * N * K < 1e6;
    if (batch > 1 && small) {
      parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t i = b0; i < b1; ++i) one(i);
      });
    } else {
      for (int64_t i = 0; i < batch; ++i) one(i);
    }
  });
}

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  Tensor out = Tensor::empty(matmul_shape(a, b, trans_a, trans_b), a.dtype());
  matmul_into(out, a, b, trans_a, trans_b, 0.0);
  return out;
}

}  // namespace attnlab::cpu
