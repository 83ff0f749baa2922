// The simt emulator's scheduler: fibers, the block loop, barriers, warp collectives, dynamic
// shared memory and the diagnostics (lib/simt/emu.h has the model; specs/cuda_on_cpu.md the
// measurements behind it).
//
// A launch runs its blocks in a loop, on OpenMP threads when there is more than one block. Each
// OS thread owns a Runner: up to 1024 fibers whose 256 KiB stacks (mmap'd, a guard page below
// each) are reused from block to block. A fiber runs until it waits (barrier or collective),
// yields after releasing others, or exits; it then jumps straight to the fiber the Schedule picks
// next. The Runner's own context (the scheduler) only starts the block and gets control back when
// no fiber is ready. No allocation happens per barrier or collective.
//
//   barrier   a thread records its call site and waits; the last of the block's threads (exited
//             threads count, and in strict mode are an error) marks every waiter ready.
//   warp op   a lane stores its value (<= 8 bytes) and parameter and waits; the lane that completes
//             the mask computes every lane's result. Two lanes that name each other in their masks
//             must call the same operation with the same mask, width and call site (__syncwarp:
//             any site), or neither could ever go on.
//   deadlock  no ready fiber while some have not exited: reported with where each one waits.
//
// Shuffle results follow PTX shfl.sync (low 5 bits of srcLane/delta/laneMask; segment = width):
//   idx  src = segment start + (srcLane & (width-1))
//   up   src = lane - delta, own value if src < segment start
//   down src = lane + delta, own value if src > segment end
//   xor  src = lane ^ laneMask, own value if src > segment end (earlier segments may be read)
// A lane reading a source lane outside the mask is an error (the value is undefined on a GPU).
//
// A diagnostic abandons the failing block: its fibers are never resumed, their stacks are simply
// reused (make_fcontext) by the next block, and the other OpenMP threads stop after their current
// block; the failure of the lowest-numbered block is reported. Sanitizers: ASan is told about every
// stack switch, and each carved sub-array is its own heap block instead of sitting between canary
// guards. Under TSan (ATTNLAB_SIMT_TSAN; this file itself is built uninstrumented) blocks run
// sequentially, switches carry no happens-before, and barriers and __syncwarp release and acquire
// one sync object per generation parity, so a missing barrier is a reported race.
#include <omp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <boost/context/detail/fcontext.hpp>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <new>
#include <vector>

#include "lib/simt/emu.h"

#if !defined(__has_feature)
#define __has_feature(x) 0
#endif
#if defined(__SANITIZE_ADDRESS__) || __has_feature(address_sanitizer)
#define SIMT_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#else
#define SIMT_ASAN 0
#endif

#if defined(__SANITIZE_THREAD__) || __has_feature(thread_sanitizer) || (defined(ATTNLAB_SIMT_TSAN) && ATTNLAB_SIMT_TSAN)
#define SIMT_TSAN 1
#include <sanitizer/tsan_interface.h>
extern "C" void AnnotateIgnoreReadsBegin(const char* file, int line);
extern "C" void AnnotateIgnoreReadsEnd(const char* file, int line);
extern "C" void AnnotateIgnoreWritesBegin(const char* file, int line);
extern "C" void AnnotateIgnoreWritesEnd(const char* file, int line);
#else
#define SIMT_TSAN 0
#endif

namespace ctx = boost::context::detail;

namespace attnlab::simt {

namespace detail {
namespace {
ThreadHead g_outside_kernel{};  // threadIdx outside a kernel reads (0,0,0)
}  // namespace
thread_local constinit ThreadHead* tl_thread = &g_outside_kernel;
thread_local constinit uint3 tl_block_idx{0, 0, 0};
thread_local constinit dim3 tl_block_dim{1, 1, 1};
thread_local constinit dim3 tl_grid_dim{1, 1, 1};
}  // namespace detail

namespace {

using detail::BarrierOp;
using detail::WarpOp;

constexpr unsigned kMaxThreads = 1024;
constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kMaxDynamicSmem = 227 * 1024;  // sm_90 opt-in maximum per block
constexpr size_t kGuardBytes = 64;              // canary zone after each carved sub-array
constexpr size_t kMaxCarves = 128;
constexpr unsigned char kCanary = 0xA5;
constexpr size_t kArenaBytes = (kMaxDynamicSmem + 16 + (kMaxCarves + 1) * kGuardBytes + 63) / 64 * 64;  // aligned_alloc needs a multiple

// ---- Small helpers -----------------------------------------------------------------------------

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
  char buf[512];
  va_list args;
  va_start(args, fmt);
  const int n = std::vsnprintf(buf, sizeof buf, fmt, args);
  va_end(args);
  if (n < static_cast<int>(sizeof buf)) return std::string(buf, n < 0 ? 0 : n);
  std::string out(static_cast<size_t>(n), '\0');
  va_start(args, fmt);
  std::vsnprintf(out.data(), out.size() + 1, fmt, args);
  va_end(args);
  return out;
}

std::string site(const char* file, int line) { return format("%s:%d", file ? file : "?", line); }

bool same_site(const char* f1, int l1, const char* f2, int l2) {
  // __builtin_FILE strings of one header used from two files are equal but not the same pointer.
  return l1 == l2 && (f1 == f2 || std::strcmp(f1, f2) == 0);
}

std::string dims(uint3 v) { return format("(%u,%u,%u)", v.x, v.y, v.z); }
std::string dims(dim3 v) { return format("(%u,%u,%u)", v.x, v.y, v.z); }

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::syncwarp: return "__syncwarp";
    case WarpOp::shfl_idx: return "__shfl_sync";
    case WarpOp::shfl_up: return "__shfl_up_sync";
    case WarpOp::shfl_down: return "__shfl_down_sync";
    case WarpOp::shfl_xor: return "__shfl_xor_sync";
    case WarpOp::ballot: return "__ballot_sync";
    case WarpOp::any: return "__any_sync";
    case WarpOp::all: return "__all_sync";
    case WarpOp::reduce_add: return "__reduce_add_sync";
    case WarpOp::reduce_min_s:
    case WarpOp::reduce_min_u: return "__reduce_min_sync";
    case WarpOp::reduce_max_s:
    case WarpOp::reduce_max_u: return "__reduce_max_sync";
    case WarpOp::reduce_and: return "__reduce_and_sync";
    case WarpOp::reduce_or: return "__reduce_or_sync";
    case WarpOp::reduce_xor: return "__reduce_xor_sync";
  }
  return "?";
}

const char* barrier_name(BarrierOp op) {
  switch (op) {
    case BarrierOp::sync: return "__syncthreads()";
    case BarrierOp::count: return "__syncthreads_count()";
    case BarrierOp::all: return "__syncthreads_and()";
    case BarrierOp::any: return "__syncthreads_or()";
  }
  return "?";
}

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Runtime-side writes and reads of kernel-visible memory (smem fills, canary checks) are not the
// kernel's accesses; TSan must not pair them with the fibers' accesses.
void fill_bytes(void* p, int byte, size_t n) {
#if SIMT_TSAN
  AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
#endif
  std::memset(p, byte, n);
#if SIMT_TSAN
  AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
#endif
}

// Offset of the first byte in [p, p+n) that is not the canary, or n.
[[maybe_unused]] size_t first_changed(const unsigned char* p, size_t n) {
#if SIMT_TSAN
  AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
#endif
  size_t i = 0;
  while (i < n && p[i] == kCanary) ++i;
#if SIMT_TSAN
  AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
#endif
  return i;
}

// Reports a diagnostic from a fiber. The message is built in its own statement so that the
// temporaries of the format arguments are destroyed: fail() never returns to the caller.
#define SIMT_FAIL(args)                      \
  do {                                       \
    std::string simt_message_ = format args; \
    fail(std::move(simt_message_));          \
  } while (0)

size_t round16(size_t bytes) { return (bytes + 15) / 16 * 16; }

size_t page_size() {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return page;
}

// ---- Settings ------------------------------------------------------------------------------------

std::mutex g_settings_mutex;
std::optional<Schedule> g_schedule_override;
std::optional<bool> g_strict_override;

thread_local std::string tl_last_error;

bool env_flag(const char* name, bool fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  return !(std::strcmp(v, "0") == 0 || std::strcmp(v, "false") == 0 || std::strcmp(v, "off") == 0);
}

struct Options {
  Schedule schedule;
  bool strict = true;
  bool abort = false;
  int threads = 0;  // 0: OpenMP's default
  std::string error;
};

Options read_options() {
  Options o;
  {
    std::lock_guard<std::mutex> lock(g_settings_mutex);
    if (g_schedule_override) {
      o.schedule = *g_schedule_override;
    } else if (const char* v = std::getenv("ATTNLAB_SIMT_SCHEDULE"); v && *v) {
      if (auto s = Schedule::parse(v)) {
        o.schedule = *s;
      } else {
        o.error = format("ATTNLAB_SIMT_SCHEDULE='%s' is not a schedule (inorder, reversed, interleaved, "
                         "warp_ahead, random or random:<seed>)", v);
      }
    }
    o.strict = g_strict_override ? *g_strict_override : env_flag("ATTNLAB_SIMT_STRICT", true);
  }
  o.abort = env_flag("ATTNLAB_SIMT_ABORT", false);
  if (const char* v = std::getenv("ATTNLAB_SIMT_THREADS"); v && *v) o.threads = std::max(0, std::atoi(v));
  return o;
}

// ---- Fibers and the per-OS-thread block runner ----------------------------------------------------

enum class State : uint8_t { ready, barrier, warp, exited };

// The fields a barrier or collective touches come first (one cache line); stack and sanitizer
// bookkeeping last.
struct alignas(64) Fiber {
  detail::ThreadHead head{};  // what threadIdx reads
  State state = State::exited;
  WarpOp op = WarpOp::syncwarp;
  uint16_t pos = 0;  // position in the schedule's order
  unsigned lane = 0, warp = 0;
  // The wait in progress (barrier or collective) and its call site.
  unsigned mask = 0;
  int width = 32;
  int param = 0;
  int line = 0;
  const char* file = nullptr;
  uint64_t value = 0;
  uint64_t result = 0;
  ctx::fcontext_t ctx = nullptr;
  char* map = nullptr;  // guard page, then kStackBytes of stack
  void* tsan = nullptr;
  void* asan_fake = nullptr;
  bool dirty = false;  // abandoned mid-run: its stack may still carry ASan poison
};

struct Warp {
  unsigned exists = 0;   // lanes of this warp that the block has
  unsigned exited = 0;   // lanes that returned
  unsigned waiting = 0;  // lanes waiting in a collective
  // Usually every waiting lane is in the same collective, that of lane `leader`; then arrivals
  // are checked in O(1). Divergent code may leave lanes waiting in several (uniform false).
  bool uniform = true;
  unsigned leader = 0;
  unsigned sync_gen = 0;
  char tsan_sync[2] = {};
};

struct Carve {
  size_t count, elem, bytes;
  std::string_view type;
  const char* file;
  int line;
  unsigned char* ptr;
  uint3 first_thread;
};

struct Launch {
  dim3 grid, block;
  unsigned nthreads;
  size_t smem;
  detail::ThreadFn fn;
  const void* bound;
  Schedule schedule;
  bool strict, abort;
};

class Runner {
 public:
  Runner() : fibers_(new Fiber[kMaxThreads]) { carves_.reserve(kMaxCarves); }
  ~Runner();
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  // Runs one block to completion; false with `error` set when a diagnostic stopped it.
  bool run_block(const Launch& launch, uint64_t block);
  std::string error;

  // Called on fibers through the detail:: entry points.
  int barrier(BarrierOp op, int predicate, const char* file, int line);
  uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int param, int width, const char* file, int line);
  void* dynamic_smem(const char* file, int line);
  void* carve(unsigned index, size_t count, size_t elem, std::string_view type, const char* file, int line);

 private:
  static void entry(ctx::transfer_t t);
  void prepare_stack(Fiber& f);
  void setup_order(Schedule::Kind kind);
  int pick();
  int first_ready(unsigned from) const;
  void set_ready(Fiber& f) {
    f.state = State::ready;
    ready_[f.pos >> 6] |= uint64_t{1} << (f.pos & 63);
  }
  Fiber& lane_fiber(unsigned warp, unsigned lane) { return fibers_[warp * 32 + lane]; }

  Fiber* take_next();                       // the schedule's pick, taken off the ready set
  void resume(Fiber& f);                    // scheduler -> fiber
  void switch_away(bool exiting = false);   // fiber -> next ready fiber, or the scheduler
  void landed(ctx::transfer_t t, Fiber& self);
  void suspend() { switch_away(); }
  void yield() {
    set_ready(*current_);
    switch_away();
  }
  [[noreturn]] void fail(std::string message);
  [[noreturn]] void thread_exit();
  void release_barrier();
  void complete(Warp& w, unsigned warp, unsigned mask);
  static bool same_collective(const Fiber& a, const Fiber& b);
  // The slow and failing paths, kept out of line so the hot paths stay small.
  [[gnu::noinline]] unsigned arrive_mixed(const Fiber& f, Warp& w);
  [[noreturn, gnu::noinline, gnu::cold]] void malformed_collective(WarpOp op, unsigned mask, int width,
                                                                   const char* file, int line);
  [[noreturn, gnu::noinline, gnu::cold]] void malformed_barrier(BarrierOp op, const char* file, int line);
  std::string divergent_collective(const Fiber& f, const Fiber& g);

  std::string who(const Fiber& f) const;
  std::string who_lane(const Fiber& f) const;
  std::string block_str() const { return dims(detail::tl_block_idx); }
  std::string deadlock_report();
  void check_canaries();
  void release_smem();

  std::unique_ptr<Fiber[]> fibers_;
  unsigned n_ = 0, nwarps_ = 0;
  const Launch* launch_ = nullptr;
  Fiber* current_ = nullptr;
  ctx::fcontext_t sched_ctx_ = nullptr;
  bool failed_ = false;

  // Schedule: order_[pos] = thread, fibers' pos = inverse; ready_ is indexed by pos.
  std::array<uint16_t, kMaxThreads> order_{};
  std::array<uint64_t, kMaxThreads / 64> ready_{};
  Schedule::Kind kind_ = Schedule::inorder;
  unsigned order_n_ = 0;
  Schedule::Kind order_kind_ = Schedule::inorder;
  int cursor_ = -1;
  uint64_t rng_ = 0;

  // Block barrier.
  unsigned live_ = 0, exited_ = 0, bar_arrived_ = 0, bar_true_ = 0, bar_gen_ = 0;
  const char* bar_file_ = nullptr;
  int bar_line_ = 0;
  BarrierOp bar_op_ = BarrierOp::sync;
  [[maybe_unused]] char bar_tsan_sync_[2] = {};
  std::array<Warp, kMaxThreads / 32> warps_{};

  // Dynamic shared memory.
  unsigned char* arena_ = nullptr;
  size_t arena_used_ = 0, nvcc_offset_ = 0;
  bool whole_used_ = false;
  const char* whole_file_ = nullptr;
  int whole_line_ = 0;
  unsigned char* whole_ptr_ = nullptr;
  std::vector<Carve> carves_;

  // Sanitizer state.
  [[maybe_unused]] void* asan_sched_fake_ = nullptr;
  [[maybe_unused]] const void* sched_stack_bottom_ = nullptr;
  [[maybe_unused]] size_t sched_stack_size_ = 0;
  [[maybe_unused]] void* tsan_sched_ = nullptr;
  [[maybe_unused]] char tsan_start_ = 0;
  [[maybe_unused]] char tsan_end_ = 0;
};

thread_local constinit Runner* tl_active = nullptr;  // the Runner whose block runs on this thread

Runner& runner() {
  thread_local std::unique_ptr<Runner> owned;
  if (!owned) owned = std::make_unique<Runner>();
  return *owned;
}

[[noreturn]] void outside_kernel(const char* what) {
  std::fprintf(stderr, "attnlab simt: %s called outside a kernel launch\n", what);
  std::abort();
}

Runner::~Runner() {
  const size_t page = page_size();
  for (unsigned i = 0; i < kMaxThreads; ++i) {
    if (fibers_[i].map) munmap(fibers_[i].map, page + kStackBytes);
#if SIMT_TSAN
    if (fibers_[i].tsan) __tsan_destroy_fiber(fibers_[i].tsan);
#endif
  }
  std::free(arena_);
}

void Runner::prepare_stack(Fiber& f) {
  const size_t page = page_size();
  if (!f.map) {
    void* m = mmap(nullptr, page + kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED) {
      std::fprintf(stderr, "attnlab simt: cannot map a fiber stack\n");
      std::abort();
    }
    mprotect(m, page, PROT_NONE);  // a stack overflow faults instead of corrupting memory
    f.map = static_cast<char*>(m);
#if SIMT_TSAN
    f.tsan = __tsan_create_fiber(0);
#endif
  }
#if SIMT_ASAN
  if (f.dirty) __asan_unpoison_memory_region(f.map + page, kStackBytes);
#endif
  f.dirty = false;
  f.asan_fake = nullptr;
  f.ctx = ctx::make_fcontext(f.map + page + kStackBytes, kStackBytes, &Runner::entry);
}

void Runner::setup_order(Schedule::Kind kind) {
  kind_ = kind;
  if (order_n_ == n_ && order_kind_ == kind) return;
  unsigned k = 0;
  switch (kind) {
    case Schedule::reversed:
      for (unsigned i = 0; i < n_; ++i) order_[k++] = static_cast<uint16_t>(n_ - 1 - i);
      break;
    case Schedule::interleaved:
      for (unsigned lane = 0; lane < 32; ++lane)
        for (unsigned w = 0; w < nwarps_; ++w)
          if (w * 32 + lane < n_) order_[k++] = static_cast<uint16_t>(w * 32 + lane);
      break;
    default:
      for (unsigned i = 0; i < n_; ++i) order_[k++] = static_cast<uint16_t>(i);
  }
  for (unsigned p = 0; p < n_; ++p) fibers_[order_[p]].pos = static_cast<uint16_t>(p);
  order_n_ = n_;
  order_kind_ = kind;
}

int Runner::first_ready(unsigned from) const {
  const unsigned words = (n_ + 63) / 64;
  for (unsigned w = from / 64; w < words; ++w) {
    uint64_t bits = ready_[w];
    if (w == from / 64) bits &= ~uint64_t{0} << (from % 64);
    if (bits) return static_cast<int>(w * 64 + static_cast<unsigned>(std::countr_zero(bits)));
  }
  return -1;
}

int Runner::pick() {
  switch (kind_) {
    case Schedule::warp_ahead:
      return first_ready(0);
    case Schedule::random: {
      const unsigned words = (n_ + 63) / 64;
      unsigned count = 0;
      for (unsigned w = 0; w < words; ++w) count += static_cast<unsigned>(std::popcount(ready_[w]));
      if (count == 0) return -1;
      unsigned r = static_cast<unsigned>(splitmix64(rng_) % count);
      for (unsigned w = 0; w < words; ++w) {
        uint64_t bits = ready_[w];
        const unsigned c = static_cast<unsigned>(std::popcount(bits));
        if (r >= c) {
          r -= c;
          continue;
        }
        for (; r > 0; --r) bits &= bits - 1;
        return static_cast<int>(w * 64 + static_cast<unsigned>(std::countr_zero(bits)));
      }
      return -1;
    }
    default: {  // round robin in order_
      int p = first_ready(static_cast<unsigned>(cursor_ + 1));
      return p >= 0 ? p : first_ready(0);
    }
  }
}

// ---- Context switches -------------------------------------------------------------------------------
// A waiting fiber switches straight to the next one the schedule picks (one jump, not two through
// the scheduler). The scheduler's context gets control back only when no fiber is ready (the block
// is done or deadlocked) or a diagnostic stopped the block. Every jump passes the address where
// the resumed side stores the jumper's context (its Fiber::ctx, or sched_ctx_), or null when the
// jumper never runs again.

Fiber* Runner::take_next() {
  if (failed_) return nullptr;
  const int p = pick();
  if (p < 0) return nullptr;
  ready_[static_cast<unsigned>(p) >> 6] &= ~(uint64_t{1} << (p & 63));
  cursor_ = p;
  return &fibers_[order_[static_cast<size_t>(p)]];
}

void Runner::landed(ctx::transfer_t t, [[maybe_unused]] Fiber& self) {
  if (t.data) *static_cast<ctx::fcontext_t*>(t.data) = t.fctx;
#if SIMT_ASAN
  const void* bottom = nullptr;
  size_t size = 0;
  __sanitizer_finish_switch_fiber(self.asan_fake, &bottom, &size);
  if (t.data == &sched_ctx_) {  // came from the scheduler: remember its stack for the way back
    sched_stack_bottom_ = bottom;
    sched_stack_size_ = size;
  }
#endif
}

void Runner::resume(Fiber& f) {
  current_ = &f;
  detail::tl_thread = &f.head;
#if SIMT_ASAN
  __sanitizer_start_switch_fiber(&asan_sched_fake_, f.map + page_size(), kStackBytes);
#endif
#if SIMT_TSAN
  __tsan_switch_to_fiber(f.tsan, __tsan_switch_to_fiber_no_sync);
#endif
  ctx::transfer_t t = ctx::jump_fcontext(f.ctx, &sched_ctx_);
  if (t.data) *static_cast<ctx::fcontext_t*>(t.data) = t.fctx;
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(asan_sched_fake_, nullptr, nullptr);
#endif
}

void Runner::switch_away(bool exiting) {
  Fiber& self = *current_;
  Fiber* next = take_next();
  if (next == &self) return;  // the schedule picked the yielding fiber again
  ctx::fcontext_t to = sched_ctx_;
  if (next) {
    current_ = next;
    detail::tl_thread = &next->head;
    to = next->ctx;
  }
#if SIMT_ASAN
  if (exiting) {
    // The frames still on this stack (entry, thread_exit or fail, this one) never return, so
    // their redzones would stay poisoned under the next block's frames: clear them now.
    char* here = static_cast<char*>(__builtin_frame_address(0));
    char* low = std::max(here - 4096, self.map + page_size());
    __asan_unpoison_memory_region(low, static_cast<size_t>(self.map + page_size() + kStackBytes - low));
  }
  if (next) __sanitizer_start_switch_fiber(exiting ? nullptr : &self.asan_fake, next->map + page_size(), kStackBytes);
  else __sanitizer_start_switch_fiber(exiting ? nullptr : &self.asan_fake, sched_stack_bottom_, sched_stack_size_);
#endif
#if SIMT_TSAN
  // Only the scheduler acquires this, after the block: the host then sees everything the block's
  // fibers did, abandoned ones included, without ordering the fibers among themselves.
  __tsan_release(&tsan_end_);
  __tsan_switch_to_fiber(next ? next->tsan : tsan_sched_, __tsan_switch_to_fiber_no_sync);
#endif
  ctx::transfer_t t = ctx::jump_fcontext(to, exiting ? nullptr : &self.ctx);
  landed(t, self);  // resumed (never, when exiting)
}

void Runner::entry(ctx::transfer_t t) {
  Runner* r = tl_active;
  r->landed(t, *r->current_);
#if SIMT_TSAN
  __tsan_acquire(&r->tsan_start_);
#endif
  const char* thrown = nullptr;
  std::string what;
  try {
    r->launch_->fn(r->launch_->bound);
  } catch (const std::exception& e) {
    what = e.what();
    thrown = "an exception";
  } catch (...) {
    thrown = "an exception";
  }
  // Fail outside the handler: leaving a fiber inside a catch block would leave the exception
  // registered as caught on this OS thread.
  if (thrown) {
    std::string message = format("kernel threw %s in %s: %s", thrown, r->who(*r->current_).c_str(), what.c_str());
    what = std::string();
    r->fail(std::move(message));
  }
  r->thread_exit();
}

// ---- Block loop ----------------------------------------------------------------------------------------

bool Runner::run_block(const Launch& launch, uint64_t block) {
  launch_ = &launch;
  const dim3 g = launch.grid, b = launch.block;
  detail::tl_block_idx = uint3{static_cast<unsigned>(block % g.x), static_cast<unsigned>(block / g.x % g.y),
                               static_cast<unsigned>(block / (uint64_t{g.x} * g.y))};
  detail::tl_block_dim = b;
  detail::tl_grid_dim = g;
  n_ = launch.nthreads;
  nwarps_ = (n_ + 31) / 32;
  failed_ = false;
  error.clear();
  live_ = n_;
  exited_ = bar_arrived_ = bar_true_ = 0;
  uint64_t seed = launch.schedule.seed ^ (block * 0xd1b54a32d192ed03ull);
  rng_ = splitmix64(seed);

  for (unsigned w = 0; w < nwarps_; ++w) {
    const unsigned lanes = std::min(32u, n_ - w * 32);
    warps_[w].exists = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
    warps_[w].exited = warps_[w].waiting = 0;
  }
  for (unsigned i = 0; i < n_; ++i) {
    Fiber& f = fibers_[i];
    f.lane = i % 32;
    f.warp = i / 32;
    f.head.tid = uint3{i % b.x, i / b.x % b.y, i / (b.x * b.y)};
    prepare_stack(f);
  }
  setup_order(launch.schedule.kind);
  ready_.fill(0);
  for (unsigned i = 0; i < n_; ++i) set_ready(fibers_[i]);
  cursor_ = static_cast<int>(n_) - 1;  // round robin starts at position 0

  // Allocated here, not by the first fiber that needs it: TSan would count the allocation as
  // that fiber's write.
  if (!SIMT_ASAN && !arena_) arena_ = static_cast<unsigned char*>(std::aligned_alloc(64, kArenaBytes));
  arena_used_ = nvcc_offset_ = 0;
  whole_used_ = false;
  whole_ptr_ = nullptr;
  carves_.clear();

#if SIMT_TSAN
  tsan_sched_ = __tsan_get_current_fiber();
  __tsan_release(&tsan_start_);
#endif
  tl_active = this;
  while (live_ > 0 && !failed_) {
    Fiber* f = take_next();
    if (!f) {
      error = deadlock_report();
      failed_ = true;
      break;
    }
    resume(*f);
  }
  tl_active = nullptr;
  detail::tl_thread = &detail::g_outside_kernel;
  current_ = nullptr;
#if SIMT_TSAN
  __tsan_acquire(&tsan_end_);
#endif
  if (!failed_) check_canaries();
  if (failed_) {
    for (unsigned i = 0; i < n_; ++i)
      if (fibers_[i].state != State::exited) fibers_[i].dirty = true;
  }
  release_smem();
  return !failed_;
}

void Runner::fail(std::string message) {
  if (error.empty()) error = std::move(message);
  // This fiber never resumes, so nothing on its stack is destroyed: free what the message still
  // holds (a later failure in the block keeps the first message) or it leaks with the stack.
  std::string().swap(message);
  failed_ = true;
  if (launch_->abort) {
    std::fprintf(stderr, "attnlab simt: %s\n", error.c_str());
    std::abort();
  }
  current_->dirty = true;
  switch_away(/*exiting=*/true);
  __builtin_unreachable();
}

void Runner::thread_exit() {
  Fiber& f = *current_;
  Warp& w = warps_[f.warp];
  const unsigned me = 1u << f.lane;
  f.state = State::exited;
  --live_;
  ++exited_;
  w.exited |= me;
  for (unsigned wait = w.waiting; wait; wait &= wait - 1) {
    const Fiber& g = lane_fiber(f.warp, static_cast<unsigned>(std::countr_zero(wait)));
    if (g.mask & me) {
      SIMT_FAIL(("warp collective abandoned: %s exited while lanes 0x%08x wait for it in %s(mask=0x%08x) at %s",
                  who_lane(f).c_str(), w.waiting & g.mask & ~me, op_name(g.op), g.mask,
                  site(g.file, g.line).c_str()));
    }
  }
  if (bar_arrived_ > 0) {
    if (launch_->strict) {
      SIMT_FAIL(("__syncthreads() after exit: %s exited while %u thread(s) wait at %s at %s; a barrier needs "
                  "every thread of the block (mask threads out with a condition instead of returning)",
                  who(f).c_str(), bar_arrived_, barrier_name(bar_op_), site(bar_file_, bar_line_).c_str()));
    }
    if (bar_arrived_ + exited_ == n_) release_barrier();
  }
  switch_away(/*exiting=*/true);
  __builtin_unreachable();
}

// ---- Barriers ------------------------------------------------------------------------------------------

int Runner::barrier(BarrierOp op, int predicate, const char* file, int line) {
  Fiber& f = *current_;
  if (bar_arrived_ == 0) {
    if (launch_->strict && exited_ > 0) [[unlikely]] malformed_barrier(op, file, line);
    bar_file_ = file;
    bar_line_ = line;
    bar_op_ = op;
    bar_true_ = 0;
  } else if (op != bar_op_ || (launch_->strict && !same_site(file, line, bar_file_, bar_line_))) [[unlikely]] {
    malformed_barrier(op, file, line);
  }
  bar_true_ += predicate != 0;
  f.state = State::barrier;
  f.file = file;
  f.line = line;
  [[maybe_unused]] const unsigned gen = bar_gen_;
  ++bar_arrived_;
#if SIMT_TSAN
  __tsan_release(&bar_tsan_sync_[gen & 1]);
#endif
  if (bar_arrived_ + exited_ == n_) {
    release_barrier();
    yield();  // the schedule, not the arrival order, decides who runs first after the barrier
  } else {
    suspend();
  }
#if SIMT_TSAN
  __tsan_acquire(&bar_tsan_sync_[gen & 1]);
#endif
  return static_cast<int>(f.result);
}

void Runner::malformed_barrier(BarrierOp op, const char* file, int line) {
  const Fiber& f = *current_;
  if (bar_arrived_ == 0) {
    SIMT_FAIL(("__syncthreads() after exit: %s reached %s at %s after %u thread(s) of the block exited; a barrier "
                "needs every thread of the block (mask threads out with a condition instead of returning)",
                who(f).c_str(), barrier_name(op), site(file, line).c_str(), exited_));
  }
  SIMT_FAIL(("divergent __syncthreads(): %s reached %s at %s while %u thread(s) wait at %s at %s",
              who(f).c_str(), barrier_name(op), site(file, line).c_str(), bar_arrived_, barrier_name(bar_op_),
              site(bar_file_, bar_line_).c_str()));
}

void Runner::release_barrier() {
  uint64_t result = 0;
  switch (bar_op_) {
    case BarrierOp::sync: break;
    case BarrierOp::count: result = bar_true_; break;
    case BarrierOp::all: result = bar_true_ == bar_arrived_; break;
    case BarrierOp::any: result = bar_true_ > 0; break;
  }
  for (unsigned i = 0; i < n_; ++i) {
    Fiber& f = fibers_[i];
    if (f.state == State::barrier) {
      f.result = result;
      set_ready(f);
    }
  }
  bar_arrived_ = 0;
  ++bar_gen_;
}

// ---- Warp collectives ------------------------------------------------------------------------------------

uint64_t Runner::warp_op(WarpOp op, unsigned mask, uint64_t value, int param, int width, const char* file,
                         int line) {
  Fiber& f = *current_;
  Warp& w = warps_[f.warp];
  const unsigned me = 1u << f.lane;
  if (width < 1 || width > 32 || (width & (width - 1)) != 0 || !(mask & me) || (mask & ~w.exists) ||
      (mask & w.exited)) [[unlikely]] {
    malformed_collective(op, mask, width, file, line);
  }
  f.op = op;
  f.mask = mask;
  f.width = width;
  f.param = param;
  f.value = value;
  f.file = file;
  f.line = line;

  // A lane j already waiting in another collective whose mask names us, while our mask names j,
  // can never be matched: we wait for j and j waits for us. Lanes that only one side names may
  // legally be in different collectives for now (divergent code that converges later).
  unsigned arrived;  // lanes of `mask` now waiting in exactly this collective
  if (w.waiting == 0) {
    w.uniform = true;
    w.leader = f.lane;
    arrived = me;
  } else if (w.uniform && same_collective(lane_fiber(f.warp, w.leader), f)) {
    arrived = (w.waiting & mask) | me;
  } else {
    arrived = arrive_mixed(f, w);
  }
  f.state = State::warp;
  w.waiting |= me;
  [[maybe_unused]] const unsigned gen = w.sync_gen;
#if SIMT_TSAN
  if (op == WarpOp::syncwarp) __tsan_release(&w.tsan_sync[gen & 1]);
#endif
  if (arrived == mask) {
    complete(w, f.warp, mask);
    yield();
  } else {
    suspend();
  }
#if SIMT_TSAN
  if (op == WarpOp::syncwarp) __tsan_acquire(&w.tsan_sync[gen & 1]);
#endif
  return f.result;
}

// Lanes of several collectives wait in this warp (divergent code): find ours among them.
unsigned Runner::arrive_mixed(const Fiber& f, Warp& w) {
  unsigned arrived = 1u << f.lane;
  for (unsigned wait = w.waiting; wait; wait &= wait - 1) {
    const Fiber& g = lane_fiber(f.warp, static_cast<unsigned>(std::countr_zero(wait)));
    if (same_collective(g, f)) {
      arrived |= 1u << g.lane;
    } else if (((f.mask >> g.lane) & 1) && (g.mask & (1u << f.lane))) {
      fail(divergent_collective(f, g));
    }
  }
  w.uniform = false;
  return arrived;
}

void Runner::malformed_collective(WarpOp op, unsigned mask, int width, const char* file, int line) {
  const Fiber& f = *current_;
  const Warp& w = warps_[f.warp];
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    SIMT_FAIL(("malformed warp collective: %s calls %s(width=%d) at %s; width must be a power of two <= 32",
                who_lane(f).c_str(), op_name(op), width, site(file, line).c_str()));
  }
  if (!(mask & (1u << f.lane))) {
    SIMT_FAIL(("malformed warp collective: %s calls %s(mask=0x%08x) at %s with a mask that does not include "
                "its own lane",
                who_lane(f).c_str(), op_name(op), mask, site(file, line).c_str()));
  }
  if (mask & ~w.exists) {
    SIMT_FAIL(("malformed warp collective: %s calls %s(mask=0x%08x) at %s, but the block has %u threads, so "
                "warp %u has only lanes 0x%08x",
                who_lane(f).c_str(), op_name(op), mask, site(file, line).c_str(), n_, f.warp, w.exists));
  }
  SIMT_FAIL(("malformed warp collective: %s calls %s(mask=0x%08x) at %s, but lanes 0x%08x of the mask have exited",
              who_lane(f).c_str(), op_name(op), mask, site(file, line).c_str(), mask & w.exited));
}

bool Runner::same_collective(const Fiber& a, const Fiber& b) {
  return a.op == b.op && a.mask == b.mask && a.width == b.width &&
         (a.op == WarpOp::syncwarp || same_site(a.file, a.line, b.file, b.line));  // __syncwarp: any site
}

std::string Runner::divergent_collective(const Fiber& f, const Fiber& g) {
  const Warp& w = warps_[f.warp];
  unsigned same = 0;  // the lanes waiting exactly as g does
  for (unsigned x = w.waiting; x; x &= x - 1) {
    const Fiber& h = lane_fiber(f.warp, static_cast<unsigned>(std::countr_zero(x)));
    if (same_collective(h, g)) same |= 1u << h.lane;
  }
  return format("divergent warp collective: %s calls %s(mask=0x%08x, width=%d) at %s while lanes 0x%08x are in "
                "%s(mask=0x%08x, width=%d) at %s; lanes that name each other in their masks must call the same "
                "collective at the same line",
                who_lane(f).c_str(), op_name(f.op), f.mask, f.width, site(f.file, f.line).c_str(), same,
                op_name(g.op), g.mask, g.width, site(g.file, g.line).c_str());
}

void Runner::complete(Warp& w, unsigned warp, unsigned mask) {
  const Fiber& first = lane_fiber(warp, static_cast<unsigned>(std::countr_zero(mask)));
  const WarpOp op = first.op;
  uint64_t common = 0;  // the result every lane shares (votes and reductions)
  switch (op) {
    case WarpOp::ballot:
    case WarpOp::any:
    case WarpOp::all: {
      unsigned votes = 0;
      for (unsigned m = mask; m; m &= m - 1) {
        const unsigned j = static_cast<unsigned>(std::countr_zero(m));
        if (lane_fiber(warp, j).value) votes |= 1u << j;
      }
      common = op == WarpOp::ballot ? votes : op == WarpOp::any ? votes != 0 : votes == mask;
      break;
    }
    case WarpOp::reduce_add:
    case WarpOp::reduce_min_s:
    case WarpOp::reduce_max_s:
    case WarpOp::reduce_min_u:
    case WarpOp::reduce_max_u:
    case WarpOp::reduce_and:
    case WarpOp::reduce_or:
    case WarpOp::reduce_xor: {
      uint32_t acc = static_cast<uint32_t>(first.value);
      for (unsigned m = mask & (mask - 1); m; m &= m - 1) {
        const uint32_t v = static_cast<uint32_t>(lane_fiber(warp, static_cast<unsigned>(std::countr_zero(m))).value);
        switch (op) {
          case WarpOp::reduce_add: acc += v; break;
          case WarpOp::reduce_min_s:
            acc = static_cast<uint32_t>(std::min(static_cast<int32_t>(acc), static_cast<int32_t>(v)));
            break;
          case WarpOp::reduce_max_s:
            acc = static_cast<uint32_t>(std::max(static_cast<int32_t>(acc), static_cast<int32_t>(v)));
            break;
          case WarpOp::reduce_min_u: acc = std::min(acc, v); break;
          case WarpOp::reduce_max_u: acc = std::max(acc, v); break;
          case WarpOp::reduce_and: acc &= v; break;
          case WarpOp::reduce_or: acc |= v; break;
          default: acc ^= v; break;
        }
      }
      common = acc;
      break;
    }
    default: break;
  }
  for (unsigned m = mask; m; m &= m - 1) {
    const unsigned i = static_cast<unsigned>(std::countr_zero(m));
    Fiber& a = lane_fiber(warp, i);
    const unsigned width = static_cast<unsigned>(a.width);
    const unsigned seg_start = i & ~(width - 1), seg_end = seg_start + width - 1;
    const unsigned p = static_cast<unsigned>(a.param) & 31u;
    int src = -1;  // -1: the lane keeps its own value
    switch (op) {
      case WarpOp::shfl_idx: src = static_cast<int>(seg_start + (p & (width - 1))); break;
      case WarpOp::shfl_up: src = i >= seg_start + p ? static_cast<int>(i - p) : -1; break;
      case WarpOp::shfl_down: src = i + p <= seg_end ? static_cast<int>(i + p) : -1; break;
      case WarpOp::shfl_xor: src = (i ^ p) <= seg_end ? static_cast<int>(i ^ p) : -1; break;
      default: a.result = common; continue;
    }
    if (src < 0) {
      a.result = a.value;
    } else if (!((mask >> src) & 1)) {
      SIMT_FAIL(("malformed warp collective: %s reads lane %d in %s(mask=0x%08x) at %s, and lane %d is not in "
                  "the mask",
                  who_lane(a).c_str(), src, op_name(op), mask, site(a.file, a.line).c_str(), src));
    } else {
      a.result = lane_fiber(warp, static_cast<unsigned>(src)).value;
    }
  }
  w.waiting &= ~mask;
  if (w.waiting) {  // lanes of other collectives still wait: is it one collective again?
    w.leader = static_cast<unsigned>(std::countr_zero(w.waiting));
    w.uniform = true;
    for (unsigned x = w.waiting; x; x &= x - 1)
      w.uniform = w.uniform && same_collective(lane_fiber(warp, static_cast<unsigned>(std::countr_zero(x))),
                                               lane_fiber(warp, w.leader));
  }
  if (op == WarpOp::syncwarp) ++w.sync_gen;
  for (unsigned m = mask; m; m &= m - 1) set_ready(lane_fiber(warp, static_cast<unsigned>(std::countr_zero(m))));
}

// ---- Dynamic shared memory ------------------------------------------------------------------------------

void* Runner::dynamic_smem(const char* file, int line) {
  if (!carves_.empty()) {
    SIMT_FAIL(("dynamic shared memory: %s calls simt::dynamic_smem<T>() at %s after SmemCarver::take at %s; "
                "the emulator lays the two out differently, so a kernel uses one or the other",
                who(*current_).c_str(), site(file, line).c_str(), site(carves_[0].file, carves_[0].line).c_str()));
  }
  if (!whole_used_) {
    whole_used_ = true;
    whole_file_ = file;
    whole_line_ = line;
    const size_t bytes = launch_->smem;
#if SIMT_ASAN
    whole_ptr_ = static_cast<unsigned char*>(::operator new(bytes, std::align_val_t{16}));
#else
    whole_ptr_ = arena_;
    fill_bytes(arena_ + bytes, kCanary, kGuardBytes);
#endif
    fill_bytes(whole_ptr_, 0xFF, bytes);  // uninitialised shared memory reads as NaN
  }
  return whole_ptr_;
}

void* Runner::carve(unsigned index, size_t count, size_t elem, std::string_view type, const char* file, int line) {
  Fiber& f = *current_;
  if (whole_used_) {
    SIMT_FAIL(("dynamic shared memory: %s calls SmemCarver::take at %s after simt::dynamic_smem<T>() at %s; "
                "the emulator lays the two out differently, so a kernel uses one or the other",
                who(f).c_str(), site(file, line).c_str(), site(whole_file_, whole_line_).c_str()));
  }
  if (index < carves_.size()) {
    const Carve& c = carves_[index];
    if (c.count != count || c.elem != elem || c.type != type) {
      SIMT_FAIL(("SmemCarver mismatch: %s takes take<%.*s>(%zu) at %s as sub-array #%u, but thread %s took "
                  "take<%.*s>(%zu) at %s; every thread must carve the same sizes",
                  who(f).c_str(), static_cast<int>(type.size()), type.data(), count, site(file, line).c_str(), index,
                  dims(c.first_thread).c_str(), static_cast<int>(c.type.size()), c.type.data(), c.count,
                  site(c.file, c.line).c_str()));
    }
    return c.ptr;
  }
  const size_t bytes = count * elem;
  if ((elem != 0 && bytes / elem != count) || nvcc_offset_ + bytes > launch_->smem) {
    std::string message;
    {  // locals of a fiber that fails are never destroyed: keep them in this scope
      std::string taken;
      for (const Carve& c : carves_)
        taken += format(" take<%.*s>(%zu) at %s;", static_cast<int>(c.type.size()), c.type.data(), c.count,
                        site(c.file, c.line).c_str());
      message = format("dynamic shared memory overflow: take<%.*s>(%zu) at %s needs bytes [%zu, %zu) but the launch "
                       "has %zu bytes of dynamic shared memory (block %s; earlier:%s)",
                       static_cast<int>(type.size()), type.data(), count, site(file, line).c_str(), nvcc_offset_,
                       nvcc_offset_ + bytes, launch_->smem, block_str().c_str(), taken.empty() ? " none" : taken.c_str());
    }
    fail(std::move(message));
  }
  unsigned char* ptr = nullptr;
#if SIMT_ASAN
  ptr = static_cast<unsigned char*>(::operator new(bytes, std::align_val_t{16}));  // its own heap block
#else
  const size_t need = round16(bytes) + kGuardBytes;
  if (carves_.size() >= kMaxCarves || arena_used_ + need > kArenaBytes) {
    SIMT_FAIL(("dynamic shared memory: take<%.*s>(%zu) at %s is carve #%zu; the emulator supports %zu",
                static_cast<int>(type.size()), type.data(), count, site(file, line).c_str(), carves_.size(),
                kMaxCarves));
  }
  ptr = arena_ + arena_used_;
  arena_used_ += need;
  fill_bytes(ptr + bytes, kCanary, need - bytes);
#endif
  fill_bytes(ptr, 0xFF, bytes);
  nvcc_offset_ += round16(bytes);
  carves_.push_back(Carve{count, elem, bytes, type, file, line, ptr, f.head.tid});
  return ptr;
}

void Runner::check_canaries() {
#if !SIMT_ASAN
  if (whole_used_) {
    const size_t at = first_changed(whole_ptr_ + launch_->smem, kGuardBytes);
    if (at < kGuardBytes) {
      error = format("dynamic shared memory overflow: simt::dynamic_smem<T>() at %s: the launch's %zu bytes were "
                     "written past their end (byte +%zu) in block %s",
                     site(whole_file_, whole_line_).c_str(), launch_->smem, at, block_str().c_str());
      failed_ = true;
      return;
    }
  }
  for (const Carve& c : carves_) {
    const size_t zone = round16(c.bytes) + kGuardBytes - c.bytes;
    const size_t at = first_changed(c.ptr + c.bytes, zone);
    if (at < zone) {
      error = format("dynamic shared memory overflow: take<%.*s>(%zu) at %s was written past its end (byte +%zu) in "
                     "block %s",
                     static_cast<int>(c.type.size()), c.type.data(), c.count, site(c.file, c.line).c_str(), at,
                     block_str().c_str());
      failed_ = true;
      return;
    }
  }
#endif
}

void Runner::release_smem() {
#if SIMT_ASAN
  for (const Carve& c : carves_) ::operator delete(c.ptr, std::align_val_t{16});
  if (whole_ptr_) ::operator delete(whole_ptr_, std::align_val_t{16});
#endif
  carves_.clear();
  whole_ptr_ = nullptr;
  whole_used_ = false;
}

// ---- Diagnostics --------------------------------------------------------------------------------------

std::string Runner::who(const Fiber& f) const {
  return format("thread %s of block %s", dims(f.head.tid).c_str(), block_str().c_str());
}

std::string Runner::who_lane(const Fiber& f) const {
  return format("thread %s of block %s (warp %u, lane %u)", dims(f.head.tid).c_str(), block_str().c_str(), f.warp,
                f.lane);
}

std::string Runner::deadlock_report() {
  std::string out = format("deadlock in block %s: %u of %u thread(s) wait and none can continue.", block_str().c_str(),
                           live_, n_);
  // Threads at the block barrier, grouped by call site (several only in non-strict mode).
  std::vector<std::pair<const Fiber*, unsigned>> sites;
  for (unsigned i = 0; i < n_; ++i) {
    const Fiber& f = fibers_[i];
    if (f.state != State::barrier) continue;
    auto it = std::find_if(sites.begin(), sites.end(),
                           [&](const auto& s) { return same_site(s.first->file, s.first->line, f.file, f.line); });
    if (it == sites.end()) sites.emplace_back(&f, 1);
    else ++it->second;
  }
  for (const auto& [f, count] : sites)
    out += format(" %u thread(s) wait at %s at %s;", count, barrier_name(bar_op_), site(f->file, f->line).c_str());
  // Lanes in collectives, grouped by (operation, mask, site) per warp, with the lanes they need.
  for (unsigned wi = 0; wi < nwarps_; ++wi) {
    unsigned left = warps_[wi].waiting;
    while (left) {
      const Fiber& g = lane_fiber(wi, static_cast<unsigned>(std::countr_zero(left)));
      unsigned group = 0;
      for (unsigned x = left; x; x &= x - 1) {
        const Fiber& h = lane_fiber(wi, static_cast<unsigned>(std::countr_zero(x)));
        if (h.op == g.op && h.mask == g.mask && same_site(h.file, h.line, g.file, g.line)) group |= 1u << h.lane;
      }
      left &= ~group;
      const unsigned missing = g.mask & ~group;
      std::string where;
      for (unsigned x = missing; x; x &= x - 1) {
        const Fiber& h = lane_fiber(wi, static_cast<unsigned>(std::countr_zero(x)));
        if (h.state == State::barrier) {
          where = format(" (lane %u is at %s at %s)", h.lane, barrier_name(bar_op_), site(h.file, h.line).c_str());
          break;
        }
        if (h.state == State::warp) {
          where = format(" (lane %u is in %s(mask=0x%08x) at %s)", h.lane, op_name(h.op), h.mask,
                         site(h.file, h.line).c_str());
          break;
        }
      }
      out += format(" warp %u: lanes 0x%08x wait in %s(mask=0x%08x) at %s for lanes 0x%08x%s;", wi, group,
                    op_name(g.op), g.mask, site(g.file, g.line).c_str(), missing, where.c_str());
    }
  }
  out.pop_back();  // the last ';'
  return out;
}

// ---- Launch ---------------------------------------------------------------------------------------------

std::string check_config(dim3 grid, dim3 block, size_t smem) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || block.x > 1024 || block.y > 1024 || block.z > 64 ||
      threads > kMaxThreads) {
    return format("invalid launch configuration: block %s has %llu threads; each dimension must be >= 1, x and y "
                  "<= 1024, z <= 64, and the product <= 1024",
                  dims(block).c_str(), static_cast<unsigned long long>(threads));
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    return format("invalid launch configuration: grid %s; each dimension must be >= 1, x <= 2^31-1, y and z <= "
                  "65535",
                  dims(grid).c_str());
  }
  if (smem > kMaxDynamicSmem) {
    return format("invalid launch configuration: %zu bytes of dynamic shared memory; at most %zu (227 KiB) per block",
                  smem, kMaxDynamicSmem);
  }
  return {};
}

cudaError_t report(cudaError_t code, std::string message, bool abort) {
  if (abort) {
    std::fprintf(stderr, "attnlab simt: %s\n", message.c_str());
    std::abort();
  }
  tl_last_error = std::move(message);
  return code;
}

}  // namespace

// ---- Public API -------------------------------------------------------------------------------------------

std::string Schedule::name() const {
  switch (kind) {
    case inorder: return "inorder";
    case reversed: return "reversed";
    case interleaved: return "interleaved";
    case warp_ahead: return "warp_ahead";
    case random: return "random:" + std::to_string(seed);
  }
  return "?";
}

std::optional<Schedule> Schedule::parse(std::string_view text) {
  if (text == "inorder") return Schedule{inorder};
  if (text == "reversed") return Schedule{reversed};
  if (text == "interleaved") return Schedule{interleaved};
  if (text == "warp_ahead") return Schedule{warp_ahead};
  if (text == "random") return Schedule{random};
  if (text.substr(0, 7) == "random:" && text.size() > 7 && text.size() <= 27) {
    uint64_t seed = 0;
    for (char c : text.substr(7)) {
      if (c < '0' || c > '9') return std::nullopt;
      seed = seed * 10 + static_cast<uint64_t>(c - '0');
    }
    return Schedule{random, seed};
  }
  return std::nullopt;
}

std::optional<Schedule> schedule_from_env() {
  const char* v = std::getenv("ATTNLAB_SIMT_SCHEDULE");
  if (!v || !*v) return Schedule{};
  auto s = Schedule::parse(v);
  if (!s) std::fprintf(stderr, "attnlab simt: ATTNLAB_SIMT_SCHEDULE='%s' is not a schedule\n", v);
  return s;
}

void set_schedule(Schedule schedule) {
  std::lock_guard<std::mutex> lock(g_settings_mutex);
  g_schedule_override = schedule;
}

void reset_schedule() {
  std::lock_guard<std::mutex> lock(g_settings_mutex);
  g_schedule_override.reset();
}

Schedule current_schedule() {
  {
    std::lock_guard<std::mutex> lock(g_settings_mutex);
    if (g_schedule_override) return *g_schedule_override;
  }
  const char* v = std::getenv("ATTNLAB_SIMT_SCHEDULE");
  auto s = v && *v ? Schedule::parse(v) : std::nullopt;
  return s ? *s : Schedule{};
}

void set_strict(bool strict) {
  std::lock_guard<std::mutex> lock(g_settings_mutex);
  g_strict_override = strict;
}

void reset_strict() {
  std::lock_guard<std::mutex> lock(g_settings_mutex);
  g_strict_override.reset();
}

ScheduleGuard::ScheduleGuard(Schedule schedule) {
  std::lock_guard<std::mutex> lock(g_settings_mutex);
  previous_ = g_schedule_override;
  g_schedule_override = schedule;
}

ScheduleGuard::~ScheduleGuard() {
  std::lock_guard<std::mutex> lock(g_settings_mutex);
  g_schedule_override = previous_;
}

std::string take_last_error() { return std::exchange(tl_last_error, std::string()); }

namespace detail {

int barrier(BarrierOp op, int predicate, const char* file, int line) {
  if (!tl_active) [[unlikely]] outside_kernel(barrier_name(op));
  return tl_active->barrier(op, predicate, file, line);
}

uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int param, int width, const char* file, int line) {
  if (!tl_active) [[unlikely]] outside_kernel(op_name(op));
  return tl_active->warp_op(op, mask, value, param, width, file, line);
}

void* dynamic_smem(const char* file, int line) {
  if (!tl_active) [[unlikely]] outside_kernel("simt::dynamic_smem");
  return tl_active->dynamic_smem(file, line);
}

void* carve(unsigned index, size_t count, size_t elem_size, std::string_view type, const char* file, int line) {
  if (!tl_active) [[unlikely]] outside_kernel("SmemCarver::take");
  return tl_active->carve(index, count, elem_size, type, file, line);
}

cudaError_t launch(dim3 grid, dim3 block, size_t dynamic_smem_bytes, cudaStream_t /*stream*/, ThreadFn fn,
                   const void* bound) {
  Options o = read_options();
  if (tl_active) {
    return report(cudaErrorLaunchFailure, "simt::launch called inside a kernel: dynamic parallelism is not emulated",
                  o.abort);
  }
  if (!o.error.empty()) return report(cudaErrorLaunchFailure, std::move(o.error), o.abort);
  if (std::string bad = check_config(grid, block, dynamic_smem_bytes); !bad.empty())
    return report(cudaErrorInvalidConfiguration, std::move(bad), o.abort);

  const Launch launch{grid,      block, block.x * block.y * block.z, dynamic_smem_bytes, fn, bound, o.schedule,
                      o.strict, o.abort};
  const int64_t blocks = static_cast<int64_t>(uint64_t{grid.x} * grid.y * grid.z);
  int threads = o.threads > 0 ? o.threads : omp_get_max_threads();
  if (SIMT_TSAN || omp_in_parallel()) threads = 1;  // TSan cannot see OpenMP's synchronisation
  threads = static_cast<int>(std::min<int64_t>(threads, blocks));

  // The failure of the lowest-numbered block wins, so the message does not depend on timing:
  // blocks are handed out in order, and every block that started runs to its end.
  std::mutex failure_mutex;
  int64_t failed_block = -1;
  std::string failure;
  if (threads <= 1) {
    Runner& r = runner();
    for (int64_t b = 0; b < blocks; ++b) {
      if (!r.run_block(launch, static_cast<uint64_t>(b))) {
        failed_block = b;
        failure = std::move(r.error);
        break;
      }
    }
  } else {
    std::atomic<bool> stop{false};
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t b = 0; b < blocks; ++b) {
      if (stop.load(std::memory_order_relaxed)) continue;
      Runner& r = runner();
      if (!r.run_block(launch, static_cast<uint64_t>(b))) {
        stop.store(true, std::memory_order_relaxed);
        std::lock_guard<std::mutex> lock(failure_mutex);
        if (failed_block < 0 || b < failed_block) {
          failed_block = b;
          failure = std::move(r.error);
        }
      }
    }
  }
  if (failed_block >= 0) return report(cudaErrorLaunchFailure, std::move(failure), o.abort);
  return cudaSuccess;
}

}  // namespace detail
}  // namespace attnlab::simt
