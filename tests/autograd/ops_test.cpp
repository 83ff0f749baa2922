// The generic tests over every registered op (primitives and attention variants, all_ops()): every registered op must have samples, pass a float64
// gradcheck on each, agree between f32 and f64, and reject misuse with a message that names the
// op and prints shapes. Each op writes its gradcheck line to $ATTNLAB_REPORT_DIR/gradcheck/<op>.txt,
// which scripts/test.sh prints as one table.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "autograd/gradcheck.h"
#include "autograd/grad_mode.h"
#include "autograd/registry.h"
#include "layers/all_ops.h"
#include "lib/rng.h"

namespace attnlab {
namespace {

std::vector<std::string> op_names() {
  std::vector<std::string> names;
  for (const OpInfo& o : all_ops().ops()) names.push_back(o.name);
  return names;
}

std::filesystem::path report_dir() {
  const char* env = std::getenv("ATTNLAB_REPORT_DIR");
  return std::filesystem::path(env ? env : ATTNLAB_DEFAULT_REPORT_DIR) / "gradcheck";
}

class OpTest : public ::testing::TestWithParam<std::string> {
 protected:
  const OpInfo& op() const { return all_ops().get(GetParam()); }
};

TEST(OpRegistry, HasTheCoreOps) {
  // A registry that silently lost a folder would still pass the per-op tests; pin a few names.
  for (const char* name : {"exp", "gelu", "add", "matmul", "sum", "softmax", "cross_entropy", "layer_norm", "rope", "softmax_attention"})
    EXPECT_NO_THROW(all_ops().get(name)) << name;
}

TEST_P(OpTest, GradcheckFloat64) {
  const OpGradcheckSummary summary = gradcheck_op(op());
  EXPECT_GT(summary.samples, 0u) << op().name << " has no samples: every op must be gradchecked";
  EXPECT_TRUE(summary.ok) << summary.line();
  for (const std::string& f : summary.failures) ADD_FAILURE() << op().name << " " << f;
  std::filesystem::create_directories(report_dir());
  std::ofstream(report_dir() / (op().name + ".txt")) << summary.line() << "\n";
  std::printf("gradcheck f64: %s\n", summary.line().c_str());
}

// f32 kernels against f64 kernels: outputs, and input gradients for a random upstream gradient.
TEST_P(OpTest, Float32AgreesWithFloat64) {
  for (const OpSample& s : op().samples()) {
    auto run = [&](DType dt) {
      std::vector<Variable> vars;
      for (size_t i = 0; i < s.inputs.size(); ++i) {
        const bool fl = is_floating(s.inputs[i].dtype());
        const bool grad = fl && (s.grad_inputs.empty() || s.grad_inputs[i]);
        vars.emplace_back(fl ? s.inputs[i].to(dt) : s.inputs[i], grad);
      }
      std::vector<Variable> outs = s.run(vars);
      std::vector<Tensor> results;
      std::vector<Variable> roots;
      std::vector<Tensor> grads;
      Generator gen(7);
      for (const Variable& y : outs) {
        results.push_back(y.data().to(DType::f64));
        if (!y.requires_grad()) continue;
        roots.push_back(y);
        grads.push_back(randn(y.shape(), gen, DType::f64).to(dt));
      }
      if (!roots.empty()) backward(roots, grads);
      for (const Variable& v : vars)
        if (v.requires_grad() && v.grad().defined()) results.push_back(v.grad().to(DType::f64));
      return results;
    };
    const std::vector<Tensor> r32 = run(DType::f32), r64 = run(DType::f64);
    ASSERT_EQ(r32.size(), r64.size()) << op().name << " " << s.label;
    for (size_t k = 0; k < r32.size(); ++k) {
      const std::vector<double> a = r32[k].to_vector<double>(), b = r64[k].to_vector<double>();
      double scale = 1.0;
      for (double x : b) scale = std::max(scale, std::abs(x));
      for (size_t j = 0; j < a.size(); ++j)
        ASSERT_NEAR(a[j], b[j], 2e-4 * scale) << op().name << " " << s.label << " result " << k << " element " << j;
    }
  }
}

TEST_P(OpTest, MisuseNamesOpAndShapes) {
  const std::vector<OpMisuse> misuses = op().misuses();
  ASSERT_FALSE(misuses.empty()) << op().name << " has no misuse cases";
  for (const OpMisuse& m : misuses) {
    try {
      m.call();
      ADD_FAILURE() << op().name << ": misuse '" << m.label << "' did not throw";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(op().name), std::string::npos) << "message does not name the op: " << msg;
      EXPECT_NE(msg.find('['), std::string::npos) << "message prints no shape: " << msg;
    }
  }
}

TEST_P(OpTest, NoGradModeRecordsNoGraph) {
  const OpSample s = op().samples().at(0);
  NoGradGuard ng;
  std::vector<Variable> vars;
  for (const Tensor& t : s.inputs) vars.emplace_back(t, is_floating(t.dtype()));
  for (const Variable& y : s.run(vars)) EXPECT_FALSE(y.requires_grad()) << op().name;
}

INSTANTIATE_TEST_SUITE_P(Registry, OpTest, ::testing::ValuesIn(op_names()),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

}  // namespace
}  // namespace attnlab
