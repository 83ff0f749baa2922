// NCCL as the rest of attnlab sees it (the GPU side of train/distributed.h's nccl backend): a
// group's unique id, and a communicator of one rank on one device with its own stream. No CUDA
// or NCCL types here, so any file may include it (like runtime.h); the definitions live in
// nccl.cu. Only the nvcc-built backend with NCCL (ATTNLAB_NCCL, cmake/Dependencies.cmake) can
// run it: in the emulated backend, and in a real one configured with ATTNLAB_NCCL=OFF, every
// entry point throws DeviceError saying why.
//
// Ordering without blocking the host: a collective is queued on the communicator's stream after
// the work the calling thread queued so far on its current stream (lib/cuda/kernel.h), and the
// current stream is made to wait for the communicator's stream before the result is used:
//
//   comm.wait_for_current_stream();          // the gradients are written
//   comm.all_reduce(ptr, n, DType::f32, Op::sum);
//   Event done = comm.record();              // test(): done.query()
//   done.block_current_stream();             // wait(): later kernels see the sums
//
// Calls are checked: a failing CUDA or NCCL status throws CudaError with the library's message.
#pragma once

#include <array>
#include <cstddef>
#include <memory>
#include <string>

#include "lib/dtype.h"

namespace attnlab::cuda::nccl {

// True when this build can run NCCL (the nvcc backend, built with NCCL).
bool available();
// Why it cannot, for messages ("" when available()).
std::string unavailable_reason();

// The id that names one NCCL group: made by rank 0 (make_unique_id), sent to every other rank
// over the host channel (MPI), and given to each rank's Comm. Opaque bytes.
constexpr size_t kUniqueIdBytes = 128;
using UniqueId = std::array<char, kUniqueIdBytes>;
UniqueId make_unique_id();

enum class Op { sum, avg, min, max };

// A point in a communicator's stream (a CUDA event recorded there).
class Event {
 public:
  Event(Event&&) noexcept;
  Event& operator=(Event&&) noexcept;
  ~Event();
  // True once every operation queued before the event has completed. Never blocks.
  bool query() const;
  // Makes the calling thread's current stream wait for the event (the host does not block).
  void block_current_stream() const;

 private:
  friend class Comm;
  struct Impl;
  explicit Event(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// This process's rank of an NCCL group on CUDA device `device`, with a stream of its own for
// the collectives. Every rank of the group constructs its Comm with the same id and world size
// (ncclCommInitRank blocks until all have). The collectives work in place on device memory of
// `device` and are queued on the communicator's stream (see the ordering above).
class Comm {
 public:
  Comm(const UniqueId& id, int rank, int world_size, int device);
  ~Comm();
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;

  int rank() const;
  int world_size() const;
  int device() const;

  // Orders the communicator's stream after the work queued so far on the current stream.
  void wait_for_current_stream();
  // Makes the current stream wait for everything queued so far on the communicator's stream.
  void block_current_stream();
  // An event at the end of the work queued so far on the communicator's stream.
  Event record();
  // Waits on the host for the communicator's stream.
  void synchronize();

  // `count` elements of dtype (f32 or f64) at `data`, reduced in place over the group.
  void all_reduce(void* data, size_t count, DType dtype, Op op);
  // `bytes` bytes at `data`, copied from rank `root` to every rank in place.
  void broadcast(void* data, size_t bytes, int root);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace attnlab::cuda::nccl
