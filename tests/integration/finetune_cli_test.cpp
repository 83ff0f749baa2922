// `attnlab finetune` end to end on a tiny kv_retrieval model: a focusft run trains its init model
// from finetune.init_recipe first, an sft run reuses it; both write metrics with the answer
// accuracy under each eval mask, sink mass and context engagement, base-weight checkpoints (no
// fast weights; they load as models) and result.json; --resume continues; bad keys exit 2 naming
// the key and write nothing; `attnlab ablate` over a finetune recipe plans finetune cells.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>

#include "tests/support/cli_run_dir.h"
#include "train/checkpoint.h"
#include "train/model_io.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace attnlab::test {
namespace {

// 4 keys, 4 values, 2 pairs and one demo in rows of 16: a few seconds of pretraining.
constexpr const char* kPretrain = R"([run]
name = pre
seed = 1
[data]
task = kv_retrieval
vocab = 8
pairs = 2
queries = 1
[model]
layers = 2
d_model = 16
heads = 2
context = 32
positions = rope
norm = rmsnorm
mlp = swiglu
[optim]
lr = 0.003
weight_decay = 0
[train]
batch = 8
seq_len = 16
steps = 30
log_every = 10
eval_every = 30
eval_batches = 2
)";

std::string finetune_recipe(const fs::path& dir, const std::string& method) {
  return "[run]\nname = ft\nseed = 1\n[finetune]\ninit = " + (dir / "pre").string() +
         "\ninit_recipe = " + (dir / "pre.ini").string() + "\nmethod = " + method +
         "\n[focusft]\nrank = 2\nalpha = 4\n"
         "[data]\ntask = kv_retrieval\nvocab = 8\npairs = 2\nqueries = 1\neval_lengths = 24\n"
         "[optim]\nlr = 0.001\n"
         "[train]\nbatch = 4\nseq_len = 16\nsteps = 6\ngrad_accum = 2\nlog_every = 2\neval_every = 3\n"
         "eval_batches = 2\ncheckpoint_every = 3\n";
}

class FinetuneCli : public CliRunDir {
 protected:
  FinetuneCli() : CliRunDir("attnlab_finetune_") {}
  void SetUp() override {
    CliRunDir::SetUp();
    write_text(dir_ / "pre.ini", kPretrain);
    write_text(dir_ / "ft_focusft.ini", finetune_recipe(dir_, "focusft"));
    write_text(dir_ / "ft_sft.ini", finetune_recipe(dir_, "sft"));
  }
  Result finetune(const std::string& recipe, const std::string& extra = "") const {
    return run("finetune " + (dir_ / recipe).string() + " --run.dir=" + (dir_ / "runs").string() + " " + extra);
  }
  static std::set<std::string> weight_names(const fs::path& run) {
    std::set<std::string> out;
    for (const auto& [name, _] : load_checkpoint(resolve_checkpoint(run.string()), false).weights) out.insert(name);
    return out;
  }
};

void expect_finetune_metrics(const fs::path& run, const std::string& method) {
  const std::vector<json> rows = read_metrics(run);
  ASSERT_FALSE(rows.empty());
  int evals = 0;
  for (const json& m : rows) {
    EXPECT_TRUE(m.contains("train_loss"));
    if (method == "focusft") {
      EXPECT_TRUE(m.contains("inner_loss_first")) << m.dump();
      EXPECT_TRUE(m.contains("inner_loss_last")) << m.dump();
    } else {
      EXPECT_FALSE(m.contains("inner_loss_first"));
    }
    if (!m.contains("val_loss")) continue;
    ++evals;
    for (const char* k :
         {"val_accuracy", "val_accuracy_causal", "val_accuracy_prefix", "val_loss_causal", "val_loss_prefix",
          "val_accuracy@24", "val_accuracy_prefix@24", "sink_mass", "context_engagement", "attention_mass"})
      EXPECT_TRUE(m.contains(k)) << k << " missing from " << m.dump();
    const double sink = m["sink_mass"].get<double>(), ctx = m["context_engagement"].get<double>();
    EXPECT_GE(sink, 0.0);
    EXPECT_GT(ctx, 0.0);
    EXPECT_LE(sink + ctx, 1.0 + 1e-6);  // softmax: sink and context keys share one distribution
    EXPECT_EQ(m["attention_mass"].size(), 2u);
  }
  EXPECT_EQ(evals, 2);  // steps 3 and 6
  const json r = json::parse(read_text(run / "result.json"));
  EXPECT_EQ(r["steps"], 6);
  EXPECT_EQ(r["metric"], "accuracy");
  EXPECT_EQ(r["method"], method);
  EXPECT_EQ(r["mask"], method == "focusft" ? "prefix" : "causal");
  EXPECT_TRUE(r["metric_by_mask"].contains("causal"));
  EXPECT_TRUE(r["metric_by_mask"].contains("prefix"));
  EXPECT_TRUE(r["metric_by_length"].contains("24"));
  EXPECT_TRUE(r.contains("sink_mass"));
  EXPECT_TRUE(r.contains("context_engagement"));
}

TEST_F(FinetuneCli, FocusftTrainsItsInitThenSftReusesItCheckpointsHoldBaseWeightsOnly) {
  const Result focus = finetune("ft_focusft.ini");
  ASSERT_EQ(focus.code, 0) << focus.out << focus.err;
  EXPECT_NE(focus.out.find("is not trained yet"), std::string::npos) << focus.out;
  EXPECT_TRUE(fs::exists(dir_ / "pre" / "result.json"));
  const fs::path ft = dir_ / "runs" / "ft";
  expect_finetune_metrics(ft, "focusft");

  // Base weights only, under the init model's names, and the checkpoint is a model.
  const std::set<std::string> names = weight_names(ft);
  EXPECT_EQ(names, weight_names(dir_ / "pre"));
  for (const std::string& n : names) EXPECT_EQ(n.find("lora"), std::string::npos) << n;
  const LoadedModel m = load_model(ft.string());
  EXPECT_EQ(m.config.layers, 2);
  const Result eval = run("eval " + ft.string() + " --batches 2");
  ASSERT_EQ(eval.code, 0) << eval.out << eval.err;
  for (const char* want : {"causal mask, length   16: accuracy", "prefix mask, length   24: accuracy"})
    EXPECT_NE(eval.out.find(want), std::string::npos) << want << "\n" << eval.out;

  const Result sft = finetune("ft_sft.ini", "--run.name=sft");
  ASSERT_EQ(sft.code, 0) << sft.out << sft.err;
  EXPECT_EQ(sft.out.find("is not trained yet"), std::string::npos) << sft.out;
  expect_finetune_metrics(dir_ / "runs" / "sft", "sft");

  // A finished run's directory is not reused without --resume; resuming it evaluates and ends.
  const Result again = finetune("ft_sft.ini", "--run.name=sft");
  EXPECT_EQ(again.code, 2);
  EXPECT_NE(again.err.find("--resume"), std::string::npos) << again.err;
  const Result resumed = finetune("ft_sft.ini", "--run.name=sft --resume");
  ASSERT_EQ(resumed.code, 0) << resumed.out << resumed.err;
  EXPECT_TRUE(fs::exists(dir_ / "runs" / "sft" / "result.json"));
}

TEST_F(FinetuneCli, ResumeContinuesFromTheMiddleCheckpoint) {
  // Train the init, then a run stopped at step 3 (its checkpoint) and resumed to 6, against one
  // straight run: the losses after the resume point agree.
  ASSERT_EQ(finetune("ft_focusft.ini", "--run.name=full").code, 0);
  ASSERT_EQ(finetune("ft_focusft.ini", "--run.name=part --train.steps=6 --train.checkpoint_every=3").code, 0);
  // Resuming needs the same recipe; rewind the finished run to its step-3 checkpoint.
  const fs::path part = dir_ / "runs" / "part";
  write_text(part / "checkpoints" / "latest", "step-000003");
  fs::remove(part / "result.json");
  const Result r = finetune("ft_focusft.ini", "--run.name=part --resume");
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  const std::vector<json> a = read_metrics(dir_ / "runs" / "full"), b = read_metrics(part);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i]["step"], b[i]["step"]);
    EXPECT_DOUBLE_EQ(a[i]["train_loss"].get<double>(), b[i]["train_loss"].get<double>()) << "row " << i;
  }
}

TEST_F(FinetuneCli, BadKeysExitTwoNamingTheKeyAndWriteNothing) {
  const struct {
    std::string override_;
    const char* named;
  } cases[] = {
      {"--finetune.methd=sft", "finetune.methd"},
      {"--finetune.method=maml", "finetune.method"},
      {"--finetune.mask=diagonal", "finetune.mask"},
      {"--finetune.eval_masks=causal,full", "finetune.eval_masks"},
      {"--focusft.rank=0", "focusft.rank"},
      {"--focusft.inner_clip=0", "focusft.inner_clip"},
      {"--focusft.targets=mlp.nothing", "mlp.nothing"},
      {"--train.grad_accum=0", "train.grad_accum"},
      {"--data.task=mqar", "mqar"},
      {"--finetune.init_recipe=" + std::string("/nonexistent/x.ini"), "finetune.init_recipe"},
      {"--data.vocab=12", "data.vocab"},
      {"--data.eval_lengths=16,64", "context"},
  };
  for (const auto& c : cases) {
    const Result r = finetune("ft_focusft.ini", c.override_);
    EXPECT_EQ(r.code, 2) << c.override_ << ": " << r.out << r.err;
    EXPECT_NE(r.err.find(c.named), std::string::npos) << c.override_ << ": " << r.err;
    EXPECT_FALSE(fs::exists(dir_ / "runs" / "ft")) << c.override_;
    // Checked against the model the init recipe would train, before training it.
    EXPECT_FALSE(fs::exists(dir_ / "pre")) << c.override_;
  }
  // No init and no recipe to make it.
  write_text(dir_ / "no_init.ini", "[run]\nname = x\n[finetune]\ninit = " + (dir_ / "missing").string() +
                                       "\n[data]\ntask = kv_retrieval\n[train]\nseq_len = 32\n");
  const Result r = finetune("no_init.ini");
  EXPECT_EQ(r.code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("finetune.init"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir_ / "missing"));
}

TEST_F(FinetuneCli, AblateOverAFinetuneRecipePlansFinetuneCells) {
  write_text(dir_ / "abl.ini",
             finetune_recipe(dir_, "sft") +
                 "[ablate]\nname = cmp\nfinetune.method = sft, focusft\nfinetune.mask = causal, prefix\n");
  const Result r =
      run("ablate " + (dir_ / "abl.ini").string() + " --run.dir=" + (dir_ / "runs").string() + " --dry-run");
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("4 finetune cells"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("finetune.method=focusft"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir_ / "runs"));
  EXPECT_FALSE(fs::exists(dir_ / "pre"));  // checked, not trained

  // Run for real (two steps a cell): the first cell trains the init model, every cell is a
  // finetune run with its result.json, and the ablation's tables list them.
  write_text(dir_ / "run.ini", finetune_recipe(dir_, "sft") + "[ablate]\nname = cmp\nfinetune.method = sft, focusft\n");
  const Result ran = run("ablate " + (dir_ / "run.ini").string() + " --run.dir=" + (dir_ / "runs").string() +
                         " --train.steps=2 --train.eval_every=2 --train.checkpoint_every=0");
  ASSERT_EQ(ran.code, 0) << ran.out << ran.err;
  for (const char* cell : {"method-sft", "method-focusft"}) {
    const json r = json::parse(read_text(dir_ / "runs" / "cmp" / cell / "result.json"));
    EXPECT_EQ(r["method"], std::string(cell).substr(7)) << cell;
  }
  EXPECT_TRUE(fs::exists(dir_ / "pre" / "result.json"));
  const std::string table = read_text(dir_ / "runs" / "cmp" / "results.md");
  EXPECT_NE(table.find("focusft"), std::string::npos) << table;
  // A cell's bad value is caught by the finetune check.
  write_text(dir_ / "bad.ini", finetune_recipe(dir_, "sft") + "[ablate]\nfinetune.method = sft, maml\n");
  const Result bad =
      run("ablate " + (dir_ / "bad.ini").string() + " --run.dir=" + (dir_ / "runs").string() + " --dry-run");
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("finetune.method"), std::string::npos) << bad.err;
}

// JSONL examples (pre-tokenized ids for the task model) of several context lengths: sft and
// focusft train on them (one SftBatch per context length in a micro-batch) and evaluate under
// both masks; a malformed line is an error naming file and line before anything is written.
TEST_F(FinetuneCli, JsonlExamplesTrainBothMethods) {
  ASSERT_EQ(finetune("ft_sft.ini", "--run.name=warm --train.steps=1").code, 0);  // trains pre/
  auto examples = [](int n, int seed) {
    std::ostringstream text;
    for (int i = 0; i < n; ++i) {
      const int len = 5 + (i + seed) % 3;  // contexts of 5, 6, 7 ids
      text << "{\"context_ids\": [";
      for (int t = 0; t < len; ++t) text << (t ? "," : "") << (i * 7 + t * 3 + seed) % 8;
      text << "], \"answer_ids\": [" << 8 + i % 4 << ", " << i % 8 << "]}\n";
    }
    return text.str();
  };
  write_text(dir_ / "train.jsonl", examples(12, 1));
  write_text(dir_ / "val.jsonl", examples(5, 2));
  std::string recipe = finetune_recipe(dir_, "focusft");
  const size_t data = recipe.find("[data]"), optim = recipe.find("[optim]");
  recipe = recipe.substr(0, data) + "[data]\ntrain_file = " + (dir_ / "train.jsonl").string() +
           "\nval_file = " + (dir_ / "val.jsonl").string() + "\n" + recipe.substr(optim);
  write_text(dir_ / "jsonl.ini", recipe);
  for (const char* method : {"focusft", "sft"}) {
    std::ostringstream args;
    args << "--run.name=j_" << method << " --finetune.method=" << method;
    const Result r = finetune("jsonl.ini", args.str());
    ASSERT_EQ(r.code, 0) << r.out << r.err;
    const fs::path run = dir_ / "runs" / ("j_" + std::string(method));
    const json res = json::parse(read_text(run / "result.json"));
    EXPECT_EQ(res["task"], "jsonl");
    EXPECT_TRUE(res["metric_by_mask"].contains("prefix"));
    EXPECT_TRUE(res.contains("sink_mass"));
    const std::vector<json> rows = read_metrics(run);
    ASSERT_FALSE(rows.empty());
    EXPECT_TRUE(rows.back().contains("val_accuracy_causal")) << rows.back().dump();
  }
  write_text(dir_ / "bad.jsonl", examples(2, 1) + "{\"context_ids\": [1, 2]}\n");
  const Result bad = finetune("jsonl.ini", "--run.name=bad --data.val_file=" + (dir_ / "bad.jsonl").string());
  EXPECT_EQ(bad.code, 2) << bad.out << bad.err;
  EXPECT_NE(bad.err.find("bad.jsonl:3"), std::string::npos) << bad.err;
  EXPECT_FALSE(fs::exists(dir_ / "runs" / "bad"));
}

// The shipped comparison plans three finetune cells, each checked against the model its
// pretraining recipe would build; nothing is written or trained.
TEST_F(FinetuneCli, ShippedRecipeDryRun) {
  const fs::path recipes = fs::path(ATTNLAB_SOURCE_DIR) / "recipes";
  const Result r =
      run("ablate " + (recipes / "focusft_kv.ini").string() + " --dry-run --run.dir=" + (dir_ / "runs").string() +
          " --finetune.init=" + (dir_ / "pre").string() +
          " --finetune.init_recipe=" + (recipes / "kv_pretrain.ini").string());
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("3 finetune cells"), std::string::npos) << r.out;
  for (const char* cell : {"method-sft", "method-focusft", "mask-prefix"})
    EXPECT_NE(r.out.find(cell), std::string::npos) << cell << "\n" << r.out;
  EXPECT_FALSE(fs::exists(dir_ / "runs"));
  EXPECT_FALSE(fs::exists(dir_ / "pre"));
}

}  // namespace
}  // namespace attnlab::test
