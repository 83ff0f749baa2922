// Data-parallel gradient averaging: after a backward, every rank's parameters hold the mean of
// the ranks' gradients, so clipping and the optimizer step see the same numbers on every rank.
//
// Gradients are packed into buckets (in reverse parameter order, about the order a backward
// finishes them, up to `bucket_bytes` each) and every bucket is all-reduced as one flat buffer.
// With `overlap`, a bucket's all-reduce starts as soon as its last gradient is ready (the engine's
// leaf hook, autograd/grad_hooks.h) while the backward computes the layers below; buckets start
// strictly in bucket order, so every rank issues the same collectives in the same order. Without
// it, all buckets are reduced after the backward. Either way the result is the sum over ranks
// scaled by 1/world_size: bit for bit the same with and without overlap.
//
// A parameter that got no gradient in a step (an unused branch) contributes zeros to its bucket
// and keeps no gradient. Ranks run the same model and graph, so they agree on which.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "autograd/variable.h"
#include "train/distributed.h"

namespace attnlab::dist {

struct ReducerOptions {
  int64_t bucket_bytes = int64_t{4} << 20;  // 4 MiB (train.dist_bucket_mb)
  bool overlap = true;                      // train.dist_overlap
};

// What the last backward spent on communication (for the throughput study).
struct ReducerStats {
  int64_t buckets = 0, bytes = 0;
  double wait_seconds = 0;  // time blocked in finishing the reduction after the backward returned
};

class GradientReducer {
 public:
  // `params`: the model's parameters (all on comm.device()). Keeps a reference to `comm`.
  GradientReducer(Communicator& comm, std::vector<Variable> params, ReducerOptions options = {});
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // loss.backward(), then the parameters' gradients averaged over the ranks. On one rank, just
  // the backward.
  void backward(const Variable& loss);

  const ReducerStats& last_stats() const { return stats_; }
  int64_t num_buckets() const;

 private:
  struct State;
  Communicator& comm_;
  std::unique_ptr<State> state_;
  bool overlap_ = true;
  ReducerStats stats_;
};

}  // namespace attnlab::dist
