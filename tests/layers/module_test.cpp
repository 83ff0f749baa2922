#include <gtest/gtest.h>

#include "autograd/ops.h"
#include "layers/linear.h"
#include "lib/error.h"

namespace attnlab {
namespace {

class TwoLayer : public Module {
 public:
  explicit TwoLayer(Generator& gen) {
    fc1 = register_module("fc1", std::make_shared<Linear>(3, 4, true, gen));
    fc2 = register_module("fc2", std::make_shared<Linear>(4, 2, false, gen));
    scale = register_parameter("scale", Tensor::ones(Shape{2}));
  }
  std::shared_ptr<Linear> fc1, fc2;
  Variable scale;
};

TEST(Module, NamesAreStableDottedPaths) {
  Generator gen(1);
  TwoLayer m(gen);
  std::vector<std::string> names;
  for (const auto& [name, _] : m.named_parameters()) names.push_back(name);
  EXPECT_EQ(names, (std::vector<std::string>{"scale", "fc1.weight", "fc1.bias", "fc2.weight"}));
  EXPECT_EQ(m.num_parameters(), 2 + 12 + 4 + 8);
}

TEST(Module, LoadStateDictChecksEverythingFirst) {
  Generator gen(1);
  TwoLayer a(gen), b(gen);
  EXPECT_NE(a.fc1->weight().data().to_vector<float>(), b.fc1->weight().data().to_vector<float>());
  b.load_state_dict(a.state_dict());
  EXPECT_EQ(a.fc1->weight().data().to_vector<float>(), b.fc1->weight().data().to_vector<float>());

  TwoLayer c(gen);
  const std::vector<float> before = c.fc1->weight().data().to_vector<float>();
  auto state = a.state_dict();
  state["fc2.weight"] = Tensor::zeros(Shape{3, 3});
  try {
    c.load_state_dict(state);
    FAIL();
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("fc2.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[3, 3]"), std::string::npos) << e.what();
  }
  EXPECT_EQ(c.fc1->weight().data().to_vector<float>(), before) << "a failed load must change nothing";
  state = a.state_dict();
  state.erase("scale");
  EXPECT_THROW(c.load_state_dict(state), ConfigError);
  state = a.state_dict();
  state["extra"] = Tensor::zeros(Shape{1});
  EXPECT_THROW(c.load_state_dict(state), ConfigError);
}

// A buffer (state saved with the weights but never trained): in state_dict and named_buffers,
// not in parameters, loaded and checked like a parameter.
class WithBuffer : public Module {
 public:
  explicit WithBuffer(Generator& gen) {
    fc = register_module("fc", std::make_shared<Linear>(2, 2, false, gen));
    running = register_buffer("running", Tensor::zeros(Shape{3}));
  }
  std::shared_ptr<Linear> fc;
  Variable running;
};

class Outer : public Module {
 public:
  explicit Outer(Generator& gen) { inner = register_module("inner", std::make_shared<WithBuffer>(gen)); }
  std::shared_ptr<WithBuffer> inner;
};

TEST(Module, BuffersAreSavedButNotTrained) {
  Generator gen(1);
  Outer a(gen), b(gen);
  EXPECT_EQ(a.parameters().size(), 1u);
  ASSERT_EQ(a.named_buffers().size(), 1u);
  EXPECT_EQ(a.named_buffers()[0].first, "inner.running");
  EXPECT_FALSE(a.inner->running.requires_grad());
  EXPECT_EQ(a.state_dict().count("inner.running"), 1u);
  Variable r = a.inner->running;
  r.mutable_data().fill_(2.5);
  b.load_state_dict(a.state_dict());
  EXPECT_EQ(b.inner->running.data().to_vector<float>(), std::vector<float>(3, 2.5f));
  auto state = a.state_dict();
  state.erase("inner.running");
  EXPECT_THROW(b.load_state_dict(state), ConfigError) << "a missing buffer must be an error";
  state = a.state_dict();
  state["inner.running"] = Tensor::zeros(Shape{4});
  EXPECT_THROW(b.load_state_dict(state), ShapeError);
}

TEST(Linear, MatchesTheFormulaOnBatchedInput) {
  Generator gen(2);
  Linear fc(3, 2, true, gen);
  Variable bias = fc.bias();
  bias.mutable_data().copy_(Tensor::from_vector(Shape{2}, std::vector<float>{0.5f, -1.0f}));
  const Tensor x = randn(Shape{2, 4, 3}, gen);
  const Tensor y = fc.forward(Variable(x)).data();
  ASSERT_EQ(y.shape(), (Shape{2, 4, 2}));
  const auto w = fc.weight().data().to_vector<float>(), xv = x.to_vector<float>(), yv = y.to_vector<float>();
  for (int r = 0; r < 8; ++r)
    for (int o = 0; o < 2; ++o) {
      float want = o == 0 ? 0.5f : -1.0f;
      for (int i = 0; i < 3; ++i) want += xv[r * 3 + i] * w[o * 3 + i];
      EXPECT_NEAR(yv[r * 2 + o], want, 1e-5);
    }
  EXPECT_THROW(fc.forward(Variable(randn(Shape{2, 5}, gen))), ShapeError);
}

}  // namespace
}  // namespace attnlab
