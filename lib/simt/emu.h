// The simt emulator's kernel-side half: what a CUDA kernel source sees when it is compiled by a
// host compiler (through lib/simt/compat.h). Every CUDA thread of a block runs as a fiber on one
// OS thread; fibers switch only at __syncthreads, __syncwarp and the warp collectives, whose
// bookkeeping lives in runtime.cpp. specs/cuda_on_cpu.md describes the technique.
//
// Model
//   - A block runs entirely on one OS thread, so block-scope `__shared__` is `thread_local`: one
//     copy per block per OS thread (blocks run in parallel on OpenMP threads). Static shared
//     arrays start zeroed and then keep the previous block's contents; they get no NaN fill and
//     no overflow guard, so large tiles belong in dynamic shared memory.
//   - threadIdx reads the running fiber's index through a thread_local pointer; blockIdx,
//     blockDim and gridDim are thread_local values the block scheduler sets. All four are macros
//     over const views, so a kernel cannot assign them (as under nvcc).
//   - Barriers and collectives record their call site through default arguments
//     (__builtin_FILE/__builtin_LINE), so kernels need no macros and diagnostics name file:line.
//   - Warp collectives follow the programming guide and PTX shfl.sync: a lane stores its value and
//     waits; when every lane of `mask` has arrived the results are computed and the lanes resume.
//     With width < 32, up/down/xor return the caller's own value when the source lies past its
//     segment (xor may read an earlier segment); idx reads lane srcLane & (width-1) of the segment;
//     delta and laneMask use their low 5 bits. Reading a lane outside `mask` is an error, as are
//     masks naming exited or missing lanes and lanes that wait for each other in different
//     collectives (runtime.cpp lists every diagnostic).
//   - Dynamic shared memory: simt::dynamic_smem<T>() is the launch's buffer (filled with 0xFF, NaN
//     as floats); SmemCarver::take<T>(n) hands out sub-arrays, each followed by a canary guard zone
//     checked when the block ends (under ASan each is its own heap block instead).
//   - Launch: simt::launch(kernel, grid, block, smem, stream, args...) converts the arguments to
//     the kernel's parameter types once; every emulated thread calls the kernel with its own copy.
//     It returns cudaSuccess, cudaErrorInvalidConfiguration (bad dims or smem size) or
//     cudaErrorLaunchFailure (a diagnostic); simt::take_last_error() returns the message.
//
// Environment (read at every launch; the set_* functions override them for tests)
//   ATTNLAB_SIMT_SCHEDULE  inorder (default) | reversed | interleaved | warp_ahead | random[:seed]
//   ATTNLAB_SIMT_STRICT    1 (default): barriers on different lines and barriers after an exit are
//                          errors; 0: exited threads count as arrived (what GPUs commonly do)
//   ATTNLAB_SIMT_THREADS   OS threads running blocks (default: OpenMP's); 1 = sequential
//   ATTNLAB_SIMT_ABORT     1: print the diagnostic and abort instead of returning an error
#pragma once

// <memory> before __noinline__ is defined: libstdc++'s shared_ptr_base.h spells the attribute
// __attribute__((__noinline__)), which the macro would break. Included once, it is not reparsed.
#include <atomic>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

// The toolkit's host-compilable headers: the same dim3, uint3, float4, cudaError_t, cudaStream_t,
// __half and __nv_bfloat16 as nvcc (with __half arithmetic on the host), and the runtime's
// declarations, whose definitions runtime_api.cpp supplies. Found as SYSTEM include directories.
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

// host_defines.h already made __global__, __device__, __host__, __constant__ and __forceinline__
// harmless on the host; __launch_bounds__ it defines only under nvcc, so it is done here.
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#undef __shared__
#define __shared__ thread_local
#ifndef __noinline__
#define __noinline__ __attribute__((noinline))
#endif

constexpr int warpSize = 32;

namespace attnlab::simt {

// ---- Settings -----------------------------------------------------------------------------

// The order in which the block scheduler resumes ready threads. Schedules differ only for racy
// kernels; run tests under several (ctest does) to expose missing barriers.
struct Schedule {
  enum Kind : uint8_t {
    inorder,      // round robin over thread indices, lowest first (the default)
    reversed,     // round robin, highest index first
    interleaved,  // round robin across warps lane by lane: w0l0, w1l0, ..., w0l1, w1l1, ...
    warp_ahead,   // always the lowest ready thread: one warp runs as far ahead as it can
    random,       // a random ready thread, seeded per block from `seed` (reproducible)
  };
  Kind kind = inorder;
  uint64_t seed = 0;

  // "inorder", ..., "random:7"; parse() accepts these names ("random" means seed 0).
  std::string name() const;
  static std::optional<Schedule> parse(std::string_view text);
  friend bool operator==(const Schedule&, const Schedule&) = default;
};

// ATTNLAB_SIMT_SCHEDULE's schedule; nullopt (after a message on stderr) when it is malformed.
std::optional<Schedule> schedule_from_env();
// Overrides the environment for every later launch in this process; reset_schedule() undoes it.
void set_schedule(Schedule schedule);
void reset_schedule();
// The schedule the next launch uses (the override, else the environment's, else inorder).
Schedule current_schedule();
// Strict barrier checks (ATTNLAB_SIMT_STRICT); set_strict overrides, reset_strict undoes.
void set_strict(bool strict);
void reset_strict();

// Restores the previous schedule override when it goes out of scope (for tests).
class ScheduleGuard {
 public:
  explicit ScheduleGuard(Schedule schedule);
  ~ScheduleGuard();
  ScheduleGuard(const ScheduleGuard&) = delete;
  ScheduleGuard& operator=(const ScheduleGuard&) = delete;

 private:
  std::optional<Schedule> previous_;
};

// The diagnostic of this OS thread's last failed launch ("" if none); clears it.
std::string take_last_error();

// ---- Kernel-side machinery (used through the names below, not directly) --------------------
namespace detail {

struct ThreadHead {
  uint3 tid;
};
extern thread_local constinit ThreadHead* tl_thread;
extern thread_local constinit uint3 tl_block_idx;
extern thread_local constinit dim3 tl_block_dim;
extern thread_local constinit dim3 tl_grid_dim;

enum class WarpOp : uint8_t {
  syncwarp, shfl_idx, shfl_up, shfl_down, shfl_xor, ballot, any, all,
  reduce_add, reduce_min_s, reduce_max_s, reduce_min_u, reduce_max_u, reduce_and, reduce_or, reduce_xor,
};
enum class BarrierOp : uint8_t { sync, count, all, any };

int barrier(BarrierOp op, int predicate, const char* file, int line);
// One warp collective: `value` holds up to 8 bytes, `param` the source lane, delta or lane mask.
uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int param, int width, const char* file, int line);
void* dynamic_smem(const char* file, int line);
void* carve(unsigned index, size_t count, size_t elem_size, std::string_view type, const char* file, int line);

using ThreadFn = void (*)(const void* bound);
cudaError_t launch(dim3 grid, dim3 block, size_t dynamic_smem_bytes, cudaStream_t stream, ThreadFn fn,
                   const void* bound);

// "float", "__half", ... for diagnostics, from the compiler's spelling of this function;
// a variable so that it is computed at compile time.
template <typename T>
constexpr std::string_view type_name_of() {
  std::string_view p = __PRETTY_FUNCTION__;
  const size_t b = p.find("T = ") + 4;
  return p.substr(b, p.find_first_of(";]", b) - b);
}
template <typename T>
inline constexpr std::string_view type_name = type_name_of<T>();

template <typename T>
T shuffle(WarpOp op, unsigned mask, T var, int param, int width, const char* file, int line) {
  // The value travels as bytes; __half2 and __nv_bfloat162 have user-written assignments but are
  // plain 4-byte structs, so copying their bytes is what a register shuffle does.
  static_assert(std::is_standard_layout_v<T> && sizeof(T) <= 8);
  uint64_t bits = 0;
  std::memcpy(&bits, static_cast<const void*>(&var), sizeof(T));
  bits = warp_op(op, mask, bits, param, width, file, line);
  std::memcpy(static_cast<void*>(&var), &bits, sizeof(T));
  return var;
}

// The kernel and its converted arguments; every emulated thread calls the kernel with its own
// copy of them (the by-value parameters of the call below).
template <typename... Params>
struct Bound {
  void (*kernel)(Params...);
  std::tuple<Params...> args;
  static void run(const void* self) {
    const Bound& b = *static_cast<const Bound*>(self);
    std::apply([&b](const Params&... a) { b.kernel(a...); }, b.args);
  }
};

// Copy-initialisation: the conversions a <<<>>> call would apply, and no explicit ones.
template <typename To>
To convert_arg(To value) {
  return value;
}

}  // namespace detail

// ---- Dynamic shared memory ------------------------------------------------------------------

// The launch's dynamic shared memory. A kernel uses either this or a SmemCarver, not both.
template <typename T>
T* dynamic_smem(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return static_cast<T*>(detail::dynamic_smem(file, line));
}

// Typed sub-arrays of the dynamic shared memory, laid out like the nvcc version (16-byte aligned
// and checked against the launch's size); every thread must take the same sequence of sizes.
class SmemCarver {
 public:
  template <typename T>
  T* take(size_t count, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return static_cast<T*>(detail::carve(index_++, count, sizeof(T), detail::type_name<T>, file, line));
  }

 private:
  unsigned index_ = 0;
};

// ---- Launch -----------------------------------------------------------------------------------

template <typename... Params, typename... Args>
inline cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_smem_bytes,
                          cudaStream_t stream, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "simt::launch: wrong number of kernel arguments");
  static_assert((!std::is_reference_v<Params> && ...), "kernel parameters are passed by value");
  const detail::Bound<Params...> bound{kernel, std::tuple<Params...>(detail::convert_arg<Params>(std::forward<Args>(args))...)};
  return detail::launch(grid, block, dynamic_smem_bytes, stream, &detail::Bound<Params...>::run, &bound);
}

}  // namespace attnlab::simt

// ---- Built-in variables -------------------------------------------------------------------------

#define threadIdx (static_cast<const uint3&>(::attnlab::simt::detail::tl_thread->tid))
#define blockIdx (static_cast<const uint3&>(::attnlab::simt::detail::tl_block_idx))
#define blockDim (static_cast<const dim3&>(::attnlab::simt::detail::tl_block_dim))
#define gridDim (static_cast<const dim3&>(::attnlab::simt::detail::tl_grid_dim))

// ---- Barriers and warp collectives ----------------------------------------------------------------

#define ATTNLAB_SIMT_SITE const char *file = __builtin_FILE(), int line = __builtin_LINE()

inline void __syncthreads(ATTNLAB_SIMT_SITE) {
  ::attnlab::simt::detail::barrier(::attnlab::simt::detail::BarrierOp::sync, 0, file, line);
}
inline int __syncthreads_count(int predicate, ATTNLAB_SIMT_SITE) {
  return ::attnlab::simt::detail::barrier(::attnlab::simt::detail::BarrierOp::count, predicate, file, line);
}
inline int __syncthreads_and(int predicate, ATTNLAB_SIMT_SITE) {
  return ::attnlab::simt::detail::barrier(::attnlab::simt::detail::BarrierOp::all, predicate, file, line);
}
inline int __syncthreads_or(int predicate, ATTNLAB_SIMT_SITE) {
  return ::attnlab::simt::detail::barrier(::attnlab::simt::detail::BarrierOp::any, predicate, file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, ATTNLAB_SIMT_SITE) {
  ::attnlab::simt::detail::warp_op(::attnlab::simt::detail::WarpOp::syncwarp, mask, 0, 0, warpSize, file, line);
}

// The overload set nvcc offers, so a call that nvcc rejects is rejected here too.
#define ATTNLAB_SIMT_SHUFFLES(T)                                                                     \
  inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize, ATTNLAB_SIMT_SITE) {  \
    return ::attnlab::simt::detail::shuffle(::attnlab::simt::detail::WarpOp::shfl_idx, mask, var,    \
                                            srcLane, width, file, line);                             \
  }                                                                                                  \
  inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,                \
                          ATTNLAB_SIMT_SITE) {                                                       \
    return ::attnlab::simt::detail::shuffle(::attnlab::simt::detail::WarpOp::shfl_up, mask, var,     \
                                            static_cast<int>(delta & 31u), width, file, line);        \
  }                                                                                                  \
  inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,              \
                            ATTNLAB_SIMT_SITE) {                                                     \
    return ::attnlab::simt::detail::shuffle(::attnlab::simt::detail::WarpOp::shfl_down, mask, var,   \
                                            static_cast<int>(delta & 31u), width, file, line);        \
  }                                                                                                  \
  inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize,                 \
                           ATTNLAB_SIMT_SITE) {                                                      \
    return ::attnlab::simt::detail::shuffle(::attnlab::simt::detail::WarpOp::shfl_xor, mask, var,    \
                                            laneMask, width, file, line);                            \
  }
ATTNLAB_SIMT_SHUFFLES(int)
ATTNLAB_SIMT_SHUFFLES(unsigned int)
ATTNLAB_SIMT_SHUFFLES(long)
ATTNLAB_SIMT_SHUFFLES(unsigned long)
ATTNLAB_SIMT_SHUFFLES(long long)
ATTNLAB_SIMT_SHUFFLES(unsigned long long)
ATTNLAB_SIMT_SHUFFLES(float)
ATTNLAB_SIMT_SHUFFLES(double)
ATTNLAB_SIMT_SHUFFLES(__half)
ATTNLAB_SIMT_SHUFFLES(__half2)
ATTNLAB_SIMT_SHUFFLES(__nv_bfloat16)
ATTNLAB_SIMT_SHUFFLES(__nv_bfloat162)
#undef ATTNLAB_SIMT_SHUFFLES

inline unsigned __ballot_sync(unsigned mask, int predicate, ATTNLAB_SIMT_SITE) {
  return static_cast<unsigned>(::attnlab::simt::detail::warp_op(::attnlab::simt::detail::WarpOp::ballot, mask,
                                                                predicate != 0, 0, warpSize, file, line));
}
inline int __any_sync(unsigned mask, int predicate, ATTNLAB_SIMT_SITE) {
  return static_cast<int>(::attnlab::simt::detail::warp_op(::attnlab::simt::detail::WarpOp::any, mask,
                                                           predicate != 0, 0, warpSize, file, line));
}
inline int __all_sync(unsigned mask, int predicate, ATTNLAB_SIMT_SITE) {
  return static_cast<int>(::attnlab::simt::detail::warp_op(::attnlab::simt::detail::WarpOp::all, mask,
                                                           predicate != 0, 0, warpSize, file, line));
}

// sm_80 warp reductions.
#define ATTNLAB_SIMT_REDUCE(name, T, op)                                                                  \
  inline T name(unsigned mask, T value, ATTNLAB_SIMT_SITE) {                                              \
    return static_cast<T>(::attnlab::simt::detail::warp_op(::attnlab::simt::detail::WarpOp::op, mask,     \
                                                           static_cast<uint32_t>(value), 0, warpSize,     \
                                                           file, line));                                  \
  }
ATTNLAB_SIMT_REDUCE(__reduce_add_sync, int, reduce_add)
ATTNLAB_SIMT_REDUCE(__reduce_add_sync, unsigned, reduce_add)
ATTNLAB_SIMT_REDUCE(__reduce_min_sync, int, reduce_min_s)
ATTNLAB_SIMT_REDUCE(__reduce_min_sync, unsigned, reduce_min_u)
ATTNLAB_SIMT_REDUCE(__reduce_max_sync, int, reduce_max_s)
ATTNLAB_SIMT_REDUCE(__reduce_max_sync, unsigned, reduce_max_u)
ATTNLAB_SIMT_REDUCE(__reduce_and_sync, unsigned, reduce_and)
ATTNLAB_SIMT_REDUCE(__reduce_or_sync, unsigned, reduce_or)
ATTNLAB_SIMT_REDUCE(__reduce_xor_sync, unsigned, reduce_xor)
#undef ATTNLAB_SIMT_REDUCE
#undef ATTNLAB_SIMT_SITE

// ---- Memory fences and atomics ------------------------------------------------------------------
// A block is sequentially consistent (one OS thread); fences matter only between blocks, which
// OpenMP may run in parallel. Atomics go through std::atomic_ref, so they hold across blocks.
// The overload set is nvcc's (sm_60 and later).

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }

namespace attnlab::simt::detail {
template <typename T, typename F>
T atomic_update(T* address, F next) {  // CAS loop for the operations atomic_ref lacks
  std::atomic_ref<T> a(*address);
  T old = a.load();
  while (!a.compare_exchange_weak(old, next(old))) {
  }
  return old;
}
}  // namespace attnlab::simt::detail

#define ATTNLAB_SIMT_ATOMIC_ADD(T)                                                          \
  inline T atomicAdd(T* address, T val) { return std::atomic_ref<T>(*address).fetch_add(val); }
ATTNLAB_SIMT_ATOMIC_ADD(int)
ATTNLAB_SIMT_ATOMIC_ADD(unsigned int)
ATTNLAB_SIMT_ATOMIC_ADD(unsigned long long)
ATTNLAB_SIMT_ATOMIC_ADD(float)
ATTNLAB_SIMT_ATOMIC_ADD(double)
#undef ATTNLAB_SIMT_ATOMIC_ADD
inline int atomicSub(int* address, int val) { return std::atomic_ref<int>(*address).fetch_sub(val); }
inline unsigned atomicSub(unsigned* address, unsigned val) { return std::atomic_ref<unsigned>(*address).fetch_sub(val); }

#define ATTNLAB_SIMT_ATOMIC_EXCH_CAS(T)                                                               \
  inline T atomicExch(T* address, T val) { return std::atomic_ref<T>(*address).exchange(val); }       \
  inline T atomicCAS(T* address, T compare, T val) {                                                   \
    std::atomic_ref<T>(*address).compare_exchange_strong(compare, val);                                \
    return compare;                                                                                    \
  }
ATTNLAB_SIMT_ATOMIC_EXCH_CAS(int)
ATTNLAB_SIMT_ATOMIC_EXCH_CAS(unsigned int)
ATTNLAB_SIMT_ATOMIC_EXCH_CAS(unsigned long long)
#undef ATTNLAB_SIMT_ATOMIC_EXCH_CAS
inline float atomicExch(float* address, float val) { return std::atomic_ref<float>(*address).exchange(val); }
inline unsigned short atomicCAS(unsigned short* address, unsigned short compare, unsigned short val) {
  std::atomic_ref<unsigned short>(*address).compare_exchange_strong(compare, val);
  return compare;
}

#define ATTNLAB_SIMT_ATOMIC_BITS(T)                                                                          \
  inline T atomicMin(T* address, T val) {                                                                     \
    return ::attnlab::simt::detail::atomic_update(address, [val](T old) { return val < old ? val : old; });  \
  }                                                                                                           \
  inline T atomicMax(T* address, T val) {                                                                     \
    return ::attnlab::simt::detail::atomic_update(address, [val](T old) { return val > old ? val : old; });  \
  }                                                                                                           \
  inline T atomicAnd(T* address, T val) { return std::atomic_ref<T>(*address).fetch_and(val); }             \
  inline T atomicOr(T* address, T val) { return std::atomic_ref<T>(*address).fetch_or(val); }               \
  inline T atomicXor(T* address, T val) { return std::atomic_ref<T>(*address).fetch_xor(val); }
ATTNLAB_SIMT_ATOMIC_BITS(int)
ATTNLAB_SIMT_ATOMIC_BITS(unsigned int)
ATTNLAB_SIMT_ATOMIC_BITS(long long)
ATTNLAB_SIMT_ATOMIC_BITS(unsigned long long)
#undef ATTNLAB_SIMT_ATOMIC_BITS
// ((old >= val) ? 0 : (old + 1)) and (((old == 0) || (old > val)) ? val : (old - 1)), as in CUDA.
inline unsigned atomicInc(unsigned* address, unsigned val) {
  return ::attnlab::simt::detail::atomic_update(address, [val](unsigned old) { return old >= val ? 0u : old + 1; });
}
inline unsigned atomicDec(unsigned* address, unsigned val) {
  return ::attnlab::simt::detail::atomic_update(
      address, [val](unsigned old) { return (old == 0 || old > val) ? val : old - 1; });
}

// ---- Device functions CUDA has and the host lacks -------------------------------------------------
// The fast-math intrinsics compute the accurate function here: tests compare with tolerances.
// glibc declares (but does not export) some __-prefixed names extern "C" noexcept; these inline
// definitions match those declarations.

extern "C" {
inline float __expf(float x) noexcept { return expf(x); }
inline float __exp10f(float x) noexcept { return exp10f(x); }
inline float __logf(float x) noexcept { return logf(x); }
inline float __log2f(float x) noexcept { return log2f(x); }
inline float __log10f(float x) noexcept { return log10f(x); }
inline float __powf(float x, float y) noexcept { return powf(x, y); }
inline float __sinf(float x) noexcept { return sinf(x); }
inline float __cosf(float x) noexcept { return cosf(x); }
inline float __tanf(float x) noexcept { return tanf(x); }
inline float __tanhf(float x) noexcept { return tanhf(x); }
inline void __sincosf(float x, float* s, float* c) noexcept { sincosf(x, s, c); }
}

inline float __fdividef(float x, float y) { return x / y; }
inline float fdividef(float x, float y) { return x / y; }
inline float __saturatef(float x) { return x >= 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); }  // NaN -> 0
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / std::cbrt(x); }
inline double rcbrt(double x) { return 1.0 / std::cbrt(x); }
inline float sinpif(float x) { return static_cast<float>(std::sin(M_PI * static_cast<double>(x))); }
inline float cospif(float x) { return static_cast<float>(std::cos(M_PI * static_cast<double>(x))); }
inline double sinpi(double x) { return std::sin(M_PI * x); }
inline double cospi(double x) { return std::cos(M_PI * x); }
inline float normcdff(float x) { return 0.5f * std::erfc(-x * static_cast<float>(M_SQRT1_2)); }
inline double normcdf(double x) { return 0.5 * std::erfc(-x * M_SQRT1_2); }

// Round-to-nearest forms (the host's default rounding mode): these stop nvcc contracting into FMA.
inline float __fadd_rn(float x, float y) { return x + y; }
inline float __fsub_rn(float x, float y) { return x - y; }
inline float __fmul_rn(float x, float y) { return x * y; }
inline float __fdiv_rn(float x, float y) { return x / y; }
inline float __fmaf_rn(float x, float y, float z) { return std::fma(x, y, z); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __frsqrt_rn(float x) { return 1.0f / std::sqrt(x); }
inline double __dadd_rn(double x, double y) { return x + y; }
inline double __dmul_rn(double x, double y) { return x * y; }
inline double __fma_rn(double x, double y, double z) { return std::fma(x, y, z); }
inline int __float2int_rn(float x) { return static_cast<int>(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __float2int_rd(float x) { return static_cast<int>(std::floor(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(std::ceil(x)); }
inline unsigned __float2uint_rn(float x) { return static_cast<unsigned>(std::nearbyint(x)); }
inline long long __float2ll_rn(float x) { return std::llrint(x); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }
inline float __ll2float_rn(long long x) { return static_cast<float>(x); }
inline float __double2float_rn(double x) { return static_cast<float>(x); }

inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }

inline int __popc(unsigned x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __clz(int x) { return std::countl_zero(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return std::countl_zero(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  return __builtin_bswap32(x);
}
inline unsigned long long __brevll(unsigned long long x) {
  return (static_cast<unsigned long long>(__brev(static_cast<unsigned>(x))) << 32) | __brev(static_cast<unsigned>(x >> 32));
}
inline unsigned __umulhi(unsigned x, unsigned y) { return static_cast<unsigned>((uint64_t{x} * y) >> 32); }
inline int __mulhi(int x, int y) { return static_cast<int>((int64_t{x} * y) >> 32); }
inline unsigned long long __umul64hi(unsigned long long x, unsigned long long y) {
  return static_cast<unsigned long long>((static_cast<unsigned __int128>(x) * y) >> 64);
}
inline long long __mul64hi(long long x, long long y) {
  return static_cast<long long>((static_cast<__int128>(x) * y) >> 64);
}
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline void __nanosleep(unsigned) {}

// CUDA's integer and floating min/max, callable unqualified in device code.
#define ATTNLAB_SIMT_MINMAX(T)                              \
  inline T min(T a, T b) { return b < a ? b : a; }          \
  inline T max(T a, T b) { return a < b ? b : a; }
ATTNLAB_SIMT_MINMAX(int)
ATTNLAB_SIMT_MINMAX(unsigned int)
ATTNLAB_SIMT_MINMAX(long)
ATTNLAB_SIMT_MINMAX(unsigned long)
ATTNLAB_SIMT_MINMAX(long long)
ATTNLAB_SIMT_MINMAX(unsigned long long)
#undef ATTNLAB_SIMT_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
// Mixed signedness converts to unsigned, as CUDA's overloads do.
inline unsigned min(int a, unsigned b) { return min(static_cast<unsigned>(a), b); }
inline unsigned min(unsigned a, int b) { return min(a, static_cast<unsigned>(b)); }
inline unsigned max(int a, unsigned b) { return max(static_cast<unsigned>(a), b); }
inline unsigned max(unsigned a, int b) { return max(a, static_cast<unsigned>(b)); }
inline double min(float a, double b) { return fmin(a, b); }
inline double min(double a, float b) { return fmin(a, b); }
inline double max(float a, double b) { return fmax(a, b); }
inline double max(double a, float b) { return fmax(a, b); }
