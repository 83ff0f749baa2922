// Where a tensor lives: the CPU, or CUDA device N (a real GPU, or the simt emulator in builds
// whose kernels run on the CPU). Parsed from and printed as "cpu" / "cuda:0".
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
  // Written out (not defaulted): kernel files include this header and stay C++17.
  bool operator==(const Device& o) const { return kind == o.kind && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const;
};

std::ostream& operator<<(std::ostream& os, const Device& d);

}  // namespace attnlab
