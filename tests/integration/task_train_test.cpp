// `attnlab train` on synthetic tasks (data.task) end to end: a tiny MQAR model learns well above
// chance, an in-context regression model's validation mse falls, a resumed task run continues bit
// for bit, every run ends with a complete result.json, `eval` and `sample` on a task run, and bad
// task keys exit with code 2 naming the key.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "lib/error.h"
#include "tests/support/cli_run_dir.h"
#include "train/recipe.h"
#include "train/trainer.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace attnlab::test {
namespace {

// A tiny MQAR recipe: 4 key-value pairs (8 keys, 8 values) in sequences of 16, 2 layers of d_model
// 32. Chance is 1/8 and guessing the most frequent value of the context about 0.4; the model passes
// 0.6 by step 600.
constexpr const char* kMqar = R"([run]
name = mqar
seed = 1
[data]
task = mqar
vocab = 16
pairs = 4
[model]
layers = 2
d_model = 32
heads = 2
context = 32
[optim]
lr = 0.003
warmup = 10
weight_decay = 0
[train]
batch = 32
seq_len = 16
steps = 600
log_every = 50
eval_every = 200
eval_batches = 4
checkpoint_every = 200
)";

// In-context linear regression: 16 (x, y) pairs of dimension 1 per sequence (each sequence its own
// slope). The model first predicts the mean (mse about 1), then learns to read the slope off the
// context (near step 250 here).
constexpr const char* kRegression = R"([run]
name = regression
seed = 1
[data]
task = regression
dim = 1
out_dim = 1
[model]
layers = 2
d_model = 64
heads = 4
[optim]
lr = 0.003
warmup = 10
weight_decay = 0
[train]
batch = 32
seq_len = 32
steps = 600
log_every = 50
eval_every = 100
eval_batches = 4
)";

json read_json(const fs::path& path) {
  std::ifstream in(path);
  return json::parse(in);
}

class TaskTrain : public CliRunDir {
 protected:
  TaskTrain() : CliRunDir("attnlab_task_train_test_") {}
  // One thread per run: the runs are bit-identical on any thread count, and on a loaded machine a
  // tiny model's OpenMP barriers cost more than its second thread gains.
  void SetUp() override {
    CliRunDir::SetUp();
    ::setenv("OMP_NUM_THREADS", "1", /*overwrite=*/1);
  }
  // Writes `recipe` into the test's directory and returns the train arguments for it.
  std::string train(const char* recipe, const std::string& extra = "") const {
    const fs::path path = dir_ / "recipe.ini";
    std::ofstream(path) << recipe;
    return "train " + path.string() + " --run.dir=" + dir_.string() + " " + extra;
  }
};

TEST_F(TaskTrain, MqarLearnsAboveChanceAndWritesAResult) {
  const Result r = run(train(kMqar, "--data.eval_lengths=24,32"));
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  const fs::path run_dir = dir_ / "mqar";
  const std::vector<json> m = read_metrics(run_dir);
  ASSERT_FALSE(m.empty());
  const json& last = m.back();
  EXPECT_EQ(last["step"], 600);
  for (const char* key : {"val_loss", "val_accuracy", "val_accuracy@24", "val_accuracy@32", "attention"})
    EXPECT_TRUE(last.contains(key)) << key << ": " << last.dump();
  EXPECT_GT(last["val_accuracy"].get<double>(), 0.5) << r.out;
  EXPECT_NE(r.out.find("accuracy"), std::string::npos);
  // No token shards for a generated task; validation rows in place of a text sample.
  EXPECT_FALSE(fs::exists(run_dir / "tokens.train.bin"));
  EXPECT_FALSE(read_text(run_dir / "samples.txt").empty());

  const json res = read_json(run_dir / "result.json");
  for (const char* key : {"steps", "final_train_loss", "final_val_loss", "skipped_steps", "seconds", "tokens_per_s",
                          "parameters", "peak_rss_mb", "metric", "metric_value", "higher_is_better", "metric_by_length",
                          "sink_mean", "attention", "residual", "task", "device", "threads"})
    EXPECT_TRUE(res.contains(key)) << key << ": " << res.dump();
  EXPECT_FALSE(res.contains("peak_device_mb"));      // a CPU run
  EXPECT_FALSE(res.contains("routing_max_weight"));  // the standard residual
  EXPECT_EQ(res["steps"], 600);
  EXPECT_EQ(res["metric"], "accuracy");
  EXPECT_EQ(res["task"], "mqar");
  EXPECT_EQ(res["higher_is_better"], true);
  EXPECT_EQ(res["metric_value"].get<double>(), last["val_accuracy"].get<double>());
  EXPECT_EQ(res["final_val_loss"].get<double>(), last["val_loss"].get<double>());
  EXPECT_EQ(res["metric_by_length"]["32"].get<double>(), last["val_accuracy@32"].get<double>());
  EXPECT_EQ(res["metric_by_length"]["16"].get<double>(), last["val_accuracy"].get<double>());
  EXPECT_GT(res["peak_rss_mb"].get<double>(), 1.0);
  EXPECT_GT(res["tokens_per_s"].get<double>(), 0.0);
  EXPECT_GT(res["parameters"].get<int64_t>(), 0);

  // eval prints the metric; sample refuses with a reason.
  const Result e = run("eval " + run_dir.string());
  ASSERT_EQ(e.code, 0) << e.err;
  EXPECT_NE(e.out.find("accuracy"), std::string::npos) << e.out;
  const Result s = run("sample " + run_dir.string());
  EXPECT_EQ(s.code, 2) << s.out;
  EXPECT_NE(s.err.find("synthetic task"), std::string::npos) << s.err;

  // A resume of the finished run evaluates once more and writes the result again.
  fs::remove(run_dir / "result.json");
  const Result again = run(train(kMqar, "--data.eval_lengths=24,32 --resume"));
  ASSERT_EQ(again.code, 0) << again.out << again.err;
  const json res2 = read_json(run_dir / "result.json");
  EXPECT_EQ(res2["metric_value"], res["metric_value"]);
  EXPECT_EQ(res2["final_train_loss"], res["final_train_loss"]);
  EXPECT_EQ(res2["steps"], 600);
  EXPECT_EQ(read_metrics(run_dir).size(), m.size());
}

TEST_F(TaskTrain, RegressionMseFalls) {
  const Result r = run(train(kRegression));
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  const std::vector<json> m = read_metrics(dir_ / "regression");
  std::vector<double> mse;
  for (const json& row : m)
    if (row.contains("val_mse")) mse.push_back(row["val_mse"].get<double>());
  ASSERT_GE(mse.size(), 2u);
  EXPECT_LT(mse.back(), 0.5 * mse.front()) << r.out;
  const json res = read_json(dir_ / "regression" / "result.json");
  EXPECT_EQ(res["metric"], "mse");
  EXPECT_EQ(res["higher_is_better"], false);
  EXPECT_FALSE(res.contains("metric_by_length"));
  EXPECT_NE(r.out.find("mse"), std::string::npos);
}

TEST_F(TaskTrain, PiecewiseRegressionReportsEachSegment) {
  const Result r = run(train(
      kRegression,
      "--data.task=piecewise_regression --data.segments=2 --train.steps=10 --train.eval_every=10 --model.d_model=32 "
      "--run.name=piecewise"));
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  const json last = read_metrics(dir_ / "piecewise").back();
  EXPECT_TRUE(last.contains("val_mse_seg1")) << last.dump();
  EXPECT_TRUE(last.contains("val_mse_seg2")) << last.dump();
}

TEST_F(TaskTrain, ResumeReproducesTheUninterruptedRunBitForBit) {
  const std::string args = "--train.steps=40 --train.log_every=5 --train.eval_every=20 --train.checkpoint_every=20";
  ASSERT_EQ(run(train(kMqar, args + " --run.name=full")).code, 0);
  const fs::path full = dir_ / "full", part = dir_ / "part";
  fs::copy(full, part, fs::copy_options::recursive);
  fs::remove(part / "checkpoints" / "step-000040.model.safetensors");
  fs::remove(part / "checkpoints" / "step-000040.state.safetensors");
  std::ofstream(part / "checkpoints" / "latest") << "step-000020\n";
  const Result r = run(train(kMqar, args + " --run.name=part --resume"));
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("resuming"), std::string::npos);
  const std::vector<json> a = read_metrics(full), b = read_metrics(part);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i]["step"], b[i]["step"]);
    for (const char* key : {"train_loss", "grad_norm", "val_loss", "val_accuracy"})
      EXPECT_EQ(a[i].value(key, 0.0), b[i].value(key, 0.0)) << key << " at step " << a[i]["step"];
  }
  EXPECT_EQ(read_text(full / "checkpoints" / "step-000040.model.safetensors"),
            read_text(part / "checkpoints" / "step-000040.model.safetensors"));
  EXPECT_EQ(read_json(full / "result.json")["metric_value"], read_json(part / "result.json")["metric_value"]);
}

TEST_F(TaskTrain, BadTaskKeysExitWithTwoNamingTheKey) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {train(kMqar, "--data.task=mqra"), "mqra"},
      {train(kMqar, "--data.corpus=austen"), "data.corpus"},
      {train(kMqar, "--data.dim=4"), "data.dim"},  // a regression key on a token task
      {train(kMqar, "--data.eval_lengths=64"), "data.eval_lengths"},
      {train(kMqar, "--data.eval_lengths=8"), "data.eval_lengths"},
      {train(kMqar, "--data.eval_lengths=16,x"), "data.eval_lengths"},
      {train(kMqar, "--train.seq_len=8"), "seq_len"},
      {train(kMqar, "--data.pairs=0"), "pairs"},
      {train(kMqar, "--sample.tokens=5"), "sample.tokens"},
  };
  for (const auto& [args, fragment] : cases) {
    const Result r = run(args);
    EXPECT_EQ(r.code, 2) << args << "\n" << r.out << r.err;
    EXPECT_NE(r.err.find(fragment), std::string::npos) << args << "\n" << r.err;
  }
  EXPECT_FALSE(fs::exists(dir_ / "mqar"));
}

// check_train_recipe: the same checks as `attnlab train`, without touching a file.
TEST_F(TaskTrain, CheckTrainRecipeReadsEveryKeyAndWritesNothing) {
  const std::string runs = "--run.dir=" + (dir_ / "runs").string();
  Recipe good = Recipe::parse(kMqar, "mqar.ini", {runs, "--data.eval_lengths=32"});
  EXPECT_NO_THROW(check_train_recipe(good));
  for (const std::string& bad : {std::string("--data.eval_lengths=33"), std::string("--data.corpus=austen"),
                                 std::string("--data.task=nope"), std::string("--model.heads=3")}) {
    Recipe r = Recipe::parse(kMqar, "mqar.ini", {runs, bad});
    EXPECT_THROW(check_train_recipe(r), ConfigError) << bad;
  }
  // A corpus recipe is checked without loading its corpus.
  Recipe corpus = Recipe::parse("[data]\ncorpus = /nonexistent/corpus.txt\n", "corpus.ini", {runs});
  EXPECT_NO_THROW(check_train_recipe(corpus));
  EXPECT_FALSE(fs::exists(dir_ / "runs"));
}

}  // namespace
}  // namespace attnlab::test
