// `attnlab train` on several ranks (`mpirun -np N attnlab train RECIPE.ini`): what the training
// loop does differently when it is one of N data-parallel processes (train/distributed.h).
//
//   - the recipe's train.batch is the GLOBAL batch: every rank draws the same global batch (the
//     same sampler or task stream as one process) and trains on its own contiguous block of
//     batch / N rows, so N ranks see exactly the rows one process would;
//   - each rank's loss is weighted by its share of the batch's targets (a masked task loss is a
//     mean over targets, which a shard may hold more or fewer of), so the mean over ranks is the
//     one-process loss, and its gradients, averaged over the ranks by the GradientReducer before
//     clipping and the step, are the one-process gradients up to f32 round-off;
//   - parameters are broadcast from rank 0 at the start (ranks cannot start apart), and at every
//     eval step a checksum of the parameters is compared across ranks: a difference stops the run;
//   - only rank 0 prints, writes metrics, checkpoints, samples and result.json; every rank reads
//     the checkpoint on --resume (the run directory must be visible to all ranks, as on one node
//     or a shared filesystem).
//
// On one process (no launcher) all of this is a no-op and the loop is the one-process loop.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <memory>
#include <string>

#include "data/batch_sampler.h"
#include "data/synthetic/task.h"
#include "layers/gpt.h"
#include "lib/rng.h"
#include "train/distributed.h"
#include "train/grad_reducer.h"
#include "train/recipe.h"

namespace attnlab {

// The recipe's [dist] keys.
struct DataParallelKeys {
  std::string backend = "auto";  // dist.backend: auto | single | mpi | nccl (train/distributed.h)
  double bucket_mb = 4;          // dist.bucket_mb: gradient bucket size for the all-reduce
  bool overlap = true;           // dist.overlap: all-reduce buckets while the backward runs
};
// Reads them; ConfigError for a bucket size <= 0 or an unknown backend name.
DataParallelKeys read_data_parallel_keys(Recipe& r);

class DataParallel {
 public:
  // Starts the backend for `device` (a CUDA run under a launcher gets cuda:<local rank>). With
  // more than one rank: ConfigError when `global_batch` does not split evenly; OpenMP threads per
  // rank default to the cores over the ranks of the node when OMP_NUM_THREADS is not set.
  DataParallel(const DataParallelKeys& keys, Device device, int64_t global_batch, const std::string& recipe_src);
  ~DataParallel();

  dist::Communicator& comm() { return *comm_; }
  int rank() const { return comm_->rank(); }
  int world_size() const { return comm_->world_size(); }
  bool is_root() const { return comm_->is_root(); }
  bool several() const { return comm_->world_size() > 1; }
  Device device() const { return comm_->device(); }
  int64_t local_batch() const { return local_batch_; }

  // Rank 0's stream is `out`; the other ranks print nothing.
  std::ostream& log(std::ostream& out);
  // "2 ranks (mpi, 1 thread each), 2 rows of the global batch of 4 per rank".
  std::string describe(int threads) const;

  // This rank's rows of a global batch (contiguous copies).
  Batch shard(const Batch& global) const;
  TaskBatch shard(const TaskBatch& global) const;
  // The factor a rank's mean task loss is scaled by so that the mean over ranks is the global
  // batch's mean: (targets in this shard) * world_size / (targets in the global batch); 1 alone.
  double loss_weight(const TaskBatch& global) const;

  // Rank 0's parameter values on every rank, and the reducer over them (call once, before the
  // optimizer is built; the optimizer's own state is the same on every rank by construction).
  void start(const Gpt& model);
  // loss.backward() and the gradients averaged over the ranks.
  void backward(const Variable& loss);
  // The mean of a per-rank number over the ranks (the logged loss).
  double mean(double value);
  // Error "ranks diverged at step S: ..." on every rank when the parameters differ anywhere.
  void check_in_sync(const Gpt& model, int64_t step);
  // Rank `rank`'s dropout generator from rank 0's (a checkpoint keeps rank 0's): the same offset,
  // a seed of its own, so ranks draw different masks that a resumed run redraws exactly.
  Generator rank_generator(const Generator& rank0) const;
  // Milliseconds the last backward waited for all-reduces after its own compute finished.
  double last_wait_ms() const;

 private:
  std::unique_ptr<dist::Communicator> comm_;
  std::unique_ptr<dist::GradientReducer> reducer_;
  dist::ReducerOptions reducer_options_;
  int64_t global_batch_ = 0, local_batch_ = 0;
};

}  // namespace attnlab
