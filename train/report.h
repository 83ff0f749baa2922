// The report: one self-contained HTML page (inline SVG and CSS, no scripts, nothing fetched) that a
// researcher opens in a browser to compare runs: loss curves per group with the seeds as a band,
// the task metric over training, the results table, and the diagnostics (sink mass per layer,
// routing max weight per routing op, each variant's own numbers).
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "train/results.h"

namespace attnlab {

// The page for `set`.
std::string render_report(const RunSet& set);

// Writes render_report(set) to `path` atomically.
void write_report(const RunSet& set, const std::string& path);

// `attnlab report RUN... [--out PATH]`: one ablation directory rebuilds its report.html (and
// results.csv / results.md); several paths (runs or ablations) are compared in one page, written to
// `out` (default: report.html in the current directory). Prints the path written.
void run_report(const std::vector<std::string>& paths, const std::string& out, std::ostream& log);

}  // namespace attnlab
