// ms per launch of the emulated sgemm (128^3, 16x16 tiles) and softmax (64x1024, 256 threads per
// row), warm, sequential and with OpenMP over blocks; the schedule comes from the environment.
//   simt_bench [repeats]
#include <time.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <utility>

#include "lib/simt/compat.h"
#include "tests/simt/kernels.h"

namespace {

double cpu_ms() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

// Wall and CPU (all threads) ms per launch; on a busy machine the CPU time of one thread is the
// steadier number.
std::pair<double, double> ms_per_launch(const std::function<cudaError_t()>& launch, int repeats) {
  if (launch() != cudaSuccess) {  // warm-up: stacks mapped, pages touched
    std::fprintf(stderr, "launch failed: %s\n", attnlab::simt::take_last_error().c_str());
    std::exit(1);
  }
  const auto t0 = std::chrono::steady_clock::now();
  const double c0 = cpu_ms();
  for (int i = 0; i < repeats; ++i) launch();
  const double wall = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return {wall / repeats, (cpu_ms() - c0) / repeats};
}

__global__ void barriers_only(int rounds, int* sink) {
  int v = 0;
  for (int r = 0; r < rounds; ++r) {
    v += r;
    __syncthreads();
  }
  if (v == -1) *sink = v;
}

__global__ void shuffles_only(int rounds, int* sink) {
  int v = static_cast<int>(threadIdx.x);
  for (int r = 0; r < rounds; ++r) v += __shfl_xor_sync(0xffffffffu, v, r & 31);
  if (v == -1) *sink = v;
}

__global__ void no_sync(int* sink) {
  if (threadIdx.x == 100000) *sink = 1;
}

}  // namespace

int main(int argc, char** argv) {
  const int repeats = argc > 1 ? std::atoi(argv[1]) : 20;
  const int n = 128, rows = 64, cols = 1024;
  const auto a = simt_test::random_vector(n * n, 1), b = simt_test::random_vector(n * n, 2);
  std::vector<float> c(n * n);
  const auto x = simt_test::random_vector(rows * cols, 3);
  std::vector<float> y(x.size());
  std::printf("schedule %s\n", attnlab::simt::current_schedule().name().c_str());
  for (const char* threads : {"1", "2"}) {
    setenv("ATTNLAB_SIMT_THREADS", threads, 1);
    const auto sgemm_ms =
        ms_per_launch([&] { return simt_test::sgemm(a.data(), b.data(), c.data(), n, n, n); }, repeats);
    const auto softmax_ms =
        ms_per_launch([&] { return simt_test::softmax(x.data(), y.data(), rows, cols); }, repeats);
    int sink = 0;
    const int rounds = 100, blocks = 64;
    const auto bar = ms_per_launch(
        [&] { return attnlab::simt::launch(barriers_only, dim3(blocks), dim3(256), 0, nullptr, rounds, &sink); }, 5);
    const auto shf = ms_per_launch(
        [&] { return attnlab::simt::launch(shuffles_only, dim3(blocks), dim3(256), 0, nullptr, rounds, &sink); }, 5);
    const auto none =
        ms_per_launch([&] { return attnlab::simt::launch(no_sync, dim3(4096), dim3(256), 0, nullptr, &sink); }, 5);
    const double per = 1e6 / (blocks * 256.0 * rounds);  // ns per thread per sync point, from ms
    std::printf("threads %s: cpu ns per thread: barrier %.1f, shuffle %.1f, start+exit %.1f\n", threads,
                bar.second * per, shf.second * per, none.second * 1e6 / (4096 * 256.0));
    std::printf("threads %s: sgemm 128^3 %.2f ms (cpu %.2f), softmax 64x1024 %.2f ms (cpu %.2f)\n", threads,
                sgemm_ms.first, sgemm_ms.second, softmax_ms.first, softmax_ms.second);
  }
}
