// lib/cuda/nccl.h on NCCL and the CUDA runtime: no kernels of our own, only NCCL's collectives
// queued on a communicator stream and ordered against the current stream with CUDA events.
// Built twice like every kernel file: by nvcc with NCCL (ATTNLAB_WITH_NCCL=1, from
// cmake/Dependencies.cmake) the real thing; for the simt emulator, or with ATTNLAB_NCCL=OFF, a
// stub whose every entry point throws DeviceError saying why (the emulator runs kernels on the
// CPU and has no NCCL to call; the build configured NCCL off).
#include "lib/cuda/kernel.h"  // the compat layer first: it says whether this build is emulated
#include "lib/cuda/nccl.h"

#include <utility>

#include "lib/cuda/runtime.h"
#include "lib/error.h"

#if !defined(ATTNLAB_WITH_NCCL)
#define ATTNLAB_WITH_NCCL 0
#endif

#if !ATTNLAB_SIMT_EMULATED && ATTNLAB_WITH_NCCL
#define ATTNLAB_NCCL_REAL 1
#include "lib/cuda/libraries.h"  // <nccl.h> and AL_NCCL_CHECK
#else
#define ATTNLAB_NCCL_REAL 0
#endif

namespace attnlab::cuda::nccl {

bool available() { return ATTNLAB_NCCL_REAL != 0; }

std::string unavailable_reason() {
#if ATTNLAB_SIMT_EMULATED
  return "NCCL cannot run on the simt emulator (CUDA kernels on the CPU): the nccl backend needs the nvcc-built "
         "backend and a GPU per rank";
#elif !ATTNLAB_WITH_NCCL
  return "this build has NCCL configured off (ATTNLAB_NCCL=OFF, or NCCL not found beside the CUDA toolkit); "
         "reconfigure with -DATTNLAB_NCCL=ON";
#else
  return "";
#endif
}

#if ATTNLAB_NCCL_REAL

namespace {

ncclDataType_t to_nccl(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return ncclFloat32;
    case DType::f64:
      return ncclFloat64;
    default:
      break;
  }
  ::attnlab::detail::throw_error<DTypeError>("nccl all_reduce: expected f32 or f64 data; got ", dtype);
}

ncclRedOp_t to_nccl(Op op) {
  switch (op) {
    case Op::sum:
      return ncclSum;
    case Op::avg:
      return ncclAvg;
    case Op::min:
      return ncclMin;
    case Op::max:
      return ncclMax;
  }
  return ncclSum;
}

}  // namespace

struct Event::Impl {
  cudaEvent_t event = nullptr;
  int device = 0;
  ~Impl() {
    if (event) (void)cudaEventDestroy(event);  // destructors do not throw
  }
};

Event::Event(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Event::Event(Event&&) noexcept = default;
Event& Event::operator=(Event&&) noexcept = default;
Event::~Event() = default;

bool Event::query() const {
  DeviceGuard guard(impl_->device);
  const cudaError_t err = cudaEventQuery(impl_->event);
  if (err == cudaErrorNotReady) {
    (void)cudaGetLastError();  // not an error: still running
    return false;
  }
  AL_CUDA_CHECK(err);
  return true;
}

void Event::block_current_stream() const {
  DeviceGuard guard(impl_->device);
  AL_CUDA_CHECK(cudaStreamWaitEvent(current_stream(), impl_->event, 0));
}

struct Comm::Impl {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t ready = nullptr;  // recorded on the current stream, waited for by `stream`
  int rank = 0, world_size = 1, device = 0;

  ~Impl() {
    // Destructors do not throw: failures here leave nothing the caller could act on.
    if (comm) (void)ncclCommDestroy(comm);
    if (ready) (void)cudaEventDestroy(ready);
    if (stream) (void)cudaStreamDestroy(stream);
  }
};

Comm::Comm(const UniqueId& id, int rank, int world_size, int device) : impl_(std::make_unique<Impl>()) {
  AL_CHECK_CONFIG(world_size >= 1 && rank >= 0 && rank < world_size, "nccl: rank ", rank,
                  " is not a rank of a group of ", world_size);
  check_device(Device::cuda(device));
  DeviceGuard guard(device);
  impl_->rank = rank;
  impl_->world_size = world_size;
  impl_->device = device;
  // Non-blocking: the communicator's stream is ordered against the compute stream by events
  // only, never by the legacy default stream's implicit synchronisation.
  AL_CUDA_CHECK(cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking));
  AL_CUDA_CHECK(cudaEventCreateWithFlags(&impl_->ready, cudaEventDisableTiming));
  ncclUniqueId nid;
  static_assert(sizeof(nid.internal) == kUniqueIdBytes, "UniqueId must hold an ncclUniqueId");
  for (size_t i = 0; i < kUniqueIdBytes; ++i) nid.internal[i] = id[i];
  AL_NCCL_CHECK(ncclCommInitRank(&impl_->comm, world_size, nid, rank));
}

Comm::~Comm() = default;

int Comm::rank() const { return impl_->rank; }
int Comm::world_size() const { return impl_->world_size; }
int Comm::device() const { return impl_->device; }

void Comm::wait_for_current_stream() {
  DeviceGuard guard(impl_->device);
  AL_CUDA_CHECK(cudaEventRecord(impl_->ready, current_stream()));
  AL_CUDA_CHECK(cudaStreamWaitEvent(impl_->stream, impl_->ready, 0));
}

Event Comm::record() {
  DeviceGuard guard(impl_->device);
  auto e = std::make_unique<Event::Impl>();
  e->device = impl_->device;
  AL_CUDA_CHECK(cudaEventCreateWithFlags(&e->event, cudaEventDisableTiming));
  AL_CUDA_CHECK(cudaEventRecord(e->event, impl_->stream));
  return Event(std::move(e));
}

void Comm::block_current_stream() { record().block_current_stream(); }

void Comm::synchronize() {
  DeviceGuard guard(impl_->device);
  AL_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
}

void Comm::all_reduce(void* data, size_t count, DType dtype, Op op) {
  DeviceGuard guard(impl_->device);
  AL_NCCL_CHECK(ncclAllReduce(data, data, count, to_nccl(dtype), to_nccl(op), impl_->comm, impl_->stream));
}

void Comm::broadcast(void* data, size_t bytes, int root) {
  AL_CHECK_CONFIG(root >= 0 && root < impl_->world_size, "nccl broadcast: root ", root,
                  " is not a rank of a group of ", impl_->world_size);
  DeviceGuard guard(impl_->device);
  AL_NCCL_CHECK(ncclBroadcast(data, data, bytes, ncclUint8, root, impl_->comm, impl_->stream));
}

UniqueId make_unique_id() {
  ncclUniqueId nid;
  AL_NCCL_CHECK(ncclGetUniqueId(&nid));
  UniqueId id{};
  for (size_t i = 0; i < kUniqueIdBytes; ++i) id[i] = nid.internal[i];
  return id;
}

#else  // the emulator, or NCCL configured off: every entry point says why it cannot run

namespace {
[[noreturn]] void unavailable(const char* what) {
  ::attnlab::detail::throw_error<DeviceError>(what, ": ", unavailable_reason());
}
}  // namespace

struct Event::Impl {};
Event::Event(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Event::Event(Event&&) noexcept = default;
Event& Event::operator=(Event&&) noexcept = default;
Event::~Event() = default;
bool Event::query() const { unavailable("nccl event query"); }
void Event::block_current_stream() const { unavailable("nccl event wait"); }

struct Comm::Impl {};
Comm::Comm(const UniqueId&, int, int, int) { unavailable("nccl communicator"); }
Comm::~Comm() = default;
int Comm::rank() const { unavailable("nccl communicator"); }
int Comm::world_size() const { unavailable("nccl communicator"); }
int Comm::device() const { unavailable("nccl communicator"); }
void Comm::wait_for_current_stream() { unavailable("nccl communicator"); }
void Comm::block_current_stream() { unavailable("nccl communicator"); }
Event Comm::record() { unavailable("nccl communicator"); }
void Comm::synchronize() { unavailable("nccl communicator"); }
void Comm::all_reduce(void*, size_t, DType, Op) { unavailable("nccl all_reduce"); }
void Comm::broadcast(void*, size_t, int) { unavailable("nccl broadcast"); }
UniqueId make_unique_id() { unavailable("nccl unique id"); }

#endif

}  // namespace attnlab::cuda::nccl
