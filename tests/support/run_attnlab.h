// Runs the attnlab binary (ATTNLAB_BIN) with arguments through the shell and captures its exit
// code, stdout and stderr, for the command-line tests. Each call gets its own stderr file, so
// tests that ctest runs in parallel do not share one.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace attnlab::test {

struct CommandResult {
  int code = -1;  // the exit status, or -1 if the process did not exit normally
  std::string out, err;
};

// `program args` through the shell (program may carry a launcher: "mpirun -np 2 .../attnlab").
inline CommandResult run_program(const std::string& program, const std::string& args) {
  static std::atomic<int> counter{0};
  const std::filesystem::path err_path =
      std::filesystem::temp_directory_path() /
      ("attnlab_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + ".err");
  const std::string cmd = program + " " + args + " 2>" + err_path.string();
  CommandResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream e(err_path);
  std::stringstream ss;
  ss << e.rdbuf();
  r.err = ss.str();
  std::filesystem::remove(err_path);
  return r;
}

#ifdef ATTNLAB_BIN
inline CommandResult run_attnlab(const std::string& args) { return run_program(ATTNLAB_BIN, args); }
#endif

}  // namespace attnlab::test
