// Residual routing from the command line: each mode (and granularity) trains tiny_debug.ini with
// a falling loss and logs its routing diagnostics at eval steps; a standard checkpoint converted
// to delta_attnres with --init.from has exactly the source model's first-step loss on the same
// batch; bad residual keys exit with code 2 naming the key; `attnlab op delta_attnres|attnres`
// reproduces the in-process op on a case file.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "layers/residual/attnres/attnres.h"
#include "lib/safetensors.h"
#include "tests/support/cli_run_dir.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace attnlab {
namespace {

using test::read_metrics;

class ResidualCli : public test::CliRunDir {
 protected:
  ResidualCli() : CliRunDir("attnlab_residual_cli_") {}
};

TEST_F(ResidualCli, EachModeTrainsAndLogsRoutingDiagnostics) {
  const std::vector<std::pair<std::string, std::string>> modes = {
      {"standard", "sublayer"}, {"attnres", "sublayer"}, {"delta_attnres", "sublayer"},
      {"attnres", "block"},     {"delta_attnres", "block"}};
  for (const auto& [mode, gran] : modes) {
    const std::string name = "r_" + mode + "_" + gran;
    const Result r = run(train("--run.name=" + name + " --model.residual=" + mode +
                               " --model.residual.granularity=" + gran +
                               " --model.residual.block_size=1 --train.steps=20 --train.eval_every=10 --train.log_every=5"));
    ASSERT_EQ(r.code, 0) << mode << "\n" << r.out << r.err;
    const std::vector<json> m = read_metrics(dir_ / name);
    ASSERT_GE(m.size(), 4u) << mode;
    EXPECT_LT(m.back()["train_loss"].get<double>(), m.front()["train_loss"].get<double>() - 0.5)
        << mode << " " << gran << "\n" << r.out;
    const json& eval = m.back();
    if (mode == "standard") {
      EXPECT_FALSE(eval.contains("residual"));
      continue;
    }
    ASSERT_TRUE(eval.contains("residual")) << eval.dump();
    // tiny_debug has 2 layers: 4 sublayers (the delta modes' first attention does not route;
    // attnres adds the final routing).
    EXPECT_EQ(eval["residual"].size(), mode == "attnres" ? 5u : 3u) << eval["residual"].dump();
    for (const json& op : eval["residual"]) {
      const double mx = op["max_weight"].get<double>(), h = op["entropy"].get<double>();
      const double n = op["sources"].get<double>();
      EXPECT_GE(mx, 1.0 / n - 1e-6) << op.dump();
      EXPECT_LE(mx, 1.0 + 1e-9) << op.dump();
      EXPECT_GE(h, -1e-9) << op.dump();
      EXPECT_LE(h, std::log(n) + 1e-6) << op.dump();
    }
    EXPECT_NE(r.out.find("route max"), std::string::npos) << r.out;
    // The config travels in the checkpoint: sampling rebuilds the routed model.
    const Result s = run("sample " + (dir_ / name).string() + " --prompt=Emma --tokens=10 --top_k=5");
    ASSERT_EQ(s.code, 0) << s.err;
  }
}

// Conversion: the first step of a delta_attnres run started from a standard checkpoint has the
// loss the standard model has on the same batch (a standard run from the same checkpoint).
TEST_F(ResidualCli, ConvertedModelStartsWithTheSourceModelsLoss) {
  ASSERT_EQ(run(train("--run.name=base --train.steps=20")).code, 0);
  const std::string from = " --init.from=" + (dir_ / "base").string() + " --train.steps=3 --optim.warmup=1 --train.log_every=1";
  const Result same = run(train("--run.name=same" + from));
  ASSERT_EQ(same.code, 0) << same.out << same.err;
  const Result conv =
      run(train("--run.name=conv --model.residual=delta_attnres --optim.routing_lr=0.01" + from));
  ASSERT_EQ(conv.code, 0) << conv.out << conv.err;
  const Result block = run(train("--run.name=convb --model.residual=delta_attnres "
                                 "--model.residual.granularity=block" + from));
  ASSERT_EQ(block.code, 0) << block.out << block.err;
  const double want = read_metrics(dir_ / "same").front()["train_loss"].get<double>();
  EXPECT_EQ(read_metrics(dir_ / "conv").front()["train_loss"].get<double>(), want);
  EXPECT_EQ(read_metrics(dir_ / "convb").front()["train_loss"].get<double>(), want);
  // ... and the base run's loss at its last step is of the same size (it was trained).
  EXPECT_LT(want, read_metrics(dir_ / "base").front()["train_loss"].get<double>());
  EXPECT_NE(conv.out.find("new routing parameters"), std::string::npos) << conv.out;
  // A converted checkpoint resumes and loads like any other.
  const Result s = run("sample " + (dir_ / "conv").string() + " --prompt=Emma --tokens=5");
  EXPECT_EQ(s.code, 0) << s.err;
}

TEST_F(ResidualCli, BadResidualKeysNameTheKey) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"--model.residual=attn_res", "model.residual"},
      {"--model.residual=delta_attnres --model.residual.granularity=layer", "model.residual.granularity"},
      {"--model.residual=delta_attnres --model.residual.block_size=3", "model.residual.block_size"},
      {"--model.residual=delta_attnres --model.residual.block_size=-1", "model.residual.block_size"},
      {"--model.residual=attnres --model.residual.gate=true", "model.residual.gate"},
      {"--optim.routing_lr=-1", "optim.routing_lr"},
  };
  for (const auto& [args, key] : bad) {
    const Result r = run(train("--run.name=bad " + args));
    EXPECT_EQ(r.code, 2) << args << "\n" << r.err;
    EXPECT_NE(r.err.find(key), std::string::npos) << args << ": " << r.err;
    EXPECT_FALSE(fs::exists(dir_ / "bad")) << args;
  }
  // A checkpoint of another shape cannot start the run.
  ASSERT_EQ(run(train("--run.name=base --train.steps=5")).code, 0);
  const Result r = run(train("--run.name=bad --model.d_model=32 --init.from=" + (dir_ / "base").string()));
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("init.from"), std::string::npos) << r.err;
}

TEST_F(ResidualCli, OpCommandMatchesTheLibrary) {
  for (const bool delta : {true, false}) {
    const std::string name = delta ? "delta_attnres" : "attnres";
    const Tensor src = sample_randn(Shape{5, 2, 3, 8}, 1), r = sample_randn(Shape{2, 3, 8}, 2);
    const Tensor w = sample_randn(Shape{8}, 3), g = sample_uniform(Shape{8}, 4, 0.5, 1.5);
    const Tensor gate = sample_uniform(Shape{1}, 5, 0.2, 1.0), dout = sample_randn(Shape{2, 3, 8}, 6);
    std::map<std::string, Tensor> in{{"src", src}, {"w", w}, {"g", g}, {"gate", gate}, {"dout", dout}};
    if (delta) in["r"] = r;
    const fs::path case_file = dir_ / (name + ".in.safetensors"), out_file = dir_ / (name + ".out.safetensors");
    save_safetensors(case_file.string(), in);
    const Result res = run("op " + name + " --in " + case_file.string() + " --out " + out_file.string());
    ASSERT_EQ(res.code, 0) << res.out << res.err;
    const SafetensorsFile f = load_safetensors(out_file.string());

    Variable vs(src, true), vr(r, true), vw(w, true), vg(g, true), vgate(gate, true);
    const AttnResResult want = delta ? delta_attnres(vs, vr, vw, vg, vgate) : attnres(vs, vw, vg, vgate);
    want.out.backward(dout);
    std::map<std::string, Tensor> expect{{"out", want.out.data()}, {"a", want.a},      {"dsrc", vs.grad()},
                                         {"dw", vw.grad()},         {"dg", vg.grad()}, {"dgate", vgate.grad()}};
    if (delta) expect["dr"] = vr.grad();
    EXPECT_EQ(f.tensors.size(), expect.size());
    for (const auto& [k, t] : expect) {
      ASSERT_TRUE(f.tensors.count(k)) << name << " " << k;
      EXPECT_EQ(f.tensors.at(k).to_vector<double>(), t.to_vector<double>()) << name << " " << k;
    }
    // A missing input is a user error naming it.
    std::map<std::string, Tensor> missing = in;
    missing.erase("w");
    save_safetensors(case_file.string(), missing);
    const Result bad = run("op " + name + " --in " + case_file.string() + " --out " + (dir_ / "x").string());
    EXPECT_EQ(bad.code, 2);
    EXPECT_NE(bad.err.find("'w'"), std::string::npos) << bad.err;
    EXPECT_FALSE(fs::exists(dir_ / "x"));
  }
}

}  // namespace
}  // namespace attnlab
