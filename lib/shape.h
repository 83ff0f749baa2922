// Shapes, strides and broadcasting. Dimensions are int64; strides count elements, not bytes.
// A 0-d shape ([]) is a scalar with one element.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <string_view>
#include <vector>

namespace attnlab {

class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims) : dims_(dims) {}
  explicit Shape(std::vector<int64_t> dims) : dims_(std::move(dims)) {}

  int64_t ndim() const { return static_cast<int64_t>(dims_.size()); }
  int64_t operator[](int64_t i) const { return dims_[static_cast<size_t>(i)]; }
  int64_t& operator[](int64_t i) { return dims_[static_cast<size_t>(i)]; }
  // The size of dim i, where negative i counts from the end (-1 is the last dim).
  int64_t at(int64_t i) const;
  int64_t numel() const;
  const std::vector<int64_t>& dims() const { return dims_; }
  auto begin() const { return dims_.begin(); }
  auto end() const { return dims_.end(); }

  bool operator==(const Shape& o) const { return dims_ == o.dims_; }
  bool operator!=(const Shape& o) const { return dims_ != o.dims_; }

  // Row-major strides of a contiguous tensor of this shape.
  std::vector<int64_t> contiguous_strides() const;

 private:
  std::vector<int64_t> dims_;
};

std::ostream& operator<<(std::ostream& os, const Shape& s);

// Maps a possibly negative dim into [0, ndim); throws ShapeError naming `op` when out of range.
int64_t normalize_dim(int64_t dim, int64_t ndim, std::string_view op);

// NumPy broadcasting: shapes are aligned on the right; sizes must match or be 1.
// Throws ShapeError naming `op` and both shapes when they do not broadcast.
Shape broadcast_shapes(const Shape& a, const Shape& b, std::string_view op);

// Strides that read a tensor of shape `from` (with strides `strides`) as shape `to`,
// broadcasting size-1 and missing leading dims with stride 0. `to` must be a broadcast of `from`.
std::vector<int64_t> broadcast_strides(const Shape& from, const std::vector<int64_t>& strides, const Shape& to);

}  // namespace attnlab
