// The backend-independent half of train/distributed.h: the launch environment, the one-process
// group, the choice of backend, and the helpers every backend shares.
#include "train/distributed.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string_view>

#include "lib/error.h"
#include "train/distributed_backends.h"

namespace attnlab::dist {

namespace {

// An integer environment variable, or `fallback` when it is unset or not a number.
int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  return end && *end == '\0' ? static_cast<int>(x) : fallback;
}

bool env_set(const char* name) {
  const char* v = std::getenv(name);
  return v && *v;
}

constexpr bool kHaveMpi =
#if defined(ATTNLAB_WITH_MPI) && ATTNLAB_WITH_MPI
    true;
#else
    false;
#endif

constexpr bool kHaveCuda =
#if defined(ATTNLAB_WITH_CUDA) && ATTNLAB_WITH_CUDA
    true;
#else
    false;
#endif

// Every collective is the identity on a group of one; async ones are complete at once.
class DoneWork final : public Work {
 public:
  void wait() override {}
  bool test() override { return true; }
};

class SingleCommunicator final : public Communicator {
 public:
  explicit SingleCommunicator(Device device) : Communicator(0, 1, 0, 1, device) {}
  std::string backend() const override { return "single"; }
  std::unique_ptr<Work> all_reduce_async(const Tensor& t, ReduceOp) override {
    check_tensor(t, "all_reduce", /*reduce=*/true);
    return std::make_unique<DoneWork>();
  }
  void broadcast(const Tensor& t, int root) override {
    check_tensor(t, "broadcast", /*reduce=*/false);
    AL_CHECK_CONFIG(root == 0, "broadcast: root ", root, " is not a rank of a 1-process group");
  }
  void barrier() override {}
  double all_reduce(double value, ReduceOp) override { return value; }
};

}  // namespace

LaunchInfo launch_info() {
  LaunchInfo li;
  if (env_set("OMPI_COMM_WORLD_SIZE")) {  // Open MPI's mpirun
    li.launched = true;
    li.rank = env_int("OMPI_COMM_WORLD_RANK", 0);
    li.world_size = env_int("OMPI_COMM_WORLD_SIZE", 1);
    li.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0);
    li.local_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", 1);
  } else if (env_set("PMI_SIZE") || env_set("PMIX_RANK")) {  // MPICH / Slurm PMI, PMIx
    li.launched = true;
    li.rank = env_int("PMI_RANK", env_int("PMIX_RANK", 0));
    li.world_size = env_int("PMI_SIZE", env_int("SLURM_NTASKS", 1));
    li.local_rank = env_int("MPI_LOCALRANKID", env_int("SLURM_LOCALID", 0));
    li.local_size = env_int("MPI_LOCALNRANKS", env_int("SLURM_NTASKS_PER_NODE", 1));
  }
  return li;
}

void Communicator::check_tensor(const Tensor& t, const char* what, bool reduce) const {
  AL_CHECK_SHAPE(t.defined() && t.is_contiguous(), what, ": expected a contiguous tensor; got ",
                 t.defined() ? t.str() : std::string("an undefined tensor"));
  AL_CHECK_SHAPE(!reduce || t.dtype() == DType::f32 || t.dtype() == DType::f64, what,
                 ": expected an f32 or f64 tensor; got ", t.str());
  if (t.device() != device_)
    attnlab::detail::throw_error<DeviceError>(what, ": the ", backend(), " group of rank ", rank_, " takes tensors on ",
                                              device_.str(), "; got ", t.str(), " on ", t.device().str());
}

std::vector<std::string> built_backends() {
  std::vector<std::string> b = {"single"};
  if (kHaveMpi) b.push_back("mpi");
  if (kHaveCuda) b.push_back("nccl");
  return b;
}

namespace detail {

std::unique_ptr<Communicator> make_single(Device device) { return std::make_unique<SingleCommunicator>(device); }

#if !(defined(ATTNLAB_WITH_MPI) && ATTNLAB_WITH_MPI)
bool mpi_multi_rank() { return false; }
#endif

}  // namespace detail

void check_backend_name(const std::string& requested) {
  AL_CHECK_CONFIG(requested == "auto" || requested == "single" || requested == "mpi" || requested == "nccl",
                  "dist.backend must be auto, single, mpi or nccl; got '", requested, "'");
}

std::unique_ptr<Communicator> make_communicator(Device device, const std::string& requested) {
  const LaunchInfo li = launch_info();
  const bool several = li.several();
  check_backend_name(requested);
  std::string backend = requested;
  if (backend == "auto") backend = !several ? "single" : device.is_cuda() ? "nccl" : "mpi";

  if (backend == "single") {
    AL_CHECK_CONFIG(!several, "dist.backend = single, but this process is rank ", li.rank, " of ", li.world_size,
                    " started by an MPI launcher: the ranks would train ", li.world_size,
                    " independent copies into one run directory (use dist.backend = auto, or start one process)");
    return detail::make_single(device);
  }
  if (backend == "mpi") {
    AL_CHECK_CONFIG(kHaveMpi,
                    "dist.backend = mpi, but this build of attnlab has no MPI backend (configure with "
                    "libopenmpi-dev installed; scripts/install-deps.sh installs it)");
    AL_CHECK_CONFIG(device.is_cpu(), "dist.backend = mpi all-reduces CPU tensors; run.device = ", device.str(),
                    " needs dist.backend = nccl (or auto)");
#if defined(ATTNLAB_WITH_MPI) && ATTNLAB_WITH_MPI
    return detail::make_mpi();
#endif
  }
  // nccl
  AL_CHECK_CONFIG(device.is_cuda(), "dist.backend = nccl all-reduces CUDA tensors; run.device = ", device.str(),
                  " needs dist.backend = mpi (or auto)");
  AL_CHECK_CONFIG(kHaveCuda, "dist.backend = nccl, but this build of attnlab has no CUDA backend");
  AL_CHECK_CONFIG(!several || kHaveMpi, "dist.backend = nccl with ", li.world_size,
                  " ranks needs MPI to share the NCCL id, and this build has none (install libopenmpi-dev)");
#if defined(ATTNLAB_WITH_CUDA) && ATTNLAB_WITH_CUDA
  std::unique_ptr<Communicator> host;
#if defined(ATTNLAB_WITH_MPI) && ATTNLAB_WITH_MPI
  if (several) host = detail::make_mpi();
#endif
  if (!host) host = detail::make_single(Device::cpu());
  // One GPU per rank of a node: the run's device index plus the local rank.
  const Device rank_device = Device::cuda(device.index + host->local_rank());
  return detail::make_nccl(rank_device, std::move(host));
#else
  return nullptr;  // unreachable: kHaveCuda is checked above
#endif
}

uint64_t parameter_checksum(const std::vector<Tensor>& tensors) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a offset basis
  for (const Tensor& t : tensors) {
    const Tensor host = t.to(Device::cpu()).contiguous();
    const auto* p = static_cast<const unsigned char*>(host.raw_data());
    const size_t n = static_cast<size_t>(host.numel()) * dtype_size(host.dtype());
    for (size_t i = 0; i < n; ++i) {
      h ^= p[i];
      h *= 1099511628211ull;  // FNV prime
    }
  }
  return h;
}

bool same_on_all_ranks(Communicator& comm, uint64_t value) {
  const double hi = static_cast<double>(value >> 32), lo = static_cast<double>(value & 0xffffffffull);
  return comm.all_reduce(hi, ReduceOp::min) == comm.all_reduce(hi, ReduceOp::max) &&
         comm.all_reduce(lo, ReduceOp::min) == comm.all_reduce(lo, ReduceOp::max);
}

void broadcast_tensors(Communicator& comm, const std::vector<Tensor>& tensors, int root) {
  for (const Tensor& t : tensors) comm.broadcast(t, root);
}

void exit_job_on_error(int code) {
  if (!detail::mpi_multi_rank()) return;
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  std::_Exit(code);
}

}  // namespace attnlab::dist
