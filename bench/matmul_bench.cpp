// f32 matmul throughput on all cores, at 512^3 and 1024^3 (or the sizes given as arguments):
// attnlab's cpu::gemm (OpenBLAS for large products when the build found it), its Eigen path
// alone, and the machine's BLAS called directly (if one is installed).
//
//   build/bench/matmul_bench [N ...]
//
// The BLAS is found at run time (dlopen of OpenBLAS, else the system libblas.so.3) and called
// through cblas_sgemm with the same row-major operands, so both sides do identical work. Each
// figure is the median over repetitions after a warm-up; the ratio is attnlab / BLAS.
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "lib/cpu/gemm.h"
#include "lib/cpu/parallel.h"
#include "lib/rng.h"

namespace {

using namespace attnlab;

// cblas_sgemm(order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
using CblasSgemm = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*,
                            int);
constexpr int kRowMajor = 101, kNoTrans = 111;

struct Blas {
  std::string name;
  CblasSgemm sgemm = nullptr;
};

Blas find_blas() {
  for (const char* lib : {"libopenblas.so.0", "libblas.so.3"}) {
    void* h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!h) continue;
    if (auto f = reinterpret_cast<CblasSgemm>(dlsym(h, "cblas_sgemm"))) {
      // Name the file the loader really opened (libblas.so.3 is a Debian alternative).
      Dl_info info{};
      std::string path = lib;
      if (dladdr(reinterpret_cast<void*>(f), &info) && info.dli_fname) path = info.dli_fname;
      return {path, f};
    }
  }
  return {};
}

double median_seconds(const std::function<void()>& fn, int reps) {
  fn();  // warm-up: page in, spin up threads
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> sizes;
  for (int i = 1; i < argc; ++i) sizes.push_back(std::atoll(argv[i]));
  if (sizes.empty()) sizes = {512, 1024};
  const Blas blas = find_blas();
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  std::printf("f32 GEMM C = A B (row-major, square), %d threads, median of repetitions\n", cpu::max_threads());
  std::printf("BLAS baseline: %s%s%s\n", blas.sgemm ? blas.name.c_str() : "none found (install libopenblas-openmp-dev)",
              coretype ? ", OPENBLAS_CORETYPE=" : "", coretype ? coretype : "");
  for (int64_t n : sizes) {
    Generator gen(1);
    const Tensor a = randn(Shape{n, n}, gen), b = randn(Shape{n, n}, gen);
    Tensor c = Tensor::empty(Shape{n, n});
    const double flops = 2.0 * static_cast<double>(n) * n * n;
    const int reps = n <= 512 ? 30 : 10;
    const double t_ours = median_seconds(
        [&] { cpu::gemm<float>(false, false, n, n, n, 1.0f, a.data<float>(), n, b.data<float>(), n, 0.0f, c.data<float>(), n); },
        reps);
    const double t_eigen = median_seconds(
        [&] {
          cpu::gemm_eigen<float>(false, false, n, n, n, 1.0f, a.data<float>(), n, b.data<float>(), n, 0.0f,
                                 c.data<float>(), n);
        },
        reps);
    std::printf("%5lld^3  attnlab gemm (%s) %7.1f GFLOP/s   Eigen %7.1f GFLOP/s", static_cast<long long>(n),
                cpu::gemm_backend(), flops / t_ours * 1e-9, flops / t_eigen * 1e-9);
    if (blas.sgemm) {
      const int ni = static_cast<int>(n);
      const double t_blas = median_seconds(
          [&] {
            blas.sgemm(kRowMajor, kNoTrans, kNoTrans, ni, ni, ni, 1.0f, a.data<float>(), ni, b.data<float>(), ni, 0.0f,
                       c.data<float>(), ni);
          },
          reps);
      std::printf("   BLAS %7.1f GFLOP/s   ratio attnlab/BLAS %.2f, Eigen/BLAS %.2f", flops / t_blas * 1e-9,
                  t_blas / t_ours, t_blas / t_eigen);
    }
    std::printf("\n");
  }
  return 0;
}
