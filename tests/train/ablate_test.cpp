// train/ablate's pieces without running anything: value lists with quotes, grid and axes
// expansion (counts and order), cell names, runner options and their errors, and the recipe text
// helpers (the [ablate] section split off, overrides written into the text).
#include "train/ablate.h"

#include <gtest/gtest.h>

#include <functional>
#include <set>

#include "lib/error.h"
#include "train/recipe.h"

namespace attnlab {
namespace {

using Settings = std::vector<std::pair<std::string, std::string>>;

std::string config_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(no ConfigError)";
}

AblatePlan plan(const std::vector<RecipeEntry>& entries, const std::vector<std::string>& overrides = {}) {
  return plan_ablation(entries, "base", overrides, "x.ini");
}

TEST(ValueList, CommasSpacesAndQuotes) {
  EXPECT_EQ(parse_value_list("softmax, sigmoid ,kda", "k"), (std::vector<std::string>{"softmax", "sigmoid", "kda"}));
  EXPECT_EQ(parse_value_list("\"kda,kda,kda,softmax\", softmax", "k"),
            (std::vector<std::string>{"kda,kda,kda,softmax", "softmax"}));
  EXPECT_EQ(parse_value_list(" \" a b \" ", "k"), (std::vector<std::string>{" a b "}));
  EXPECT_EQ(parse_value_list("1", "k"), (std::vector<std::string>{"1"}));
}

TEST(ValueList, BadListsAreConfigErrors) {
  EXPECT_NE(config_error([] { parse_value_list("", "model.attention"); }).find("model.attention has no values"),
            std::string::npos);
  EXPECT_NE(config_error([] { parse_value_list("a,,b", "k"); }).find("empty value"), std::string::npos);
  EXPECT_NE(config_error([] { parse_value_list("a,", "k"); }).find("empty value"), std::string::npos);
  EXPECT_NE(config_error([] { parse_value_list("a, b, a", "k"); }).find("'a' is given twice"), std::string::npos);
  EXPECT_NE(config_error([] { parse_value_list("\"a,b", "k"); }).find("not closed"), std::string::npos);
  EXPECT_NE(config_error([] { parse_value_list("\"a\"b, c", "k"); }).find("after a closing quote"), std::string::npos);
}

TEST(Plan, GridKeepsKeyOrderLastFastest) {
  const AblatePlan p = plan({{"model.attention", "softmax, kda, lla"}, {"run.seed", "1, 2"}});
  EXPECT_EQ(p.name, "base");
  EXPECT_EQ(p.design, "grid");
  EXPECT_EQ(p.keys, (std::vector<std::string>{"model.attention", "run.seed"}));
  ASSERT_EQ(p.cells.size(), 6u);
  EXPECT_EQ(p.cells[0].settings, (Settings{{"model.attention", "softmax"}, {"run.seed", "1"}}));
  EXPECT_EQ(p.cells[1].settings, (Settings{{"model.attention", "softmax"}, {"run.seed", "2"}}));
  EXPECT_EQ(p.cells[5].settings, (Settings{{"model.attention", "lla"}, {"run.seed", "2"}}));
  EXPECT_EQ(p.cells[0].name, "attention-softmax_seed-1");
  EXPECT_EQ(p.cells[3].name, "attention-kda_seed-2");

  // Seeds first in the recipe: all settings for seed 1, then seed 2.
  const AblatePlan q = plan({{"run.seed", "1, 2"}, {"model.attention", "softmax, kda"}, {"model.layers", "1,2,3"}});
  ASSERT_EQ(q.cells.size(), 12u);
  EXPECT_EQ(q.cells[0].name, "seed-1_attention-softmax_layers-1");
  EXPECT_EQ(q.cells[1].name, "seed-1_attention-softmax_layers-2");
  EXPECT_EQ(q.cells[3].name, "seed-1_attention-kda_layers-1");
  EXPECT_EQ(q.cells[6].name, "seed-2_attention-softmax_layers-1");
}

TEST(Plan, AxesVaryEachKeyAloneCrossedWithSeeds) {
  const AblatePlan p = plan(
      {{"design", "axes"}, {"model.attention", "softmax, kda"}, {"run.seed", "1, 2"}, {"model.layers", "1, 2, 3"}});
  EXPECT_EQ(p.design, "axes");
  ASSERT_EQ(p.cells.size(), (2u + 3u) * 2u);
  EXPECT_EQ(p.cells[0].settings, (Settings{{"model.attention", "softmax"}, {"run.seed", "1"}}));
  EXPECT_EQ(p.cells[1].settings, (Settings{{"model.attention", "softmax"}, {"run.seed", "2"}}));
  EXPECT_EQ(p.cells[4].settings, (Settings{{"model.layers", "1"}, {"run.seed", "1"}}));
  EXPECT_EQ(p.cells[9].name, "layers-3_seed-2");

  EXPECT_EQ(plan({{"design", "axes"}, {"model.attention", "softmax, kda"}}).cells.size(), 2u);
  const AblatePlan seeds = plan({{"design", "axes"}, {"run.seed", "1, 2, 3"}});
  ASSERT_EQ(seeds.cells.size(), 3u);
  EXPECT_EQ(seeds.cells[2].name, "seed-3");
}

TEST(Plan, AxesRunTheRecipesOwnValuesOnce) {
  // The recipe says softmax and 2 layers: that baseline is on both axes but runs once (under the
  // first), so 2 + 3 values give 4 cells per seed.
  const std::map<std::string, std::string> base = {{"model.attention", "softmax"}, {"model.layers", "2"}};
  const AblatePlan p = plan_ablation(
      {{"design", "axes"}, {"model.attention", "softmax, kda"}, {"model.layers", "1, 2, 3"}, {"run.seed", "1, 2"}},
      "base", {}, "x.ini", base);
  ASSERT_EQ(p.cells.size(), 4u * 2u);
  EXPECT_EQ(p.cells[0].settings, (Settings{{"model.attention", "softmax"}, {"run.seed", "1"}}));
  EXPECT_EQ(p.cells[4].settings, (Settings{{"model.layers", "1"}, {"run.seed", "1"}}));
  EXPECT_EQ(p.cells[6].settings, (Settings{{"model.layers", "3"}, {"run.seed", "1"}}));
  // A grid is every combination whatever the recipe says.
  EXPECT_EQ(plan_ablation({{"model.attention", "softmax, kda"}, {"model.layers", "1, 2, 3"}}, "base", {}, "x.ini", base)
                .cells.size(),
            6u);
}

TEST(Plan, RunnerOptionsAndErrors) {
  EXPECT_EQ(plan({{"name", "sweep1"}, {"model.attention", "a, b"}}).name, "sweep1");
  EXPECT_NE(config_error([] {
              plan({{"desgin", "axes"}, {"model.attention", "a"}});
            }).find("[ablate] has no option 'desgin'"),
            std::string::npos);
  EXPECT_NE(config_error([] {
              plan({{"design", "random"}, {"model.attention", "a"}});
            }).find("design = random"),
            std::string::npos);
  EXPECT_NE(config_error([] {
              plan({{"name", "../x"}, {"model.attention", "a"}});
            }).find("plain directory name"),
            std::string::npos);
  EXPECT_NE(config_error([] { plan({{"design", "grid"}}); }).find("varies no recipe key"), std::string::npos);
  EXPECT_NE(config_error([] {
              plan({{"model.attention", "a"}, {"model.attention", "b"}});
            }).find("set twice"),
            std::string::npos);
  EXPECT_NE(config_error([] {
              plan({{"model.attention", "a, b"}}, {"--model.attention=kda"});
            }).find("model.attention is both varied in [ablate] and overridden"),
            std::string::npos);
  EXPECT_NE(config_error([] { plan({{"run.name", "a, b"}}); }).find("cannot vary run.name"), std::string::npos);
  EXPECT_NE(config_error([] { plan({{"model.attention", ""}}); }).find("has no values"), std::string::npos);
  // Overrides of other keys are fine.
  EXPECT_EQ(plan({{"model.attention", "a, b"}}, {"--train.steps=5"}).cells.size(), 2u);
}

TEST(CellNames, FilesystemSafeAndUnique) {
  const std::vector<std::string> keys = {"model.layer_pattern", "run.seed"};
  EXPECT_EQ(cell_name({{"model.layer_pattern", "kda,kda, softmax"}, {"run.seed", "1"}}, keys),
            "layer_pattern-kda-kda-softmax_seed-1");
  EXPECT_EQ(cell_name({{"model.layer_pattern", "../etc/x"}}, keys), "layer_pattern-..-etc-x");
  // Two keys that end the same way keep their sections.
  EXPECT_EQ(cell_name({{"model.lr", "1"}, {"optim.lr", "2"}}, {"model.lr", "optim.lr"}), "model.lr-1_optim.lr-2");
  const std::string long_name = cell_name({{"model.layer_pattern", std::string(300, 'k')}}, keys);
  EXPECT_LE(long_name.size(), 100u);
  EXPECT_NE(long_name, cell_name({{"model.layer_pattern", std::string(299, 'k')}}, keys));

  // Values that only differ in characters a name cannot hold still make distinct cells.
  const AblatePlan p = plan({{"data.corpus", "a b, a/b, a_b"}});
  ASSERT_EQ(p.cells.size(), 3u);
  std::set<std::string> names;
  for (const AblateCell& c : p.cells) {
    names.insert(c.name);
    EXPECT_EQ(c.name.find('/'), std::string::npos) << c.name;
    EXPECT_NE(c.name[0], '.') << c.name;
  }
  EXPECT_EQ(names.size(), 3u);
  EXPECT_EQ(p.cells[0].name, "corpus-a-b");
  EXPECT_EQ(p.cells[1].name, "corpus-a-b-2");
}

TEST(RecipeText, SplitsTheAblateSectionInOrder) {
  const std::string text =
      "# top\n[run]\nname = x\n\n[ablate]\n# what varies\nmodel.attention = softmax, \"a,b\"  # two\n"
      "run.seed = 1, 2\ndesign = axes\n[model]\nlayers = 2\n";
  const RecipeSplit s = split_recipe_section(text, "ablate");
  ASSERT_TRUE(s.found);
  ASSERT_EQ(s.section.size(), 3u);
  EXPECT_EQ(s.section[0].key, "model.attention");
  EXPECT_EQ(s.section[0].value, "softmax, \"a,b\"");
  EXPECT_EQ(s.section[1].key, "run.seed");
  EXPECT_EQ(s.section[2].key, "design");
  EXPECT_EQ(s.rest, "# top\n[run]\nname = x\n\n[model]\nlayers = 2\n");
  EXPECT_FALSE(split_recipe_section(s.rest, "ablate").found);

  // The rest parses as a normal recipe.
  Recipe r = Recipe::parse(s.rest, "x.ini");
  EXPECT_EQ(r.get_int("model.layers", 0), 2);
}

TEST(RecipeText, OverridesAreWrittenIntoTheText) {
  const std::string text = "# top\n[run]\nname = x\n\n[model]\nlayers = 2  # small\nheads = 2\n";
  const std::string out =
      apply_overrides_to_text(text, {"--model.layers=4", "--run.seed=3", "train.steps=7", "--model.heads = 1"});
  EXPECT_EQ(out, "# top\n[run]\nname = x\nseed = 3\n\n[model]\nlayers = 4\nheads = 1\n\n[train]\nsteps = 7\n");
  Recipe r = Recipe::parse(out, "x.ini");
  EXPECT_EQ(r.get_int("model.layers", 0), 4);
  EXPECT_EQ(r.get_int("train.steps", 0), 7);
  EXPECT_NE(config_error([&] { apply_overrides_to_text(text, {"--steps=3"}); }).find("section.key=value"),
            std::string::npos);
}

}  // namespace
}  // namespace attnlab
