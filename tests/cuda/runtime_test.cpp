// lib/cuda's runtime glue: copies through Tensor::to, the caching allocator's reuse, device and
// stream guards, and (in the real build) the cuBLAS/cuDNN/NCCL checks, which turn a failing status
// into a CudaError naming the call, its file:line and the library's own message.
#include <gtest/gtest.h>

#include <string>

#include "lib/cuda/runtime.h"
#include "lib/error.h"
#include "lib/tensor.h"
#include "tests/support/cuda_test_util.h"

#if ATTNLAB_TEST_REAL_CUDA
#include "lib/cuda/libraries.h"
#endif

namespace attnlab {
namespace {

#if ATTNLAB_TEST_REAL_CUDA
// These need no device: the libraries describe a status without one.
TEST(CudaLibraryChecks, FailingStatusesThrowWithCallSiteAndMessage) {
  try {
    AL_CUBLAS_CHECK(CUBLAS_STATUS_NOT_INITIALIZED);
    FAIL() << "no throw";
  } catch (const CudaError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("CUBLAS_STATUS_NOT_INITIALIZED failed at"), std::string::npos) << m;
    EXPECT_NE(m.find("runtime_test.cpp:"), std::string::npos) << m;
  }
  EXPECT_THROW(AL_CUDNN_CHECK(CUDNN_STATUS_BAD_PARAM), CudaError);
  EXPECT_THROW(AL_NCCL_CHECK(ncclInvalidArgument), CudaError);
  EXPECT_NO_THROW(AL_CUBLAS_CHECK(CUBLAS_STATUS_SUCCESS));
  EXPECT_NO_THROW(AL_CUDNN_CHECK(CUDNN_STATUS_SUCCESS));
  EXPECT_NO_THROW(AL_NCCL_CHECK(ncclSuccess));
}
#endif

TEST(CudaRuntime, MissingDeviceIsADeviceErrorNamingWhatExists) {
  if (cuda::device_count() == 0) {
    EXPECT_THROW(cuda::check_device(Device::cuda(0)), DeviceError);
    return;
  }
  try {
    cuda::check_device(Device::cuda(cuda::device_count()));
    FAIL() << "no throw";
  } catch (const DeviceError& e) {
    EXPECT_NE(std::string(e.what()).find("does not exist"), std::string::npos) << e.what();
  }
}

class CudaRuntimeOnDevice : public cuda_test::CudaTest {};

TEST_F(CudaRuntimeOnDevice, CopiesRoundTripThroughStridedAndConvertingPaths) {
  const Tensor host = Tensor::from_vector<float>(Shape{2, 3}, {1, 2, 3, 4, 5, 6});
  const Tensor dev = host.to(Device::cuda(0));
  EXPECT_EQ(dev.device(), Device::cuda(0));
  EXPECT_EQ(dev.to(Device::cpu()).to_vector<float>(), host.to_vector<float>());
  // A transposed view copied on the device, converted to f64 and bf16 and back.
  const Tensor t = dev.transpose(0, 1).contiguous();
  EXPECT_EQ(t.to_vector<float>(), (std::vector<float>{1, 4, 2, 5, 3, 6}));
  EXPECT_EQ(dev.to(DType::f64).to_vector<double>(), (std::vector<double>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(dev.to(DType::bf16).to(DType::f32).to_vector<float>(), host.to_vector<float>());
  // Host to a strided device destination, broadcasting a row.
  Tensor dst = Tensor::zeros(Shape{3, 2}, DType::f32, Device::cuda(0));
  Tensor dst_t = dst.transpose(0, 1);
  dst_t.copy_(Tensor::from_vector<float>(Shape{3}, {7, 8, 9}));
  EXPECT_EQ(dst.to_vector<float>(), (std::vector<float>{7, 7, 8, 8, 9, 9}));
}

TEST_F(CudaRuntimeOnDevice, AllocatorReusesFreedBlocks) {
  const size_t bytes = 3 << 20;
  void* first = cuda::malloc(bytes, 0);
  cuda::free(first, bytes, 0);
  const cuda::CacheStats before = cuda::cache_stats();
  void* second = cuda::malloc(bytes, 0);
  EXPECT_EQ(second, first);
  EXPECT_EQ(cuda::cache_stats().hits, before.hits + 1);
  cuda::free(second, bytes, 0);
  cuda::cache_empty();
  EXPECT_EQ(cuda::cache_stats().cached_bytes, 0u);
}

TEST_F(CudaRuntimeOnDevice, StreamGuardQueuesWorkOnItsStream) {
  cuda::Stream stream;
  {
    cuda::DeviceGuard device(0);
    cuda::StreamGuard guard(stream);
    Tensor x = Tensor::full(Shape{1000}, 2.5, DType::f32, Device::cuda(0));
    stream.synchronize();
    EXPECT_EQ(x.to_vector<float>().back(), 2.5f);
  }
  Tensor y = Tensor::ones(Shape{4}, DType::f32, Device::cuda(0));
  EXPECT_EQ(y.to_vector<float>(), (std::vector<float>{1, 1, 1, 1}));
}

}  // namespace
}  // namespace attnlab
