// train/results: ablation and run directories read back (status, result.json, metrics.jsonl),
// runs grouped over seeds with hand-computed means and spreads, and the csv / markdown tables.
#include "train/results.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "lib/error.h"
#include "lib/file_io.h"
#include "tests/support/scratch_dir.h"

namespace attnlab {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

class Results : public test::ScratchDir {
 protected:
  Results() : ScratchDir("attnlab_results_test_") {}
  static void write(const fs::path& path, const std::string& text) { test::write_text(path, text); }
  static json result(double metric, double val_loss) {
    return {{"metric", "accuracy"},
            {"metric_value", metric},
            {"higher_is_better", true},
            {"final_val_loss", val_loss},
            {"final_train_loss", val_loss + 0.1},
            {"parameters", 123456},
            {"tokens_per_s", 2000.0},
            {"peak_rss_mb", 80.0},
            {"steps", 20},
            {"attention", "x, y"},
            {"metric_by_length", {{"64", metric}, {"128", metric / 2}}}};
  }

  // softmax x seeds 1..3 all finished; kda seed 1, 2 finished, seed 3 failed.
  fs::path make_ablation() {
    const fs::path abl = dir_ / "abl";
    json cells = json::array();
    for (const std::string att : {"softmax", "kda"})
      for (const std::string seed : {"1", "2", "3"})
        cells.push_back({{"name", "attention-" + att + "_seed-" + seed},
                         {"settings", {{"model.attention", att}, {"run.seed", seed}}}});
    write(abl / kAblationFile, json{{"name", "abl"},
                                    {"recipe", "recipes/x.ini"},
                                    {"keys", {"model.attention", "run.seed"}},
                                    {"design", "grid"},
                                    {"cells", cells},
                                    {"overrides", json::array()}}
                                   .dump());
    const double softmax[] = {0.5, 0.7, 0.9};
    for (int s = 0; s < 3; ++s) {
      const fs::path cell = abl / ("attention-softmax_seed-" + std::to_string(s + 1));
      write(cell / kResultFile, result(softmax[s], 2.0 + s).dump());
      write(cell / "metrics.jsonl",
            "{\"step\":1,\"train_loss\":3.0}\n{\"step\":2,\"train_loss\":2.5,\"val_loss\":2.4}\n");
    }
    write(abl / "attention-kda_seed-1" / kResultFile, result(0.8, 1.0).dump());
    write(abl / "attention-kda_seed-2" / kResultFile, result(0.9, 1.5).dump());
    write(abl / "attention-kda_seed-3" / kFailedFile, "exit status 1\n");
    return abl;
  }
};

TEST_F(Results, LoadAblationReadsCellsStatusAndMetric) {
  const RunSet set = load_ablation(make_ablation().string());
  EXPECT_EQ(set.title, "abl");
  EXPECT_EQ(set.recipe, "recipes/x.ini");
  EXPECT_EQ(set.keys, (std::vector<std::string>{"model.attention", "run.seed"}));
  EXPECT_EQ(set.metric, "accuracy");
  EXPECT_TRUE(set.higher_is_better);
  ASSERT_EQ(set.runs.size(), 6u);
  EXPECT_EQ(set.runs[0].name, "attention-softmax_seed-1");
  EXPECT_EQ(set.runs[0].status, "done");
  EXPECT_EQ(set.runs[0].settings.at("model.attention"), "softmax");
  ASSERT_EQ(set.runs[0].metrics.size(), 2u);
  EXPECT_EQ(set.runs[0].metrics[1]["val_loss"], 2.4);
  EXPECT_EQ(set.runs[5].status, "failed");
  EXPECT_TRUE(set.runs[5].result.empty());
}

TEST_F(Results, GroupsOverSeedsWithMeanAndSampleStd) {
  const RunSet set = load_ablation(make_ablation().string());
  ASSERT_EQ(set.groups.size(), 2u);
  const ResultGroup& soft = set.groups[0];
  EXPECT_EQ(soft.label, "attention=softmax");
  EXPECT_EQ(soft.settings, (std::map<std::string, std::string>{{"model.attention", "softmax"}}));
  EXPECT_EQ(soft.runs, (std::vector<size_t>{0, 1, 2}));
  const Stat m = soft.stats.at("metric_value");
  EXPECT_EQ(m.n, 3);
  EXPECT_NEAR(m.mean, 0.7, 1e-12);
  EXPECT_NEAR(m.std, 0.2, 1e-12);  // sqrt((0.04 + 0 + 0.04) / 2)
  EXPECT_NEAR(soft.stats.at("final_val_loss").mean, 3.0, 1e-12);
  EXPECT_NEAR(soft.stats.at("final_val_loss").std, 1.0, 1e-12);
  EXPECT_NEAR(soft.stats.at("metric@128").mean, 0.35, 1e-12);

  const ResultGroup& kda = set.groups[1];
  EXPECT_EQ(kda.runs.size(), 3u);
  EXPECT_EQ(kda.stats.at("metric_value").n, 2);  // the failed seed counts for nothing
  EXPECT_NEAR(kda.stats.at("metric_value").mean, 0.85, 1e-12);
  EXPECT_NEAR(kda.stats.at("metric_value").std, std::sqrt(0.005), 1e-12);
  EXPECT_EQ(kda.stats.count("sink_mean"), 0u);
  // kda has the higher accuracy, so it ranks first.
  EXPECT_EQ(groups_best_first(set), (std::vector<size_t>{1, 0}));
}

TEST_F(Results, OneSeedHasZeroSpreadAndSeedOnlyAblationIsOneGroup) {
  RunSet set;
  set.dir = "x";
  set.keys = {"run.seed"};
  for (int s = 1; s <= 2; ++s) {
    RunRecord r;
    r.name = "seed-" + std::to_string(s);
    r.settings = {{"run.seed", std::to_string(s)}};
    r.result = {{"metric_value", 1.0 * s}};
    set.runs.push_back(r);
  }
  set.runs[1].result = json::object();
  group_runs(set);
  ASSERT_EQ(set.groups.size(), 1u);
  EXPECT_EQ(set.groups[0].label, "");
  EXPECT_EQ(set.groups[0].stats.at("metric_value").n, 1);
  EXPECT_EQ(set.groups[0].stats.at("metric_value").std, 0);
}

TEST_F(Results, CsvHasHeaderAndOneRowPerCell) {
  const RunSet set = load_ablation(make_ablation().string());
  const std::string csv = results_csv(set);
  std::istringstream in(csv);
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  ASSERT_EQ(lines.size(), 7u) << csv;
  EXPECT_EQ(lines[0].rfind("name,model.attention,run.seed,status,metric,metric_value,higher_is_better,", 0), 0u)
      << lines[0];
  EXPECT_NE(lines[0].find(",metric@64,metric@128"), std::string::npos) << lines[0];
  EXPECT_EQ(lines[1].rfind("attention-softmax_seed-1,softmax,1,done,accuracy,0.5,true,", 0), 0u) << lines[1];
  EXPECT_NE(lines[1].find(",\"x, y\","), std::string::npos) << "a value with a comma is quoted: " << lines[1];
  EXPECT_EQ(lines[6].rfind("attention-kda_seed-3,kda,3,failed,,,", 0), 0u) << lines[6];

  write_results_csv(set, (dir_ / "r.csv").string());
  EXPECT_EQ(read_file((dir_ / "r.csv").string()), csv);
}

TEST_F(Results, MarkdownRanksGroupsAndListsCells) {
  const RunSet set = load_ablation(make_ablation().string());
  const std::string md = results_markdown(set);
  EXPECT_NE(md.find("# Ablation: abl"), std::string::npos) << md;
  EXPECT_NE(md.find("recipes/x.ini"), std::string::npos);
  EXPECT_NE(md.find("accuracy (higher is better)"), std::string::npos) << md;
  const size_t by_setting = md.find("## By setting"), by_cell = md.find("## By cell");
  ASSERT_NE(by_setting, std::string::npos);
  ASSERT_NE(by_cell, std::string::npos);
  const size_t kda = md.find("| attention=kda | 2/3 | 0.85 ± 0.07071 |", by_setting);
  const size_t soft = md.find("| attention=softmax | 3 | 0.7 ± 0.2 |", by_setting);
  ASSERT_NE(kda, std::string::npos) << md;
  ASSERT_NE(soft, std::string::npos) << md;
  EXPECT_LT(kda, soft) << "best first";
  EXPECT_LT(soft, by_cell);
  EXPECT_NE(md.find("| attention-kda_seed-3 | kda | 3 | failed | - |", by_cell), std::string::npos) << md;
  EXPECT_NE(md.find("123456"), std::string::npos) << "parameters without an exponent";

  write_results_md(set, (dir_ / "r.md").string());
  EXPECT_EQ(read_file((dir_ / "r.md").string()), md);
}

TEST_F(Results, LowerIsBetterRanksAscending) {
  RunSet set = load_ablation(make_ablation().string());
  set.higher_is_better = false;
  EXPECT_EQ(groups_best_first(set), (std::vector<size_t>{0, 1}));
}

TEST_F(Results, MissingOrMalformedAblationIsIoError) {
  EXPECT_THROW(load_ablation(dir_.string()), IoError);
  write(dir_ / kAblationFile, "{not json");
  EXPECT_THROW(load_ablation(dir_.string()), IoError);
  write(dir_ / kAblationFile, "{\"name\": \"x\"}");
  EXPECT_THROW(load_ablation(dir_.string()), IoError);
  write(dir_ / kAblationFile, R"({"name":"x","keys":[],"cells":[{"name":"../up","settings":{}}]})");
  EXPECT_THROW(load_ablation(dir_.string()), IoError);
}

TEST_F(Results, PlainRunsAreToldApartByTheirRecipes) {
  const char* recipes[] = {"[model]\nattention = softmax\n[run]\nname = a\nseed = 1\n",
                           "[model]\nattention = softmax\n[run]\nname = b\nseed = 2\n",
                           "[model]\nattention = kda\n[run]\nname = c\nseed = 1\n"};
  std::vector<std::string> paths;
  for (int i = 0; i < 3; ++i) {
    const fs::path run = dir_ / std::string(1, static_cast<char>('a' + i));
    write(run / "recipe.ini", recipes[i]);
    write(run / "metrics.jsonl", "{\"step\":1,\"train_loss\":3.0}\n");
    write(run / kResultFile, json{{"metric", "val_loss"}, {"metric_value", 1.0 + i}}.dump());
    paths.push_back(run.string() + "/");
  }
  const RunSet set = load_runs(paths);
  EXPECT_EQ(set.title, "a, b, c");
  EXPECT_EQ(set.keys, (std::vector<std::string>{"model.attention", "run.seed"}));
  ASSERT_EQ(set.groups.size(), 2u);
  EXPECT_EQ(set.groups[0].label, "attention=softmax");
  EXPECT_EQ(set.groups[0].runs, (std::vector<size_t>{0, 1}));
  EXPECT_NEAR(set.groups[0].stats.at("metric_value").mean, 1.5, 1e-12);
  EXPECT_FALSE(set.higher_is_better);

  EXPECT_THROW(load_runs({(dir_ / "nothing").string()}), IoError);
}

TEST_F(Results, IdenticalPlainRunsAreSeparateGroups) {
  for (const char* n : {"x", "y"}) write(dir_ / n / "metrics.jsonl", "{\"step\":1}\n");
  const RunSet set = load_runs({(dir_ / "x").string(), (dir_ / "y").string()});
  ASSERT_EQ(set.groups.size(), 2u);
  EXPECT_EQ(set.groups[1].label, "y");
  EXPECT_EQ(set.runs[0].status, "running");
}

TEST(FormatNumber, FourSignificantDigits) {
  EXPECT_EQ(format_number(0.123456), "0.1235");
  EXPECT_EQ(format_number(2.5), "2.5");
  EXPECT_EQ(format_number(1234.56), "1235");
  EXPECT_EQ(format_number(104320), "104320");
  EXPECT_EQ(format_number(0.000123456), "1.235e-04");
  EXPECT_EQ(format_number(0), "0");
  EXPECT_EQ(format_number(std::nan("")), "-");
}

}  // namespace
}  // namespace attnlab
