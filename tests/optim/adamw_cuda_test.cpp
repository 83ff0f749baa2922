// The optimizers on CUDA parameters (optim/*_cuda.cu) against the same optimizers on CPU copies:
// AdamW and SGD for several steps from the same gradients, the global gradient norm and its
// clipping, and AdamW's state saved from CUDA (as CPU tensors) and loaded back.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "lib/cuda/runtime.h"
#include "lib/rng.h"
#include "optim/adamw.h"
#include "optim/sgd.h"
#include "tests/support/cuda_test_util.h"

namespace attnlab {
namespace {

using cuda_test::CudaTest;  // skips where the backend has no device
using cuda_test::to_cuda;
using cuda_test::to_host;
class AdamWCuda : public CudaTest {};
class SgdCuda : public CudaTest {};
class GradNormCuda : public CudaTest {};

void expect_close(const Tensor& got, const Tensor& want, double tol, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  const std::vector<double> g = got.to_vector<double>(), w = want.to_vector<double>();
  for (size_t i = 0; i < g.size(); ++i) ASSERT_NEAR(g[i], w[i], tol * (1.0 + std::abs(w[i]))) << what << " element " << i;
}

// The same parameters twice: on the CPU and on CUDA.
struct Twin {
  std::vector<Variable> cpu, gpu;
};

Twin make_params(const std::vector<Shape>& shapes, DType dtype, uint64_t seed) {
  Generator gen(seed);
  Twin t;
  for (const Shape& s : shapes) {
    const Tensor w = randn(s, gen, dtype);
    t.cpu.emplace_back(w.clone(), true);
    t.gpu.emplace_back(to_cuda(w), true);
  }
  return t;
}

// Fresh random gradients, the same values on both sides.
void set_grads(Twin& t, Generator& gen) {
  for (size_t i = 0; i < t.cpu.size(); ++i) {
    const Tensor g = randn(t.cpu[i].shape(), gen, t.cpu[i].dtype());
    t.cpu[i].set_grad(g);
    t.gpu[i].set_grad(to_cuda(g));
  }
}

void expect_same_params(const Twin& t, double tol) {
  for (size_t i = 0; i < t.cpu.size(); ++i)
    expect_close(to_host(t.gpu[i].data()), t.cpu[i].data(), tol, "parameter " + std::to_string(i));
}

const std::vector<Shape> kShapes{Shape{37, 65}, Shape{33}, Shape{2, 3, 5}, Shape{300, 7}};

TEST_F(AdamWCuda, MatchesTheCpuStepByStep) {
  Twin t = make_params(kShapes, DType::f32, 1);
  const AdamWConfig cfg{.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1};
  const std::vector<bool> decay{true, false, true, true};
  AdamW on_cpu(t.cpu, cfg, decay), on_gpu(t.gpu, cfg, decay);
  Generator gen(2);
  for (int step = 0; step < 6; ++step) {
    set_grads(t, gen);
    on_cpu.step();
    on_gpu.step();
    expect_same_params(t, 2e-6);
  }
  // m and v live on the parameter's device; state() hands out CPU copies equal to the CPU's.
  const auto s_cpu = on_cpu.state(), s_gpu = on_gpu.state();
  ASSERT_EQ(s_cpu.size(), s_gpu.size());
  for (const auto& [key, value] : s_cpu) {
    const Tensor& g = s_gpu.at(key);
    EXPECT_TRUE(g.device().is_cpu()) << key;
    expect_close(g, value, 2e-6, key);
  }
}

TEST_F(AdamWCuda, Float64ParametersToo) {
  Twin t = make_params({Shape{20, 13}, Shape{7}}, DType::f64, 3);
  const AdamWConfig cfg{.lr = 3e-2, .weight_decay = 0.01};
  AdamW on_cpu(t.cpu, cfg), on_gpu(t.gpu, cfg);
  Generator gen(4);
  for (int step = 0; step < 3; ++step) {
    set_grads(t, gen);
    on_cpu.step();
    on_gpu.step();
  }
  expect_same_params(t, 1e-13);
}

TEST_F(AdamWCuda, StateSavedFromCudaContinuesIdentically) {
  Twin t = make_params(kShapes, DType::f32, 5);
  const AdamWConfig cfg{.lr = 1e-2, .weight_decay = 0.05};
  AdamW first(t.gpu, cfg);
  Generator gen(6);
  for (int step = 0; step < 3; ++step) {
    set_grads(t, gen);
    first.step();
  }
  const auto saved = first.state();
  // A second set of CUDA parameters with the same values, and a fresh optimizer loaded from the
  // saved state: the next step must agree bit for bit with the original's.
  std::vector<Variable> copy;
  for (const Variable& p : t.gpu) copy.emplace_back(to_cuda(to_host(p.data())), true);
  AdamW second(copy, cfg);
  second.load_state(saved);
  EXPECT_EQ(second.steps(), 3);
  set_grads(t, gen);
  for (size_t i = 0; i < copy.size(); ++i) copy[i].set_grad(t.gpu[i].grad());
  first.step();
  second.step();
  for (size_t i = 0; i < copy.size(); ++i)
    EXPECT_EQ(to_host(copy[i].data()).to_vector<float>(), to_host(t.gpu[i].data()).to_vector<float>()) << i;
}

TEST_F(SgdCuda, MomentumAndDecayMatchTheCpu) {
  for (double momentum : {0.0, 0.9}) {
    Twin t = make_params(kShapes, DType::f32, 7);
    const SgdConfig cfg{.lr = 0.05, .momentum = momentum, .weight_decay = 0.01};
    Sgd on_cpu(t.cpu, cfg), on_gpu(t.gpu, cfg);
    Generator gen(8);
    for (int step = 0; step < 4; ++step) {
      set_grads(t, gen);
      on_cpu.step();
      on_gpu.step();
    }
    expect_same_params(t, 1e-6);
  }
}

TEST_F(GradNormCuda, NormAndClippingMatchTheCpuAndRepeat) {
  // [300, 257] spans many reduction blocks; the others one each.
  Twin t = make_params({Shape{300, 257}, Shape{33}, Shape{2, 3, 5}}, DType::f32, 9);
  Generator gen(10);
  set_grads(t, gen);
  const double want = grad_norm(t.cpu);
  const double got = grad_norm(t.gpu);
  EXPECT_NEAR(got, want, 1e-12 * want);
  EXPECT_EQ(grad_norm(t.gpu), got);  // the same bits on a second run

  const double max_norm = want / 4;
  EXPECT_NEAR(clip_grad_norm(t.gpu, max_norm), want, 1e-12 * want);
  clip_grad_norm(t.cpu, max_norm);
  for (size_t i = 0; i < t.cpu.size(); ++i)
    expect_close(to_host(t.gpu[i].grad()), t.cpu[i].grad(), 1e-6, "clipped gradient " + std::to_string(i));
  EXPECT_NEAR(grad_norm(t.gpu), max_norm, 1e-6 * max_norm);
}

TEST_F(GradNormCuda, CpuAndCudaGradientsAddUp) {
  Twin t = make_params({Shape{40, 9}, Shape{17}}, DType::f32, 11);
  Generator gen(12);
  set_grads(t, gen);
  const std::vector<Variable> mixed{t.cpu[0], t.gpu[1]};
  EXPECT_NEAR(grad_norm(mixed), grad_norm(t.cpu), 1e-12 * grad_norm(t.cpu));
}

}  // namespace
}  // namespace attnlab
