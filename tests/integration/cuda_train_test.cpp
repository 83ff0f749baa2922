// The training path on a CUDA device, run by `attnlab-simt` (the CLI whose CUDA kernels run on
// the simt emulator): a tiny_debug training step on cuda must match the CPU step's loss and
// gradients to f32 tolerance (compare-devices), and a short run with run.device = cuda must
// train, checkpoint, evaluate and sample like a CPU run.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include "tests/support/run_attnlab.h"

namespace fs = std::filesystem;

namespace {

class CudaTrain : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("attnlab_cuda_train_test_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // tiny_debug with the corpus found from the source tree; small shapes keep the emulator quick.
  std::string recipe_args() const {
    return std::string(ATTNLAB_SOURCE_DIR) + "/recipes/tiny_debug.ini --run.dir=" + dir_.string() +
           " --data.corpus_dir=" + ATTNLAB_SOURCE_DIR + "/corpora --train.batch=2 --train.seq_len=16";
  }
  fs::path dir_;
};

TEST_F(CudaTrain, StepMatchesTheCpuStep) {
  // Dropout on, so the counter-based masks must also agree between the devices.
  const auto r = attnlab::test::run_attnlab("compare-devices " + recipe_args() +
                                            " --run.device=cuda --model.dropout=0.1 --steps 2");
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("PASS"), std::string::npos) << r.out;
  // Both rows of the table are there: two steps compared.
  EXPECT_TRUE(std::regex_search(r.out, std::regex(R"(\n\s+2\s+\d+\.\d+\s+\d+\.\d+)"))) << r.out;
}

TEST_F(CudaTrain, ShortRunOnCudaTrainsCheckpointsAndSamples) {
  const auto r = attnlab::test::run_attnlab("train " + recipe_args() +
                                            " --run.device=cuda --train.steps=4 --optim.warmup=1 --train.log_every=2"
                                            " --train.eval_every=4 --train.eval_batches=1 --train.checkpoint_every=4"
                                            " --sample.tokens=8");
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("device: cuda:0"), std::string::npos) << r.out;
  const fs::path run = dir_ / "tiny_debug";
  EXPECT_TRUE(fs::exists(run / "checkpoints" / "step-000004.model.safetensors"));
  EXPECT_TRUE(fs::exists(run / "samples.txt"));
  std::ifstream m(run / "metrics.jsonl");
  std::string line, last;
  while (std::getline(m, line)) last = line;
  EXPECT_NE(last.find("val_loss"), std::string::npos) << last;
}

TEST_F(CudaTrain, AskingForAMissingDeviceIsAUserError) {
  const auto r = attnlab::test::run_attnlab("train " + recipe_args() + " --run.device=cuda:3");
  EXPECT_EQ(r.code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("cuda:3"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir_ / "tiny_debug"));
}

}  // namespace
