// Bucketed gradient averaging over the ranks (train/grad_reducer.h).
//
// Per step: every bucket counts down its parameters as the engine reports their gradients ready;
// a bucket whose count reaches zero is launched when all buckets before it have been (so every rank
// issues the same all-reduces in the same order whatever the order its hooks fire in). Launching
// packs the gradients into the bucket's flat buffer (allocated once) and starts an asynchronous
// mean over the ranks; after the backward, the buckets not yet launched (all of them without
// overlap) are launched in order, every bucket is waited for and unpacked into the gradients.
#include "train/grad_reducer.h"

#include <chrono>
#include <unordered_map>
#include <utility>

#include "autograd/grad_hooks.h"
#include "lib/error.h"

namespace attnlab::dist {

namespace {

struct Bucket {
  std::vector<size_t> members;   // indices into the parameter list
  std::vector<int64_t> offsets;  // each member's first element in `flat`
  int64_t numel = 0;             // the members' total
  DType dtype = DType::f32;
  Tensor flat;                 // [numel] on the group's device, made at the first launch
  int64_t pending = 0;         // members whose gradient is not ready yet this step
  std::unique_ptr<Work> work;  // the all-reduce in flight, once launched
};

}  // namespace

struct GradientReducer::State {
  std::vector<Variable> params;
  std::unordered_map<const void*, size_t> bucket_of;  // parameter identity -> bucket
  std::vector<Bucket> buckets;
  size_t next_launch = 0;  // buckets [0, next_launch) are launched this step

  void launch(Communicator& comm, Bucket& b) {
    // Made on first use: a run of one rank never launches, and holds no second copy of the model.
    if (!b.flat.defined()) b.flat = Tensor::zeros(Shape{b.numel}, b.dtype, comm.device());
    for (size_t k = 0; k < b.members.size(); ++k) {
      const Variable& p = params[b.members[k]];
      Tensor slot = b.flat.narrow(0, b.offsets[k], p.numel());
      if (p.grad().defined())
        slot.copy_(p.grad().reshape(Shape{p.numel()}));
      else
        slot.zero_();  // an unused parameter adds nothing on this rank
    }
    b.work = comm.all_reduce_async(b.flat, ReduceOp::mean);
  }

  // Launches every bucket that is ready and whose predecessors are launched.
  void launch_ready(Communicator& comm) {
    while (next_launch < buckets.size() && buckets[next_launch].pending == 0) launch(comm, buckets[next_launch++]);
  }
};

GradientReducer::GradientReducer(Communicator& comm, std::vector<Variable> params, ReducerOptions options)
    : comm_(comm), state_(std::make_unique<State>()) {
  AL_CHECK_CONFIG(options.bucket_bytes > 0, "dist.bucket_mb must be > 0; got ", options.bucket_bytes, " bytes");
  overlap_ = options.overlap;
  State& s = *state_;
  s.params = std::move(params);
  // Reverse parameter order: the head and the top layers finish their gradients first.
  Bucket open;
  auto close = [&] {
    if (open.members.empty()) return;
    for (size_t m : open.members) s.bucket_of[s.params[m].id()] = s.buckets.size();
    s.buckets.push_back(std::move(open));
    open = Bucket{};
  };
  for (size_t i = s.params.size(); i-- > 0;) {
    const Variable& p = s.params[i];
    AL_CHECK(p.device() == comm_.device(), "GradientReducer: parameter ", i, " ", p.str(), " is on ", p.device().str(),
             "; the ", comm_.backend(), " group reduces tensors on ", comm_.device().str());
    const int64_t elem = static_cast<int64_t>(dtype_size(p.dtype()));
    if (!open.members.empty() && (p.dtype() != open.dtype || (open.numel + p.numel()) * elem > options.bucket_bytes))
      close();
    open.dtype = p.dtype();
    open.members.push_back(i);
    open.offsets.push_back(open.numel);
    open.numel += p.numel();
  }
  close();
}

GradientReducer::~GradientReducer() = default;

int64_t GradientReducer::num_buckets() const { return static_cast<int64_t>(state_->buckets.size()); }

void GradientReducer::backward(const Variable& loss) {
  stats_ = ReducerStats{};
  if (comm_.world_size() == 1) {
    loss.backward();
    return;
  }
  State& s = *state_;
  for (Bucket& b : s.buckets) {
    b.pending = static_cast<int64_t>(b.members.size());
    b.work.reset();
  }
  s.next_launch = 0;
  if (overlap_) {
    LeafGradHookScope scope([&](const Variable& leaf) {
      const auto it = s.bucket_of.find(leaf.id());
      if (it == s.bucket_of.end()) return;  // a leaf that is not a parameter (an input)
      --s.buckets[it->second].pending;
      s.launch_ready(comm_);
      // MPI progresses non-blocking collectives only inside MPI calls: give the ones in flight a turn.
      for (size_t b = 0; b < s.next_launch; ++b) s.buckets[b].work->test();
    });
    loss.backward();
  } else {
    loss.backward();
  }
  const auto t0 = std::chrono::steady_clock::now();
  // Whatever is left (buckets with an unused parameter, or everything without overlap), in order.
  while (s.next_launch < s.buckets.size()) s.launch(comm_, s.buckets[s.next_launch++]);
  for (Bucket& b : s.buckets) {
    b.work->wait();
    for (size_t k = 0; k < b.members.size(); ++k) {
      const Variable& p = s.params[b.members[k]];
      if (!p.grad().defined()) continue;
      Tensor g = p.grad();
      g.copy_(b.flat.narrow(0, b.offsets[k], p.numel()).view(g.shape()));
    }
    stats_.bytes += b.flat.numel() * static_cast<int64_t>(dtype_size(b.flat.dtype()));
  }
  stats_.buckets = static_cast<int64_t>(s.buckets.size());
  stats_.wait_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace attnlab::dist
