// The nccl backend of train/distributed.h and lib/cuda/nccl.h. Emulated (test_nccl): NCCL
// cannot run on the simt emulator, and every way in says so with a DeviceError. Real
// (test_nccl_gpu, the GPU check's "NCCL 1-GPU all-reduce self-test"): a 1-rank NCCL group on
// cuda:0, opened outside any launcher, reduces and broadcasts CUDA tensors in place; SKIPPED on
// a machine without a GPU, like the other *_gpu tests.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "lib/cuda/nccl.h"
#include "lib/cuda/runtime.h"
#include "lib/error.h"
#include "tests/support/error_text.h"
#include "lib/tensor.h"
#include "tests/support/cuda_test_util.h"
#include "train/distributed.h"

namespace attnlab {
namespace {

using test::contains;
using test::error_of;

using dist::Communicator;
using dist::ReduceOp;

#if !ATTNLAB_TEST_REAL_CUDA

TEST(NcclEmulated, EveryEntryPointSaysTheEmulatorCannotRunNccl) {
  EXPECT_FALSE(cuda::nccl::available());
  EXPECT_TRUE(contains(cuda::nccl::unavailable_reason(), "emulator")) << cuda::nccl::unavailable_reason();
  const std::string id = error_of([] { cuda::nccl::make_unique_id(); });
  EXPECT_TRUE(contains(id, "nccl unique id: NCCL cannot run on the simt emulator")) << id;
  EXPECT_THROW(cuda::nccl::make_unique_id(), DeviceError);
  EXPECT_THROW(cuda::nccl::Comm(cuda::nccl::UniqueId{}, 0, 1, 0), DeviceError);
}

TEST(NcclEmulated, MakeCommunicatorRefusesNcclOnTheEmulator) {
  const std::string e = error_of([] { dist::make_communicator(Device::cuda(0), "nccl"); });
  EXPECT_TRUE(contains(e, "dist.backend = nccl on rank 0")) << e;
  EXPECT_TRUE(contains(e, "emulator")) << e;
  EXPECT_THROW(dist::make_communicator(Device::cuda(0), "nccl"), DeviceError);
  // auto picks single outside a launcher, which works on the emulated device too.
  EXPECT_EQ(dist::make_communicator(Device::cuda(0))->backend(), "single");
}

#else  // the nvcc build

TEST(NcclReal, MissingGpuIsADeviceErrorBeforeAnyNcclCall) {
  // The first device this machine lacks (cuda:0 without a GPU): refused by name, never a hang in
  // NCCL. Runs (never skips) with or without a GPU, so the GPU check counts it as a pass.
  const int n = cuda::device_count();
  const std::string e = error_of([n] { dist::make_communicator(Device::cuda(n), "nccl"); });
  EXPECT_TRUE(contains(e, n == 0 ? "no usable CUDA device" : "does not exist")) << e;
  EXPECT_THROW(dist::make_communicator(Device::cuda(n), "nccl"), DeviceError);
}

class NcclOneGpu : public cuda_test::CudaTest {
 protected:
  void SetUp() override {
    cuda_test::CudaTest::SetUp();
    if (IsSkipped()) return;
    if (!cuda::nccl::available()) {
      // A build with NCCL configured off: the request is refused with the reason, and the
      // collectives below cannot run (the GPU check reports them as failed).
      const std::string e = error_of([] { dist::make_communicator(Device::cuda(0), "nccl"); });
      FAIL() << "this build has no NCCL: " << e;
    }
    comm_ = dist::make_communicator(Device::cuda(0), "nccl");
  }

  Tensor on_gpu(const std::vector<float>& v) {
    return cuda_test::to_cuda(Tensor::from_vector<float>(Shape{static_cast<int64_t>(v.size())}, v));
  }

  std::unique_ptr<Communicator> comm_;
};

TEST_F(NcclOneGpu, GroupOfOneOnCuda0) {
  EXPECT_EQ(comm_->backend(), "nccl");
  EXPECT_EQ(comm_->rank(), 0);
  EXPECT_EQ(comm_->world_size(), 1);
  EXPECT_EQ(comm_->local_rank(), 0);
  EXPECT_EQ(comm_->device(), Device::cuda(0));
  comm_->barrier();
  EXPECT_EQ(comm_->all_reduce(2.5, ReduceOp::sum), 2.5);
  EXPECT_EQ(comm_->all_reduce(2.5, ReduceOp::mean), 2.5);
}

TEST_F(NcclOneGpu, AllReduceF32EveryOp) {
  // A group of one: sum, mean, min and max all leave the values as they are (NCCL still runs).
  const std::vector<float> v = {1.5f, -2.0f, 3.25f, 0.0f, 1e-7f};
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::mean, ReduceOp::min, ReduceOp::max}) {
    Tensor t = on_gpu(v);
    comm_->all_reduce(t, op);
    EXPECT_EQ(cuda_test::to_host(t).to_vector<float>(), v) << static_cast<int>(op);
  }
}

TEST_F(NcclOneGpu, AllReduceF64AndLargeBuffers) {
  const std::vector<double> v = {1.0 + 1e-12, -3.0, 0.125};
  Tensor t = cuda_test::to_cuda(Tensor::from_vector<double>(Shape{3}, v));
  comm_->all_reduce(t, ReduceOp::sum);
  EXPECT_EQ(cuda_test::to_host(t).to_vector<double>(), v);
  comm_->all_reduce(t, ReduceOp::mean);
  EXPECT_EQ(cuda_test::to_host(t).to_vector<double>(), v);

  // Values written by a kernel on the current stream just before: the collective runs after it.
  Tensor big = Tensor::zeros(Shape{1 << 22}, DType::f32, Device::cuda(0));
  big.fill_(7.0);
  comm_->all_reduce(big, ReduceOp::max);
  const std::vector<float> h = cuda_test::to_host(big).to_vector<float>();
  EXPECT_EQ(h.front(), 7.0f);
  EXPECT_EQ(h[h.size() / 3], 7.0f);
  EXPECT_EQ(h.back(), 7.0f);
}

TEST_F(NcclOneGpu, AsyncAllReduceWithTestAndWait) {
  Tensor t = on_gpu({4, 5, 6});
  std::unique_ptr<dist::Work> w = comm_->all_reduce_async(t, ReduceOp::sum);
  cuda::synchronize();   // the host waits for the device: the collective is done
  EXPECT_TRUE(w->test());
  w->wait();             // orders the current stream after it; does not block the host
  w->wait();             // a second wait is a no-op
  EXPECT_EQ(cuda_test::to_host(t).to_vector<float>(), (std::vector<float>{4, 5, 6}));
  // Dropped without wait(): the destructor still orders the current stream after it.
  Tensor u = on_gpu({1, 2});
  { auto dropped = comm_->all_reduce_async(u, ReduceOp::min); }
  EXPECT_EQ(cuda_test::to_host(u).to_vector<float>(), (std::vector<float>{1, 2}));
}

TEST_F(NcclOneGpu, BroadcastAnyDtypeFromRoot0) {
  Tensor f = on_gpu({9, 8, 7});
  comm_->broadcast(f, 0);
  EXPECT_EQ(cuda_test::to_host(f).to_vector<float>(), (std::vector<float>{9, 8, 7}));
  Tensor ids = cuda_test::to_cuda(Tensor::from_vector<int32_t>(Shape{2}, {-1, 12345}));
  comm_->broadcast(ids, 0);
  EXPECT_EQ(cuda_test::to_host(ids).to_vector<int32_t>(), (std::vector<int32_t>{-1, 12345}));
  const std::string e = error_of([&] { comm_->broadcast(f, 1); });
  EXPECT_TRUE(contains(e, "root 1 is not a rank")) << e;
  EXPECT_THROW(comm_->broadcast(f, 1), ConfigError);
}

TEST_F(NcclOneGpu, TensorsOffTheGroupsDeviceAreRefused) {
  const Tensor cpu = Tensor::zeros(Shape{3});
  const std::string e = error_of([&] { comm_->all_reduce(cpu, ReduceOp::sum); });
  EXPECT_TRUE(contains(e, "takes tensors on cuda:0")) << e;
  EXPECT_THROW(comm_->all_reduce(cpu, ReduceOp::sum), DeviceError);
  EXPECT_THROW(comm_->broadcast(cpu, 0), DeviceError);
  if (cuda::device_count() > 1) {
    // A CUDA tensor on another GPU than the group's.
    const Tensor other = Tensor::zeros(Shape{3}, DType::f32, Device::cuda(1));
    const std::string o = error_of([&] { comm_->all_reduce(other, ReduceOp::sum); });
    EXPECT_TRUE(contains(o, "on cuda:1")) << o;
    EXPECT_THROW(comm_->all_reduce(other, ReduceOp::sum), DeviceError);
  }
  EXPECT_THROW(comm_->all_reduce(Tensor::zeros(Shape{2}, DType::i32, Device::cuda(0)), ReduceOp::sum), ShapeError);
  EXPECT_THROW(comm_->all_reduce(Tensor::zeros(Shape{2, 3}, DType::f32, Device::cuda(0)).transpose(0, 1),
                                 ReduceOp::sum),
               ShapeError);
}

TEST_F(NcclOneGpu, CommDirectlyOnAFreshId) {
  if (!cuda::nccl::available()) GTEST_SKIP();
  cuda::nccl::Comm c(cuda::nccl::make_unique_id(), 0, 1, 0);
  EXPECT_EQ(c.rank(), 0);
  EXPECT_EQ(c.world_size(), 1);
  EXPECT_EQ(c.device(), 0);
  Tensor t = on_gpu({3, 1, 2});
  c.wait_for_current_stream();
  c.all_reduce(t.raw_data(), 3, DType::f32, cuda::nccl::Op::avg);
  cuda::nccl::Event done = c.record();
  c.synchronize();
  EXPECT_TRUE(done.query());
  done.block_current_stream();
  EXPECT_EQ(cuda_test::to_host(t).to_vector<float>(), (std::vector<float>{3, 1, 2}));
  EXPECT_THROW(cuda::nccl::Comm(cuda::nccl::make_unique_id(), 1, 1, 0), ConfigError);
}

#endif

}  // namespace
}  // namespace attnlab
