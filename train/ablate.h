// `attnlab ablate RECIPE.ini`: a grid of runs of one recipe.
//
// The recipe's [ablate] section names recipe keys and value lists:
//   [ablate]
//   model.attention = softmax, sigmoid, affine, infsa, linear_infsa, kda, lla
//   run.seed = 1, 2, 3
// Values are separated by commas; a value that itself holds commas is written in double quotes
// (model.layer_pattern = "kda,kda,kda,softmax", softmax). Two options of the runner itself are keys
// without a section: design = grid (default: every combination) or axes (each key varied alone,
// the others at the recipe's values; run.seed is always crossed with everything), and name (the
// ablation's directory name; default: run.name, i.e. the recipe's file name).
//
// Layout: <run.dir>/<name>/ holds recipe.ini (the recipe without [ablate]), ablation.json (the
// cells and their settings), results.csv, results.md, report.html and one run directory per cell,
// named from its settings (e.g. "attention-kda_seed-2"). Each cell is `attnlab train` in a child
// process (its output in <cell>/train.log; its peak memory is its own), so a cell that fails does
// not stop the others. Resumable: a cell with result.json is finished and not rerun; a cell with a
// checkpoint continues from it (--resume); others start fresh. Every cell's recipe is checked
// before anything runs: a bad key or value is one ConfigError naming the cell.
#pragma once

#include <map>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "lib/error.h"
#include "train/recipe.h"

namespace attnlab {

struct AblateOptions {
  std::string recipe;                  // path of the recipe with an [ablate] section
  std::vector<std::string> overrides;  // --section.key=value, applied to every cell
  std::string attnlab_binary;          // the executable that runs cells ("attnlab train ...")
  bool interactive = false;            // stdout is a terminal
  bool dry_run = false;                // check every cell and list them; run and write nothing
};

// Runs (or continues) the grid; returns the number of cells that failed.
// Throws AblateInterrupted when SIGINT stopped it (after the running cell's process ended).
int run_ablate(const AblateOptions& options, std::ostream& out);

struct AblateInterrupted : Error {
  using Error::Error;
};

// --- the pieces run_ablate is made of (public for tests) ---

// A comma-separated value list; double quotes keep commas (and spaces) inside a value.
// ConfigError (naming `key`) for an empty list, an empty value, an unclosed quote or a value
// given twice.
std::vector<std::string> parse_value_list(const std::string& text, const std::string& key);

struct AblateCell {
  std::string name;                                           // directory name, unique in the plan
  std::vector<std::pair<std::string, std::string>> settings;  // key -> value, in the keys' order
};

struct AblatePlan {
  std::string name;                              // the ablation's directory name
  std::string design = "grid";                   // "grid" or "axes"
  std::vector<std::string> keys;                 // ablated keys in recipe order
  std::vector<std::vector<std::string>> values;  // per key
  std::vector<AblateCell> cells;
};

// Reads the [ablate] entries: runner options (design, name) and recipe keys with their value
// lists, and expands the cells. grid: every combination, the last key varying fastest. axes: each
// key other than run.seed varied alone (the others keep the recipe's values), every one crossed
// with run.seed; a value equal to the recipe's own value of its key (`base`: the recipe's keys
// with the command line applied) is the baseline, which every axis shares: it is run once, under
// the first axis that lists it. `default_name` is used when there is no name option; `overrides`
// are the command line's (a key both ablated and overridden is a ConfigError). `source` names the
// recipe in messages.
AblatePlan plan_ablation(const std::vector<RecipeEntry>& entries, const std::string& default_name,
                         const std::vector<std::string>& overrides, const std::string& source,
                         const std::map<std::string, std::string>& base = {});

// The directory name of a cell: "attention-kda_seed-2" (the key after its section, unless two
// ablated keys end the same way; characters other than letters, digits, '.', '_', '+' and '-'
// become '-').
std::string cell_name(const std::vector<std::pair<std::string, std::string>>& settings,
                      const std::vector<std::string>& keys);

}  // namespace attnlab
