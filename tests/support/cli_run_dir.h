// A scratch run directory (scratch_dir.h) for the command-line tests that train tiny_debug.ini:
// the `attnlab train` arguments that write into it, running the binary, and a run's metrics.jsonl
// rows. Needs ATTNLAB_SOURCE_DIR and (run_attnlab.h) ATTNLAB_BIN from the test target.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "tests/support/run_attnlab.h"
#include "tests/support/scratch_dir.h"

namespace attnlab::test {

// The rows of <run_dir>/metrics.jsonl, in order.
inline std::vector<nlohmann::json> read_metrics(const std::filesystem::path& run_dir) {
  std::vector<nlohmann::json> out;
  std::ifstream in(run_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

class CliRunDir : public ScratchDir {
 protected:
  using Result = CommandResult;
  explicit CliRunDir(std::string prefix) : ScratchDir(std::move(prefix)) {}
  static Result run(const std::string& args) { return run_attnlab(args); }
  // `train` arguments for tiny_debug.ini writing its runs under dir_, plus extra.
  std::string train(const std::string& extra) const {
    return std::string("train ") + ATTNLAB_SOURCE_DIR + "/recipes/tiny_debug.ini --run.dir=" + dir_.string() +
           " --data.corpus_dir=" + ATTNLAB_SOURCE_DIR + "/corpora " + extra;
  }
};

}  // namespace attnlab::test
