// Reading run and ablation directories back (result.json, metrics.jsonl, ablation.json), grouping
// runs that differ only in their seed, and the results.csv / results.md tables.
#include "train/results.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "lib/error.h"
#include "lib/file_io.h"
#include "train/recipe.h"

namespace attnlab {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

json read_json_file(const fs::path& path) {
  const std::string text = read_file(path.string());
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    detail::throw_error<IoError>(path.string(), " is not valid JSON: ", e.what());
  }
}

// metrics.jsonl of a run; a line that does not parse (a run killed mid-write) ends the read.
std::vector<json> read_metrics_file(const fs::path& path) {
  std::vector<json> rows;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    try {
      rows.push_back(json::parse(line));
    } catch (const json::exception&) {
      break;
    }
  }
  return rows;
}

RunRecord load_run(const fs::path& dir, const std::string& name, std::map<std::string, std::string> settings) {
  RunRecord r;
  r.name = name;
  r.dir = dir.string();
  r.settings = std::move(settings);
  const fs::path result = dir / kResultFile;
  if (fs::exists(result)) {
    r.result = read_json_file(result);
    AL_CHECK_IO(r.result.is_object(), result.string(), ": expected a JSON object");
    r.status = "done";
  } else if (fs::exists(dir / kFailedFile)) {
    r.status = "failed";
  } else if (fs::exists(dir / "metrics.jsonl")) {
    r.status = "running";  // started, not finished: running now, or interrupted
  } else {
    r.status = "pending";
  }
  r.metrics = read_metrics_file(dir / "metrics.jsonl");
  return r;
}

bool finished(const RunRecord& r) { return r.result.is_object() && !r.result.empty(); }

// Takes metric and direction from the first finished run.
void set_metric(RunSet& set) {
  for (const RunRecord& r : set.runs) {
    if (!finished(r)) continue;
    if (r.result.contains("metric") && r.result["metric"].is_string()) set.metric = r.result["metric"];
    if (r.result.contains("higher_is_better") && r.result["higher_is_better"].is_boolean())
      set.higher_is_better = r.result["higher_is_better"];
    return;
  }
}

std::string path_name(const std::string& path) {
  fs::path p = fs::path(path).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  std::string name = p.filename().string();
  return name.empty() || name == "." ? fs::absolute(p).filename().string() : name;
}

std::vector<std::string> lengths_of(const RunSet& set) {
  std::set<std::string> seen;
  for (const RunRecord& r : set.runs)
    if (r.result.contains("metric_by_length") && r.result["metric_by_length"].is_object())
      for (const auto& [k, v] : r.result["metric_by_length"].items()) seen.insert(k);
  std::vector<std::string> out(seen.begin(), seen.end());
  std::stable_sort(out.begin(), out.end(), [](const std::string& a, const std::string& b) {
    if (a.size() != b.size()) return a.size() < b.size();  // numeric order for plain integers
    return a < b;
  });
  return out;
}

}  // namespace

std::string short_key(const std::string& key, const std::vector<std::string>& keys) {
  const size_t dot = key.find('.');
  if (dot == std::string::npos) return key;
  const std::string tail = key.substr(dot + 1);
  for (const std::string& k : keys)
    if (k != key && k.find('.') != std::string::npos && k.substr(k.find('.') + 1) == tail) return key;
  return tail;
}

std::string format_number(double v) {
  if (std::isnan(v)) return "-";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (v == 0) return "0";
  char buf[64];
  const double a = std::fabs(v);
  if (a >= 1e4 && a < 1e15)
    std::snprintf(buf, sizeof buf, "%.0f", v);
  else if (a < 1e-3)
    std::snprintf(buf, sizeof buf, "%.3e", v);
  else
    std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

RunSet load_ablation(const std::string& dir) {
  const fs::path file = fs::path(dir) / kAblationFile;
  AL_CHECK_IO(fs::exists(file), dir, " is not an ablation directory: it has no ", kAblationFile);
  const json j = read_json_file(file);
  RunSet set;
  set.dir = dir;
  try {
    set.title = j.at("name").get<std::string>();
    set.recipe = j.value("recipe", "");
    set.design = j.value("design", "grid");
    set.keys = j.at("keys").get<std::vector<std::string>>();
    for (const json& c : j.at("cells")) {
      const std::string name = c.at("name").get<std::string>();
      AL_CHECK_IO(!name.empty() && name.find('/') == std::string::npos && name != "." && name != "..", file.string(),
                  ": cell name '", name, "' is not a plain directory name");
      set.runs.push_back(
          load_run(fs::path(dir) / name, name, c.at("settings").get<std::map<std::string, std::string>>()));
    }
  } catch (const json::exception& e) {
    detail::throw_error<IoError>(file.string(),
                                 " is malformed (expected name, keys and cells: [{name, settings}]): ", e.what());
  }
  set_metric(set);
  group_runs(set);
  return set;
}

RunSet load_runs(const std::vector<std::string>& paths) {
  RunSet set;
  std::vector<std::string> titles;
  std::vector<size_t> plain;  // indices of plain runs, whose settings come from their recipes
  const bool several = paths.size() > 1;
  for (const std::string& p : paths) {
    if (fs::exists(fs::path(p) / kAblationFile)) {
      RunSet sub = load_ablation(p);
      titles.push_back(sub.title);
      if (!several) {
        set.dir = sub.dir;
        set.recipe = sub.recipe;
        set.design = sub.design;
      }
      for (const std::string& k : sub.keys)
        if (std::find(set.keys.begin(), set.keys.end(), k) == set.keys.end()) set.keys.push_back(k);
      for (RunRecord& r : sub.runs) {
        if (several) {
          // Cells of different ablations never share a group, and their names stay distinct.
          r.name = sub.title + "/" + r.name;
          r.settings["ablation"] = sub.title;
        }
        set.runs.push_back(std::move(r));
      }
      continue;
    }
    const fs::path dir(p);
    AL_CHECK_IO(
        fs::is_directory(dir) &&
            (fs::exists(dir / "metrics.jsonl") || fs::exists(dir / kResultFile) || fs::exists(dir / "recipe.ini")),
        p, " is neither a run directory (metrics.jsonl, result.json) nor an ablation directory (", kAblationFile, ")");
    const std::string name = path_name(p);
    titles.push_back(name);
    plain.push_back(set.runs.size());
    set.runs.push_back(load_run(dir, name, {}));
  }
  if (several && std::any_of(set.runs.begin(), set.runs.end(),
                             [](const RunRecord& r) { return r.settings.count("ablation") != 0; }))
    set.keys.insert(set.keys.begin(), "ablation");

  // Plain runs are told apart by the recipe keys whose values differ between them.
  if (plain.size() > 1) {
    std::vector<std::map<std::string, std::string>> values;
    std::set<std::string> all;
    for (size_t i : plain) {
      std::map<std::string, std::string> v;
      const fs::path recipe = fs::path(set.runs[i].dir) / "recipe.ini";
      if (fs::exists(recipe)) {
        try {
          v = Recipe::load(recipe.string()).values();
        } catch (const Error&) {
          // An unreadable recipe only means this run shows no settings.
        }
      }
      v.erase("run.name");
      v.erase("run.dir");
      for (const auto& [k, _] : v) all.insert(k);
      values.push_back(std::move(v));
    }
    std::vector<std::string> differing;
    for (const std::string& k : all) {
      const auto first = values[0].find(k);
      for (const auto& v : values) {
        const auto it = v.find(k);
        if ((it == v.end()) != (first == values[0].end()) || (it != v.end() && it->second != first->second)) {
          differing.push_back(k);
          break;
        }
      }
    }
    // run.seed last, as in an ablation grid.
    std::stable_partition(differing.begin(), differing.end(), [](const std::string& k) { return k != "run.seed"; });
    for (size_t n = 0; n < plain.size(); ++n)
      for (const std::string& k : differing) {
        const auto it = values[n].find(k);
        set.runs[plain[n]].settings[k] = it == values[n].end() ? "-" : it->second;
      }
    for (const std::string& k : differing)
      if (std::find(set.keys.begin(), set.keys.end(), k) == set.keys.end()) set.keys.push_back(k);
  }

  for (size_t i = 0; i < titles.size(); ++i) set.title += (i ? ", " : "") + titles[i];
  set_metric(set);
  group_runs(set);
  return set;
}

void group_runs(RunSet& set) {
  set.groups.clear();
  std::map<std::map<std::string, std::string>, size_t> index;
  for (size_t i = 0; i < set.runs.size(); ++i) {
    const RunRecord& r = set.runs[i];
    std::map<std::string, std::string> settings = r.settings;
    settings.erase("run.seed");
    if (r.settings.empty() && set.dir.empty()) {
      // A plain run with nothing to tell it from the others is its own group.
      ResultGroup g;
      g.label = r.name;
      g.runs.push_back(i);
      set.groups.push_back(std::move(g));
      continue;
    }
    auto it = index.find(settings);
    if (it == index.end()) {
      ResultGroup g;
      g.settings = settings;
      for (const std::string& k : set.keys) {
        const auto s = settings.find(k);
        if (s != settings.end()) g.label += (g.label.empty() ? "" : " ") + short_key(k, set.keys) + "=" + s->second;
      }
      // Settings under keys the set does not list (hand-made sets) still show.
      for (const auto& [k, v] : settings)
        if (std::find(set.keys.begin(), set.keys.end(), k) == set.keys.end())
          g.label += (g.label.empty() ? "" : " ") + short_key(k, set.keys) + "=" + v;
      it = index.emplace(settings, set.groups.size()).first;
      set.groups.push_back(std::move(g));
    }
    set.groups[it->second].runs.push_back(i);
  }

  static const char* kStats[] = {"metric_value", "final_val_loss", "final_train_loss", "tokens_per_s",
                                 "peak_rss_mb",  "parameters",     "sink_mean",        "routing_max_weight",
                                 "seconds",      "peak_device_mb"};
  for (ResultGroup& g : set.groups) {
    std::map<std::string, std::vector<double>> values;
    for (size_t i : g.runs) {
      const json& res = set.runs[i].result;
      if (!finished(set.runs[i])) continue;
      for (const char* k : kStats)
        if (res.contains(k) && res[k].is_number()) values[k].push_back(res[k].get<double>());
      if (res.contains("metric_by_length") && res["metric_by_length"].is_object())
        for (const auto& [len, v] : res["metric_by_length"].items())
          if (v.is_number()) values["metric@" + len].push_back(v.get<double>());
    }
    g.stats.clear();
    for (const auto& [k, xs] : values) {
      Stat s;
      s.n = static_cast<int64_t>(xs.size());
      for (double x : xs) s.mean += x;
      s.mean /= static_cast<double>(xs.size());
      if (xs.size() > 1) {
        double ss = 0;
        for (double x : xs) ss += (x - s.mean) * (x - s.mean);
        s.std = std::sqrt(ss / static_cast<double>(xs.size() - 1));
      }
      g.stats[k] = s;
    }
  }
}

std::vector<size_t> groups_best_first(const RunSet& set) {
  std::vector<size_t> order(set.groups.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  auto score = [&](size_t g) -> double {
    const auto it = set.groups[g].stats.find("metric_value");
    if (it == set.groups[g].stats.end() || it->second.n == 0 || std::isnan(it->second.mean))
      return std::numeric_limits<double>::infinity();  // unfinished groups sort last
    return set.higher_is_better ? -it->second.mean : it->second.mean;
  };
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return score(a) < score(b); });
  return order;
}

namespace {

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::string json_cell(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "";
  return v.dump();
}

// The order result.json keys take in results.csv; other scalar keys follow, sorted.
const std::vector<std::string>& result_columns() {
  static const std::vector<std::string> cols = {"metric",
                                                "metric_value",
                                                "higher_is_better",
                                                "final_train_loss",
                                                "final_val_loss",
                                                "steps",
                                                "skipped_steps",
                                                "seconds",
                                                "tokens_per_s",
                                                "parameters",
                                                "peak_rss_mb",
                                                "peak_device_mb",
                                                "sink_mean",
                                                "routing_max_weight",
                                                "task",
                                                "attention",
                                                "residual",
                                                "device",
                                                "threads"};
  return cols;
}

std::string md_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '|')
      out += "\\|";
    else if (c == '\n')
      out += ' ';
    else
      out += c;
  }
  return out;
}

std::string mean_std(const ResultGroup& g, const std::string& key, bool spread) {
  const auto it = g.stats.find(key);
  if (it == g.stats.end() || it->second.n == 0) return "-";
  if (!spread || it->second.n < 2) return format_number(it->second.mean);
  return format_number(it->second.mean) + " ± " + format_number(it->second.std);
}

std::string result_number(const RunRecord& r, const std::string& key) {
  if (!r.result.contains(key) || !r.result[key].is_number()) return "-";
  return format_number(r.result[key].get<double>());
}

std::string row(const std::vector<std::string>& cells) {
  std::string s = "|";
  for (const std::string& c : cells) {
    s += ' ';
    s += md_escape(c);
    s += " |";
  }
  return s + "\n";
}

std::string rule(size_t n) {
  std::string s = "|";
  for (size_t i = 0; i < n; ++i) s += "---|";
  return s + "\n";
}

}  // namespace

std::string results_csv(const RunSet& set) {
  std::vector<std::string> cols = result_columns();
  for (const std::string& len : lengths_of(set)) cols.push_back("metric@" + len);
  std::set<std::string> extra;
  for (const RunRecord& r : set.runs)
    for (const auto& [k, v] : r.result.items())
      if (v.is_primitive() && std::find(cols.begin(), cols.end(), k) == cols.end()) extra.insert(k);
  cols.insert(cols.end(), extra.begin(), extra.end());

  std::ostringstream os;
  os << "name";
  for (const std::string& k : set.keys) os << "," << csv_field(k);
  os << ",status";
  for (const std::string& c : cols) os << "," << csv_field(c);
  os << "\n";
  for (const RunRecord& r : set.runs) {
    os << csv_field(r.name);
    for (const std::string& k : set.keys) {
      const auto it = r.settings.find(k);
      os << "," << csv_field(it == r.settings.end() ? "" : it->second);
    }
    os << "," << r.status;
    for (const std::string& c : cols) {
      std::string v;
      if (c.rfind("metric@", 0) == 0) {
        const std::string len = c.substr(7);
        if (r.result.contains("metric_by_length") && r.result["metric_by_length"].contains(len))
          v = json_cell(r.result["metric_by_length"][len]);
      } else if (r.result.contains(c)) {
        v = json_cell(r.result[c]);
      }
      os << "," << csv_field(v);
    }
    os << "\n";
  }
  return os.str();
}

std::string results_markdown(const RunSet& set) {
  const std::string metric = set.metric;
  const bool metric_is_val = metric == "val_loss";
  const std::vector<std::string> lengths = lengths_of(set);
  std::ostringstream os;
  os << "# " << (set.dir.empty() ? "Runs" : "Ablation") << ": " << set.title << "\n\n";
  if (!set.recipe.empty()) os << "- recipe: `" << set.recipe << "`\n";
  if (!set.design.empty()) {
    os << "- design: " << set.design;
    if (!set.keys.empty()) {
      os << " over ";
      for (size_t i = 0; i < set.keys.size(); ++i) os << (i ? ", " : "") << "`" << set.keys[i] << "`";
    }
    os << "\n";
  }
  os << "- metric: " << metric << " (" << (set.higher_is_better ? "higher" : "lower") << " is better)\n";
  std::map<std::string, int> by_status;
  for (const RunRecord& r : set.runs) ++by_status[r.status];
  os << "- runs: " << set.runs.size();
  if (!set.runs.empty()) {
    os << " (";
    bool first = true;
    for (const char* s : {"done", "failed", "running", "pending"})
      if (by_status[s]) os << (first ? "" : ", ") << by_status[s] << " " << s, first = false;
    os << ")";
  }
  os << "\n\n";

  os << "## By setting\n\n"
     << "Best first by " << metric << "; mean ± sample standard deviation over the finished seeds.\n\n";
  std::vector<std::string> head = {"setting", "n", metric};
  for (const std::string& len : lengths) head.push_back(metric + "@" + len);
  if (!metric_is_val) head.push_back("val loss");
  for (const char* h : {"train loss", "parameters", "tokens/s", "peak RSS MB", "sink", "route max"}) head.push_back(h);
  os << row(head) << rule(head.size());
  for (size_t gi : groups_best_first(set)) {
    const ResultGroup& g = set.groups[gi];
    int64_t done = 0;
    for (size_t i : g.runs) done += finished(set.runs[i]) ? 1 : 0;
    std::vector<std::string> cells = {g.label.empty() ? "(recipe)" : g.label,
                                      done == static_cast<int64_t>(g.runs.size())
                                          ? std::to_string(done)
                                          : std::to_string(done) + "/" + std::to_string(g.runs.size()),
                                      mean_std(g, "metric_value", true)};
    for (const std::string& len : lengths) cells.push_back(mean_std(g, "metric@" + len, true));
    if (!metric_is_val) cells.push_back(mean_std(g, "final_val_loss", true));
    for (const char* k :
         {"final_train_loss", "parameters", "tokens_per_s", "peak_rss_mb", "sink_mean", "routing_max_weight"})
      cells.push_back(mean_std(g, k, false));
    os << row(cells);
  }

  os << "\n## By cell\n\n";
  head = {set.dir.empty() ? "run" : "cell"};
  for (const std::string& k : set.keys) head.push_back(short_key(k, set.keys));
  head.push_back("status");
  head.push_back(metric);
  if (!metric_is_val) head.push_back("val loss");
  for (const char* h : {"train loss", "parameters", "tokens/s", "peak RSS MB", "sink", "route max", "seconds"})
    head.push_back(h);
  os << row(head) << rule(head.size());
  for (const RunRecord& r : set.runs) {
    std::vector<std::string> cells = {r.name};
    for (const std::string& k : set.keys) {
      const auto it = r.settings.find(k);
      cells.push_back(it == r.settings.end() ? "-" : it->second);
    }
    cells.push_back(r.status);
    cells.push_back(result_number(r, "metric_value"));
    if (!metric_is_val) cells.push_back(result_number(r, "final_val_loss"));
    for (const char* k : {"final_train_loss", "parameters", "tokens_per_s", "peak_rss_mb", "sink_mean",
                          "routing_max_weight", "seconds"})
      cells.push_back(result_number(r, k));
    os << row(cells);
  }
  return os.str();
}

void write_results_csv(const RunSet& set, const std::string& path) { write_file_atomic(path, results_csv(set)); }

void write_results_md(const RunSet& set, const std::string& path) { write_file_atomic(path, results_markdown(set)); }

}  // namespace attnlab
