// The NCCL backend of train/distributed.h: CUDA tensors all-reduced and broadcast by NCCL
// (lib/cuda/nccl.h) between the ranks' GPUs, while a host group (MPI, or the single backend for
// a group of one) shares the NCCL id and serves rank, world size, barrier and host scalars.
// Built with either CUDA backend; the emulated one refuses it with a DeviceError.
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "lib/cuda/nccl.h"
#include "lib/cuda/runtime.h"
#include "lib/error.h"
#include "train/distributed.h"
#include "train/distributed_backends.h"

namespace attnlab::dist::detail {

namespace {

cuda::nccl::Op to_nccl(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return cuda::nccl::Op::sum;
    case ReduceOp::mean:
      return cuda::nccl::Op::avg;
    case ReduceOp::min:
      return cuda::nccl::Op::min;
    case ReduceOp::max:
      return cuda::nccl::Op::max;
  }
  return cuda::nccl::Op::sum;
}

// An all-reduce queued on the communicator's stream. Holds the tensor until the current stream
// is ordered after the collective, so its memory is not reused by kernels that could run first.
class NcclWork final : public Work {
 public:
  NcclWork(Tensor t, cuda::nccl::Event done) : tensor_(std::move(t)), done_(std::move(done)) {}

  ~NcclWork() override {
    if (waited_) return;
    try {
      wait();
    } catch (...) {  // destructors do not throw; a failing stream reports at its next check
    }
  }

  // Orders the current stream after the collective: later kernels see the result, and the host
  // does not block (a host read copies on the current stream, after it).
  void wait() override {
    if (waited_) return;
    done_.block_current_stream();
    waited_ = true;
  }

  bool test() override { return done_.query(); }

 private:
  Tensor tensor_;
  cuda::nccl::Event done_;
  bool waited_ = false;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Device device, std::unique_ptr<Communicator> host, const cuda::nccl::UniqueId& id)
      : Communicator(host->rank(), host->world_size(), host->local_rank(), host->local_size(), device),
        host_(std::move(host)),
        comm_(id, host_->rank(), host_->world_size(), device.index) {}

  std::string backend() const override { return "nccl"; }

  std::unique_ptr<Work> all_reduce_async(const Tensor& t, ReduceOp op) override {
    check_tensor(t, "all_reduce", /*reduce=*/true);
    Tensor view = t;                  // shares t's storage; the collective writes in place
    comm_.wait_for_current_stream();  // the values to reduce are written
    comm_.all_reduce(view.raw_data(), static_cast<size_t>(t.numel()), t.dtype(), to_nccl(op));
    return std::make_unique<NcclWork>(std::move(view), comm_.record());
  }

  void broadcast(const Tensor& t, int root) override {
    check_tensor(t, "broadcast", /*reduce=*/false);
    AL_CHECK_CONFIG(root >= 0 && root < world_size(), "broadcast: root ", root, " is not a rank of this group of ",
                    world_size(), " (0 to ", world_size() - 1, ")");
    Tensor view = t;
    comm_.wait_for_current_stream();
    comm_.broadcast(view.raw_data(), static_cast<size_t>(t.numel()) * dtype_size(t.dtype()), root);
    comm_.block_current_stream();
  }

  void barrier() override { host_->barrier(); }

  double all_reduce(double value, ReduceOp op) override { return host_->all_reduce(value, op); }

 private:
  std::unique_ptr<Communicator> host_;
  cuda::nccl::Comm comm_;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl(Device device, std::unique_ptr<Communicator> host) {
  AL_ASSERT(host != nullptr, "make_nccl needs a host group");
  AL_CHECK_DEVICE(device.is_cuda(), "dist.backend = nccl all-reduces CUDA tensors; got device ", device);
  // Every rank checks its own GPU first: a rank without one says so instead of hanging its peers.
  cuda::check_device(device);
  AL_CHECK_DEVICE(cuda::nccl::available(), "dist.backend = nccl on rank ", host->rank(), ": ",
                  cuda::nccl::unavailable_reason());
  // Rank 0 makes the group's id; the host group sends it to the others as bytes (i32 words).
  constexpr int64_t words = static_cast<int64_t>(cuda::nccl::kUniqueIdBytes / sizeof(int32_t));
  static_assert(cuda::nccl::kUniqueIdBytes % sizeof(int32_t) == 0, "the NCCL id travels as i32 words");
  Tensor wire = Tensor::zeros(Shape{words}, DType::i32);
  cuda::nccl::UniqueId id{};
  if (host->rank() == 0) {
    id = cuda::nccl::make_unique_id();
    std::memcpy(wire.raw_data(), id.data(), id.size());
  }
  host->broadcast(wire, 0);
  std::memcpy(id.data(), wire.raw_data(), id.size());
  // The rank's GPU stays current for the group's lifetime (the header's contract): kernels the
  // training loop queues land on the device the collectives use.
  cuda::set_device(device.index);
  return std::make_unique<NcclCommunicator>(device, std::move(host), id);
}

}  // namespace attnlab::dist::detail
