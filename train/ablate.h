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

#include <ostream>
#include <string>
#include <vector>

namespace attnlab {

struct AblateOptions {
  std::string recipe;                  // path of the recipe with an [ablate] section
  std::vector<std::string> overrides;  // --section.key=value, applied to every cell
  std::string attnlab_binary;          // the executable that runs cells ("attnlab train ...")
  bool interactive = false;            // stdout is a terminal
};

// Runs (or continues) the grid; returns the number of cells that failed.
int run_ablate(const AblateOptions& options, std::ostream& out);

}  // namespace attnlab
