// Planted kernel bugs that the emulator must report, each asserting on the diagnostic's text
// (kind, file:line and block/thread where they are fixed by the kernel), and each followed by a
// correct launch to show a failed launch leaves the emulator healthy.
//
// A sync point's line is captured at run time by MARK(var) on the same source line, so the
// expected "file:line" does not depend on this file's layout.
#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <string>
#include <vector>

#include "lib/simt/compat.h"
#include "tests/simt/kernels.h"

namespace simt = attnlab::simt;

namespace {

constexpr unsigned kFull = 0xffffffffu;

std::atomic<int> g_line_a{0}, g_line_b{0};
#define MARK(var) var.store(__LINE__, std::memory_order_relaxed)

std::string at(const std::atomic<int>& line) { return std::string(__FILE__) + ":" + std::to_string(line.load()); }

#define EXPECT_HAS(text, part) EXPECT_NE((text).find(part), std::string::npos) << "missing \"" << (part) << "\" in:\n" << (text)

// A correct launch of barrier-, shuffle- and carver-heavy kernels after a failure.
void expect_healthy() {
  const int rows = 4, cols = 300;
  const auto x = simt_test::random_vector(static_cast<size_t>(rows) * cols, 11);
  std::vector<float> y(x.size());
  ASSERT_EQ(simt_test::softmax(x.data(), y.data(), rows, cols), cudaSuccess) << simt::take_last_error();
  EXPECT_LT(simt_test::max_abs_diff(y, simt_test::softmax_reference(x, rows, cols)), 1e-6);
  const int m = 20, n = 21, k = 22;
  const auto a = simt_test::random_vector(static_cast<size_t>(m) * k, 12);
  const auto b = simt_test::random_vector(static_cast<size_t>(k) * n, 13);
  std::vector<float> c(static_cast<size_t>(m) * n);
  ASSERT_EQ(simt_test::sgemm(a.data(), b.data(), c.data(), m, n, k), cudaSuccess) << simt::take_last_error();
  EXPECT_LT(simt_test::max_abs_diff(c, simt_test::sgemm_reference(a, b, m, n, k)), 1e-4);
  EXPECT_EQ(simt::take_last_error(), "");
}

// Strict mode whatever ATTNLAB_SIMT_STRICT says, so the barrier diagnostics are expected.
class SimtBugs : public ::testing::Test {
 protected:
  void SetUp() override { simt::set_strict(true); }
  void TearDown() override { simt::reset_strict(); }
};

// Launches and returns the diagnostic, expecting cudaErrorLaunchFailure.
template <typename... Params, typename... Args>
std::string failure_of(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, Args&&... args) {
  const cudaError_t err = simt::launch(kernel, grid, block, smem, nullptr, std::forward<Args>(args)...);
  EXPECT_EQ(err, cudaErrorLaunchFailure);
  return simt::take_last_error();
}

// ---- (1), (2) Missing barriers: wrong results, or a TSan report --------------------------------------

#if defined(__SANITIZE_THREAD__)
// Under TSan a planted race is reported whatever the schedule (barriers release and acquire);
// the racy launch runs in a child that halts on the first report.
template <typename F>
void expect_tsan_race(F racy_launch) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  setenv("TSAN_OPTIONS", "halt_on_error=1", 1);
  EXPECT_DEATH(racy_launch(), "ThreadSanitizer: data race");
  unsetenv("TSAN_OPTIONS");
}
#endif

TEST_F(SimtBugs, MissingWriteAfterReadBarrierIsCaughtByWarpAhead) {
  // Values in [-1, 1): the row maximum is below 1 while a warp's partial sum is far above it, so
  // a warp that reads another warp's partial sum as that warp's maximum gets a wrong result.
  const int rows = 8, cols = 1000;
  const auto x = simt_test::random_vector(static_cast<size_t>(rows) * cols, 21);
  const auto want = simt_test::softmax_reference(x, rows, cols);
  std::vector<float> y(x.size());
  simt::ScheduleGuard guard({simt::Schedule::warp_ahead});
#if defined(__SANITIZE_THREAD__)
  expect_tsan_race([&] { (void)simt_test::softmax(x.data(), y.data(), 1, cols, {.raw = true, .war = false}); });
#else
  ASSERT_EQ(simt_test::softmax(x.data(), y.data(), rows, cols, {.raw = true, .war = false}), cudaSuccess);
  EXPECT_GT(simt_test::max_abs_diff(y, want), 1e-3) << "warp_ahead should expose the missing barrier";
#endif
  ASSERT_EQ(simt_test::softmax(x.data(), y.data(), rows, cols), cudaSuccess);
  EXPECT_LT(simt_test::max_abs_diff(y, want), 1e-6);
}

TEST_F(SimtBugs, MissingReadAfterWriteBarrierIsWrongUnderEverySchedule) {
  const int m = 33, n = 47, k = 61;
  const auto a = simt_test::random_vector(static_cast<size_t>(m) * k, 22);
  const auto b = simt_test::random_vector(static_cast<size_t>(k) * n, 23);
  const auto want = simt_test::sgemm_reference(a, b, m, n, k);
#if defined(__SANITIZE_THREAD__)
  std::vector<float> racy(static_cast<size_t>(m) * n);
  expect_tsan_race([&] { (void)simt_test::sgemm(a.data(), b.data(), racy.data(), 16, 16, k, {.raw = false}); });
  return;
#endif
  for (const char* name : {"inorder", "reversed", "interleaved", "warp_ahead", "random:7", "random:8"}) {
    simt::ScheduleGuard guard(*simt::Schedule::parse(name));
    std::vector<float> c(static_cast<size_t>(m) * n);
    ASSERT_EQ(simt_test::sgemm(a.data(), b.data(), c.data(), m, n, k, {.raw = false, .war = true}), cudaSuccess);
    EXPECT_GT(simt_test::max_abs_diff(c, want), 1e-2) << name;
  }
  expect_healthy();
}

// ---- (3), (4) Barriers ------------------------------------------------------------------------------------

__global__ void divergent_barrier(float* out) {
  if (threadIdx.x < 32) {
    MARK(g_line_a); __syncthreads();
  } else {
    MARK(g_line_b); __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}

TEST_F(SimtBugs, DivergentSyncthreads) {
  std::vector<float> out(64);
  const std::string e = failure_of(divergent_barrier, dim3(1), dim3(64), 0, out.data());
  EXPECT_HAS(e, "divergent __syncthreads(): thread (");
  EXPECT_HAS(e, "of block (0,0,0) reached __syncthreads() at ");
  EXPECT_HAS(e, at(g_line_a));
  EXPECT_HAS(e, at(g_line_b));
  EXPECT_HAS(e, " thread(s) wait at __syncthreads() at ");
  expect_healthy();
}

__global__ void divergent_from_block_five(float* out) {
  if (blockIdx.x >= 5 && threadIdx.x < 32) {
    MARK(g_line_a); __syncthreads();
  } else {
    MARK(g_line_b); __syncthreads();
  }
  out[blockIdx.x * 64 + threadIdx.x] = 1.0f;
}

TEST_F(SimtBugs, FailureInManyParallelBlocksNamesTheFirst) {
  std::vector<float> out(16 * 64);
  const std::string e = failure_of(divergent_from_block_five, dim3(16), dim3(64), 0, out.data());
  EXPECT_HAS(e, "of block (5,0,0)");
  expect_healthy();
}

__global__ void early_return(float* out, int n) {
  if (static_cast<int>(threadIdx.x) >= n) return;
  out[threadIdx.x] = 1.0f;
  MARK(g_line_a); __syncthreads();
  out[n + threadIdx.x] = out[(threadIdx.x + 1) % n] + 1.0f;
}

TEST_F(SimtBugs, BarrierAfterThreadsReturned) {
  std::vector<float> out(128);
  const std::string e = failure_of(early_return, dim3(1), dim3(64), 0, out.data(), 40);
  EXPECT_HAS(e, "__syncthreads() after exit: thread (");
  EXPECT_HAS(e, at(g_line_a));
  EXPECT_HAS(e, "mask threads out with a condition instead of returning");
  expect_healthy();

  // Non-strict mode counts exited threads as arrived, as GPUs commonly do.
  simt::set_strict(false);
  EXPECT_EQ(simt::launch(early_return, dim3(1), dim3(64), 0, nullptr, out.data(), 40), cudaSuccess)
      << simt::take_last_error();
  simt::set_strict(true);
  EXPECT_EQ(out[40], 2.0f);
  EXPECT_EQ(out[79], 2.0f);
}

// ---- (5), (6), (7) Warp collectives ---------------------------------------------------------------------

__global__ void shuffle_in_branch(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x % 32 < 16) {
    MARK(g_line_a); v = __shfl_xor_sync(kFull, v, 1);
  }
  out[threadIdx.x] = v;
}

TEST_F(SimtBugs, FullMaskShuffleInsideLaneBranch) {
  std::vector<float> out(32);
  const std::string e = failure_of(shuffle_in_branch, dim3(1), dim3(32), 0, out.data());
  // Depending on the schedule, lanes 16-31 exit while 0-15 wait, or exit before 0-15 call.
  EXPECT_HAS(e, "__shfl_xor_sync(mask=0xffffffff) at " + at(g_line_a));
  EXPECT_TRUE(e.find("warp collective abandoned: thread (") != std::string::npos ||
              e.find("of the mask have exited") != std::string::npos)
      << e;
  expect_healthy();
}

__global__ void exit_before_shuffle(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x % 32 >= 16) return;
  MARK(g_line_a); v = __shfl_xor_sync(kFull, v, 1);
  out[threadIdx.x] = v;
}

TEST_F(SimtBugs, LanesExitBeforeFullMaskShuffle) {
  std::vector<float> out(64);
  const std::string e = failure_of(exit_before_shuffle, dim3(1), dim3(64), 0, out.data());
  EXPECT_HAS(e, "__shfl_xor_sync(mask=0xffffffff) at " + at(g_line_a));
  EXPECT_HAS(e, "(warp ");
  expect_healthy();
}

__global__ void half_shuffle_half_barrier(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x % 32 < 16) {
    MARK(g_line_a); v = __shfl_xor_sync(kFull, v, 1);
  }
  MARK(g_line_b); __syncthreads();
  out[threadIdx.x] = v;
}

TEST_F(SimtBugs, DeadlockHalfWarpInShuffleHalfAtBarrier) {
  std::vector<float> out(32);
  const std::string e = failure_of(half_shuffle_half_barrier, dim3(1), dim3(32), 0, out.data());
  EXPECT_HAS(e, "deadlock in block (0,0,0): 32 of 32 thread(s) wait and none can continue");
  EXPECT_HAS(e, "16 thread(s) wait at __syncthreads() at " + at(g_line_b));
  EXPECT_HAS(e, "warp 0: lanes 0x0000ffff wait in __shfl_xor_sync(mask=0xffffffff) at " + at(g_line_a) +
                    " for lanes 0xffff0000");
  expect_healthy();
}

__global__ void different_collectives(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x < 16) {
    MARK(g_line_a); v = __shfl_xor_sync(kFull, v, 1);
  } else {
    MARK(g_line_b); v = __shfl_down_sync(kFull, v, 1);
  }
  out[threadIdx.x] = v;
}

TEST_F(SimtBugs, DivergentWarpCollectives) {
  std::vector<float> out(32);
  const std::string e = failure_of(different_collectives, dim3(1), dim3(32), 0, out.data());
  EXPECT_HAS(e, "divergent warp collective: thread (");
  EXPECT_HAS(e, at(g_line_a));
  EXPECT_HAS(e, at(g_line_b));
  expect_healthy();
}

__global__ void caller_not_in_mask(float* out) {
  MARK(g_line_a); out[threadIdx.x] = __shfl_sync(0x1u, 1.0f, 0);
}

__global__ void source_not_in_mask(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x < 16) {
    MARK(g_line_a); v = __shfl_sync(0x0000ffffu, v, 20);
  }
  out[threadIdx.x] = v;
}

__global__ void bad_width(float* out) {
  MARK(g_line_a); out[threadIdx.x] = __shfl_xor_sync(kFull, 1.0f, 1, 12);
}

__global__ void full_mask_in_partial_warp(float* out) {
  MARK(g_line_a); out[threadIdx.x] = static_cast<float>(__ballot_sync(kFull, 1));
}

TEST_F(SimtBugs, MalformedCollectives) {
  std::vector<float> out(48);
  std::string e = failure_of(caller_not_in_mask, dim3(1), dim3(32), 0, out.data());
  EXPECT_HAS(e, "__shfl_sync(mask=0x00000001) at " + at(g_line_a) + " with a mask that does not include its own lane");
  expect_healthy();

  e = failure_of(source_not_in_mask, dim3(1), dim3(32), 0, out.data());
  EXPECT_HAS(e, "reads lane 20 in __shfl_sync(mask=0x0000ffff) at " + at(g_line_a));
  expect_healthy();

  e = failure_of(bad_width, dim3(1), dim3(32), 0, out.data());
  EXPECT_HAS(e, "__shfl_xor_sync(width=12) at " + at(g_line_a) + "; width must be a power of two");
  expect_healthy();

  e = failure_of(full_mask_in_partial_warp, dim3(1), dim3(48), 0, out.data());
  EXPECT_HAS(e, "__ballot_sync(mask=0xffffffff) at " + at(g_line_a) +
                    ", but the block has 48 threads, so warp 1 has only lanes 0x0000ffff");
  expect_healthy();
}

// ---- (8), (9) Dynamic shared memory ---------------------------------------------------------------------

__global__ void carve_overflow(float* out) {
  simt::SmemCarver carve;
  MARK(g_line_a); float* a = carve.take<float>(64);
  float* b = carve.take<float>(16);
  a[threadIdx.x] = static_cast<float>(threadIdx.x);
  if (threadIdx.x < 16) b[threadIdx.x] = 0.0f;
  __syncthreads();
  if (blockIdx.x == 2 && threadIdx.x == 63) a[threadIdx.x + 1] = -1.0f;  // one past the end
  out[blockIdx.x * 64 + threadIdx.x] = a[threadIdx.x];
}

__global__ void whole_overflow(float* out) {
  MARK(g_line_a); float* s = simt::dynamic_smem<float>();
  s[threadIdx.x + 1] = 1.0f;  // thread 63 writes s[64], one past the launch's 64 floats
  out[threadIdx.x] = 0.0f;
}

TEST_F(SimtBugs, WritePastCarvedArrayIsReportedByCanary) {
  std::vector<float> out(3 * 64);
#if defined(__SANITIZE_ADDRESS__)
  // Under ASan each carve is its own heap block, and ASan reports the write itself.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH((void)simt::launch(carve_overflow, dim3(3), dim3(64), 320, nullptr, out.data()),
               "AddressSanitizer: heap-buffer-overflow");
  return;
#endif
  std::string e = failure_of(carve_overflow, dim3(3), dim3(64), 320, out.data());
  EXPECT_EQ(e, "dynamic shared memory overflow: take<float>(64) at " + at(g_line_a) +
                   " was written past its end (byte +0) in block (2,0,0)");
  expect_healthy();

  e = failure_of(whole_overflow, dim3(1), dim3(64), 64 * sizeof(float), out.data());
  EXPECT_EQ(e, "dynamic shared memory overflow: simt::dynamic_smem<T>() at " + at(g_line_a) +
                   ": the launch's 256 bytes were written past their end (byte +0) in block (0,0,0)");
  expect_healthy();
}

__global__ void carve_too_much(float* out) {
  simt::SmemCarver carve;
  MARK(g_line_a); float* a = carve.take<float>(64);
  MARK(g_line_b); int* b = carve.take<int>(1);
  a[threadIdx.x] = 0.0f;
  b[0] = 0;
  out[threadIdx.x] = a[threadIdx.x];
}

__global__ void carve_mismatch(float* out) {
  simt::SmemCarver carve;
  MARK(g_line_a); float* a = carve.take<float>(threadIdx.x == 0 ? 64 : 32);
  if (threadIdx.x < 32) a[threadIdx.x] = 0.0f;  // in bounds for whichever thread carved first
  out[threadIdx.x] = 0.0f;
}

__global__ void carve_and_whole(float* out) {
  simt::SmemCarver carve;
  MARK(g_line_a); float* a = carve.take<float>(4);
  MARK(g_line_b); float* s = simt::dynamic_smem<float>();
  out[threadIdx.x] = a[0] + s[0];
}

TEST_F(SimtBugs, CarverChecks) {
  std::vector<float> out(64);
  std::string e = failure_of(carve_too_much, dim3(1), dim3(64), 256, out.data());
  EXPECT_EQ(e, "dynamic shared memory overflow: take<int>(1) at " + at(g_line_b) +
                   " needs bytes [256, 260) but the launch has 256 bytes of dynamic shared memory (block (0,0,0); "
                   "earlier: take<float>(64) at " + at(g_line_a) + ";)");
  expect_healthy();

  e = failure_of(carve_mismatch, dim3(1), dim3(64), 256, out.data());
  EXPECT_HAS(e, "SmemCarver mismatch: thread (");
  EXPECT_HAS(e, "take<float>(64) at " + at(g_line_a));
  EXPECT_HAS(e, "take<float>(32) at " + at(g_line_a));
  expect_healthy();

  e = failure_of(carve_and_whole, dim3(1), dim3(64), 256, out.data());
  EXPECT_HAS(e, "calls simt::dynamic_smem<T>() at " + at(g_line_b) + " after SmemCarver::take at " + at(g_line_a));
  expect_healthy();
}

// ---- (10) Launch configuration, exceptions, abort ------------------------------------------------------------

__global__ void trivial(float* out) { out[threadIdx.x] = 1.0f; }

TEST_F(SimtBugs, InvalidLaunchConfiguration) {
  std::vector<float> out(2048);
  EXPECT_EQ(simt::launch(trivial, dim3(1), dim3(2048), 0, nullptr, out.data()), cudaErrorInvalidConfiguration);
  EXPECT_HAS(simt::take_last_error(), "invalid launch configuration: block (2048,1,1) has 2048 threads");
  EXPECT_EQ(simt::launch(trivial, dim3(1), dim3(1, 1, 65), 0, nullptr, out.data()), cudaErrorInvalidConfiguration);
  EXPECT_HAS(simt::take_last_error(), "block (1,1,65)");
  EXPECT_EQ(simt::launch(trivial, dim3(1, 70000), dim3(32), 0, nullptr, out.data()), cudaErrorInvalidConfiguration);
  EXPECT_HAS(simt::take_last_error(), "grid (1,70000,1)");
  EXPECT_EQ(simt::launch(trivial, dim3(0), dim3(32), 0, nullptr, out.data()), cudaErrorInvalidConfiguration);
  EXPECT_EQ(simt::launch(trivial, dim3(1), dim3(32), 300 * 1024, nullptr, out.data()), cudaErrorInvalidConfiguration);
  EXPECT_HAS(simt::take_last_error(), "307200 bytes of dynamic shared memory; at most 232448");
  expect_healthy();
}

__global__ void throwing(float* out) {
  if (threadIdx.x == 3) throw std::runtime_error("boom");
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}

TEST_F(SimtBugs, KernelExceptionBecomesALaunchFailure) {
  std::vector<float> out(32);
  const std::string e = failure_of(throwing, dim3(1), dim3(32), 0, out.data());
  EXPECT_HAS(e, "kernel threw an exception in thread (3,0,0) of block (0,0,0): boom");
  expect_healthy();
}

TEST(SimtBugsDeathTest, AbortPrintsTheDiagnostic) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  std::vector<float> out(64);
  EXPECT_DEATH(
      {
        setenv("ATTNLAB_SIMT_ABORT", "1", 1);
        simt::set_strict(true);
        (void)simt::launch(divergent_barrier, dim3(1), dim3(64), 0, nullptr, out.data());
      },
      "attnlab simt: divergent __syncthreads\\(\\)");
}

}  // namespace
