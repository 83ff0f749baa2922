// Data parallelism across processes on the engines clusters already run (DESIGN.md section 8):
// MPI starts and coordinates the processes (`mpirun -np N attnlab train ...`, on CPUs and across
// nodes), NCCL all-reduces gradients between GPUs. attnlab never brings a transport of its own.
//
// A Communicator is one process's view of the group: its rank, the world size, and the
// collectives the training loop needs on tensors of the device it serves (CPU tensors for the
// single-process and MPI backends, CUDA tensors for NCCL):
//
//   all_reduce(t, op)         in place, every rank ends with the same sum / mean / min / max
//   all_reduce_async(t, op)   the same, started now and finished by Work::wait() (overlap)
//   broadcast(t, root)        in place, every rank ends with root's values
//   barrier()
//
// Collectives must be called by every rank in the same order with the same shapes; a mismatch
// is undefined behaviour of the engine (MPI and NCCL do not check), so the callers here issue
// them from code that every rank runs identically.
//
// Backends, chosen at start-up by make_communicator:
//   single  one process (no launcher): every collective is the identity, at no cost
//   mpi     launched by mpirun (or any PMI launcher); MPI_COMM_WORLD, CPU tensors
//   nccl    launched by mpirun with a CUDA device: NCCL over the ranks' GPUs (one GPU per rank,
//           cuda:<local rank>), the NCCL unique id broadcast over MPI; rank, barrier and scalar
//           agreement still go through MPI. A single process may also open a 1-rank NCCL group
//           (the GPU check's self-test).
// A build without MPI (ATTNLAB_MPI=OFF, or libopenmpi-dev missing) or NCCL still runs single
// process and says what is missing when a launcher or a backend asks for more.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "lib/device.h"
#include "lib/tensor.h"

namespace attnlab::dist {

enum class ReduceOp { sum, mean, min, max };

// One collective in flight (all_reduce_async). wait() returns once the result may be used on
// the device the tensor lives on: for CPU tensors, once the data is in place; for NCCL, once
// the device's current stream is ordered after the reduction (the host does not block).
class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;
  // Lets the engine make progress (MPI progresses non-blocking collectives only inside MPI calls);
  // true once the collective is complete. Never blocks.
  virtual bool test() = 0;
};

// What the launcher says about this process, read from the environment before any engine starts:
// Open MPI (OMPI_COMM_WORLD_*), PMIx (PMIX_RANK) and MPICH/Slurm PMI (PMI_RANK, PMI_SIZE).
struct LaunchInfo {
  bool launched = false;  // started by an MPI launcher
  int rank = 0, world_size = 1, local_rank = 0, local_size = 1;

  // One of several ranks: a data-parallel job rather than one process.
  bool several() const { return launched && world_size > 1; }
};
LaunchInfo launch_info();

class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  virtual std::string backend() const = 0;  // "single", "mpi" or "nccl"
  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  int local_rank() const { return local_rank_; }  // rank among the processes of this node
  int local_size() const { return local_size_; }
  bool is_root() const { return rank_ == 0; }
  // The device whose tensors the collectives take (cpu, or the rank's cuda:N).
  Device device() const { return device_; }

  // `t`: contiguous, on device(); f32 or f64 for all_reduce, any dtype for broadcast (bytes).
  // ShapeError / DeviceError naming what was expected otherwise (check_tensor).
  virtual std::unique_ptr<Work> all_reduce_async(const Tensor& t, ReduceOp op) = 0;
  void all_reduce(const Tensor& t, ReduceOp op) { all_reduce_async(t, op)->wait(); }
  virtual void broadcast(const Tensor& t, int root) = 0;
  virtual void barrier() = 0;

  // Host scalars, on every backend (NCCL groups agree on them through MPI): the reduced value,
  // the same on every rank. f64, so integers below 2^53 are exact.
  virtual double all_reduce(double value, ReduceOp op) = 0;

 protected:
  Communicator(int rank, int world_size, int local_rank, int local_size, Device device)
      : rank_(rank), world_size_(world_size), local_rank_(local_rank), local_size_(local_size), device_(device) {}
  // Checks the tensor contract of the collectives above (`reduce`: all_reduce's dtypes).
  void check_tensor(const Tensor& t, const char* what, bool reduce) const;

 private:
  int rank_, world_size_, local_rank_, local_size_;
  Device device_;
};

// The backend for this process: `requested` is "auto" (single without a launcher; under one, mpi
// for a CPU device and nccl for a CUDA device), "single", "mpi" or "nccl". `device` is the run's
// device; under a launcher a CUDA run gets cuda:<local rank> (device() tells which). ConfigError
// when the request does not fit the launch, the device or this build (naming what is missing).
std::unique_ptr<Communicator> make_communicator(Device device, const std::string& requested = "auto");

// ConfigError "dist.backend must be auto, single, mpi or nccl; got '...'" for any other name (the
// recipe reader checks with it before anything starts; make_communicator checks again).
void check_backend_name(const std::string& requested);

// Which backends this build has: "single" always, "mpi" with ATTNLAB_WITH_MPI, "nccl" with a
// real CUDA build and NCCL.
std::vector<std::string> built_backends();

// A 64-bit checksum of the tensors' bytes (FNV-1a over each tensor's contiguous host copy, in
// order): equal on every rank exactly when the parameters are bit for bit the same.
uint64_t parameter_checksum(const std::vector<Tensor>& tensors);

// True on every rank when the 64-bit value is the same on every rank (compared as two exact
// 32-bit halves through all_reduce min and max).
bool same_on_all_ranks(Communicator& comm, uint64_t value);

// The CLI's error path in a job of several ranks: the peers may be blocked in a collective, and
// MPI_Finalize would wait for them, so the process flushes stdout and stderr and exits at once
// with `code`; the launcher then ends the other ranks (mpirun reports the first non-zero exit
// code as its own). Returns when this process is alone (no MPI started, or a world of one).
void exit_job_on_error(int code);

// Copies rank `root`'s values of every tensor to all ranks (broadcast each in turn).
void broadcast_tensors(Communicator& comm, const std::vector<Tensor>& tensors, int root = 0);

}  // namespace attnlab::dist
