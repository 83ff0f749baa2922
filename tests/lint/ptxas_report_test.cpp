// Reads the ptxas resource reports that the nvcc build of the CUDA kernels writes (one file per
// kernel source under ATTNLAB_PTXAS_LOG_DIR, by cmake/ptxas-log.sh), prints one line per kernel
// and architecture (registers, static shared memory, spills), and fails on any register spill or
// on static shared memory above the 48 KiB that every architecture grants without opt-in.
#include <cxxabi.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;

struct KernelResources {
  std::string source, kernel, arch;
  long registers = -1, smem = 0, spill_stores = 0, spill_loads = 0;
};

std::string demangle(const std::string& name) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> d(abi::__cxa_demangle(name.c_str(), nullptr, nullptr, &status), std::free);
  std::string s = status == 0 && d ? d.get() : name;
  return s.size() > 90 ? s.substr(0, 87) + "..." : s;
}

std::vector<KernelResources> parse(const fs::path& file) {
  std::vector<KernelResources> out;
  std::ifstream in(file);
  std::string line, source;
  const std::regex entry(R"(Compiling entry function '([^']+)' for '(sm_\d+)')");
  const std::regex spills(R"((\d+) bytes spill stores, (\d+) bytes spill loads)");
  const std::regex used(R"(Used (\d+) registers)");
  const std::regex smem(R"((\d+) bytes smem)");
  std::smatch m;
  while (std::getline(in, line)) {
    if (line.rfind("### ", 0) == 0) source = line.substr(4);
    if (std::regex_search(line, m, entry)) out.push_back({source, demangle(m[1]), m[2]});
    if (out.empty()) continue;
    if (std::regex_search(line, m, spills)) {
      out.back().spill_stores = std::stol(m[1]);
      out.back().spill_loads = std::stol(m[2]);
    }
    if (std::regex_search(line, m, used)) out.back().registers = std::stol(m[1]);
    if (std::regex_search(line, m, smem)) out.back().smem = std::stol(m[1]);
  }
  return out;
}

TEST(PtxasReport, NoSpillsAndSharedMemoryWithinLimits) {
  const fs::path dir = ATTNLAB_PTXAS_LOG_DIR;
  ASSERT_TRUE(fs::is_directory(dir)) << "no ptxas reports at " << dir << ": build attnlab_cuda_real first";
  std::vector<KernelResources> all;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".log")
      for (KernelResources& k : parse(e.path())) all.push_back(std::move(k));
  ASSERT_FALSE(all.empty()) << "the ptxas reports under " << dir << " name no kernels";
  std::printf("%-6s %5s %7s %6s  %s\n", "arch", "regs", "smem", "spill", "kernel");
  for (const KernelResources& k : all) {
    std::printf("%-6s %5ld %7ld %6ld  %s\n", k.arch.c_str(), k.registers, k.smem, k.spill_stores + k.spill_loads,
                k.kernel.c_str());
    EXPECT_EQ(k.spill_stores + k.spill_loads, 0) << k.kernel << " (" << k.arch << ") spills registers";
    EXPECT_LE(k.smem, 48 * 1024) << k.kernel << " (" << k.arch << ") uses more static shared memory than 48 KiB";
    EXPECT_GT(k.registers, -1) << k.kernel << ": no register count in the report";
  }
}

}  // namespace
