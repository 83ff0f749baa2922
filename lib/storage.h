// A block of memory that tensors share. CPU storage is 64-byte aligned (one cache line, an
// AVX-512 vector) and freed when the last tensor using it goes away.
#pragma once

#include <cstddef>
#include <memory>

#include "lib/device.h"

namespace attnlab {

class Storage {
 public:
  // Allocates `bytes` on `device`, uninitialised. Throws DeviceError for devices this build lacks.
  Storage(size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() { return data_; }
  const void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

  static constexpr size_t kAlignment = 64;

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
};

using StoragePtr = std::shared_ptr<Storage>;

}  // namespace attnlab
