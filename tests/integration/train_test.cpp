// `attnlab train`, `sample` and `eval` end to end on recipes/tiny_debug.ini: the loss falls, a
// resumed run continues bit for bit, and bad input exits with code 2 leaving the run directory
// as it was.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tests/support/run_attnlab.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

using Result = attnlab::test::CommandResult;

Result run(const std::string& args) { return attnlab::test::run_attnlab(args); }

std::vector<json> metrics(const fs::path& run_dir) {
  std::vector<json> out;
  std::ifstream in(run_dir / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) out.push_back(json::parse(line));
  return out;
}

// A private runs directory per test, and the recipe with the corpus found from the source tree.
class Train : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("attnlab_train_test_" + std::string(
                                             ::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string train(const std::string& extra) const {
    return std::string("train ") + ATTNLAB_SOURCE_DIR + "/recipes/tiny_debug.ini --run.dir=" + dir_.string() +
           " --data.corpus_dir=" + ATTNLAB_SOURCE_DIR + "/corpora " + extra;
  }
  fs::path dir_;
};

// Every file under a directory with its bytes, to show that nothing changed.
std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    std::ifstream in(e.path(), std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    files[fs::relative(e.path(), dir).string()] = ss.str();
  }
  return files;
}

TEST_F(Train, LossFallsAndTheRunDirectoryHasEverything) {
  const Result r = run(train(""));
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  const fs::path run_dir = dir_ / "tiny_debug";
  const std::vector<json> m = metrics(run_dir);
  ASSERT_GE(m.size(), 4u);
  EXPECT_EQ(m.front()["step"], 1);
  EXPECT_EQ(m.back()["step"], 40);
  EXPECT_LT(m.back()["train_loss"].get<double>(), m.front()["train_loss"].get<double>() - 1.0) << r.out;
  EXPECT_TRUE(m.back().contains("val_loss"));
  for (const char* key : {"lr", "grad_norm", "tokens_per_s"}) EXPECT_TRUE(m.back().contains(key)) << key;
  for (const char* f : {"recipe.ini", "samples.txt", "checkpoints/latest", "checkpoints/step-000020.model.safetensors",
                        "checkpoints/step-000040.state.safetensors"})
    EXPECT_TRUE(fs::exists(run_dir / f)) << f;
  EXPECT_NE(r.out.find("sample"), std::string::npos);

  const Result s = run(std::string("sample ") + run_dir.string() + " --prompt=Emma --tokens=30 --top_k=5");
  ASSERT_EQ(s.code, 0) << s.err;
  EXPECT_EQ(s.out.rfind("Emma", 0), 0u) << s.out;
  EXPECT_GE(s.out.size(), 30u);
  const Result e = run(std::string("eval ") + run_dir.string() + " --batches=20");
  ASSERT_EQ(e.code, 0) << e.err;
  EXPECT_NE(e.out.find("perplexity"), std::string::npos) << e.out;
}

TEST_F(Train, ResumeReproducesTheUninterruptedRunBitForBit) {
  ASSERT_EQ(run(train("--run.name=full")).code, 0);
  // Make a run directory that stopped after step 20, then resume it.
  const fs::path full = dir_ / "full", part = dir_ / "part";
  fs::copy(full, part, fs::copy_options::recursive);
  fs::remove(part / "checkpoints" / "step-000040.model.safetensors");
  fs::remove(part / "checkpoints" / "step-000040.state.safetensors");
  std::ofstream(part / "checkpoints" / "latest") << "step-000020\n";
  const Result r = run(train("--run.name=part --resume"));
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("resuming"), std::string::npos);
  const std::vector<json> a = metrics(full), b = metrics(part);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i]["step"], b[i]["step"]);
    EXPECT_EQ(a[i]["train_loss"].get<double>(), b[i]["train_loss"].get<double>()) << "step " << a[i]["step"];
    EXPECT_EQ(a[i]["grad_norm"].get<double>(), b[i]["grad_norm"].get<double>()) << "step " << a[i]["step"];
    EXPECT_EQ(a[i].value("val_loss", 0.0), b[i].value("val_loss", 0.0)) << "step " << a[i]["step"];
  }
  // The final weights are the same bytes.
  std::ifstream fa(full / "checkpoints" / "step-000040.model.safetensors", std::ios::binary),
      fb(part / "checkpoints" / "step-000040.model.safetensors", std::ios::binary);
  std::stringstream sa, sb;
  sa << fa.rdbuf();
  sb << fb.rdbuf();
  EXPECT_TRUE(sa.str() == sb.str());
}

TEST_F(Train, BadInputExitsWithTwoAndTouchesNothing) {
  ASSERT_EQ(run(train("")).code, 0);
  const auto before = snapshot(dir_);
  const fs::path ckpt = dir_ / "tiny_debug" / "checkpoints" / "step-000040.model.safetensors";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {train("--model.hiden=3"), "unknown key 'model.hiden'"},
      {train("--train.steps=abc"), "not an integer"},
      {train("--model.norm=batchnorm"), "norm"},
      {train("--data.corpus=/nonexistent/corpus.txt --run.name=other"), "/nonexistent/corpus.txt"},
      {train(""), "--resume"},                              // would overwrite existing checkpoints
      {train("--resume --model.d_model=32"), "config"},     // checkpoint from another model shape
      {std::string("sample ") + (dir_ / "nope").string(), "does not exist"},
  };
  for (const auto& [args, fragment] : cases) {
    const Result r = run(args);
    EXPECT_EQ(r.code, 2) << args << "\n" << r.out << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << args << "\n" << r.err;
    EXPECT_NE(r.err.find(fragment), std::string::npos) << args << "\n" << r.err;
  }
  EXPECT_TRUE(snapshot(dir_) == before) << "a rejected command changed the runs directory";

  // A truncated checkpoint: sampling from it is a clear error, not a crash.
  std::string bytes = before.at("tiny_debug/checkpoints/step-000040.model.safetensors");
  std::ofstream(ckpt, std::ios::binary | std::ios::trunc) << bytes.substr(0, bytes.size() / 2);
  const Result s = run(std::string("sample ") + (dir_ / "tiny_debug").string());
  EXPECT_EQ(s.code, 2) << s.err;
  EXPECT_NE(s.err.find("safetensors"), std::string::npos) << s.err;
}

TEST_F(Train, NonFiniteStepsAreSkippedThenTheRunStops) {
  // An absurd learning rate drives the weights to inf within a few steps.
  const Result r = run(train("--optim.lr=1e30 --optim.min_lr=0 --optim.grad_clip=0 --train.max_bad_steps=3 "
                             "--train.checkpoint_every=2 --optim.warmup=0"));
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_NE(r.out.find("not finite; step skipped"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("3 non-finite steps in a row"), std::string::npos) << r.err;
}

}  // namespace
