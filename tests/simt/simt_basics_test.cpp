// The emulator's semantics, kernel by kernel: indices, shared memory, barriers, every warp
// collective (widths < 32, partial warps, disjoint groups), atomics, schedules, the settings API
// and the runtime stand-ins. Expected values come from the CUDA programming guide, computed here
// with plain loops.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <numeric>
#include <set>
#include <vector>

#include "lib/simt/compat.h"

namespace simt = attnlab::simt;

namespace {

constexpr unsigned kFull = 0xffffffffu;

// ---- Indices ----------------------------------------------------------------------------------------

struct IndexRecord {
  unsigned tid[3], bid[3], bdim[3], gdim[3];
};

__global__ void record_indices(IndexRecord* out) {
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  IndexRecord& r = out[b * blockDim.x * blockDim.y * blockDim.z + t];
  r = IndexRecord{{threadIdx.x, threadIdx.y, threadIdx.z},
                  {blockIdx.x, blockIdx.y, blockIdx.z},
                  {blockDim.x, blockDim.y, blockDim.z},
                  {gridDim.x, gridDim.y, gridDim.z}};
}

TEST(SimtIndices, ThreeDimensionalThreadsAndBlocks) {
  const dim3 grid(3, 2, 2), block(8, 4, 3);
  std::vector<IndexRecord> out(12 * 96);
  ASSERT_EQ(simt::launch(record_indices, grid, block, 0, nullptr, out.data()), cudaSuccess) << simt::take_last_error();
  size_t i = 0;
  for (unsigned bz = 0; bz < 2; ++bz)
    for (unsigned by = 0; by < 2; ++by)
      for (unsigned bx = 0; bx < 3; ++bx)
        for (unsigned tz = 0; tz < 3; ++tz)
          for (unsigned ty = 0; ty < 4; ++ty)
            for (unsigned tx = 0; tx < 8; ++tx, ++i) {
              const IndexRecord& r = out[i];
              ASSERT_EQ(r.tid[0], tx);
              ASSERT_EQ(r.tid[1], ty);
              ASSERT_EQ(r.tid[2], tz);
              ASSERT_EQ(r.bid[0], bx);
              ASSERT_EQ(r.bid[1], by);
              ASSERT_EQ(r.bid[2], bz);
              ASSERT_EQ(r.bdim[0], 8u);
              ASSERT_EQ(r.bdim[1], 4u);
              ASSERT_EQ(r.bdim[2], 3u);
              ASSERT_EQ(r.gdim[0], 3u);
              ASSERT_EQ(r.gdim[1], 2u);
              ASSERT_EQ(r.gdim[2], 2u);
            }
}

// Each thread gets its own copy of the parameters: changing one changes no other thread's.
__global__ void private_params(int n, int* out) {
  n += static_cast<int>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = n;
}

TEST(SimtLaunch, EachThreadOwnsItsParameters) {
  std::vector<int> out(64);
  const short n = 100;  // converted to the kernel's int, as <<<>>> would
  ASSERT_EQ(simt::launch(private_params, dim3(1), dim3(64), 0, nullptr, n, out.data()), cudaSuccess);
  for (int i = 0; i < 64; ++i) EXPECT_EQ(out[i], 100 + i);
}

// ---- Shared memory --------------------------------------------------------------------------------

__global__ void static_shared(int* out) {
  __shared__ int s[128];
  const int t = threadIdx.x;
  s[t] = static_cast<int>(blockIdx.x) * 1000 + t;
  __syncthreads();
  out[blockIdx.x * 128 + t] = s[(t + 1) % 128];
}

void run_static_shared(std::vector<int>& out) {
  ASSERT_EQ(simt::launch(static_shared, dim3(64), dim3(128), 0, nullptr, out.data()), cudaSuccess)
      << simt::take_last_error();
  for (int b = 0; b < 64; ++b)
    for (int t = 0; t < 128; ++t) ASSERT_EQ(out[b * 128 + t], b * 1000 + (t + 1) % 128) << "block " << b;
}

TEST(SimtSharedMemory, StaticSharedIsPerBlockWithOpenMP) {
  std::vector<int> parallel(64 * 128), sequential(64 * 128);
  run_static_shared(parallel);  // OpenMP over blocks (the default)
  setenv("ATTNLAB_SIMT_THREADS", "1", 1);
  run_static_shared(sequential);
  unsetenv("ATTNLAB_SIMT_THREADS");
  EXPECT_EQ(parallel, sequential);
}

struct CarveInfo {
  uintptr_t addr[3];
  float f0;
  int i0;
  double d_sum;
};

__global__ void carve_kernel(CarveInfo* out) {
  simt::SmemCarver carve;
  float* f = carve.take<float>(37);
  int* i = carve.take<int>(5);
  double* d = carve.take<double>(3);
  CarveInfo& info = out[blockIdx.x];
  if (threadIdx.x == 0) {
    info.addr[0] = reinterpret_cast<uintptr_t>(f);
    info.addr[1] = reinterpret_cast<uintptr_t>(i);
    info.addr[2] = reinterpret_cast<uintptr_t>(d);
    info.f0 = f[36];  // before anyone writes: the 0xFF fill
    info.i0 = i[4];
  }
  __syncthreads();
  if (threadIdx.x < 3) d[threadIdx.x] = blockIdx.x + threadIdx.x;
  __syncthreads();
  if (threadIdx.x == 0) info.d_sum = d[0] + d[1] + d[2];
}

TEST(SimtSharedMemory, CarverAlignsFillsAndFitsExactly) {
  // nvcc layout: 37 floats -> 160 bytes, 5 ints -> 32 bytes, then 24 bytes: 216 in all.
  std::vector<CarveInfo> out(4);
  ASSERT_EQ(simt::launch(carve_kernel, dim3(4), dim3(64), 216, nullptr, out.data()), cudaSuccess)
      << simt::take_last_error();
  for (int b = 0; b < 4; ++b) {
    for (uintptr_t a : out[b].addr) EXPECT_EQ(a % 16, 0u);
    EXPECT_TRUE(std::isnan(out[b].f0));
    EXPECT_EQ(out[b].i0, -1);
    EXPECT_EQ(out[b].d_sum, 3.0 * b + 3.0);
  }
  EXPECT_EQ(simt::launch(carve_kernel, dim3(1), dim3(64), 215, nullptr, out.data()), cudaErrorLaunchFailure);
  EXPECT_NE(simt::take_last_error().find("needs bytes [192, 216) but the launch has 215 bytes"), std::string::npos);
}

__global__ void dynamic_whole(float* out, int* was_nan, int n) {
  float* s = simt::dynamic_smem<float>();
  const int t = threadIdx.x;
  was_nan[blockIdx.x * n + t] = std::isnan(s[t]);  // nothing wrote it yet: the 0xFF fill
  __syncthreads();
  s[n - 1 - t] = static_cast<float>(t + blockIdx.x);
  __syncthreads();
  out[blockIdx.x * n + t] = s[t];
}

TEST(SimtSharedMemory, DynamicSmemStartsAsNaNAndIsPerBlock) {
  const int n = 96;
  std::vector<float> out(3 * n);
  std::vector<int> was_nan(3 * n);
  ASSERT_EQ(simt::launch(dynamic_whole, dim3(3), dim3(n), n * sizeof(float), nullptr, out.data(), was_nan.data(), n),
            cudaSuccess)
      << simt::take_last_error();
  for (int b = 0; b < 3; ++b)
    for (int t = 0; t < n; ++t) {
      EXPECT_EQ(was_nan[b * n + t], 1);
      EXPECT_EQ(out[b * n + t], static_cast<float>(n - 1 - t + b));
    }
}

// ---- Barriers -------------------------------------------------------------------------------------

__global__ void barrier_votes(int* out) {
  const int t = threadIdx.x;
  out[0 * 256 + t] = __syncthreads_count(t % 3 == 0);
  out[1 * 256 + t] = __syncthreads_and(t < 256);
  out[2 * 256 + t] = __syncthreads_and(t != 77);
  out[3 * 256 + t] = __syncthreads_or(t == 200);
  out[4 * 256 + t] = __syncthreads_or(0);
}

TEST(SimtBarriers, CountAndOr) {
  std::vector<int> out(5 * 256);
  ASSERT_EQ(simt::launch(barrier_votes, dim3(1), dim3(256), 0, nullptr, out.data()), cudaSuccess)
      << simt::take_last_error();
  for (int t = 0; t < 256; ++t) {
    EXPECT_EQ(out[t], 86);
    EXPECT_EQ(out[256 + t], 1);
    EXPECT_EQ(out[512 + t], 0);
    EXPECT_EQ(out[768 + t], 1);
    EXPECT_EQ(out[1024 + t], 0);
  }
}

// A 1024-thread tree reduction: ten barrier rounds over the largest block.
__global__ void tree_reduce(const int* in, long long* out) {
  __shared__ long long s[1024];
  const int t = threadIdx.x;
  s[t] = in[blockIdx.x * 1024 + t];
  __syncthreads();
  for (int stride = 512; stride > 0; stride >>= 1) {
    if (t < stride) s[t] += s[t + stride];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

TEST(SimtBarriers, TreeReductionOver1024Threads) {
  std::vector<int> in(3 * 1024);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<int>((i * 7919) % 1000) - 500;
  std::vector<long long> out(3);
  ASSERT_EQ(simt::launch(tree_reduce, dim3(3), dim3(1024), 0, nullptr, in.data(), out.data()), cudaSuccess)
      << simt::take_last_error();
  for (int b = 0; b < 3; ++b)
    EXPECT_EQ(out[b], std::accumulate(in.begin() + b * 1024, in.begin() + (b + 1) * 1024, 0LL));
}

// ---- Shuffles -------------------------------------------------------------------------------------------

// The guide's semantics for one lane, written independently of the emulator.
int expected_source(char op, int lane, int param, int width) {
  const int start = lane / width * width, end = start + width;  // [start, end)
  switch (op) {
    case 'i': return start + param % width;
    case 'u': return lane - param >= start ? lane - param : lane;
    case 'd': return lane + param < end ? lane + param : lane;
    default: return (lane ^ param) < end ? (lane ^ param) : lane;  // earlier segments are readable
  }
}

template <typename T>
T value_of(int lane) {
  if constexpr (std::is_same_v<T, __half>) return __float2half(static_cast<float>(lane) - 7.5f);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16(static_cast<float>(lane) * 2.0f);
  else if constexpr (sizeof(T) == 8 && std::is_integral_v<T>) return static_cast<T>((0x123456789ull << 20) + lane);
  else if constexpr (std::is_floating_point_v<T>) return static_cast<T>(lane) * T(1.25) + T(1e-3);
  else return static_cast<T>(lane * 3 + 1);
}

template <typename T>
bool same_value(T a, T b) {
  if constexpr (std::is_same_v<T, __half>) return __half2float(a) == __half2float(b);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(a) == __bfloat162float(b);
  else return a == b;
}

template <typename T>
__global__ void shuffle_kernel(T* out, char op, int param, int width) {
  const int lane = threadIdx.x % 32;
  const T v = value_of<T>(lane);
  T r;
  switch (op) {
    case 'i': r = __shfl_sync(kFull, v, param, width); break;
    case 'u': r = __shfl_up_sync(kFull, v, static_cast<unsigned>(param), width); break;
    case 'd': r = __shfl_down_sync(kFull, v, static_cast<unsigned>(param), width); break;
    default: r = __shfl_xor_sync(kFull, v, param, width); break;
  }
  out[threadIdx.x] = r;
}

template <typename T>
void check_shuffles() {
  for (int width : {1, 2, 4, 8, 16, 32}) {
    for (char op : {'i', 'u', 'd', 'x'}) {
      for (int param : {0, 1, 2, 3, 5, 8, 13, 16, 31, 37}) {
        if (op != 'i' && param > 31) continue;  // deltas and lane masks are 5-bit
        std::vector<T> out(64);
        ASSERT_EQ(simt::launch(shuffle_kernel<T>, dim3(1), dim3(64), 0, nullptr, out.data(), op, param, width),
                  cudaSuccess)
            << simt::take_last_error();
        for (int t = 0; t < 64; ++t) {
          const int src = expected_source(op, t % 32, param, width);
          ASSERT_TRUE(same_value(out[t], value_of<T>(src)))
              << "op " << op << " param " << param << " width " << width << " thread " << t;
        }
      }
    }
  }
}

TEST(SimtShuffle, AllOpsWidthsAndTypes) {
  check_shuffles<int>();
  check_shuffles<unsigned>();
  check_shuffles<long long>();
  check_shuffles<unsigned long long>();
  check_shuffles<float>();
  check_shuffles<double>();
  check_shuffles<__half>();
  check_shuffles<__nv_bfloat16>();
}

TEST(SimtShuffle, XorReadsEarlierSegmentButNotLater) {
  // width 8, lane mask 8: lane 8 reads lane 0 (earlier segment), lane 0 keeps its own value.
  std::vector<int> out(32);
  ASSERT_EQ(simt::launch(shuffle_kernel<int>, dim3(1), dim3(32), 0, nullptr, out.data(), 'x', 8, 8), cudaSuccess);
  EXPECT_EQ(out[8], value_of<int>(0));
  EXPECT_EQ(out[0], value_of<int>(0));
  EXPECT_EQ(out[9], value_of<int>(1));
  EXPECT_EQ(out[31], value_of<int>(23));
}

// ---- Votes, partial warps, disjoint groups ---------------------------------------------------------

__global__ void votes(unsigned* out) {
  const int lane = threadIdx.x % 32;
  unsigned* o = out + threadIdx.x * 6;
  o[0] = __ballot_sync(kFull, lane % 3 == 0);
  o[1] = static_cast<unsigned>(__any_sync(kFull, lane == 17));
  o[2] = static_cast<unsigned>(__all_sync(kFull, lane < 32));
  o[3] = static_cast<unsigned>(__all_sync(kFull, lane != 5));
  if (lane % 2 == 0) {  // a legal partial mask: exactly the even lanes call
    o[4] = __ballot_sync(0x55555555u, lane >= 16);
    o[5] = static_cast<unsigned>(__reduce_add_sync(0x55555555u, static_cast<unsigned>(lane)));
  } else {
    o[4] = __ballot_sync(0xaaaaaaaau, lane < 8);
    o[5] = static_cast<unsigned>(__reduce_max_sync(0xaaaaaaaau, -lane));
  }
}

TEST(SimtVotes, BallotAnyAllAndPartialMasks) {
  std::vector<unsigned> out(64 * 6);
  ASSERT_EQ(simt::launch(votes, dim3(1), dim3(64), 0, nullptr, out.data()), cudaSuccess) << simt::take_last_error();
  unsigned every_third = 0;
  for (int l = 0; l < 32; l += 3) every_third |= 1u << l;
  for (int t = 0; t < 64; ++t) {
    const int lane = t % 32;
    const unsigned* o = &out[t * 6];
    EXPECT_EQ(o[0], every_third);
    EXPECT_EQ(o[1], 1u);
    EXPECT_EQ(o[2], 1u);
    EXPECT_EQ(o[3], 0u);
    if (lane % 2 == 0) {
      EXPECT_EQ(o[4], 0x55550000u);
      EXPECT_EQ(o[5], 240u);  // 0+2+...+30
    } else {
      EXPECT_EQ(o[4], 0x000000aau);
      EXPECT_EQ(static_cast<int>(o[5]), -1);
    }
  }
}

// 48 threads: warp 1 has lanes 0-15 only, and its masks name exactly those. Its shuffles use
// width 16, so no lane reads a lane outside the mask (the emulator reports such reads).
__global__ void partial_warp(float* out, unsigned* ballots) {
  const int t = threadIdx.x, lane = t % 32, warp = t / 32;
  const int lanes = min(32, static_cast<int>(blockDim.x) - warp * 32);
  const unsigned mask = lanes == 32 ? kFull : (1u << lanes) - 1;
  float v = static_cast<float>(t);
  for (int o = 16; o > 0; o >>= 1) {
    const float other = __shfl_down_sync(mask, v, o, lanes);
    if (lane + o < lanes) v += other;
  }
  v = __shfl_sync(mask, v, 0);
  __syncwarp(mask);
  out[t] = v;
  ballots[t] = __ballot_sync(mask, lane % 2);
}

TEST(SimtPartialWarp, FortyEightThreads) {
  std::vector<float> out(48);
  std::vector<unsigned> ballots(48);
  ASSERT_EQ(simt::launch(partial_warp, dim3(1), dim3(48), 0, nullptr, out.data(), ballots.data()), cudaSuccess)
      << simt::take_last_error();
  for (int t = 0; t < 32; ++t) {
    EXPECT_EQ(out[t], 496.0f);  // 0+...+31
    EXPECT_EQ(ballots[t], 0xaaaaaaaau);
  }
  for (int t = 32; t < 48; ++t) {
    EXPECT_EQ(out[t], 632.0f);  // 32+...+47
    EXPECT_EQ(ballots[t], 0x0000aaaau);
  }
}

// Two half-warps shuffle at the same time in different branches, each with its own mask;
// __syncwarp may be called from different lines.
__global__ void disjoint_groups(int* out) {
  const int lane = threadIdx.x % 32;
  int v = lane;
  if (lane < 16) {
    v += __shfl_xor_sync(0x0000ffffu, v, 1);
    __syncwarp();
  } else {
    v += 100 * __shfl_xor_sync(0xffff0000u, v, 2);
    __syncwarp();
  }
  out[threadIdx.x] = v;
}

TEST(SimtPartialWarp, DisjointGroupsAndSyncwarpSites) {
  std::vector<int> out(64);
  ASSERT_EQ(simt::launch(disjoint_groups, dim3(1), dim3(64), 0, nullptr, out.data()), cudaSuccess)
      << simt::take_last_error();
  for (int t = 0; t < 64; ++t) {
    const int lane = t % 32;
    EXPECT_EQ(out[t], lane < 16 ? lane + (lane ^ 1) : lane + 100 * (lane ^ 2));
  }
}

// ---- Atomics -------------------------------------------------------------------------------------

struct Counters {
  int i = 0;
  unsigned u = 0;
  unsigned long long ull = 0;
  float f = 0;
  double d = 0;
  int max_i = -1000000;
  int min_i = 1000000;
  unsigned long long max_ull = 0;
  unsigned inc = 0;
  int cas = 0;
  int sub = 0;
  unsigned bits = 0;
};

__global__ void atomics(Counters* c) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(&c->i, 1);
  atomicAdd(&c->u, 2u);
  atomicAdd(&c->ull, 1ull << 33);
  atomicAdd(&c->f, 0.5f);
  atomicAdd(&c->d, 0.25);
  atomicMax(&c->max_i, (g * 37) % 1001);
  atomicMin(&c->min_i, (g * 37) % 1001 - 500);
  atomicMax(&c->max_ull, static_cast<unsigned long long>(g) << 40);
  atomicInc(&c->inc, 99u);  // wraps to 0 after 99
  atomicSub(&c->sub, 3);
  atomicOr(&c->bits, 1u << (g % 32));
  int old = atomicAdd(&c->cas, 0);  // a CAS loop increment, the classic pattern
  while (true) {
    const int seen = atomicCAS(&c->cas, old, old + 1);
    if (seen == old) break;
    old = seen;
  }
}

TEST(SimtAtomics, AcrossParallelBlocks) {
  Counters c;
  ASSERT_EQ(simt::launch(atomics, dim3(64), dim3(256), 0, nullptr, &c), cudaSuccess) << simt::take_last_error();
  const int n = 64 * 256;
  EXPECT_EQ(c.i, n);
  EXPECT_EQ(c.u, 2u * n);
  EXPECT_EQ(c.ull, static_cast<unsigned long long>(n) << 33);
  EXPECT_EQ(c.f, 0.5f * n);  // exact: multiples of 0.5 below 2^24
  EXPECT_EQ(c.d, 0.25 * n);
  EXPECT_EQ(c.max_i, 1000);
  EXPECT_EQ(c.min_i, -500);
  EXPECT_EQ(c.max_ull, static_cast<unsigned long long>(n - 1) << 40);
  EXPECT_EQ(c.inc, static_cast<unsigned>(n % 100));
  EXPECT_EQ(c.sub, -3 * n);
  EXPECT_EQ(c.bits, kFull);
  EXPECT_EQ(c.cas, n);
  unsigned x = 5;
  EXPECT_EQ(atomicExch(&x, 9u), 5u);
  EXPECT_EQ(atomicDec(&x, 20u), 9u);
  EXPECT_EQ(x, 8u);
}

// ---- Schedules --------------------------------------------------------------------------------------------

// Records the order in which threads first run (before any sync point); the counter is atomic
// only to keep TSan builds quiet (a block runs on one OS thread).
__global__ void first_run_order(int* order, int* next) {
  order[atomicAdd(next, 1)] = static_cast<int>(threadIdx.x);
  __syncthreads();
}

std::vector<int> run_order(simt::Schedule s, int threads) {
  simt::ScheduleGuard guard(s);
  std::vector<int> order(threads, -1);
  int next = 0;
  EXPECT_EQ(simt::launch(first_run_order, dim3(1), dim3(threads), 0, nullptr, order.data(), &next), cudaSuccess);
  return order;
}

TEST(SimtSchedule, OrdersOfEachSchedule) {
  std::vector<int> ascending(80);
  std::iota(ascending.begin(), ascending.end(), 0);
  EXPECT_EQ(run_order({simt::Schedule::inorder}, 80), ascending);
  EXPECT_EQ(run_order({simt::Schedule::warp_ahead}, 80), ascending);
  std::vector<int> descending(ascending.rbegin(), ascending.rend());
  EXPECT_EQ(run_order({simt::Schedule::reversed}, 80), descending);
  std::vector<int> interleaved;
  for (int lane = 0; lane < 32; ++lane)
    for (int warp = 0; warp < 3; ++warp)
      if (warp * 32 + lane < 80) interleaved.push_back(warp * 32 + lane);
  EXPECT_EQ(run_order({simt::Schedule::interleaved}, 80), interleaved);
  const auto r7 = run_order({simt::Schedule::random, 7}, 80);
  EXPECT_EQ(r7, run_order({simt::Schedule::random, 7}, 80));  // reproducible
  EXPECT_NE(r7, run_order({simt::Schedule::random, 8}, 80));
  EXPECT_NE(r7, ascending);
  EXPECT_EQ(std::set<int>(r7.begin(), r7.end()).size(), 80u);
}

// warp_ahead lets warp 0 finish its shuffle loop before warp 1 starts; inorder interleaves them.
__global__ void shuffle_progress(int* log, int* next) {
  int v = static_cast<int>(threadIdx.x);
  for (int step = 0; step < 4; ++step) {
    v += __shfl_xor_sync(kFull, v, 1);
    if (threadIdx.x % 32 == 0) log[atomicAdd(next, 1)] = static_cast<int>(threadIdx.x / 32);
  }
}

TEST(SimtSchedule, WarpAheadRunsOneWarpAhead) {
  std::vector<int> log(8);
  int next = 0;
  {
    simt::ScheduleGuard guard({simt::Schedule::warp_ahead});
    ASSERT_EQ(simt::launch(shuffle_progress, dim3(1), dim3(64), 0, nullptr, log.data(), &next), cudaSuccess);
  }
  EXPECT_EQ(log, (std::vector<int>{0, 0, 0, 0, 1, 1, 1, 1}));
  next = 0;
  {
    simt::ScheduleGuard guard({simt::Schedule::inorder});
    ASSERT_EQ(simt::launch(shuffle_progress, dim3(1), dim3(64), 0, nullptr, log.data(), &next), cudaSuccess);
  }
  EXPECT_EQ(log, (std::vector<int>{0, 1, 0, 1, 0, 1, 0, 1}));
}

TEST(SimtSchedule, NamesParseAndEnvironment) {
  for (const char* name : {"inorder", "reversed", "interleaved", "warp_ahead", "random:7"}) {
    auto s = simt::Schedule::parse(name);
    ASSERT_TRUE(s.has_value()) << name;
    EXPECT_EQ(s->name(), name);
  }
  EXPECT_EQ(simt::Schedule::parse("random"), (simt::Schedule{simt::Schedule::random, 0}));
  EXPECT_FALSE(simt::Schedule::parse("lowest").has_value());
  EXPECT_FALSE(simt::Schedule::parse("random:x").has_value());

  const char* saved = std::getenv("ATTNLAB_SIMT_SCHEDULE");
  const std::string keep = saved ? saved : "";
  setenv("ATTNLAB_SIMT_SCHEDULE", "sideways", 1);
  std::vector<int> order(32);
  int next = 0;
  EXPECT_EQ(simt::launch(first_run_order, dim3(1), dim3(32), 0, nullptr, order.data(), &next), cudaErrorLaunchFailure);
  EXPECT_NE(simt::take_last_error().find("ATTNLAB_SIMT_SCHEDULE='sideways' is not a schedule"), std::string::npos);
  {
    simt::ScheduleGuard guard({simt::Schedule::reversed});  // an override wins over the environment
    EXPECT_EQ(simt::current_schedule().name(), "reversed");
    next = 0;
    EXPECT_EQ(simt::launch(first_run_order, dim3(1), dim3(32), 0, nullptr, order.data(), &next), cudaSuccess);
  }
  setenv("ATTNLAB_SIMT_SCHEDULE", "random:3", 1);
  EXPECT_EQ(simt::current_schedule().name(), "random:3");
  if (saved) setenv("ATTNLAB_SIMT_SCHEDULE", keep.c_str(), 1);
  else unsetenv("ATTNLAB_SIMT_SCHEDULE");
}

// ---- Device functions and the runtime stand-ins ---------------------------------------------------------

TEST(SimtDeviceFunctions, MathAndBits) {
  EXPECT_FLOAT_EQ(__expf(1.0f), std::exp(1.0f));
  EXPECT_FLOAT_EQ(__logf(3.0f), std::log(3.0f));
  EXPECT_FLOAT_EQ(rsqrtf(4.0f), 0.5f);
  EXPECT_FLOAT_EQ(__fdividef(1.0f, 4.0f), 0.25f);
  EXPECT_EQ(__saturatef(1.5f), 1.0f);
  EXPECT_EQ(__saturatef(-0.5f), 0.0f);
  EXPECT_EQ(__saturatef(NAN), 0.0f);
  EXPECT_EQ(__popc(0xf0f0u), 8);
  EXPECT_EQ(__clz(1), 31);
  EXPECT_EQ(__clz(0), 32);
  EXPECT_EQ(__ffs(0), 0);
  EXPECT_EQ(__ffs(8), 4);
  EXPECT_EQ(__brev(1u), 0x80000000u);
  EXPECT_EQ(__brevll(1ull), 0x8000000000000000ull);
  EXPECT_EQ(__float_as_uint(1.0f), 0x3f800000u);
  EXPECT_EQ(__umulhi(0x80000000u, 4u), 2u);
  EXPECT_EQ(__float2int_rn(2.5f), 2);
  EXPECT_EQ(max(3, 7), 7);
  EXPECT_EQ(min(2.5f, -1.0f), -1.0f);
}

TEST(SimtRuntimeApi, MemoryStreamsAndErrors) {
  int count = 0, device = -1;
  EXPECT_EQ(cudaGetDeviceCount(&count), cudaSuccess);
  EXPECT_EQ(count, 1);
  EXPECT_EQ(cudaSetDevice(0), cudaSuccess);
  EXPECT_EQ(cudaGetDevice(&device), cudaSuccess);
  EXPECT_EQ(device, 0);
  EXPECT_EQ(cudaSetDevice(1), cudaErrorInvalidDevice);
  EXPECT_EQ(cudaPeekAtLastError(), cudaErrorInvalidDevice);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidDevice);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);

  float* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 100 * sizeof(float)), cudaSuccess);  // the toolkit's typed overload
  EXPECT_EQ(reinterpret_cast<uintptr_t>(d) % 64, 0u);
  size_t free_bytes = 0, total = 0;
  EXPECT_EQ(cudaMemGetInfo(&free_bytes, &total), cudaSuccess);
  EXPECT_LE(free_bytes, total);
  std::vector<float> h(100, 3.0f), back(100, 0.0f);
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  EXPECT_EQ(cudaMemsetAsync(d, 0, 100 * sizeof(float), stream), cudaSuccess);
  EXPECT_EQ(cudaMemcpyAsync(d, h.data(), 50 * sizeof(float), cudaMemcpyHostToDevice, stream), cudaSuccess);
  EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(back.data(), d, 100 * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back[49], 3.0f);
  EXPECT_EQ(back[50], 0.0f);
  EXPECT_EQ(cudaMemset(d, 0, 4), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(stream), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(cudaFree(d), cudaSuccess);
  int local = 0;
  EXPECT_EQ(cudaFree(&local), cudaErrorInvalidValue);  // not from cudaMalloc
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_STREQ(cudaGetErrorString(cudaErrorLaunchFailure), "unspecified launch failure");
  EXPECT_STREQ(cudaGetErrorName(cudaErrorInvalidConfiguration), "cudaErrorInvalidConfiguration");
  EXPECT_STREQ(cudaGetErrorString(static_cast<cudaError_t>(12345)), "unrecognized error code");
}

}  // namespace
