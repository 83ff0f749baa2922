// The engine backends behind make_communicator (train/distributed.h). Private to train/: the
// rest of attnlab sees only the Communicator interface.
#pragma once

#include <memory>

#include "train/distributed.h"

namespace attnlab::dist::detail {

// distributed.cpp: the one-process group (every collective the identity).
std::unique_ptr<Communicator> make_single(Device device);

// distributed_mpi.cpp, built with ATTNLAB_WITH_MPI: MPI_COMM_WORLD over CPU tensors. Starts MPI
// on first use (MPI_Init_thread, MPI_THREAD_FUNNELED: only the main thread calls MPI; OpenMP
// threads never do) and finalises it at normal process exit. Local rank and size come from
// MPI_Comm_split_type(MPI_COMM_TYPE_SHARED).
std::unique_ptr<Communicator> make_mpi();
// Whether MPI was started in this process and the world has more than one rank (false in a
// build without MPI).
bool mpi_multi_rank();

// distributed_nccl.cpp, built with a CUDA backend: an NCCL group over CUDA tensors of `device`
// (set current for the group's lifetime), one rank per `host` rank. `host` (MPI, or the single
// backend for a 1-rank group) broadcasts the NCCL unique id from rank 0 and serves rank, world
// size, barrier and the scalar all_reduce. DeviceError in a build whose kernels are emulated.
std::unique_ptr<Communicator> make_nccl(Device device, std::unique_ptr<Communicator> host);

}  // namespace attnlab::dist::detail
