// Where a tensor lives: the CPU, or CUDA device N (the slot exists now; the CUDA backend
// fills it in). Parsed from and printed as "cpu" / "cuda:0".
#pragma once

#include <ostream>
#include <string>
#include <string_view>

namespace attnlab {

struct CpuTag {};
struct CudaTag {};

struct Device {
  enum class Kind : uint8_t { cpu, cuda };
  Kind kind = Kind::cpu;
  int index = 0;

  static Device cpu() { return {}; }
  static Device cuda(int index = 0) { return {Kind::cuda, index}; }
  // Accepts "cpu", "cuda" and "cuda:N"; throws ConfigError otherwise.
  static Device parse(std::string_view text);

  bool is_cpu() const { return kind == Kind::cpu; }
  bool is_cuda() const { return kind == Kind::cuda; }
  bool operator==(const Device&) const = default;
  std::string str() const;
};

std::ostream& operator<<(std::ostream& os, const Device& d);

}  // namespace attnlab
