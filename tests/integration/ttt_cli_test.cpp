// `attnlab ttt`, `eval --ttt` and `sample --ttt` end to end on models trained here in seconds: the
// ttt run directory's files (ttt.jsonl per length, results.md, result.json), training the init
// model first from ttt.init_recipe, and bad keys or flags exiting with code 2 naming them.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/support/cli_run_dir.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace attnlab::test {
namespace {

// kv_retrieval with 4 pairs of 16 tokens and one demo, sequences of 24, one layer of d_model 32:
// trains in a few seconds (the accuracy does not matter here).
std::string kv_recipe(const std::string& name, const fs::path& dir, int64_t steps) {
  return "[run]\nname = " + name + "\ndir = " + dir.string() +
         "\nseed = 1\n[data]\ntask = kv_retrieval\nvocab = 16\npairs = 4\nqueries = 1\neval_lengths = 32\n"
         "[model]\nlayers = 1\nd_model = 32\nheads = 2\ncontext = 40\npositions = rope\nnorm = rmsnorm\n"
         "[optim]\nlr = 0.003\nwarmup = 5\n[train]\nbatch = 8\nseq_len = 24\nsteps = " +
         std::to_string(steps) + "\nlog_every = 10\neval_every = " + std::to_string(steps) +
         "\neval_batches = 1\ncheckpoint_every = " + std::to_string(steps) + "\n";
}

class TttCli : public CliRunDir {
 protected:
  TttCli() : CliRunDir("attnlab_ttt_cli_") {}

  // Trains the kv model once per test into dir_/kv.
  fs::path train_kv() {
    write_text(dir_ / "kv.ini", kv_recipe("kv", dir_, 30));
    const Result r = run("train " + (dir_ / "kv.ini").string());
    EXPECT_EQ(r.code, 0) << r.err;
    return dir_ / "kv";
  }

  std::string ttt_recipe(const std::string& init, const std::string& extra = "") const {
    return "[run]\nname = t\ndir = " + dir_.string() + "\nseed = 3\n[ttt]\ninit = " + init +
           "\nsteps = 2\nspan = 4\nlr = 0.01\nexamples = 3\n" + extra;
  }
};

TEST_F(TttCli, TttWritesResultsPerLength) {
  const fs::path kv = train_kv();
  write_text(dir_ / "t.ini", ttt_recipe(kv.string()));
  const Result r = run("ttt " + (dir_ / "t.ini").string());
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("| length | plain | ttt | delta |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("length 24: 3/3 rows"), std::string::npos) << "progress lines: " << r.out;
  const fs::path run_dir = dir_ / "t";
  // The init run's lengths by default: train.seq_len 24, then data.eval_lengths 32.
  std::ifstream in(run_dir / "ttt.jsonl");
  std::vector<json> rows;
  for (std::string line; std::getline(in, line);) rows.push_back(json::parse(line));
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0]["length"], 24);
  EXPECT_EQ(rows[1]["length"], 32);
  for (const json& row : rows) {
    EXPECT_EQ(row["examples"], 3);
    for (const char* k : {"plain_accuracy", "ttt_accuracy"}) {
      EXPECT_GE(row[k].get<double>(), 0.0);
      EXPECT_LE(row[k].get<double>(), 1.0);
    }
    EXPECT_NEAR(row["delta"].get<double>(), row["ttt_accuracy"].get<double>() - row["plain_accuracy"].get<double>(),
                1e-12);
    EXPECT_GT(row["plain_answer_nll"].get<double>(), 0.0);
  }
  const json result = json::parse(read_text(run_dir / "result.json"));
  EXPECT_EQ(result["metric"], "accuracy");
  EXPECT_TRUE(result["metric_by_length"].contains("32"));
  EXPECT_TRUE(result["plain_by_length"].contains("24"));
  EXPECT_NE(read_text(run_dir / "results.md").find("| 32 |"), std::string::npos);
  EXPECT_NE(read_text(run_dir / "recipe.ini").find("steps = 2"), std::string::npos);

  // A task and lengths of its own, and LoRA on the queries.
  write_text(dir_ / "t2.ini", ttt_recipe(kv.string(),
                                         "params = lora\nrank = 2\n[data]\ntask = kv_retrieval\n"
                                         "vocab = 16\npairs = 3\nqueries = 0\neval_lengths = 20\n"));
  const Result r2 = run("ttt " + (dir_ / "t2.ini").string() + " --run.name=t2");
  ASSERT_EQ(r2.code, 0) << r2.out << r2.err;
  EXPECT_NE(read_text(dir_ / "t2" / "ttt.jsonl").find("\"length\":20"), std::string::npos);
}

TEST_F(TttCli, TrainsTheInitModelFromItsRecipeFirst) {
  write_text(dir_ / "child.ini", kv_recipe("child", dir_, 10));
  write_text(dir_ / "t.ini", ttt_recipe((dir_ / "child").string(), "init_recipe = " + (dir_ / "child.ini").string() +
                                                                       "\n[data]\neval_lengths = 24\n"));
  const Result r = run("ttt " + (dir_ / "t.ini").string());
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_TRUE(fs::exists(dir_ / "child" / "checkpoints" / "latest"));
  EXPECT_TRUE(fs::exists(dir_ / "t" / "result.json"));
  // Without init_recipe, a missing checkpoint is a user error.
  write_text(dir_ / "t3.ini", ttt_recipe((dir_ / "nowhere").string()));
  const Result bad = run("ttt " + (dir_ / "t3.ini").string());
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("init_recipe"), std::string::npos) << bad.err;
}

TEST_F(TttCli, EvalTttAndBadInput) {
  const fs::path kv = train_kv();
  const Result r = run("eval " + kv.string() + " --ttt --ttt.steps=2 --ttt.span=4 --ttt.examples=3 --ttt.params=lora");
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("| 24 |"), std::string::npos) << r.out;
  // Bad settings and keys: exit 2, one line naming what was wrong.
  struct Case {
    std::string args, says;
  };
  write_text(dir_ / "bad_params.ini", ttt_recipe(kv.string(), "params = wk\n"));
  write_text(dir_ / "typo.ini", ttt_recipe(kv.string(), "stepz = 3\n"));
  write_text(dir_ / "ok.ini", ttt_recipe(kv.string()));
  write_text(dir_ / "no_init.ini", "[ttt]\nsteps = 2\n");
  for (const Case& c : std::vector<Case>{
           {"ttt " + (dir_ / "bad_params.ini").string(), "ttt.params"},
           {"ttt " + (dir_ / "typo.ini").string(), "ttt.stepz"},
           {"ttt " + (dir_ / "ok.ini").string() + " --ttt.span=24", "ttt.span"},
           {"ttt " + (dir_ / "no_init.ini").string(), "ttt.init"},
           {"ttt", "no recipe"},
           {"eval " + kv.string() + " --ttt.steps=2", "needs --ttt"},
           {"eval " + kv.string() + " --ttt --ttt.span=24", "ttt.span"},
           {"eval " + kv.string() + " --ttt --ttt.params=all", "ttt.params"},
           {"sample " + kv.string() + " --ttt", "synthetic task"},
       }) {
    const Result b = run(c.args);
    EXPECT_EQ(b.code, 2) << c.args << "\n" << b.out << b.err;
    EXPECT_NE(b.err.find(c.says), std::string::npos) << c.args << ": " << b.err;
  }
}

// The shipped recipes: every key of kv_pretrain.ini trains (2 steps), every key of ttt_needle.ini
// is read (on the tiny model, one short length, one row).
TEST_F(TttCli, ShippedRecipesRun) {
  const std::string src = ATTNLAB_SOURCE_DIR;
  const Result p = run("train " + src + "/recipes/kv_pretrain.ini --run.dir=" + dir_.string() +
                       " --train.steps=2 --optim.warmup=1 --train.eval_every=2 --train.eval_batches=1 "
                       "--train.checkpoint_every=2 --data.eval_lengths=");
  ASSERT_EQ(p.code, 0) << p.out << p.err;
  const fs::path kv = train_kv();
  const Result t = run("ttt " + src + "/recipes/ttt_needle.ini --run.dir=" + dir_.string() +
                       " --ttt.init=" + kv.string() + " --ttt.steps=1 --ttt.examples=1 --data.eval_lengths=24");
  ASSERT_EQ(t.code, 0) << t.out << t.err;
  EXPECT_TRUE(fs::exists(dir_ / "ttt_needle" / "result.json"));
}

TEST_F(TttCli, SampleTttAdaptsOnThePrompt) {
  const Result t =
      run(train("--run.name=text --train.steps=4 --optim.warmup=1 --train.checkpoint_every=4 --train.eval_every=4"));
  ASSERT_EQ(t.code, 0) << t.err;
  const std::string text = (dir_ / "text").string();
  const Result r =
      run("sample " + text + " --prompt 'It was a truth and a' --tokens 5 --ttt --ttt.steps=2 --ttt.span=4");
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_EQ(r.out.rfind("It was a truth and a", 0), 0u) << r.out;
  EXPECT_GT(r.out.size(), std::string("It was a truth and a\n").size()) << "nothing sampled: " << r.out;
  // Same seed, same text.
  EXPECT_EQ(run("sample " + text + " --prompt 'It was a truth and a' --tokens 5 --ttt --ttt.steps=2 --ttt.span=4").out,
            r.out);
  const Result short_prompt = run("sample " + text + " --prompt 'Hi' --ttt --ttt.span=4");
  EXPECT_EQ(short_prompt.code, 2) << short_prompt.out;
  EXPECT_NE(short_prompt.err.find("ttt.span"), std::string::npos) << short_prompt.err;
}

}  // namespace
}  // namespace attnlab::test
