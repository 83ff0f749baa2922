// Tensor: ref-counted storage + shape + strides + offset + dtype + device. No autograd here.
//
// Views (reshape of a contiguous tensor, permute/transpose, narrow/slice, expand) share storage
// with their source; `contiguous()` returns the tensor itself when it already is, else a packed
// copy. Kernels take contiguous inputs and say so in their checks. Strides and the offset count
// elements, not bytes. A default-constructed Tensor is "undefined" (no storage).
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "lib/device.h"
#include "lib/dtype.h"
#include "lib/shape.h"
#include "lib/storage.h"

namespace attnlab {

class Tensor {
 public:
  Tensor() = default;

  // --- creation -------------------------------------------------------------------------
  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor ones(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor scalar(double value, DType dtype = DType::f32);
  // 0, 1, ..., n-1.
  static Tensor arange(int64_t n, DType dtype = DType::f32);
  // Copies `values` (row-major, numel(shape) of them) into a new tensor of dtype_v<T>.
  template <typename T>
  static Tensor from_vector(const Shape& shape, const std::vector<T>& values);

  // --- metadata -------------------------------------------------------------------------
  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int64_t ndim() const { return shape_.ndim(); }
  int64_t size(int64_t dim) const { return shape_.at(dim); }
  int64_t numel() const { return shape_.numel(); }
  const std::vector<int64_t>& strides() const { return strides_; }
  int64_t stride(int64_t dim) const;
  int64_t offset() const { return offset_; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  bool is_contiguous() const;
  // "[2, 3] f32 cpu", or "undefined".
  std::string str() const;
  const StoragePtr& storage() const { return storage_; }
  bool shares_storage_with(const Tensor& o) const { return storage_ && storage_ == o.storage_; }

  // --- data access ----------------------------------------------------------------------
  // Pointer to the first element (storage + offset). Checks that T matches the dtype.
  template <typename T>
  T* data();
  template <typename T>
  const T* data() const;
  void* raw_data();
  const void* raw_data() const;
  // The single element of a one-element tensor, converted to T.
  template <typename T>
  T item() const;
  // All elements in row-major order, converted to T.
  template <typename T>
  std::vector<T> to_vector() const;

  // --- views (share storage) ------------------------------------------------------------
  // Same elements with a new shape; one dim may be -1 (inferred). A view when the layout
  // allows it, else a contiguous copy.
  Tensor reshape(const Shape& shape) const;
  // Like reshape, but throws ShapeError instead of copying.
  Tensor view(const Shape& shape) const;
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor transpose(int64_t dim0, int64_t dim1) const;
  // Elements [start, start + length) of `dim`.
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  // Elements start, start + step, ... < end of `dim` (negative start/end count from the end).
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;
  // Broadcast view to `shape` (size-1 or missing leading dims get stride 0). Read-only in spirit.
  Tensor expand(const Shape& shape) const;
  Tensor unsqueeze(int64_t dim) const;

  // --- copies ---------------------------------------------------------------------------
  Tensor contiguous() const;
  Tensor clone() const;
  Tensor to(DType dtype) const;
  // This tensor on `device` (itself if already there): a contiguous copy otherwise.
  Tensor to(Device device) const;
  // Copies src into this tensor elementwise (any strides on both sides), converting dtype;
  // src must have this shape or broadcast to it.
  void copy_(const Tensor& src);
  void fill_(double value);
  void zero_() { fill_(0.0); }

  // Low-level constructor: a view onto `storage` with explicit layout.
  Tensor(StoragePtr storage, Shape shape, std::vector<int64_t> strides, int64_t offset, DType dtype);

 private:
  void check_dtype(DType want) const;
  void copy_across_devices(const Tensor& src);
  StoragePtr storage_;
  Shape shape_;
  std::vector<int64_t> strides_;
  int64_t offset_ = 0;
  DType dtype_ = DType::f32;
  Device device_;
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);

// ---- template definitions -----------------------------------------------------------------

template <typename T>
T* Tensor::data() {
  check_dtype(dtype_v<T>);
  return static_cast<T*>(storage_->data()) + offset_;
}

template <typename T>
const T* Tensor::data() const {
  check_dtype(dtype_v<T>);
  return static_cast<const T*>(storage_->data()) + offset_;
}

}  // namespace attnlab
