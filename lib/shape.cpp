#include "lib/shape.h"

#include "lib/error.h"

namespace attnlab {

int64_t Shape::at(int64_t i) const { return dims_[static_cast<size_t>(normalize_dim(i, ndim(), "Shape::at"))]; }

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int64_t d : dims_) n *= d;
  return n;
}

std::vector<int64_t> Shape::contiguous_strides() const {
  std::vector<int64_t> s(dims_.size());
  int64_t acc = 1;
  for (size_t i = dims_.size(); i-- > 0;) {
    s[i] = acc;
    acc *= dims_[i];
  }
  return s;
}

std::ostream& operator<<(std::ostream& os, const Shape& s) {
  os << '[';
  for (int64_t i = 0; i < s.ndim(); ++i) os << (i ? ", " : "") << s[i];
  return os << ']';
}

int64_t normalize_dim(int64_t dim, int64_t ndim, std::string_view op) {
  int64_t d = dim < 0 ? dim + ndim : dim;
  AL_CHECK_SHAPE(d >= 0 && d < ndim, op, ": dim ", dim, " is out of range for a tensor with ", ndim, " dims");
  return d;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, std::string_view op) {
  int64_t n = std::max(a.ndim(), b.ndim());
  std::vector<int64_t> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    int64_t ia = a.ndim() - n + i, ib = b.ndim() - n + i;
    int64_t da = ia >= 0 ? a[ia] : 1, db = ib >= 0 ? b[ib] : 1;
    AL_CHECK_SHAPE(da == db || da == 1 || db == 1, op, ": shapes do not broadcast; got a=", a, ", b=", b);
    out[static_cast<size_t>(i)] = da == 1 ? db : da;
  }
  return Shape(std::move(out));
}

std::vector<int64_t> broadcast_strides(const Shape& from, const std::vector<int64_t>& strides, const Shape& to) {
  std::vector<int64_t> out(static_cast<size_t>(to.ndim()), 0);
  int64_t lead = to.ndim() - from.ndim();
  AL_ASSERT(lead >= 0);
  for (int64_t i = 0; i < from.ndim(); ++i) {
    AL_ASSERT(from[i] == to[lead + i] || from[i] == 1);
    out[static_cast<size_t>(lead + i)] = from[i] == 1 ? 0 : strides[static_cast<size_t>(i)];
  }
  return out;
}

}  // namespace attnlab
