// The MPI backend of train/distributed.h: MPI_COMM_WORLD over CPU tensors (built with
// ATTNLAB_WITH_MPI). Every MPI call is checked: the group's communicator returns errors instead
// of aborting (MPI_ERRORS_RETURN), and a failure throws attnlab::Error naming the call and
// MPI's own description of the error.
// The C interface only: MPI's deprecated C++ bindings would only add warnings.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "lib/error.h"
#include "train/distributed.h"
#include "train/distributed_backends.h"

namespace attnlab::dist::detail {

namespace {

void check_mpi(int code, const char* what) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) len = 0;
  attnlab::detail::throw_error<Error>(what, " failed: ", std::string(text, static_cast<size_t>(len)), " (MPI error ",
                                      code, ")");
}

#define AL_MPI_CHECK(call) check_mpi((call), #call)

// MPI is finalised at normal process exit (atexit), after main's communicators are gone. The
// error path of a job of several ranks leaves through exit_job_on_error (std::_Exit), which
// runs no atexit handler: MPI_Finalize would wait there for peers blocked in a collective.
void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

// Starts MPI once per process, on first use. FUNNELED: only the thread that started MPI calls
// it (the training loop's thread); OpenMP worker threads never do.
void ensure_started() {
  int initialized = 0;
  AL_MPI_CHECK(MPI_Initialized(&initialized));
  if (initialized) return;  // started here earlier, or by the embedding program
  int finalized = 0;
  AL_MPI_CHECK(MPI_Finalized(&finalized));
  AL_CHECK(!finalized, "dist.backend = mpi: MPI was already finalised in this process and cannot start again");
  int provided = MPI_THREAD_SINGLE;
  AL_MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided));
  std::atexit(finalize_at_exit);
  AL_CHECK(provided >= MPI_THREAD_FUNNELED, "MPI_Init_thread: this MPI library gives thread level ", provided,
           "; attnlab needs at least MPI_THREAD_FUNNELED (", MPI_THREAD_FUNNELED, ")");
}

bool mpi_live() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

MPI_Op to_mpi(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
    case ReduceOp::mean:  // a sum, scaled by 1 / world size once it is complete
      return MPI_SUM;
    case ReduceOp::min:
      return MPI_MIN;
    case ReduceOp::max:
      return MPI_MAX;
  }
  return MPI_SUM;
}

// MPI counts are ints: larger buffers go as several collectives of at most this many elements.
constexpr int64_t kMaxCount = INT_MAX;

// One MPI_Iallreduce in place (several for buffers of more than INT_MAX elements). Holds the
// tensor, so its storage outlives the collective even when the caller drops it.
class MpiWork final : public Work {
 public:
  MpiWork(const Tensor& t, ReduceOp op, int world_size, MPI_Comm comm) : tensor_(t), op_(op), world_size_(world_size) {
    const MPI_Datatype type = t.dtype() == DType::f64 ? MPI_DOUBLE : MPI_FLOAT;
    const size_t elem = dtype_size(t.dtype());
    auto* base = static_cast<char*>(tensor_.raw_data());
    for (int64_t first = 0; first < t.numel(); first += kMaxCount) {
      const int64_t n = std::min<int64_t>(kMaxCount, t.numel() - first);
      MPI_Request r = MPI_REQUEST_NULL;
      AL_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, base + static_cast<size_t>(first) * elem, static_cast<int>(n), type,
                                  to_mpi(op), comm, &r));
      requests_.push_back(r);
    }
    if (requests_.empty()) finish();  // an empty tensor: nothing to reduce
  }

  // A collective must complete before its buffer goes: dropped without wait(), it waits here.
  ~MpiWork() override {
    if (done_ || !mpi_live()) return;
    try {
      wait();
    } catch (...) {  // destructors do not throw; the error reached whoever waited first
    }
  }

  void wait() override {
    if (done_) return;
    AL_MPI_CHECK(MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE));
    finish();
  }

  bool test() override {
    if (done_) return true;
    int flag = 0;
    AL_MPI_CHECK(MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &flag, MPI_STATUSES_IGNORE));
    if (flag) finish();
    return done_;
  }

 private:
  // Runs once, when completion is first seen (test() or wait()): mean divides the sum here.
  void finish() {
    done_ = true;
    if (op_ != ReduceOp::mean || world_size_ == 1) return;
    const int64_t n = tensor_.numel();
    if (tensor_.dtype() == DType::f64) {
      auto* p = static_cast<double*>(tensor_.raw_data());
      const double s = 1.0 / world_size_;
      for (int64_t i = 0; i < n; ++i) p[i] *= s;
    } else {
      auto* p = static_cast<float*>(tensor_.raw_data());
      const float s = 1.0f / static_cast<float>(world_size_);
      for (int64_t i = 0; i < n; ++i) p[i] *= s;
    }
  }

  Tensor tensor_;
  ReduceOp op_;
  int world_size_;
  std::vector<MPI_Request> requests_;
  bool done_ = false;
};

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, int rank, int world_size, int local_rank, int local_size)
      : Communicator(rank, world_size, local_rank, local_size, Device::cpu()), comm_(comm) {}

  // The group's own duplicate of MPI_COMM_WORLD goes with it (unless MPI already finished).
  ~MpiCommunicator() override {
    if (mpi_live()) MPI_Comm_free(&comm_);
  }

  std::string backend() const override { return "mpi"; }

  std::unique_ptr<Work> all_reduce_async(const Tensor& t, ReduceOp op) override {
    check_tensor(t, "all_reduce", /*reduce=*/true);
    return std::make_unique<MpiWork>(t, op, world_size(), comm_);
  }

  void broadcast(const Tensor& t, int root) override {
    check_tensor(t, "broadcast", /*reduce=*/false);
    AL_CHECK_CONFIG(root >= 0 && root < world_size(), "broadcast: root ", root, " is not a rank of this group of ",
                    world_size(), " (0 to ", world_size() - 1, ")");
    // Bytes, so any dtype goes; in pieces of at most INT_MAX bytes (MPI counts are ints).
    Tensor view = t;  // shares t's storage; the collective writes in place
    auto* p = static_cast<char*>(view.raw_data());
    const int64_t bytes = t.numel() * static_cast<int64_t>(dtype_size(t.dtype()));
    for (int64_t first = 0; first < bytes; first += kMaxCount) {
      const int64_t n = std::min<int64_t>(kMaxCount, bytes - first);
      AL_MPI_CHECK(MPI_Bcast(p + first, static_cast<int>(n), MPI_BYTE, root, comm_));
    }
  }

  void barrier() override { AL_MPI_CHECK(MPI_Barrier(comm_)); }

  double all_reduce(double value, ReduceOp op) override {
    double out = 0;
    AL_MPI_CHECK(MPI_Allreduce(&value, &out, 1, MPI_DOUBLE, to_mpi(op), comm_));
    return op == ReduceOp::mean ? out / world_size() : out;
  }

 private:
  MPI_Comm comm_;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi() {
  ensure_started();
  // A duplicate of the world for attnlab alone, whose errors come back as codes to check
  // (MPI_COMM_WORLD's default handler aborts the job without saying which call failed).
  MPI_Comm comm = MPI_COMM_NULL;
  AL_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &comm));
  auto free_on_error = [&comm] {
    if (comm != MPI_COMM_NULL) MPI_Comm_free(&comm);
  };
  try {
    AL_MPI_CHECK(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN));
    int rank = 0, size = 1, local_rank = 0, local_size = 1;
    AL_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    AL_MPI_CHECK(MPI_Comm_size(comm, &size));
    // The ranks that share this node's memory: local rank picks the GPU of an NCCL rank.
    MPI_Comm node = MPI_COMM_NULL;
    AL_MPI_CHECK(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node));
    struct FreeNode {
      MPI_Comm* c;
      ~FreeNode() { MPI_Comm_free(c); }
    } free_node{&node};
    AL_MPI_CHECK(MPI_Comm_rank(node, &local_rank));
    AL_MPI_CHECK(MPI_Comm_size(node, &local_size));
    auto c = std::make_unique<MpiCommunicator>(comm, rank, size, local_rank, local_size);
    comm = MPI_COMM_NULL;  // owned by the communicator now
    return c;
  } catch (...) {
    free_on_error();
    throw;
  }
}

bool mpi_multi_rank() {
  if (!mpi_live()) return false;
  int size = 1;
  if (MPI_Comm_size(MPI_COMM_WORLD, &size) != MPI_SUCCESS) return false;
  return size > 1;
}

}  // namespace attnlab::dist::detail
