// What runs produced, read back from their directories: the rows of an ablation's results.csv and
// results.md, and what the report (train/report.h) plots.
//
// A run directory (train/trainer.h) holds metrics.jsonl (one JSON object per log step; eval steps
// add val_loss and, for synthetic tasks, val_<metric> and val_<metric>@<length>) and, once the run
// has finished, result.json (see kResultFile). An ablation directory (train/ablate.h) holds
// ablation.json, naming its cells and the values each sets, and one run directory per cell.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <vector>

namespace attnlab {

// Written by `attnlab train` at the end of a run (atomically; removed when a run starts, so its
// presence means "finished"). Keys:
//   steps, final_train_loss, final_val_loss, skipped_steps, seconds (wall time of the run),
//   tokens_per_s (mean over the run), parameters, peak_rss_mb (the process's peak resident set),
//   peak_device_mb (CUDA runs; absent on the CPU), metric ("val_loss" for corpus runs, else the
//   task's "accuracy" or "mse"), metric_value, higher_is_better, metric_by_length ({"64": v, ...};
//   tasks evaluated at several lengths), sink_mean (mean sink mass over the layers that have one at
//   the last eval; absent if none), routing_max_weight (mean max routing weight over the routing ops
//   at the last eval; absent for the standard residual), attention, residual, task ("corpus" or
//   the task name), device, threads.
inline constexpr const char* kResultFile = "result.json";
inline constexpr const char* kAblationFile = "ablation.json";
// Left in a cell's directory by `attnlab ablate` when its run exited with an error (the exit
// status and the log's last lines); removed when the cell is run again.
inline constexpr const char* kFailedFile = "failed.txt";

// Mean and spread of one quantity over the finished runs of a group.
struct Stat {
  double mean = 0;
  double std = 0;  // sample standard deviation; 0 with one run
  int64_t n = 0;   // runs that reported the quantity
};

struct RunRecord {
  std::string name;                                  // the cell's (or run's) directory name
  std::string dir;                                   // its path
  std::map<std::string, std::string> settings;       // ablated key -> value (empty for a plain run)
  std::string status;                                // "done", "failed", "running" or "pending"
  nlohmann::json result = nlohmann::json::object();  // result.json, {} until finished
  std::vector<nlohmann::json> metrics;               // metrics.jsonl, in order
};

// Runs whose settings differ only in run.seed.
struct ResultGroup {
  std::string label;                            // "attention=kda residual=attnres" ("" if no keys)
  std::map<std::string, std::string> settings;  // the group's settings, run.seed left out
  std::vector<size_t> runs;                     // indices into RunSet::runs
  // Over the group's finished runs: "metric_value", "final_val_loss", "final_train_loss",
  // "tokens_per_s", "peak_rss_mb", "parameters", "sink_mean", "routing_max_weight", and
  // "metric@<length>" for each evaluated length.
  std::map<std::string, Stat> stats;
};

struct RunSet {
  std::string title;                // the ablation's name, or the runs' names joined
  std::string dir;                  // the ablation directory ("" for a set of plain runs)
  std::string recipe;               // the recipe the ablation was run from ("" for plain runs)
  std::string design;               // "grid" or "axes" ("" for plain runs)
  std::vector<std::string> keys;    // the ablated keys in recipe order (run.seed included when ablated)
  std::string metric = "val_loss";  // what the tables rank by
  bool higher_is_better = false;
  std::vector<RunRecord> runs;
  std::vector<ResultGroup> groups;  // in the order their first run appears
};

// Reads an ablation directory (its ablation.json, each cell's result.json and metrics.jsonl).
// IoError naming the file when ablation.json is missing or malformed.
RunSet load_ablation(const std::string& dir);
// Reads plain run directories (or ablation directories, whose cells are added) as one set; each
// run is its own group unless the runs share settings. IoError for a path that is neither.
RunSet load_runs(const std::vector<std::string>& paths);
// Fills set.groups from set.runs (called by both loaders; public for tests).
void group_runs(RunSet& set);

// results.csv: one row per run (settings, status, every result.json number). results.md: a
// table per group (mean ± spread over seeds, n), then one row per run. Written atomically.
void write_results_csv(const RunSet& set, const std::string& path);
void write_results_md(const RunSet& set, const std::string& path);
std::string results_markdown(const RunSet& set);
std::string results_csv(const RunSet& set);

// A number as the tables show it: 4 significant digits, whole numbers of 10^4 and more without
// an exponent, "-" for NaN.
std::string format_number(double v);
// An ablated key as tables and cell names show it: "model.attention" -> "attention", unless
// another of `keys` ends the same way (then the whole key).
std::string short_key(const std::string& key, const std::vector<std::string>& keys);
// The groups' indices, best first by mean metric_value; groups with no finished run last.
std::vector<size_t> groups_best_first(const RunSet& set);

}  // namespace attnlab
