// `attnlab ablate` end to end on a tiny MQAR grid (2 attention variants x 2 seeds, 10 steps each):
// every cell runs and results.csv / results.md list them; a rerun skips finished cells; a cell
// whose result.json is gone runs again alone; a cell that fails is reported and the others go on;
// a bad [ablate] key or a changed grid exits with code 2 before anything runs.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "tests/support/cli_run_dir.h"

namespace fs = std::filesystem;

namespace attnlab::test {
namespace {

constexpr const char* kRecipe = R"(# a tiny ablation
[run]
name = tiny
seed = 1
[data]
task = mqar
vocab = 16
pairs = 4
[model]
layers = 1
d_model = 16
heads = 2
context = 16
[optim]
lr = 0.003
warmup = 2
[train]
batch = 4
seq_len = 16
steps = 10
log_every = 5
eval_every = 5
eval_batches = 1
checkpoint_every = 5

[ablate]
model.attention = softmax, sigmoid
run.seed = 1, 2
)";

const char* const kCells[] = {"attention-softmax_seed-1", "attention-softmax_seed-2", "attention-sigmoid_seed-1",
                              "attention-sigmoid_seed-2"};

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

class AblateCli : public CliRunDir {
 protected:
  AblateCli() : CliRunDir("attnlab_ablate_cli_") {}
  fs::path write_recipe(const std::string& text) const {
    const fs::path p = dir_ / "tiny.ini";
    std::ofstream(p) << text;
    return p;
  }
  std::string ablate(const fs::path& recipe, const std::string& extra = "") const {
    return "ablate " + recipe.string() + " --run.dir=" + dir_.string() + " " + extra;
  }
  fs::path abl() const { return dir_ / "tiny"; }
  std::map<std::string, fs::file_time_type> result_times() const {
    std::map<std::string, fs::file_time_type> t;
    for (const char* c : kCells) t[c] = fs::last_write_time(abl() / c / "result.json");
    return t;
  }
};

TEST_F(AblateCli, RunsEveryCellThenSkipsFinishedOnes) {
  const fs::path recipe = write_recipe(kRecipe);
  const Result r = run(ablate(recipe));
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  for (const char* c : kCells) {
    EXPECT_TRUE(fs::exists(abl() / c / "result.json")) << c;
    EXPECT_TRUE(fs::exists(abl() / c / "train.log")) << c;
  }
  EXPECT_EQ(count(r.out, ": running"), 4u) << r.out;
  EXPECT_NE(r.out.find("cell 1/4 attention-softmax_seed-1: done in"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(" val "), std::string::npos) << "eval lines are shown: " << r.out;
  EXPECT_TRUE(fs::exists(abl() / "recipe.ini"));
  EXPECT_EQ(read_text(abl() / "recipe.ini").find("\n[ablate]"), std::string::npos);
  EXPECT_NE(read_text(abl() / "recipe.ini").find(dir_.string()), std::string::npos) << "the override is in recipe.ini";
  EXPECT_TRUE(fs::exists(abl() / "ablation.json"));

  const std::string csv = read_text(abl() / "results.csv");
  EXPECT_EQ(count(csv, "\n"), 5u) << csv;
  EXPECT_EQ(csv.rfind("name,model.attention,run.seed,status,metric,metric_value,", 0), 0u) << csv;
  for (const char* c : kCells) EXPECT_NE(csv.find(std::string(c) + ","), std::string::npos) << c;
  EXPECT_EQ(count(csv, ",done,accuracy,"), 4u) << csv;
  const std::string md = read_text(abl() / "results.md");
  EXPECT_NE(md.find("## By setting"), std::string::npos) << md;
  EXPECT_NE(md.find("| attention=softmax | 2 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| attention=sigmoid | 2 |"), std::string::npos) << md;

  // Again: nothing runs.
  const auto before = result_times();
  const Result again = run(ablate(recipe));
  ASSERT_EQ(again.code, 0) << again.out << again.err;
  EXPECT_EQ(count(again.out, "done, skipped"), 4u) << again.out;
  EXPECT_EQ(count(again.out, ": running"), 0u) << again.out;
  EXPECT_EQ(result_times(), before);

  // A cell without result.json (and without checkpoints) runs again, alone.
  fs::remove(abl() / kCells[2] / "result.json");
  fs::remove_all(abl() / kCells[2] / "checkpoints");
  const Result third = run(ablate(recipe));
  ASSERT_EQ(third.code, 0) << third.out << third.err;
  EXPECT_EQ(count(third.out, "done, skipped"), 3u) << third.out;
  EXPECT_NE(third.out.find("cell 3/4 attention-sigmoid_seed-1: running"), std::string::npos) << third.out;
  EXPECT_TRUE(fs::exists(abl() / kCells[2] / "result.json"));
  const auto after = result_times();
  for (const char* c : {kCells[0], kCells[1], kCells[3]}) EXPECT_EQ(after.at(c), before.at(c)) << c;

  // A cell that cannot continue (a broken checkpoint) fails; the runner reports it and goes on.
  fs::remove(abl() / kCells[1] / "result.json");
  std::ofstream(abl() / kCells[1] / "checkpoints" / "latest") << "no-such-checkpoint\n";
  const Result failing = run(ablate(recipe));
  EXPECT_EQ(failing.code, 1) << failing.out << failing.err;
  EXPECT_NE(failing.out.find("cell 2/4 attention-softmax_seed-2: FAILED"), std::string::npos) << failing.out;
  EXPECT_NE(failing.out.find("ablation tiny: 3 of 4 cells done, 1 failed"), std::string::npos) << failing.out;
  EXPECT_TRUE(fs::exists(abl() / kCells[1] / "failed.txt"));
  EXPECT_NE(read_text(abl() / "results.csv").find(std::string(kCells[1]) + ",softmax,2,failed"), std::string::npos);
  EXPECT_NE(read_text(abl() / "results.md").find("| attention=softmax | 1/2 |"), std::string::npos)
      << read_text(abl() / "results.md");

  // The same directory with a different grid is refused.
  const Result changed = run(ablate(recipe, "--train.steps=12"));
  EXPECT_EQ(changed.code, 2) << changed.out << changed.err;
  EXPECT_NE(changed.err.find("differs"), std::string::npos) << changed.err;
  EXPECT_NE(changed.err.find("[ablate] name"), std::string::npos) << changed.err;
}

TEST_F(AblateCli, BadKeyExitsBeforeAnyCellExists) {
  std::string text = kRecipe;
  text.replace(text.find("model.attention = softmax"), 15, "model.atention");
  const Result r = run(ablate(write_recipe(text)));
  EXPECT_EQ(r.code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("model.atention"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("ablation cell"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(abl()));

  const Result opt = run(ablate(write_recipe(std::string(kRecipe) + "desgin = axes\n")));
  EXPECT_EQ(opt.code, 2) << opt.out << opt.err;
  EXPECT_NE(opt.err.find("desgin"), std::string::npos) << opt.err;
  EXPECT_FALSE(fs::exists(abl()));

  const Result value = run(ablate(write_recipe(kRecipe), "--model.layers=0"));
  EXPECT_EQ(value.code, 2) << value.out << value.err;
  EXPECT_FALSE(fs::exists(abl()));
}

// The shipped ablation recipes plan and pass every cell's checks; --dry-run writes nothing.
TEST_F(AblateCli, ShippedRecipesDryRun) {
  const std::pair<const char*, int> recipes[] = {{"ablate_mqar.ini", 7 * 2}, {"ablate_austen.ini", (7 + 2) * 2}};
  for (const auto& [file, cells] : recipes) {
    const fs::path recipe = fs::path(ATTNLAB_SOURCE_DIR) / "recipes" / file;
    const Result r = run("ablate " + recipe.string() + " --dry-run --run.dir=" + dir_.string());
    ASSERT_EQ(r.code, 0) << file << "\n" << r.out << r.err;
    EXPECT_NE(r.out.find(std::to_string(cells) + " cells"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("attention-kda_seed-2"), std::string::npos) << r.out;
    EXPECT_TRUE(fs::is_empty(dir_)) << file << " wrote into the run directory";
  }
}

}  // namespace
}  // namespace attnlab::test
