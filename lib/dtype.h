// Element types: f32 (default), f64 (every differentiable CPU op supports it, for gradcheck),
// bf16 (storage only on the CPU; CUDA mixed precision later), i32 (token ids, indices).
#pragma once

#include <cstdint>
#include <cstring>
#include <ostream>
#include <string_view>
#include <type_traits>

#include "lib/error.h"

namespace attnlab {

enum class DType : uint8_t { f32, f64, bf16, i32 };

// bfloat16: the top 16 bits of an IEEE f32. Conversion rounds to nearest even; NaN stays NaN.
struct bf16 {
  uint16_t bits = 0;

  bf16() = default;
  explicit bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it quiet and non-zero
      bits = static_cast<uint16_t>((u >> 16) | 0x40u);
    } else {
      u += 0x7fffu + ((u >> 16) & 1u);
      bits = static_cast<uint16_t>(u >> 16);
    }
  }
  explicit operator float() const {
    uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};
static_assert(sizeof(bf16) == 2);

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::bf16: return 2;
    case DType::i32: return 4;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::bf16: return "bf16";
    case DType::i32: return "i32";
  }
  return "?";
}

constexpr bool is_floating(DType t) { return t != DType::i32; }

inline std::ostream& operator<<(std::ostream& os, DType t) { return os << dtype_name(t); }

template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<bf16> { static constexpr DType value = DType::bf16; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::i32; };
template <typename T> inline constexpr DType dtype_v = dtype_of<T>::value;

// Calls fn(T{}) with T = float or double for the compute dtypes of differentiable CPU ops.
// `what` names the op for the error when t is neither.
template <typename Fn>
decltype(auto) dispatch_float(DType t, std::string_view what, Fn&& fn) {
  switch (t) {
    case DType::f32: return fn(float{});
    case DType::f64: return fn(double{});
    default: break;
  }
  detail::throw_error<DTypeError>(what, ": expected f32 or f64; got ", t);
}

}  // namespace attnlab

namespace attnlab {

// Calls fn(T{}) for any dtype, T one of float, double, bf16, int32_t.
template <typename Fn>
decltype(auto) dispatch_any(DType t, Fn&& fn) {
  switch (t) {
    case DType::f32: return fn(float{});
    case DType::f64: return fn(double{});
    case DType::bf16: return fn(bf16{});
    case DType::i32: return fn(int32_t{});
  }
  detail::throw_error<InternalError>("dispatch_any: bad dtype");
}

// Value conversion between element types, going through float for bf16.
template <typename To, typename From>
inline To convert_to(From x) {
  if constexpr (std::is_same_v<To, From>) {
    return x;
  } else if constexpr (std::is_same_v<From, bf16>) {
    return static_cast<To>(static_cast<float>(x));
  } else if constexpr (std::is_same_v<To, bf16>) {
    return bf16(static_cast<float>(x));
  } else {
    return static_cast<To>(x);
  }
}

}  // namespace attnlab
