// Parity of every op that has CUDA kernels: CUDA (emulated on the CPU, or a real GPU in the
// *_gpu build) against the CPU, both in f32, on the op's samples and its larger parity samples
// (several blocks, ragged edges). Outputs and every input gradient, for a random upstream
// gradient, must agree to f32 tolerance. ctest runs this binary once per simt thread schedule
// (ATTNLAB_SIMT_SCHEDULE), so a kernel whose result depends on thread order fails here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "autograd/registry.h"
#include "layers/all_ops.h"
#include "lib/cuda/runtime.h"
#include "lib/rng.h"

namespace attnlab {
namespace {

std::vector<std::string> cuda_op_names() {
  std::vector<std::string> names;
  for (const OpInfo& o : all_ops().ops())
    if (o.cuda) names.push_back(o.name);
  return names;
}

// Skips (with the reason) where there is no device to run on: only in the real-GPU build.
bool device_missing(std::string* why) {
  if (cuda::device_count() > 0) return false;
  *why = "no CUDA device on this machine (the real-GPU build of this test runs the kernels only on a GPU; the "
         "emulated build covers them here)";
  return true;
}

struct RunResult {
  std::vector<Tensor> values;  // outputs, then input gradients, all on the CPU in f64
  std::vector<std::string> names;
};

RunResult run_sample(const OpSample& s, Device device) {
  std::vector<Variable> vars;
  for (size_t i = 0; i < s.inputs.size(); ++i) {
    const bool fl = is_floating(s.inputs[i].dtype());
    const bool grad = fl && (s.grad_inputs.empty() || s.grad_inputs[i]);
    const Tensor t = fl ? s.inputs[i].to(DType::f32) : s.inputs[i];
    vars.emplace_back(t.to(device), grad);
  }
  const std::vector<Variable> outs = s.run(vars);
  RunResult r;
  std::vector<Variable> roots;
  std::vector<Tensor> grads;
  Generator gen(11);
  for (size_t k = 0; k < outs.size(); ++k) {
    const Variable& y = outs[k];
    EXPECT_EQ(y.device(), device) << "output " << k << " is on the wrong device";
    r.values.push_back(y.data().to(Device::cpu()).to(DType::f64));
    r.names.push_back("output " + std::to_string(k));
    if (!y.requires_grad()) continue;
    roots.push_back(y);
    grads.push_back(randn(y.shape(), gen, DType::f32).to(device));
  }
  if (!roots.empty()) backward(roots, grads);
  for (size_t i = 0; i < vars.size(); ++i) {
    if (!vars[i].requires_grad() || !vars[i].grad().defined()) continue;
    EXPECT_EQ(vars[i].grad().device(), device) << "gradient of input " << i << " is on the wrong device";
    r.values.push_back(vars[i].grad().to(Device::cpu()).to(DType::f64));
    r.names.push_back("gradient of input " + std::to_string(i));
  }
  return r;
}

class CudaParity : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaParity, MatchesCpuInFloat32) {
  std::string why;
  if (device_missing(&why)) GTEST_SKIP() << why;
  const OpInfo& op = all_ops().get(GetParam());
  std::vector<OpSample> samples = op.samples();
  if (op.parity_samples)
    for (OpSample& s : op.parity_samples()) samples.push_back(std::move(s));
  ASSERT_FALSE(samples.empty());
  for (const OpSample& s : samples) {
    SCOPED_TRACE(op.name + " on " + s.label);
    const RunResult cpu = run_sample(s, Device::cpu());
    const RunResult gpu = run_sample(s, Device::cuda(0));
    ASSERT_EQ(cpu.values.size(), gpu.values.size());
    for (size_t k = 0; k < cpu.values.size(); ++k) {
      ASSERT_EQ(cpu.values[k].shape(), gpu.values[k].shape()) << cpu.names[k];
      const std::vector<double> a = gpu.values[k].to_vector<double>(), b = cpu.values[k].to_vector<double>();
      double scale = 1.0;
      for (double x : b) scale = std::max(scale, std::abs(x));
      size_t bad = 0, first = 0;
      double worst = 0;
      for (size_t j = 0; j < a.size(); ++j) {
        const double err = std::abs(a[j] - b[j]);
        const bool ok = err <= 1e-4 * scale && std::isfinite(a[j]) == std::isfinite(b[j]);
        if (!ok && bad++ == 0) first = j;
        worst = std::max(worst, err);
      }
      EXPECT_EQ(bad, 0u) << cpu.names[k] << ": " << bad << " of " << a.size() << " elements differ (first at "
                         << first << ": cuda " << a[first] << " vs cpu " << b[first] << "), worst |diff| " << worst
                         << ", tolerance " << 1e-4 * scale;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Registry, CudaParity, ::testing::ValuesIn(cuda_op_names()),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

// The ops a GPT training step runs must all have CUDA kernels (issue: the CUDA backend); a lost
// registration flag would otherwise just shrink the parameterised suite above.
TEST(CudaCoverage, TrainingStepOpsHaveKernels) {
  for (const char* name : {"add", "sub", "mul", "div", "exp", "gelu", "silu", "sum", "mean", "softmax", "log_softmax",
                           "cross_entropy", "layer_norm", "rms_norm", "embedding", "index_select", "dropout",
                           "causal_conv1d", "matmul", "linear", "split_heads", "rope", "softmax_attention"}) {
    const OpInfo& op = all_ops().get(name);
    EXPECT_TRUE(op.cuda) << name << " has no CUDA kernel registered";
  }
}

}  // namespace
}  // namespace attnlab
