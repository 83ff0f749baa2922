#include <gtest/gtest.h>

#include "lib/error.h"
#include "train/recipe.h"

namespace attnlab {
namespace {

const char* kText = R"(# a comment
[model]
hidden = 128   # trailing comment
name = mlp
[optim]
lr = 0.003
decay = on
)";

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(no ConfigError)";
}

TEST(Recipe, TypedReadsDefaultsAndOverrides) {
  Recipe r = Recipe::parse(kText, "x.ini", {"--optim.lr=0.01", "train.steps=7"});
  EXPECT_EQ(r.get_int("model.hidden", 1), 128);
  EXPECT_EQ(r.get_string("model.name", ""), "mlp");
  EXPECT_DOUBLE_EQ(r.get_double("optim.lr", 1.0), 0.01);
  EXPECT_TRUE(r.get_bool("optim.decay", false));
  EXPECT_EQ(r.get_int("train.steps", 1), 7);
  EXPECT_EQ(r.get_int("train.batch", 32), 32);
  EXPECT_NO_THROW(r.check_all_used());
  EXPECT_NE(r.resolved().find("[train]\nbatch = 32\nsteps = 7\n"), std::string::npos) << r.resolved();
}

TEST(Recipe, UnknownKeysAndBadValuesAreNamed) {
  Recipe r = Recipe::parse("[model]\nhidden = 12x\nhiden = 3\n", "bad.ini");
  EXPECT_EQ(message_of([&] { r.get_int("model.hidden", 1); }), "recipe bad.ini: model.hidden = '12x' is not an integer");
  EXPECT_EQ(message_of([&] { r.check_all_used(); }),
            "recipe bad.ini: unknown key 'model.hiden'; known keys in [model]: model.hidden");
  Recipe s = Recipe::parse("[a]\nflag = maybe\n", "s.ini");
  EXPECT_NE(message_of([&] { s.get_bool("a.flag", false); }).find("not a boolean"), std::string::npos);
  EXPECT_NE(message_of([] { Recipe::parse("[a]\nk = 1\nk = 2\n", "d.ini"); }).find("set twice"), std::string::npos);
  EXPECT_NE(message_of([] { Recipe::parse("k = 1\n", "n.ini"); }).find("must sit in a section"), std::string::npos);
  EXPECT_NE(message_of([] { Recipe::parse("", "o.ini", {"--nodot=1"}); }).find("section.key=value"), std::string::npos);
  EXPECT_NE(message_of([&] { r.require_string("model.absent"); }).find("missing required key"), std::string::npos);
  EXPECT_THROW(Recipe::load("/nonexistent/recipe.ini"), IoError);
}

}  // namespace
}  // namespace attnlab
