// The attention variants from the command line: each trains tiny_debug.ini from one recipe line
// with a falling loss and logs its diagnostics, samples from its checkpoint (the KV cache with the
// variant's carried state), resumes; `attnlab op` reproduces the in-process fused op on a case
// file, and bad case files exit with code 2 and write nothing.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "layers/all_ops.h"
#include "lib/safetensors.h"
#include "tests/support/cli_run_dir.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace attnlab {
namespace {

using test::read_metrics;

class VariantsCli : public test::CliRunDir {
 protected:
  VariantsCli() : CliRunDir("attnlab_variants_cli_") {}
};

TEST_F(VariantsCli, EachVariantTrainsFromOneRecipeLine) {
  for (const std::string attention : {"sigmoid", "affine", "infsa", "linear_infsa"}) {
    const std::string name = "v_" + attention;
    const Result r = run(train("--run.name=" + name + " --model.attention=" + attention));
    ASSERT_EQ(r.code, 0) << attention << "\n" << r.out << r.err;
    const std::vector<json> m = read_metrics(dir_ / name);
    ASSERT_GE(m.size(), 4u) << attention;
    EXPECT_LT(m.back()["train_loss"].get<double>(), m.front()["train_loss"].get<double>() - 0.5)
        << attention << "\n" << r.out;
    // Diagnostics at eval steps: one entry per layer with the sink mass, plus the variant's own.
    const json& eval = m.back();
    ASSERT_TRUE(eval.contains("attention")) << eval.dump();
    ASSERT_EQ(eval["attention"].size(), 2u);
    for (const json& l : eval["attention"]) {
      EXPECT_TRUE(l.contains("sink"));
      EXPECT_EQ(l.contains("gamma"), attention == "infsa" || attention == "linear_infsa") << l.dump();
      EXPECT_EQ(l.contains("alpha_mean"), attention == "affine") << l.dump();
    }
    if (attention == "affine") {
      // The running mean moved off its initial 0 during training.
      EXPECT_GT(eval["attention"][0]["alpha_running"][0].get<double>(), 0.1) << eval.dump();
    }
    // The checkpoint records the variant; sampling runs its KV-cache path.
    const Result s = run("sample " + (dir_ / name).string() + " --prompt=Emma --tokens=20 --top_k=5");
    ASSERT_EQ(s.code, 0) << attention << ": " << s.err;
    EXPECT_EQ(s.out.rfind("Emma", 0), 0u) << s.out;
    const Result e = run("eval " + (dir_ / name).string() + " --batches 2");
    EXPECT_EQ(e.code, 0) << attention << ": " << e.err;
  }
}

TEST_F(VariantsCli, OptionsAreRecipeKeysAndBadOnesExitWithCode2) {
  const Result r = run(train("--run.name=neglogn --model.attention=sigmoid --model.sigmoid.bias=neglogn "
                             "--model.qk_norm=true --train.steps=20"));
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  std::ifstream recipe(dir_ / "neglogn" / "recipe.ini");
  const std::string text((std::istreambuf_iterator<char>(recipe)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("neglogn"), std::string::npos) << text;
  const Result bad = run(train("--run.name=bad --model.attention=sigmoid --model.sigmoid.bias=huge"));
  EXPECT_EQ(bad.code, 2) << bad.out << bad.err;
  EXPECT_NE(bad.err.find("sigmoid.bias"), std::string::npos) << bad.err;
  EXPECT_NE(bad.err.find("neglog_visible"), std::string::npos) << bad.err;
  EXPECT_FALSE(fs::exists(dir_ / "bad" / "metrics.jsonl"));
}

// kda, lla and a kda/softmax hybrid from recipe lines: the loss falls, each layer's diagnostics
// name its kind (KDA: decay and beta, no sink; LLA: the ridge and its conditioning), sampling
// runs the KDA layers' carried state; a bad layer pattern exits with code 2 naming the key.
TEST_F(VariantsCli, KdaLlaAndLayerPatternsTrainFromRecipeLines) {
  struct Case {
    std::string name, args;
    std::vector<std::string> kinds;
  };
  for (const Case& c : {Case{"kda", "--model.attention=kda", {"kda", "kda"}},
                        Case{"lla", "--model.attention=lla --model.lla.learn_lambda=true", {"lla", "lla"}},
                        Case{"hybrid", "--model.layer_pattern=kda,softmax", {"kda", "softmax"}}}) {
    const Result r = run(train("--run.name=" + c.name + " " + c.args));
    ASSERT_EQ(r.code, 0) << c.name << "\n" << r.out << r.err;
    const std::vector<json> m = read_metrics(dir_ / c.name);
    ASSERT_GE(m.size(), 4u) << c.name;
    EXPECT_LT(m.back()["train_loss"].get<double>(), m.front()["train_loss"].get<double>() - 0.5) << c.name << "\n" << r.out;
    const json& eval = m.back();
    ASSERT_TRUE(eval.contains("attention")) << eval.dump();
    ASSERT_EQ(eval["attention"].size(), c.kinds.size());
    for (size_t i = 0; i < c.kinds.size(); ++i) {
      const json& l = eval["attention"][i];
      EXPECT_EQ(l["kind"], c.kinds[i]) << l.dump();
      EXPECT_EQ(l.contains("sink"), c.kinds[i] != "kda") << l.dump();
      if (c.kinds[i] == "kda") {
        EXPECT_GT(l["decay_mean"].get<double>(), 0.0) << l.dump();
        EXPECT_LT(l["decay_mean"].get<double>(), 1.0) << l.dump();
        EXPECT_GT(l["beta_mean"].get<double>(), 0.0) << l.dump();
      }
      if (c.kinds[i] == "lla") {
        EXPECT_GT(l["lambda"].get<double>(), 0.0) << l.dump();
        EXPECT_GT(l["delta_ratio_min"].get<double>(), 0.0) << l.dump();
        EXPECT_GE(l["cond_max"].get<double>(), 1.0) << l.dump();
      }
    }
    EXPECT_NE(r.out.find(c.kinds[0] == "kda" ? "decay" : "lam"), std::string::npos) << r.out;
    const Result s = run("sample " + (dir_ / c.name).string() + " --prompt=Emma --tokens=40 --top_k=5");
    ASSERT_EQ(s.code, 0) << c.name << ": " << s.err;
    EXPECT_EQ(s.out.rfind("Emma", 0), 0u) << s.out;
  }
  std::ifstream recipe(dir_ / "hybrid" / "recipe.ini");
  const std::string text((std::istreambuf_iterator<char>(recipe)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("layer_pattern = kda,softmax"), std::string::npos) << text;
  const Result bad = run(train("--run.name=bad --model.layer_pattern=kda,kda,softmax"));  // 3 names, 2 layers
  EXPECT_EQ(bad.code, 2) << bad.out << bad.err;
  EXPECT_NE(bad.err.find("layer_pattern"), std::string::npos) << bad.err;
  EXPECT_FALSE(fs::exists(dir_ / "bad" / "metrics.jsonl"));
}

// `attnlab op` on a case file equals the fused op run in this process, for every spec (with an
// upstream gradient d<name> in the file for each differentiable extra output, such as kda's state).
TEST_F(VariantsCli, OpCommandMatchesTheFusedOp) {
  for (const AttentionOpSpec& spec : attention_ops().specs()) {
    AttnDims d;
    d.B = 1, d.H = 2, d.T = 5, d.S = 7, d.Dk = 4, d.Dv = 3, d.Dm = 6;
    const AttnOpArgs a = random_attention_args(spec, d, AttentionMask{true, 0}, 3);
    const Tensor dout = sample_randn(Shape{1, 2, 5, 3}, 9);

    AttnOpArgs mine = a;
    mine.q = Variable(a.q.data(), true), mine.k = Variable(a.k.data(), true), mine.v = Variable(a.v.data(), true);
    for (size_t i = 0; i < a.extras.size(); ++i) mine.extras[i] = Variable(a.extras[i].data(), spec.extras[i].differentiable);
    const AttnOpResult want = spec.fused(mine);
    std::vector<Variable> roots{want.out};
    std::vector<Tensor> grads{dout};
    std::map<std::string, Tensor> file{{"q", a.q.data()}, {"k", a.k.data()}, {"v", a.v.data()}, {"dout", dout},
                                       {"unrelated", Tensor::zeros(Shape{3})}};
    uint64_t seed = 10;
    for (const auto& [name, v] : want.outputs) {
      roots.push_back(v);
      grads.push_back(sample_randn(v.shape(), seed++));
      file["d" + name] = grads.back();
    }
    backward(roots, grads);
    for (size_t i = 0; i < spec.extras.size(); ++i) file[spec.extras[i].name] = a.extras[i].data();
    const fs::path in = dir_ / (spec.name + ".case.safetensors"), out = dir_ / (spec.name + ".out.safetensors");
    save_safetensors(in.string(), file);
    const Result r = run("op " + spec.name + " --in " + in.string() + " --out " + out.string());
    ASSERT_EQ(r.code, 0) << spec.name << ": " << r.err;
    const SafetensorsFile got = load_safetensors(out.string());

    std::map<std::string, Tensor> expect{{"out", want.out.data()}, {"dq", mine.q.grad()}, {"dk", mine.k.grad()},
                                         {"dv", mine.v.grad()}};
    for (const auto& [name, v] : want.outputs) expect[name] = v.data();
    for (size_t i = 0; i < spec.extras.size(); ++i)
      if (spec.extras[i].differentiable) expect["d" + spec.extras[i].name] = mine.extras[i].grad();
    for (const auto& [name, t] : want.aux) expect[name] = t;
    for (const auto& [name, t] : expect) {
      ASSERT_TRUE(got.tensors.count(name)) << spec.name << ": result has no " << name;
      EXPECT_EQ(got.tensors.at(name).dtype(), DType::f64) << spec.name << " " << name;
      EXPECT_EQ(got.tensors.at(name).to_vector<double>(), t.to_vector<double>()) << spec.name << " " << name;
    }
    EXPECT_EQ(got.tensors.size(), expect.size()) << spec.name;
  }
  const Result list = run("op --list");
  EXPECT_EQ(list.code, 0);
  for (const AttentionOpSpec& spec : attention_ops().specs()) EXPECT_NE(list.out.find(spec.name + ":"), std::string::npos);
}

// An absent upstream gradient of an extra output is zeros: kda without dstate equals the fused op
// backpropagated from out alone; a dstate of the wrong shape exits with code 2 and names it.
TEST_F(VariantsCli, OpCommandMissingOutputGradientIsZero) {
  const AttentionOpSpec& spec = attention_ops().get("kda");
  ASSERT_FALSE(spec.outputs.empty());
  AttnDims d;
  d.B = 1, d.H = 2, d.T = 70, d.S = 70, d.Dk = 4, d.Dv = 3, d.Dm = 6;
  const AttnOpArgs a = random_attention_args(spec, d, AttentionMask{true, 0}, 5);
  const Tensor dout = sample_randn(Shape{1, 2, 70, 3}, 6);
  std::map<std::string, Tensor> file{{"q", a.q.data()}, {"k", a.k.data()}, {"v", a.v.data()}, {"dout", dout}};
  for (size_t i = 0; i < spec.extras.size(); ++i) file[spec.extras[i].name] = a.extras[i].data();
  const fs::path in = dir_ / "kda.case.safetensors", out = dir_ / "kda.out.safetensors";
  save_safetensors(in.string(), file);
  const Result r = run("op kda --in " + in.string() + " --out " + out.string());
  ASSERT_EQ(r.code, 0) << r.err;
  const SafetensorsFile got = load_safetensors(out.string());

  AttnOpArgs mine = a;
  mine.q = Variable(a.q.data(), true), mine.k = Variable(a.k.data(), true), mine.v = Variable(a.v.data(), true);
  for (size_t i = 0; i < a.extras.size(); ++i) mine.extras[i] = Variable(a.extras[i].data(), spec.extras[i].differentiable);
  const AttnOpResult want = spec.fused(mine);
  want.out.backward(dout);
  ASSERT_TRUE(got.tensors.count("state"));
  EXPECT_EQ(got.tensors.at("state").to_vector<double>(), want.outputs.at("state").data().to_vector<double>());
  EXPECT_EQ(got.tensors.at("dq").to_vector<double>(), mine.q.grad().to_vector<double>());
  EXPECT_EQ(got.tensors.at("dg").to_vector<double>(), mine.extras[spec.index_of("g")].grad().to_vector<double>());
  EXPECT_EQ(got.tensors.at("ds0").to_vector<double>(), mine.extras[spec.index_of("s0")].grad().to_vector<double>());

  file["dstate"] = Tensor::zeros(Shape{1, 2, 3, 4}, DType::f64);  // [B, H, Dv, Dk]: transposed
  save_safetensors(in.string(), file);
  fs::remove(out);
  const Result bad = run("op kda --in " + in.string() + " --out " + out.string());
  EXPECT_EQ(bad.code, 2) << bad.out << bad.err;
  EXPECT_NE(bad.err.find("dstate"), std::string::npos) << bad.err;
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(VariantsCli, OpCommandBadInputExitsWithCode2AndWritesNothing) {
  const fs::path in = dir_ / "case.safetensors", out = dir_ / "out.safetensors";
  const Tensor q = sample_randn(Shape{1, 2, 4, 4}, 1);
  auto write = [&](std::map<std::string, Tensor> t) { save_safetensors(in.string(), t); };
  auto expect_2 = [&](const std::string& args, const std::string& needle) {
    const Result r = run("op " + args + " --in " + in.string() + " --out " + out.string());
    EXPECT_EQ(r.code, 2) << args << ": " << r.out << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << args << ": " << r.err;
    EXPECT_FALSE(fs::exists(out)) << args;
  };
  write({{"q", q}, {"k", q}, {"v", q}});
  expect_2("softmax", "dout");  // a missing tensor is named
  write({{"q", q}, {"k", sample_randn(Shape{1, 2, 4, 3}, 2)}, {"v", q}, {"dout", q}});
  expect_2("softmax", "k=");  // a shape error names the shapes
  write({{"q", q}, {"k", q}, {"v", q}, {"dout", q}});
  expect_2("no_such_op", "unknown attention op");
  expect_2("softmax --opt gamma=2", "unknown option 'gamma'");
  write({{"q", q}, {"k", q.to(DType::f32)}, {"v", q}, {"dout", q}});
  expect_2("softmax", "like q");
}

}  // namespace
}  // namespace attnlab
