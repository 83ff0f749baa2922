// attnlab errors: one hierarchy, thrown by library code, never exit() or abort().
//
// A message names the op or file, what was expected and what was got, with shapes:
//   "matmul: inner dimensions must agree; got a=[2, 3] f32 cpu, b=[4, 5] f32 cpu"
// AL_CHECK(cond, parts...) streams its parts into the message (Tensors, Shapes, DTypes and
// Devices print themselves). The kind-specific forms pick the subclass a caller can catch.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace attnlab {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// A tensor had the wrong shape for the op.
class ShapeError : public Error {
 public:
  using Error::Error;
};
// A tensor had a dtype the op does not support, or dtypes did not match.
class DTypeError : public Error {
 public:
  using Error::Error;
};
// A tensor was on the wrong device, or the device is not available in this build.
class DeviceError : public Error {
 public:
  using Error::Error;
};
// A recipe key or value, or an argument, was not acceptable.
class ConfigError : public Error {
 public:
  using Error::Error;
};
// A file could not be read or written, or its contents were malformed.
class IoError : public Error {
 public:
  using Error::Error;
};
// A CUDA, cuBLAS, cuDNN or NCCL call failed.
class CudaError : public Error {
 public:
  using Error::Error;
};
// A bug in attnlab itself: an invariant that should hold did not.
class InternalError : public Error {
 public:
  using Error::Error;
};

namespace detail {
template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

template <typename E, typename... Parts>
[[noreturn]] void throw_error(const Parts&... parts) {
  throw E(concat(parts...));
}

template <typename... Parts>
[[noreturn]] void throw_internal(const char* file, int line, const char* cond, const Parts&... parts) {
  throw InternalError(concat("internal error at ", file, ":", line, ": ", cond, " failed", (sizeof...(parts) ? ": " : ""), parts...));
}
}  // namespace detail

}  // namespace attnlab

#define AL_CHECK_AS(ErrorType, cond, ...)                           \
  do {                                                              \
    if (!(cond)) [[unlikely]]                                       \
      ::attnlab::detail::throw_error<ErrorType>(__VA_ARGS__);       \
  } while (0)

// A generic user-facing check: throws attnlab::Error.
#define AL_CHECK(cond, ...) AL_CHECK_AS(::attnlab::Error, cond, __VA_ARGS__)
#define AL_CHECK_SHAPE(cond, ...) AL_CHECK_AS(::attnlab::ShapeError, cond, __VA_ARGS__)
#define AL_CHECK_DTYPE(cond, ...) AL_CHECK_AS(::attnlab::DTypeError, cond, __VA_ARGS__)
#define AL_CHECK_DEVICE(cond, ...) AL_CHECK_AS(::attnlab::DeviceError, cond, __VA_ARGS__)
#define AL_CHECK_CONFIG(cond, ...) AL_CHECK_AS(::attnlab::ConfigError, cond, __VA_ARGS__)
#define AL_CHECK_IO(cond, ...) AL_CHECK_AS(::attnlab::IoError, cond, __VA_ARGS__)

// An invariant of attnlab's own code; a failure is a bug, reported with file and line.
#define AL_ASSERT(cond, ...)                                                              \
  do {                                                                                    \
    if (!(cond)) [[unlikely]]                                                             \
      ::attnlab::detail::throw_internal(__FILE__, __LINE__, #cond __VA_OPT__(, ) __VA_ARGS__); \
  } while (0)
