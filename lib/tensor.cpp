#include "lib/tensor.h"

#include <algorithm>
#include <numeric>
#include <sstream>
#include <type_traits>

#include "lib/cpu/loops.h"
#include "lib/error.h"
#if ATTNLAB_WITH_CUDA
#include "lib/cuda/runtime.h"
#include "lib/cuda/tensor_kernels.h"
#endif

namespace attnlab {

Tensor::Tensor(StoragePtr storage, Shape shape, std::vector<int64_t> strides, int64_t offset, DType dtype)
    : storage_(std::move(storage)),
      shape_(std::move(shape)),
      strides_(std::move(strides)),
      offset_(offset),
      dtype_(dtype),
      device_(storage_ ? storage_->device() : Device::cpu()) {
  AL_ASSERT(static_cast<int64_t>(strides_.size()) == shape_.ndim());
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) AL_CHECK_SHAPE(d >= 0, "Tensor::empty: sizes must be >= 0; got ", shape);
  auto storage = std::make_shared<Storage>(static_cast<size_t>(shape.numel()) * dtype_size(dtype), device);
  return Tensor(std::move(storage), shape, shape.contiguous_strides(), 0, dtype);
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0.0, dtype, device); }
Tensor Tensor::ones(const Shape& shape, DType dtype, Device device) { return full(shape, 1.0, dtype, device); }

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

Tensor Tensor::scalar(double value, DType dtype) { return full(Shape{}, value, dtype); }

Tensor Tensor::arange(int64_t n, DType dtype) {
  Tensor t = empty(Shape{n}, dtype);
  dispatch_any(dtype, [&](auto tag) {
    using T = decltype(tag);
    T* p = t.data<T>();
    for (int64_t i = 0; i < n; ++i) p[i] = convert_to<T>(static_cast<double>(i));
  });
  return t;
}

template <typename T>
Tensor Tensor::from_vector(const Shape& shape, const std::vector<T>& values) {
  AL_CHECK_SHAPE(static_cast<int64_t>(values.size()) == shape.numel(), "Tensor::from_vector: shape ", shape, " has ",
                 shape.numel(), " elements; got ", values.size(), " values");
  Tensor t = empty(shape, dtype_v<T>);
  std::copy(values.begin(), values.end(), t.data<T>());
  return t;
}
template Tensor Tensor::from_vector(const Shape&, const std::vector<float>&);
template Tensor Tensor::from_vector(const Shape&, const std::vector<double>&);
template Tensor Tensor::from_vector(const Shape&, const std::vector<int32_t>&);
template Tensor Tensor::from_vector(const Shape&, const std::vector<bf16>&);

int64_t Tensor::stride(int64_t dim) const { return strides_[static_cast<size_t>(normalize_dim(dim, ndim(), "stride"))]; }

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int64_t i = ndim(); i-- > 0;) {
    if (shape_[i] == 1) continue;
    if (strides_[static_cast<size_t>(i)] != expected) return false;
    expected *= shape_[i];
  }
  return true;
}

std::string Tensor::str() const {
  if (!defined()) return "undefined";
  std::ostringstream os;
  os << shape_ << ' ' << dtype_ << ' ' << device_;
  return os.str();
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.str(); }

void Tensor::check_dtype(DType want) const {
  AL_CHECK(defined(), "tensor: data access on an undefined tensor");
  AL_CHECK_DTYPE(dtype_ == want, "tensor: element type ", want, " requested from a tensor ", str());
}

void* Tensor::raw_data() {
  AL_CHECK(defined(), "tensor: data access on an undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_ * static_cast<int64_t>(dtype_size(dtype_));
}

const void* Tensor::raw_data() const { return const_cast<Tensor*>(this)->raw_data(); }

template <typename T>
T Tensor::item() const {
  AL_CHECK_SHAPE(numel() == 1, "item: expected a tensor with one element; got ", str());
  if (!device_.is_cpu()) return to(Device::cpu()).item<T>();
  return dispatch_any(dtype_, [&](auto tag) -> T {
    using S = decltype(tag);
    return convert_to<T>(*static_cast<const S*>(raw_data()));
  });
}
template float Tensor::item<float>() const;
template double Tensor::item<double>() const;
template int32_t Tensor::item<int32_t>() const;
template int64_t Tensor::item<int64_t>() const;

template <typename T>
std::vector<T> Tensor::to_vector() const {
  if (!device_.is_cpu()) return to(Device::cpu()).to_vector<T>();
  Tensor c = to(dtype_v<T>).contiguous();
  const T* p = c.data<T>();
  return std::vector<T>(p, p + numel());
}
template std::vector<float> Tensor::to_vector() const;
template std::vector<double> Tensor::to_vector() const;
template std::vector<int32_t> Tensor::to_vector() const;

// ---- views ---------------------------------------------------------------------------------

namespace {
Shape infer_shape(const Shape& want, int64_t numel, const Shape& from) {
  std::vector<int64_t> dims = want.dims();
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] == -1) {
      AL_CHECK_SHAPE(infer < 0, "reshape: only one dim may be -1; got ", want);
      infer = static_cast<int64_t>(i);
    } else {
      AL_CHECK_SHAPE(dims[i] >= 0, "reshape: sizes must be >= 0 or -1; got ", want);
      known *= dims[i];
    }
  }
  if (infer >= 0) {
    AL_CHECK_SHAPE(known > 0 && numel % known == 0, "reshape: cannot infer -1 in ", want, " for a tensor of shape ",
                   from);
    dims[static_cast<size_t>(infer)] = numel / known;
    known *= dims[static_cast<size_t>(infer)];
  }
  AL_CHECK_SHAPE(known == numel, "reshape: shape ", want, " has ", known, " elements; the tensor ", from, " has ",
                 numel);
  return Shape(std::move(dims));
}

// Strides for viewing (shape, strides) as `to` without copying, if possible (empty if not).
// Walks both shapes in chunks of equal element count; each source chunk must be contiguous.
std::vector<int64_t> view_strides(const Shape& shape, const std::vector<int64_t>& strides, const Shape& to) {
  std::vector<int64_t> out(static_cast<size_t>(to.ndim()));
  int64_t view_d = to.ndim() - 1;
  int64_t chunk_base_stride = strides.empty() ? 1 : strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t d = shape.ndim() - 1; d >= 0; --d) {
    tensor_numel *= shape[d];
    if (d == 0 || (shape[d - 1] != 1 && strides[static_cast<size_t>(d - 1)] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || to[view_d] == 1)) {
        out[static_cast<size_t>(view_d)] = view_numel * chunk_base_stride;
        view_numel *= to[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return {};
      if (d > 0) {
        chunk_base_stride = strides[static_cast<size_t>(d - 1)];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  if (view_d != -1) return {};
  return out;
}
}  // namespace

Tensor Tensor::view(const Shape& shape) const {
  Shape to = infer_shape(shape, numel(), shape_);
  if (is_contiguous()) return Tensor(storage_, to, to.contiguous_strides(), offset_, dtype_);
  std::vector<int64_t> st = numel() == 0 ? to.contiguous_strides() : view_strides(shape_, strides_, to);
  AL_CHECK_SHAPE(!st.empty() || to.ndim() == 0, "view: cannot view ", str(), " with strides ", Shape(strides_),
                 " as ", to, " without a copy; use reshape");
  return Tensor(storage_, to, std::move(st), offset_, dtype_);
}

Tensor Tensor::reshape(const Shape& shape) const {
  Shape to = infer_shape(shape, numel(), shape_);
  if (is_contiguous()) return Tensor(storage_, to, to.contiguous_strides(), offset_, dtype_);
  std::vector<int64_t> st = view_strides(shape_, strides_, to);
  if (!st.empty() || to.ndim() == 0) return Tensor(storage_, to, std::move(st), offset_, dtype_);
  return contiguous().view(to);
}

Tensor Tensor::permute(const std::vector<int64_t>& dims) const {
  AL_CHECK_SHAPE(static_cast<int64_t>(dims.size()) == ndim(), "permute: expected ", ndim(), " dims for ", str(),
                 "; got ", Shape(dims));
  std::vector<int64_t> sizes(dims.size()), st(dims.size());
  std::vector<bool> seen(dims.size(), false);
  for (size_t i = 0; i < dims.size(); ++i) {
    int64_t d = normalize_dim(dims[i], ndim(), "permute");
    AL_CHECK_SHAPE(!seen[static_cast<size_t>(d)], "permute: dim ", d, " repeats in ", Shape(dims));
    seen[static_cast<size_t>(d)] = true;
    sizes[i] = shape_[d];
    st[i] = strides_[static_cast<size_t>(d)];
  }
  return Tensor(storage_, Shape(std::move(sizes)), std::move(st), offset_, dtype_);
}

Tensor Tensor::transpose(int64_t dim0, int64_t dim1) const {
  std::vector<int64_t> order(static_cast<size_t>(ndim()));
  std::iota(order.begin(), order.end(), 0);
  std::swap(order[static_cast<size_t>(normalize_dim(dim0, ndim(), "transpose"))],
            order[static_cast<size_t>(normalize_dim(dim1, ndim(), "transpose"))]);
  return permute(order);
}

Tensor Tensor::narrow(int64_t dim, int64_t start, int64_t length) const {
  int64_t d = normalize_dim(dim, ndim(), "narrow");
  AL_CHECK_SHAPE(start >= 0 && length >= 0 && start + length <= shape_[d], "narrow: range [", start, ", ",
                 start + length, ") is outside dim ", d, " of ", str());
  Shape s = shape_;
  s[d] = length;
  return Tensor(storage_, s, strides_, offset_ + start * strides_[static_cast<size_t>(d)], dtype_);
}

Tensor Tensor::slice(int64_t dim, int64_t start, int64_t end, int64_t step) const {
  int64_t d = normalize_dim(dim, ndim(), "slice");
  AL_CHECK_SHAPE(step >= 1, "slice: step must be >= 1; got ", step);
  const int64_t n = shape_[d];
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape s = shape_;
  s[d] = (end - start + step - 1) / step;
  std::vector<int64_t> st = strides_;
  st[static_cast<size_t>(d)] *= step;
  return Tensor(storage_, s, std::move(st), offset_ + start * strides_[static_cast<size_t>(d)], dtype_);
}

Tensor Tensor::expand(const Shape& shape) const {
  Shape to = broadcast_shapes(shape_, shape, "expand");
  AL_CHECK_SHAPE(to == shape, "expand: cannot expand ", str(), " to ", shape);
  return Tensor(storage_, to, broadcast_strides(shape_, strides_, to), offset_, dtype_);
}

Tensor Tensor::unsqueeze(int64_t dim) const {
  int64_t d = normalize_dim(dim, ndim() + 1, "unsqueeze");
  std::vector<int64_t> sizes = shape_.dims(), st = strides_;
  sizes.insert(sizes.begin() + d, 1);
  st.insert(st.begin() + d, d < ndim() ? strides_[static_cast<size_t>(d)] * shape_[d] : 1);
  return Tensor(storage_, Shape(std::move(sizes)), std::move(st), offset_, dtype_);
}

// ---- copies --------------------------------------------------------------------------------

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape_, dtype_, device_);
  out.copy_(*this);
  return out;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return *this;
  Tensor out = empty(shape_, dtype, device_);
  out.copy_(*this);
  return out;
}

Tensor Tensor::to(Device device) const {
  if (device == device_) return *this;
  Tensor out = empty(shape_, dtype_, device);
  out.copy_(*this);
  return out;
}

void Tensor::copy_(const Tensor& src) {
  AL_CHECK(defined() && src.defined(), "copy_: both tensors must be defined; got dst=", str(), ", src=", src.str());
  Shape b = broadcast_shapes(src.shape(), shape_, "copy_");
  AL_CHECK_SHAPE(b == shape_, "copy_: source ", src.str(), " does not broadcast to destination ", str());
  if (!device_.is_cpu() || !src.device().is_cpu()) {
    copy_across_devices(src);
    return;
  }
  std::array<std::vector<int64_t>, 2> st{strides_, broadcast_strides(src.shape(), src.strides(), shape_)};
  dispatch_any(dtype_, [&](auto dtag) {
    using D = decltype(dtag);
    dispatch_any(src.dtype(), [&](auto stag) {
      using S = decltype(stag);
      D* dst = data<D>();
      const S* s = src.data<S>();
      cpu::for_each_row(shape_, st, [&](int64_t n, const auto& off, const auto& inc) {
        D* d = dst + off[0];
        const S* p = s + off[1];
        if constexpr (std::is_same_v<D, S>) {
          if (inc[0] == 1 && inc[1] == 1) {  // the common case: a plain block copy
            std::copy_n(p, n, d);
            return;
          }
        }
        for (int64_t i = 0; i < n; ++i) d[i * inc[0]] = convert_to<D>(p[i * inc[1]]);
      });
    });
  });
}

void Tensor::fill_(double value) {
  AL_CHECK(defined(), "fill_: undefined tensor");
#if ATTNLAB_WITH_CUDA
  if (device_.is_cuda()) {
    cuda::fill(*this, value);
    return;
  }
#endif
  std::array<std::vector<int64_t>, 1> st{strides_};
  dispatch_any(dtype_, [&](auto tag) {
    using T = decltype(tag);
    const T v = convert_to<T>(value);
    T* base = data<T>();
    cpu::for_each_row(shape_, st, [&](int64_t n, const auto& off, const auto& inc) {
      T* d = base + off[0];
      for (int64_t i = 0; i < n; ++i) d[i * inc[0]] = v;
    });
  });
}

// Copies that involve a CUDA tensor. Device to device runs one strided kernel (conversion and
// broadcasting included). Across host and device, the bytes move as one contiguous block of the
// source's dtype and shape, and the strided/converting/broadcasting part runs on the side that
// owns the destination.
void Tensor::copy_across_devices(const Tensor& src) {
#if ATTNLAB_WITH_CUDA
  if (device_.is_cuda() && src.device().is_cuda()) {
    AL_CHECK_DEVICE(device_ == src.device(), "copy_: CUDA tensors on different devices; got dst=", str(), ", src=",
                    src.str());
    cuda::copy_strided(*this, src);
    return;
  }
  const size_t bytes = static_cast<size_t>(src.numel()) * dtype_size(src.dtype());
  if (src.device().is_cuda()) {  // device -> host
    const Tensor packed = src.contiguous();
    Tensor host = empty(src.shape(), src.dtype());
    cuda::copy_d2h(host.raw_data(), packed.raw_data(), bytes);
    copy_(host);
    return;
  }
  // host -> device
  const Tensor packed = src.contiguous();
  if (dtype_ == src.dtype() && shape_ == src.shape() && is_contiguous()) {
    cuda::copy_h2d(raw_data(), packed.raw_data(), bytes);
    return;
  }
  Tensor staged = empty(src.shape(), src.dtype(), device_);
  cuda::copy_h2d(staged.raw_data(), packed.raw_data(), bytes);
  cuda::copy_strided(*this, staged);
#else
  AL_CHECK_DEVICE(false, "copy_: this build of attnlab has no CUDA backend; got dst=", str(), ", src=", src.str());
#endif
}

}  // namespace attnlab
