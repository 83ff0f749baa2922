// The data-parallel gradient reducer (train/grad_reducer.h) at whatever world size this binary
// runs at: alone (the single backend) and under `mpirun -np 2` (the MPI backend; registered as
// the distributed.mpi_np2 test). Each rank builds rank-dependent gradients whose mean is known,
// and a model's gradient over a batch split across the ranks must equal the whole batch's
// gradient, which every rank can also compute alone.
#include "train/grad_reducer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "autograd/ops.h"
#include "layers/gpt.h"
#include "lib/rng.h"
#include "tests/support/gpt_configs.h"
#include "train/data_parallel.h"
#include "train/distributed.h"

namespace attnlab::test {
namespace {

using attnlab::DataParallel;
using dist::Communicator;
using dist::GradientReducer;
using dist::ReducerOptions;

Communicator& world() {
  static std::unique_ptr<Communicator> comm = dist::make_communicator(Device::cpu());
  return *comm;
}

Variable param(int64_t n, double start) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<float>(start + 0.25 * static_cast<double>(i));
  return Variable(Tensor::from_vector(Shape{n}, v), /*requires_grad=*/true);
}

// loss = (rank + 1) * sum_i p_i . x_i, so rank r's gradient of p_i is (r + 1) x_i and the mean
// over W ranks is (W + 1) / 2 * x_i. `unused` takes no part.
struct Toy {
  std::vector<Variable> params = {param(5, 1), param(3, -1), param(17, 0.5), param(2, 2)};
  std::vector<Variable> inputs = {param(5, 0.5), param(3, 1), param(17, -2), param(2, 3)};
  Variable unused = param(4, 0);

  std::vector<Variable> all() const {
    std::vector<Variable> a = params;
    a.insert(a.begin() + 2, unused);
    return a;
  }
  Variable loss(int rank) const {
    Variable total;
    for (size_t i = 0; i < params.size(); ++i) {
      const Variable term = sum(mul(params[i], inputs[i].detach()));
      total = total.defined() ? add(total, term) : term;
    }
    return mul_scalar(total, static_cast<double>(rank + 1));
  }
};

std::vector<std::vector<float>> grads(const std::vector<Variable>& ps) {
  std::vector<std::vector<float>> g;
  for (const Variable& p : ps) g.push_back(p.grad().defined() ? p.grad().to_vector<float>() : std::vector<float>{});
  return g;
}

TEST(GradientReducer, AveragesEveryBucketOverTheRanks) {
  Communicator& comm = world();
  const double mean_scale = (comm.world_size() + 1) / 2.0;
  for (const bool overlap : {true, false}) {
    Toy toy;
    // 32-byte buckets: the 17-element parameter is a bucket of its own, the small ones share.
    GradientReducer reducer(comm, toy.all(), ReducerOptions{.bucket_bytes = 32, .overlap = overlap});
    EXPECT_GE(reducer.num_buckets(), 3);
    reducer.backward(toy.loss(comm.rank()));
    for (size_t i = 0; i < toy.params.size(); ++i) {
      const std::vector<float> g = toy.params[i].grad().to_vector<float>();
      const std::vector<float> x = toy.inputs[i].data().to_vector<float>();
      for (size_t j = 0; j < g.size(); ++j)
        EXPECT_FLOAT_EQ(g[j], static_cast<float>(mean_scale * x[j])) << "param " << i << " overlap " << overlap;
    }
    EXPECT_FALSE(toy.unused.grad().defined()) << "an unused parameter keeps no gradient";
    if (comm.world_size() > 1) {
      EXPECT_EQ(reducer.last_stats().buckets, reducer.num_buckets());
      EXPECT_EQ(reducer.last_stats().bytes, (5 + 3 + 17 + 2 + 4) * 4);
    }
  }
}

TEST(GradientReducer, OverlapGivesTheSameBitsAsReducingAfterTheBackward) {
  Communicator& comm = world();
  std::vector<std::vector<float>> results[2];
  for (const bool overlap : {true, false}) {
    Toy toy;
    GradientReducer reducer(comm, toy.all(), ReducerOptions{.bucket_bytes = 24, .overlap = overlap});
    reducer.backward(toy.loss(comm.rank()));
    results[overlap ? 1 : 0] = grads(toy.all());
  }
  EXPECT_EQ(results[0], results[1]);
}

TEST(GradientReducer, ShardedBatchGivesTheWholeBatchGradient) {
  // Every rank computes the whole batch's gradient alone, then its own rows' gradient through the
  // reducer: the two agree to f32 round-off (the loss is a mean over equal shards).
  Communicator& comm = world();
  const int64_t W = comm.world_size(), B = 2 * W, T = 12;
  GptConfig config = tiny_variant_gpt("softmax");
  std::vector<int32_t> ids(static_cast<size_t>(B * T)), targets(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = static_cast<int32_t>((i * 7 + 3) % 11);
    targets[i] = static_cast<int32_t>((i * 5 + 1) % 11);
  }
  const Tensor x = Tensor::from_vector(Shape{B, T}, ids), y = Tensor::from_vector(Shape{B, T}, targets);

  Generator g1(3), g2(3);
  Gpt whole(config, g1), sharded(config, g2);
  cross_entropy(whole.forward(Variable(x)), Variable(y)).backward();

  const int64_t rows = B / W, first = comm.rank() * rows;
  GradientReducer reducer(comm, sharded.parameters(), ReducerOptions{.bucket_bytes = 2048, .overlap = true});
  reducer.backward(cross_entropy(sharded.forward(Variable(x.narrow(0, first, rows).contiguous())),
                                 Variable(y.narrow(0, first, rows).contiguous())));

  const auto a = whole.named_parameters(), b = sharded.named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const std::vector<float> ga = a[i].second.grad().to_vector<float>(), gb = b[i].second.grad().to_vector<float>();
    float scale = 1e-6f, diff = 0;
    for (size_t j = 0; j < ga.size(); ++j) {
      scale = std::max(scale, std::abs(ga[j]));
      diff = std::max(diff, std::abs(ga[j] - gb[j]));
    }
    EXPECT_LE(diff, 1e-5f * scale + 1e-7f) << a[i].first << " at world size " << W;
  }
}

TEST(GradientReducer, RefusesParametersOffTheGroupsDevice) {
  Communicator& comm = world();
  if (comm.device().is_cpu()) {
    // A CPU group takes CPU parameters; constructing over them works and an empty list is fine.
    EXPECT_NO_THROW(GradientReducer(comm, {}));
  }
  EXPECT_THROW(GradientReducer(comm, {param(3, 0)}, ReducerOptions{.bucket_bytes = 0}), ConfigError);
}

TEST(DataParallel, StartsFromRankZerosWeightsAndStopsWhenRanksDiverge) {
  const int W = world().world_size();
  DataParallel dp(DataParallelKeys{}, Device::cpu(), 2 * W, "test.ini");
  EXPECT_EQ(dp.world_size(), W);
  EXPECT_EQ(dp.local_batch(), 2);
  // Different initial weights on every rank: start() makes them rank 0's.
  Generator gen(100 + static_cast<uint64_t>(dp.rank()));
  Gpt model(tiny_variant_gpt("softmax"), gen);
  dp.start(model);
  Generator gen0(100);
  const Gpt rank0(tiny_variant_gpt("softmax"), gen0);
  const auto mine = model.named_parameters(), want = rank0.named_parameters();
  for (size_t i = 0; i < mine.size(); ++i)
    EXPECT_EQ(mine[i].second.data().to_vector<float>(), want[i].second.data().to_vector<float>()) << mine[i].first;
  EXPECT_NO_THROW(dp.check_in_sync(model, 1));
  if (W > 1) {
    // One element of one rank's weights moves: every rank stops, naming the step.
    if (dp.rank() == W - 1) model.parameters()[0].mutable_data().data<float>()[0] += 1e-3f;
    try {
      dp.check_in_sync(model, 7);
      ADD_FAILURE() << "ranks with different weights were not caught";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("ranks diverged at step 7"), std::string::npos) << e.what();
    }
  }
}

TEST(DataParallel, ShardsTheGlobalBatchAndWeightsTheLossByTargets) {
  const int W = world().world_size();
  DataParallel dp(DataParallelKeys{}, Device::cpu(), 2 * W, "test.ini");
  const int64_t B = 2 * W, T = 3;
  std::vector<int32_t> ids(static_cast<size_t>(B * T));
  std::vector<float> mask(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = static_cast<int32_t>(i);
    mask[i] = (i % 3 == 0 || i < 4) ? 1.0f : 0.0f;  // uneven targets per row
  }
  TaskBatch global{Tensor::from_vector(Shape{B, T}, ids), Tensor::from_vector(Shape{B, T}, ids),
                   Tensor::from_vector(Shape{B, T}, mask)};
  const TaskBatch mine = dp.shard(global);
  ASSERT_EQ(mine.x.shape(), (Shape{2, T}));
  EXPECT_EQ(mine.x.to_vector<int32_t>()[0], static_cast<int32_t>(dp.rank() * 2 * T));
  // The weights average to one over the ranks, and each is the shard's share of the targets.
  const double w = dp.loss_weight(global);
  EXPECT_NEAR(dp.mean(w), 1.0, 1e-12);
  double mine_targets = 0, all_targets = 0;
  for (float m : mine.mask.to_vector<float>()) mine_targets += m;
  for (float m : mask) all_targets += m;
  EXPECT_NEAR(w, W == 1 ? 1.0 : mine_targets * W / all_targets, 1e-12);
  // A global batch that does not split evenly is refused.
  if (W > 1) {
    EXPECT_THROW(DataParallel(DataParallelKeys{}, Device::cpu(), 2 * W + 1, "test.ini"), ConfigError);
  }
}

}  // namespace
}  // namespace attnlab::test
