// lib/cuda/runtime.h on the CUDA runtime (real) or on lib/simt's stand-ins (emulated): device
// queries, checked copies and synchronisation, the current stream, and the error check that
// every kernel launch goes through.
#include "lib/cuda/runtime.h"

#include <sstream>
#include <string>

#include "lib/cuda/kernel.h"
#include "lib/error.h"

namespace attnlab::cuda {

namespace detail {
void check(cudaError_t err, const char* what, const char* file, int line) {
  if (err == cudaSuccess) return;
  std::ostringstream os;
  os << what << " failed at " << file << ":" << line << ": " << cudaGetErrorName(err) << " ("
     << cudaGetErrorString(err) << ")";
#if ATTNLAB_SIMT_EMULATED
  const std::string detail = simt::take_last_error();
  if (!detail.empty()) os << "\n  simt: " << detail;
#endif
  // Clears the sticky last error so the next call is judged on its own.
  (void)cudaGetLastError();
  throw CudaError(os.str());
}
}  // namespace detail

bool emulated() { return ATTNLAB_SIMT_EMULATED != 0; }

int device_count() {
  int n = 0;
  // No driver or no GPU is "zero devices", not a failure: the caller reports what it needs.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

std::string device_name(int index) {
#if ATTNLAB_SIMT_EMULATED
  (void)index;
  return "simt emulator (CUDA kernels run on the CPU)";
#else
  cudaDeviceProp prop{};
  AL_CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
  std::ostringstream os;
  os.precision(3);
  os << prop.name << ", sm_" << prop.major << prop.minor << ", "
     << static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0) << " GiB";
  return os.str();
#endif
}

void check_device(Device device) {
  AL_CHECK_DEVICE(device.is_cuda(), "cuda: ", device, " is not a CUDA device");
  const int n = device_count();
  AL_CHECK_DEVICE(n > 0, "cuda: ", device,
                  " was asked for, but this machine has no usable CUDA device (cudaGetDeviceCount found none); "
                  "use --run.device=cpu");
  AL_CHECK_DEVICE(device.index >= 0 && device.index < n, "cuda: ", device, " does not exist; this machine has ", n,
                  " CUDA device(s), cuda:0 to cuda:", n - 1);
}

void set_device(int index) { AL_CUDA_CHECK(cudaSetDevice(index)); }

namespace {
// The calling thread's current stream; null is the legacy default stream.
thread_local cudaStream_t t_current_stream = nullptr;
}  // namespace

cudaStream_t current_stream() { return t_current_stream; }

DeviceGuard::DeviceGuard(int index) {
  AL_CUDA_CHECK(cudaGetDevice(&previous_));
  if (index != previous_) AL_CUDA_CHECK(cudaSetDevice(index));
}

DeviceGuard::~DeviceGuard() { (void)cudaSetDevice(previous_); }  // destructors do not throw

Stream::Stream() {
  cudaStream_t s = nullptr;
  AL_CUDA_CHECK(cudaStreamCreate(&s));
  handle_ = s;
}

Stream::~Stream() {
  if (handle_) (void)cudaStreamDestroy(static_cast<cudaStream_t>(handle_));
}

void Stream::synchronize() const { AL_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(handle_))); }

StreamGuard::StreamGuard(const Stream& stream) : previous_(t_current_stream) {
  t_current_stream = static_cast<cudaStream_t>(stream.handle());
}

StreamGuard::~StreamGuard() { t_current_stream = static_cast<cudaStream_t>(previous_); }

void copy_h2d(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  AL_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

void copy_d2h(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  AL_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

void copy_d2d(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  AL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, current_stream()));
}

void memset_zero(void* dst, size_t bytes) {
  if (bytes == 0) return;
  AL_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, current_stream()));
}

void synchronize() { AL_CUDA_CHECK(cudaDeviceSynchronize()); }

}  // namespace attnlab::cuda
