// train/distributed.h on whatever group this process belongs to: run plainly it is the single
// backend (world 1); under `mpirun -np N` (the distributed.mpi_np2 test) the MPI backend. Every
// test holds at any world size and checks the reduced values themselves. Every rank runs the
// same tests in the same order, so the collectives line up; a check that can fail on one rank
// only is an EXPECT (never an early return before a collective), so a failure cannot hang.
#include "train/distributed.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "lib/error.h"
#include "lib/tensor.h"
#include "tests/support/error_text.h"

namespace attnlab::dist {
namespace {

using test::contains;
using test::error_of;

// One group for the whole binary (made on first use, by every rank at the same point).
Communicator& group() {
  static std::unique_ptr<Communicator> comm = make_communicator(Device::cpu());
  return *comm;
}

int W() { return group().world_size(); }
int R() { return group().rank(); }

TEST(Distributed, GroupMatchesTheLaunch) {
  Communicator& c = group();
  const LaunchInfo li = launch_info();
  EXPECT_GE(c.rank(), 0);
  EXPECT_LT(c.rank(), c.world_size());
  EXPECT_GE(c.local_rank(), 0);
  EXPECT_LT(c.local_rank(), c.local_size());
  EXPECT_LE(c.local_size(), c.world_size());
  EXPECT_EQ(c.is_root(), c.rank() == 0);
  EXPECT_EQ(c.device(), Device::cpu());
  if (li.launched) {
    EXPECT_EQ(c.rank(), li.rank);
    EXPECT_EQ(c.world_size(), li.world_size);
    EXPECT_EQ(c.local_rank(), li.local_rank);
    EXPECT_EQ(c.local_size(), li.local_size);
  } else {
    EXPECT_EQ(c.world_size(), 1);
  }
  EXPECT_EQ(c.backend(), c.world_size() > 1 ? "mpi" : "single");
  const std::vector<std::string> built = built_backends();
  ASSERT_FALSE(built.empty());
  EXPECT_EQ(built.front(), "single");
#if ATTNLAB_WITH_MPI
  EXPECT_NE(std::find(built.begin(), built.end(), "mpi"), built.end());
#else
  EXPECT_EQ(std::find(built.begin(), built.end(), "mpi"), built.end());
#endif
}

TEST(Distributed, AllReduceSumOfRanks) {
  // (rank + 1) summed over the ranks: W (W + 1) / 2 in every element, on every rank.
  Tensor t = Tensor::full(Shape{3, 5}, R() + 1.0);
  group().all_reduce(t, ReduceOp::sum);
  const float want = static_cast<float>(W() * (W() + 1) / 2);
  for (float v : t.to_vector<float>()) EXPECT_EQ(v, want);
}

TEST(Distributed, AllReduceMeanMinMax) {
  Tensor mean = Tensor::full(Shape{7}, R() + 1.0);
  group().all_reduce(mean, ReduceOp::mean);
  for (float v : mean.to_vector<float>()) EXPECT_FLOAT_EQ(v, (W() + 1) / 2.0f);

  // Each element i holds (rank + 1) * (i - 2): negative elements make min and max differ in sign.
  std::vector<float> mine;
  for (int i = 0; i < 5; ++i) mine.push_back(static_cast<float>((R() + 1) * (i - 2)));
  Tensor lo = Tensor::from_vector<float>(Shape{5}, mine), hi = Tensor::from_vector<float>(Shape{5}, mine);
  group().all_reduce(lo, ReduceOp::min);
  group().all_reduce(hi, ReduceOp::max);
  const std::vector<float> l = lo.to_vector<float>(), h = hi.to_vector<float>();
  for (int i = 0; i < 5; ++i) {
    const float most = static_cast<float>(W() * (i - 2)), least = static_cast<float>(i - 2);
    EXPECT_EQ(l[i], i < 2 ? most : least) << i;
    EXPECT_EQ(h[i], i < 2 ? least : most) << i;
  }
}

TEST(Distributed, AllReduceF64KeepsDoublePrecision) {
  // 1 + (rank + 1) 2^-40: the low part would vanish in f32, so this checks f64 end to end.
  const double eps = std::ldexp(1.0, -40);
  Tensor t = Tensor::full(Shape{4}, 1.0 + (R() + 1) * eps, DType::f64);
  group().all_reduce(t, ReduceOp::sum);
  const double want = W() + eps * (W() * (W() + 1) / 2);
  for (double v : t.to_vector<double>()) EXPECT_EQ(v, want);

  Tensor m = Tensor::full(Shape{2}, (R() + 1) * 3.0, DType::f64);
  group().all_reduce(m, ReduceOp::mean);
  for (double v : m.to_vector<double>()) EXPECT_DOUBLE_EQ(v, 3.0 * (W() + 1) / 2.0);
}

TEST(Distributed, LargeAndEmptyTensors) {
  Tensor big = Tensor::full(Shape{1 << 20}, R() + 1.0);
  group().all_reduce(big, ReduceOp::sum);
  const std::vector<float> v = big.to_vector<float>();
  const float want = static_cast<float>(W() * (W() + 1) / 2);
  EXPECT_EQ(v.front(), want);
  EXPECT_EQ(v[v.size() / 2], want);
  EXPECT_EQ(v.back(), want);

  Tensor empty = Tensor::zeros(Shape{0});
  EXPECT_NO_THROW(group().all_reduce(empty, ReduceOp::mean));
  EXPECT_TRUE(group().all_reduce_async(empty, ReduceOp::sum)->test());
}

TEST(Distributed, AsyncAllReduceWithTestAndWait) {
  Tensor a = Tensor::full(Shape{1000}, R() + 1.0);
  Tensor b = Tensor::full(Shape{10}, 2.0 * (R() + 1), DType::f64);
  std::unique_ptr<Work> wa = group().all_reduce_async(a, ReduceOp::sum);
  std::unique_ptr<Work> wb = group().all_reduce_async(b, ReduceOp::mean);
  // test() drives the engine and turns true once the collective is done (it never blocks).
  while (!wa->test()) {
  }
  EXPECT_TRUE(wa->test());  // stays true
  wa->wait();               // a no-op once complete
  wb->wait();
  EXPECT_TRUE(wb->test());
  for (float v : a.to_vector<float>()) EXPECT_EQ(v, static_cast<float>(W() * (W() + 1) / 2));
  // Mean is applied exactly once, however completion was observed.
  for (double v : b.to_vector<double>()) EXPECT_DOUBLE_EQ(v, (W() + 1.0));

  // Work dropped without wait() completes in its destructor (the buffer stays valid).
  Tensor c = Tensor::full(Shape{8}, 1.0);
  { auto w = group().all_reduce_async(c, ReduceOp::sum); }
  for (float v : c.to_vector<float>()) EXPECT_EQ(v, static_cast<float>(W()));
}

TEST(Distributed, BroadcastFromFirstAndLastRank) {
  for (int root : {0, W() - 1}) {
    std::vector<float> mine;
    for (int i = 0; i < 6; ++i) mine.push_back(static_cast<float>(100 * R() + i));
    Tensor t = Tensor::from_vector<float>(Shape{2, 3}, mine);
    group().broadcast(t, root);
    std::vector<float> want;
    for (int i = 0; i < 6; ++i) want.push_back(static_cast<float>(100 * root + i));
    EXPECT_EQ(t.to_vector<float>(), want) << "root " << root;
  }
  // Any dtype goes: bytes.
  Tensor ids = Tensor::from_vector<int32_t>(Shape{3}, {R(), R() * 7, -R()});
  group().broadcast(ids, W() - 1);
  EXPECT_EQ(ids.to_vector<int32_t>(), (std::vector<int32_t>{W() - 1, (W() - 1) * 7, -(W() - 1)}));
  Tensor half = Tensor::full(Shape{4}, R() + 0.5).to(DType::bf16);
  group().broadcast(half, 0);
  for (float v : half.to(DType::f32).to_vector<float>()) EXPECT_EQ(v, 0.5f);

  // Every rank checks the root before any transfer, so all of them refuse it together.
  const std::string e = error_of([&] { group().broadcast(ids, W()); });
  EXPECT_TRUE(contains(e, "root " + std::to_string(W()))) << e;
  EXPECT_THROW(group().broadcast(ids, -1), ConfigError);
}

TEST(Distributed, BarrierAndHostScalars) {
  group().barrier();
  group().barrier();
  Communicator& c = group();
  EXPECT_EQ(c.all_reduce(R() + 1.0, ReduceOp::sum), W() * (W() + 1) / 2.0);
  EXPECT_DOUBLE_EQ(c.all_reduce(R() + 1.0, ReduceOp::mean), (W() + 1) / 2.0);
  EXPECT_EQ(c.all_reduce(R() + 1.0, ReduceOp::min), 1.0);
  EXPECT_EQ(c.all_reduce(R() + 1.0, ReduceOp::max), static_cast<double>(W()));
  // Integers below 2^53 are exact.
  const double big = std::ldexp(1.0, 52);
  EXPECT_EQ(c.all_reduce(R() == 0 ? big : 0.0, ReduceOp::sum), big);
}

TEST(Distributed, SameOnAllRanks) {
  EXPECT_TRUE(same_on_all_ranks(group(), 0));
  EXPECT_TRUE(same_on_all_ranks(group(), 0xfedcba9876543210ull));
  if (W() > 1) {
    // Rank 1 differs in the low half only, then in the high half only: every rank says false.
    EXPECT_FALSE(same_on_all_ranks(group(), 0x0123456700000000ull + (R() == 1 ? 1 : 0)));
    EXPECT_FALSE(same_on_all_ranks(group(), 0x0000000089abcdefull + (R() == 1 ? (1ull << 40) : 0)));
  }
}

TEST(Distributed, ParameterChecksum) {
  const Tensor a = Tensor::from_vector<float>(Shape{2, 3}, {1, 2, 3, 4, 5, 6});
  const Tensor b = Tensor::from_vector<float>(Shape{3}, {7, 8, 9});
  EXPECT_EQ(parameter_checksum({}), 1469598103934665603ull);  // FNV-1a of no bytes
  EXPECT_EQ(parameter_checksum({a, b}), parameter_checksum({a.clone(), b.clone()}));
  EXPECT_NE(parameter_checksum({a, b}), parameter_checksum({b, a}));  // order counts
  Tensor a2 = a.clone();
  a2.narrow(1, 2, 1).fill_(3.0000002);  // one element one ulp or so away
  EXPECT_NE(parameter_checksum({a}), parameter_checksum({a2}));
  // The bytes of the logical (contiguous) order: a strided view hashes like its packed copy.
  const Tensor at = a.transpose(0, 1);
  EXPECT_EQ(parameter_checksum({at}), parameter_checksum({at.contiguous()}));
  EXPECT_NE(parameter_checksum({at}), parameter_checksum({a}));
  // The dtype's bytes: the same values in f64 hash differently.
  EXPECT_NE(parameter_checksum({a}), parameter_checksum({a.to(DType::f64)}));

  // Parameters that differ by rank agree after broadcast_tensors, checked through the checksum.
  Tensor p = Tensor::full(Shape{4, 4}, R() * 1.5), q = Tensor::full(Shape{3}, -R() * 1.0, DType::f64);
  if (W() > 1) {
    EXPECT_FALSE(same_on_all_ranks(group(), parameter_checksum({p, q})));
  }
  broadcast_tensors(group(), {p, q}, 0);
  EXPECT_TRUE(same_on_all_ranks(group(), parameter_checksum({p, q})));
  for (float v : p.to_vector<float>()) EXPECT_EQ(v, 0.0f);
}

TEST(Distributed, MakeCommunicatorRefusesWhatDoesNotFit) {
  const std::string unknown = error_of([] { make_communicator(Device::cpu(), "gloo"); });
  EXPECT_TRUE(contains(unknown, "auto, single, mpi or nccl")) << unknown;
  EXPECT_TRUE(contains(unknown, "gloo")) << unknown;
  EXPECT_THROW(make_communicator(Device::cpu(), "gloo"), ConfigError);

  // mpi takes CPU tensors (or, in a build without MPI, does not exist): ConfigError either way.
  const std::string mpi_cuda = error_of([] { make_communicator(Device::cuda(0), "mpi"); });
  EXPECT_THROW(make_communicator(Device::cuda(0), "mpi"), ConfigError);
#if ATTNLAB_WITH_MPI
  EXPECT_TRUE(contains(mpi_cuda, "dist.backend = nccl")) << mpi_cuda;
#else
  EXPECT_TRUE(contains(mpi_cuda, "no MPI backend")) << mpi_cuda;
#endif
  EXPECT_THROW(make_communicator(Device::cpu(), "nccl"), ConfigError);

  if (W() > 1) {
    // One process per rank of a launch must not train independent copies.
    const std::string single = error_of([] { make_communicator(Device::cpu(), "single"); });
    EXPECT_TRUE(contains(single, "dist.backend = single")) << single;
    EXPECT_TRUE(contains(single, "of " + std::to_string(W()))) << single;
    EXPECT_THROW(make_communicator(Device::cpu(), "single"), ConfigError);
    // An explicit mpi request gives another working group over the same ranks.
    std::unique_ptr<Communicator> again = make_communicator(Device::cpu(), "mpi");
    EXPECT_EQ(again->backend(), "mpi");
    EXPECT_EQ(again->rank(), R());
    EXPECT_EQ(again->all_reduce(1.0, ReduceOp::sum), static_cast<double>(W()));
  } else {
    std::unique_ptr<Communicator> one = make_communicator(Device::cpu(), "single");
    EXPECT_EQ(one->backend(), "single");
    EXPECT_EQ(one->world_size(), 1);
    exit_job_on_error(3);  // alone: returns, so the caller reports the error itself
  }
}

#if ATTNLAB_WITH_CUDA
TEST(Distributed, NcclOnTheEmulatorIsRefusedOnEveryRankBeforeAnyTransfer) {
  // This binary runs CUDA tensors on the emulator, which has one device (cuda:0) and no NCCL.
  // Rank 0 (cuda:0) hears that NCCL cannot run here; a rank whose GPU (cuda:<local rank>) does
  // not exist hears that first. Each rank throws before the NCCL id is sent, so none waits.
  const int local = group().local_rank();
  const std::string e = error_of([] { make_communicator(Device::cuda(0), "nccl"); });
  if (local == 0) {
    EXPECT_TRUE(contains(e, "NCCL cannot run on the simt emulator")) << e;
  } else {
    EXPECT_TRUE(contains(e, "cuda:" + std::to_string(local) + " does not exist")) << e;
  }
  EXPECT_THROW(make_communicator(Device::cuda(0), "nccl"), DeviceError);
  group().barrier();
}
#endif

TEST(Distributed, TensorContractIsChecked) {
  // Every rank fails the same check before any transfer, so nothing is left waiting.
  const Tensor strided = Tensor::zeros(Shape{2, 3}).transpose(0, 1);
  const std::string e = error_of([&] { group().all_reduce(strided, ReduceOp::sum); });
  EXPECT_TRUE(contains(e, "all_reduce: expected a contiguous tensor")) << e;
  EXPECT_THROW(group().broadcast(strided, 0), ShapeError);

  const Tensor ints = Tensor::zeros(Shape{4}, DType::i32);
  const std::string d = error_of([&] { group().all_reduce_async(ints, ReduceOp::max); });
  EXPECT_TRUE(contains(d, "expected an f32 or f64 tensor")) << d;
  EXPECT_THROW(group().all_reduce(ints, ReduceOp::sum), ShapeError);
  EXPECT_THROW(group().all_reduce(Tensor::zeros(Shape{2}, DType::bf16), ReduceOp::sum), ShapeError);
  EXPECT_THROW(group().all_reduce(Tensor(), ReduceOp::sum), ShapeError);

#if ATTNLAB_WITH_CUDA
  const Tensor on_gpu = Tensor::zeros(Shape{2}, DType::f32, Device::cuda(0));
  const std::string g = error_of([&] { group().all_reduce(on_gpu, ReduceOp::sum); });
  EXPECT_TRUE(contains(g, "takes tensors on cpu")) << g;
  EXPECT_THROW(group().broadcast(on_gpu, 0), DeviceError);
#endif
  group().barrier();  // the group still works after the refusals
}

}  // namespace
}  // namespace attnlab::dist
