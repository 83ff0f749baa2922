// The HTML report (train/report.h): a header saying what was compared, the results table (groups
// best first, mean ± std over seeds), the runs with their status, and SVG charts (train/svg_plot.h):
// losses and task metrics over training with the seeds as a min-max band, the metric by eval
// length, and the last eval's diagnostics per layer and per routing op. Every string read from a
// run directory is escaped; the page has no script and refers to nothing outside itself.
#include "train/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "lib/error.h"
#include "lib/file_io.h"
#include "train/svg_plot.h"

namespace attnlab {

namespace {

using nlohmann::json;
using svg::escape;
using svg::format_number;

// A finite number under `key` of `obj`, if there is one (NaN is written as null in JSON).
std::optional<double> number(const json& obj, const std::string& key) {
  if (!obj.is_object()) return std::nullopt;
  const auto it = obj.find(key);
  if (it == obj.end() || !it->is_number()) return std::nullopt;
  const double v = it->get<double>();
  if (!std::isfinite(v)) return std::nullopt;
  return v;
}

std::string group_name(const RunSet& set, const ResultGroup& g) {
  if (!g.label.empty()) return g.label;
  std::string s;
  for (size_t i : g.runs) s += (s.empty() ? "" : ", ") + set.runs[i].name;
  return s.empty() ? "(empty group)" : s;
}

// Values of one quantity across a group's runs at each x, reduced to mean, min and max.
struct Agg {
  std::map<double, std::vector<double>> at;
  void add(double x, double v) {
    if (std::isfinite(x) && std::isfinite(v)) at[x].push_back(v);
  }
  // The series: the mean as the line and min..max as the band where any x has 2+ runs.
  svg::Series series(const std::string& label, size_t color) const {
    svg::Series s;
    s.label = label;
    s.color = color;
    bool spread = false;
    for (const auto& [x, vs] : at) {
      double sum = 0, lo = vs[0], hi = vs[0];
      for (double v : vs) sum += v, lo = std::min(lo, v), hi = std::max(hi, v);
      s.x.push_back(x);
      s.y.push_back(sum / static_cast<double>(vs.size()));
      s.band_lo.push_back(lo);
      s.band_hi.push_back(hi);
      spread = spread || vs.size() >= 2;
    }
    if (!spread) s.band_lo.clear(), s.band_hi.clear();
    return s;
  }
};

// Log y for a loss or an error (not an accuracy) when positive and spanning a wide range: a loss
// falling from ln(vocab) to ~1 is otherwise a cliff and a flat line.
bool wants_log(const std::string& key, const std::vector<svg::Series>& series) {
  if (key.find("loss") == std::string::npos && key.find("mse") == std::string::npos) return false;
  double lo = INFINITY, hi = -INFINITY;
  for (const svg::Series& s : series)
    for (double v : s.y)
      if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  return lo > 0 && hi / lo > 4;
}

// A chart of metrics key `key` against step, one series per group.
std::string step_chart(const RunSet& set, const std::string& key, const std::string& title,
                       const std::string& y_label) {
  svg::LineChart c;
  c.title = title;
  c.x_label = "step";
  c.y_label = y_label;
  for (size_t g = 0; g < set.groups.size(); ++g) {
    Agg a;
    for (size_t r : set.groups[g].runs)
      for (const json& m : set.runs[r].metrics)
        if (const auto step = number(m, "step"), v = number(m, key); step && v) a.add(*step, *v);
    c.series.push_back(a.series(group_name(set, set.groups[g]), g));
  }
  c.log_y = wants_log(key, c.series);
  if (c.log_y) c.y_label += " (log scale)";
  return svg::render_line_chart(c);
}

// The last metrics row of a run holding `key` (an eval step), or null.
const json* last_with(const RunRecord& run, const std::string& key) {
  for (auto it = run.metrics.rbegin(); it != run.metrics.rend(); ++it)
    if (it->is_object() && it->contains(key)) return &*it;
  return nullptr;
}

// Eval keys found in the metrics: "val_<m>" series over steps (not val_loss) and, for "val_<m>@<L>",
// the lengths per base name.
struct EvalKeys {
  std::vector<std::string> over_steps;
  std::map<std::string, std::set<double>> by_length;
};

EvalKeys eval_keys(const RunSet& set) {
  EvalKeys k;
  std::set<std::string> seen;
  for (const RunRecord& r : set.runs)
    for (const json& m : r.metrics) {
      if (!m.is_object()) continue;
      for (const auto& [key, v] : m.items()) {
        if (key.rfind("val_", 0) != 0 || key == "val_loss" || !(v.is_number() || v.is_null())) continue;
        const size_t at = key.find('@');
        if (at == std::string::npos) {
          if (seen.insert(key).second) k.over_steps.push_back(key);
          continue;
        }
        try {
          size_t used = 0;
          const double len = std::stod(key.substr(at + 1), &used);
          if (used == key.size() - at - 1 && std::isfinite(len) && len > 0) k.by_length[key.substr(0, at)].insert(len);
        } catch (const std::exception&) {
          // Not a length after '@': not a by-length metric.
        }
      }
    }
  return k;
}

std::string length_chart(const RunSet& set, const std::string& base, const std::set<double>& lengths) {
  svg::LineChart c;
  c.title = base + " by eval length (last eval)";
  c.x_label = "eval length (tokens)";
  c.y_label = base;
  c.log_x = lengths.size() >= 2 && *lengths.rbegin() / *lengths.begin() >= 4;
  c.x_ticks.assign(lengths.begin(), lengths.end());
  for (size_t g = 0; g < set.groups.size(); ++g) {
    Agg a;
    for (size_t r : set.groups[g].runs)
      for (double len : lengths) {
        const std::string key = base + "@" + format_number(len, 12);
        if (const json* m = last_with(set.runs[r], key))
          if (const auto v = number(*m, key)) a.add(len, *v);
      }
    c.series.push_back(a.series(group_name(set, set.groups[g]), g));
  }
  return svg::render_line_chart(c);
}

// Per group, the mean over its runs of `field` of each element of the last eval's `array_key`
// array, the element named by `name_of` (e.g. its layer). Empty when no run has the field.
struct PerElement {
  std::vector<std::string> categories;      // in first-seen order (layers ascending)
  std::vector<std::vector<double>> values;  // [group][category], NaN where missing
  bool any = false;
};

PerElement per_element(const RunSet& set, const std::string& array_key, const std::string& field,
                       std::string (*name_of)(const json&)) {
  PerElement p;
  std::map<std::string, size_t> index;
  std::vector<std::map<size_t, std::vector<double>>> acc(set.groups.size());
  for (size_t g = 0; g < set.groups.size(); ++g)
    for (size_t r : set.groups[g].runs) {
      const json* m = last_with(set.runs[r], array_key);
      if (!m || !(*m)[array_key].is_array()) continue;
      for (const json& e : (*m)[array_key]) {
        const auto v = number(e, field);
        if (!v) continue;
        const std::string name = name_of(e);
        auto [it, fresh] = index.try_emplace(name, p.categories.size());
        if (fresh) p.categories.push_back(name);
        acc[g][it->second].push_back(*v);
        p.any = true;
      }
    }
  for (size_t g = 0; g < set.groups.size(); ++g) {
    std::vector<double> row(p.categories.size(), NAN);
    for (const auto& [k, vs] : acc[g]) {
      double s = 0;
      for (double v : vs) s += v;
      row[k] = s / static_cast<double>(vs.size());
    }
    p.values.push_back(row);
  }
  return p;
}

std::string layer_name(const json& e) {
  const auto l = number(e, "layer");
  return l ? "layer " + format_number(*l, 6) : "layer ?";
}

std::string op_name(const json& e) {
  if (e.is_object() && e.contains("op") && e["op"].is_string()) return e["op"].get<std::string>();
  return "?";
}

std::string bar_chart(const RunSet& set, const PerElement& p, const std::string& title, const std::string& x_label,
                      const std::string& y_label) {
  svg::BarChart c;
  c.title = title;
  c.x_label = x_label;
  c.y_label = y_label;
  c.categories = p.categories;
  for (size_t g = 0; g < set.groups.size(); ++g) c.series.push_back({group_name(set, set.groups[g]), g, p.values[g]});
  return svg::render_bar_chart(c);
}

// A small line sample in the group's colour and dash, for tables.
std::string swatch(size_t g) {
  std::string s =
      "<svg class=\"sw\" width=\"24\" height=\"10\" viewBox=\"0 0 24 10\" aria-hidden=\"true\"><line x1=\"1\" "
      "y1=\"5\" x2=\"23\" y2=\"5\" stroke=\"" +
      svg::palette_color(g) + "\" stroke-width=\"3\"";
  const std::string dash = svg::dash_pattern(g);
  if (!dash.empty()) s += " stroke-dasharray=\"" + dash + "\"";
  return s + "/></svg>";
}

// A parameter count as 1.20M / 35.4k.
std::string format_count(double v) {
  char b[32];
  if (v >= 1e9)
    std::snprintf(b, sizeof b, "%.2fB", v / 1e9);
  else if (v >= 1e6)
    std::snprintf(b, sizeof b, "%.2fM", v / 1e6);
  else if (v >= 1e4)
    std::snprintf(b, sizeof b, "%.1fk", v / 1e3);
  else
    std::snprintf(b, sizeof b, "%.0f", v);
  return b;
}

// "mean ± std" of a group's statistic (a parameter count alone: seeds do not change it).
std::string stat_cell(const ResultGroup& g, const std::string& key) {
  const auto it = g.stats.find(key);
  if (it == g.stats.end() || it->second.n == 0) return "<td class=\"na\">\u2013</td>";
  const Stat& s = it->second;
  if (key == "parameters") return "<td>" + format_count(s.mean) + "</td>";
  std::string t = attnlab::format_number(s.mean);  // as results.md shows it
  // The spread under the mean, small (keeps the columns narrow), to 2 significant digits but
  // whole when large (not 1.3e+04).
  if (s.n > 1)
    t += "<span class=\"sd\">\u00b1 " +
         (std::abs(s.std) >= 100 ? attnlab::format_number(std::round(s.std)) : format_number(s.std, 2)) + "</span>";
  return "<td>" + t + "</td>";
}

std::string metric_label(const RunSet& set) {
  return set.metric + (set.higher_is_better ? " (higher is better)" : " (lower is better)");
}

// Statistics columns after the metric, in this order where any group has them; then
// metric@<length> by length.
std::vector<std::pair<std::string, std::string>> stat_columns(const RunSet& set) {
  static const std::vector<std::pair<std::string, std::string>> known = {
      {"final_val_loss", "val loss"},         {"final_train_loss", "train loss"}, {"tokens_per_s", "tokens/s"},
      {"peak_rss_mb", "peak RSS MB"},         {"parameters", "parameters"},       {"sink_mean", "sink mass"},
      {"routing_max_weight", "routing max w"}};
  std::set<std::string> present;
  std::map<double, std::string> lengths;
  for (const ResultGroup& g : set.groups)
    for (const auto& [k, s] : g.stats) {
      if (s.n == 0) continue;
      present.insert(k);
      if (k.rfind("metric@", 0) == 0) {
        try {
          lengths[std::stod(k.substr(7))] = k;
        } catch (const std::exception&) {
          lengths[1e300] = k;  // an odd name: still shown, last
        }
      }
    }
  std::vector<std::pair<std::string, std::string>> cols;
  for (const auto& [k, title] : known) {
    if (k == "final_val_loss" && set.metric == "val_loss") continue;  // the metric column already
    if (present.count(k)) cols.push_back({k, title});
  }
  for (const auto& [len, k] : lengths)
    cols.push_back({k, set.metric + " @" + k.substr(7)});  // a space: the header may wrap
  return cols;
}

std::vector<std::string> setting_keys(const RunSet& set) {
  std::vector<std::string> keys;
  for (const std::string& k : set.keys)
    if (k != "run.seed") keys.push_back(k);
  return keys;
}

std::string setting(const std::map<std::string, std::string>& settings, const std::string& key) {
  const auto it = settings.find(key);
  return it == settings.end() ? "" : it->second;
}

void results_table(std::ostringstream& o, const RunSet& set) {
  const std::vector<std::string> keys = setting_keys(set);
  const auto cols = stat_columns(set);
  o << "<div class=\"table-wrap\"><table class=\"results\"><thead><tr><th>#</th>";
  if (keys.empty()) o << "<th class=\"k\">group</th>";
  for (const std::string& k : keys) o << "<th class=\"k\">" << escape(k) << "</th>";
  o << "<th>" << escape(set.metric) << (set.higher_is_better ? " \u2191" : " \u2193") << "</th><th>n</th>";
  for (const auto& [k, title] : cols) o << "<th>" << escape(title) << "</th>";
  o << "</tr></thead><tbody>\n";
  int rank = 0;
  for (size_t g : groups_best_first(set)) {
    const ResultGroup& grp = set.groups[g];
    const auto it = grp.stats.find("metric_value");
    const int64_t n = it == grp.stats.end() ? 0 : it->second.n;
    o << "<tr class=\"group-row\"><td class=\"rank\">" << swatch(g) << ++rank << "</td>";
    if (keys.empty()) o << "<td class=\"k\">" << escape(group_name(set, grp)) << "</td>";
    for (const std::string& k : keys) o << "<td class=\"k\">" << escape(setting(grp.settings, k)) << "</td>";
    o << stat_cell(grp, "metric_value") << "<td>" << n << "/" << grp.runs.size() << "</td>";
    for (const auto& [k, title] : cols) o << stat_cell(grp, k);
    o << "</tr>\n";
  }
  o << "</tbody></table></div>\n";
}

// The last non-empty line of a failed cell's failed.txt (written by `attnlab ablate`), if any.
std::string failure_note(const RunRecord& run) {
  std::string text;
  try {
    const std::filesystem::path f = std::filesystem::path(run.dir) / kFailedFile;
    if (run.dir.empty() || !std::filesystem::exists(f)) return "";
    text = read_file(f.string());
  } catch (const std::exception&) {
    return "";  // only a note: a run whose note cannot be read is still listed
  }
  std::string last, line;
  std::istringstream in(text);
  while (std::getline(in, line))
    if (line.find_first_not_of(" \t\r") != std::string::npos) last = line;
  if (last.size() <= 160) return last;
  size_t cut = 157;
  while (cut > 0 && (static_cast<unsigned char>(last[cut]) & 0xC0) == 0x80) --cut;  // not inside a UTF-8 character
  return last.substr(0, cut) + "...";
}

std::string status_cell(const RunRecord& run) {
  const std::string& status = run.status;
  std::string cls = "st-other";
  if (status == "done") cls = "st-done";
  if (status == "failed") cls = "st-failed";
  if (status == "running") cls = "st-running";
  if (status == "pending") cls = "st-pending";
  std::string cell =
      "<td class=\"l\"><span class=\"st " + cls + "\">" + escape(status.empty() ? "unknown" : status) + "</span>";
  if (status == "failed")
    if (const std::string why = failure_note(run); !why.empty()) cell += "<div class=\"why\">" + escape(why) + "</div>";
  return cell + "</td>";
}

std::string value_cell(std::optional<double> v) {
  return v ? "<td>" + attnlab::format_number(*v) + "</td>" : "<td class=\"na\">\u2013</td>";
}

void runs_table(std::ostringstream& o, const RunSet& set, const std::vector<size_t>& group_of) {
  o << "<div class=\"table-wrap\"><table class=\"runs\"><thead><tr><th class=\"l\">run</th><th class=\"l\">settings"
       "</th><th class=\"l\">status</th><th>step</th><th>train loss</th><th>val loss</th>";
  const bool metric_column = set.metric != "val_loss";  // else it is the val loss column
  if (metric_column) o << "<th>" << escape(set.metric) << "</th>";
  o << "<th>tokens/s</th><th>peak RSS MB</th><th>time</th></tr></thead><tbody>\n";
  for (size_t r = 0; r < set.runs.size(); ++r) {
    const RunRecord& run = set.runs[r];
    std::string settings;
    for (const auto& [k, v] : run.settings) settings += (settings.empty() ? "" : ", ") + k + "=" + v;
    // A finished run reports its result; others their latest logged numbers.
    const json last = run.metrics.empty() ? json::object() : run.metrics.back();
    const json* eval = last_with(run, "val_loss");
    auto pick = [&](const char* result_key, const json* row, const char* row_key) {
      if (auto v = number(run.result, result_key)) return v;
      return row ? number(*row, row_key) : std::nullopt;
    };
    o << "<tr class=\"run-row\"><td class=\"l\">" << (group_of[r] < set.groups.size() ? swatch(group_of[r]) : "")
      << escape(run.name) << "</td><td class=\"l\">" << escape(settings) << "</td>" << status_cell(run)
      << value_cell(pick("steps", &last, "step")) << value_cell(pick("final_train_loss", &last, "train_loss"))
      << value_cell(pick("final_val_loss", eval, "val_loss"));
    if (metric_column) o << value_cell(pick("metric_value", eval, ("val_" + set.metric).c_str()));
    o << value_cell(pick("tokens_per_s", &last, "tokens_per_s")) << value_cell(number(run.result, "peak_rss_mb"));
    const auto secs = number(run.result, "seconds");
    char t[32] = "\u2013";
    if (secs) std::snprintf(t, sizeof t, *secs >= 120 ? "%.1f min" : "%.1f s", *secs >= 120 ? *secs / 60 : *secs);
    o << "<td>" << t << "</td></tr>\n";
  }
  o << "</tbody></table></div>\n";
}

// The last eval's per-layer numbers (sink, each variant's own), averaged over a group's runs; arrays
// (InfSA's gamma per head, affine's running alpha) by their mean. One table per kind of layer, each
// with that kind's own columns, so a grid of seven variants is seven narrow tables rather than one
// wide table of dashes.
void diagnostics_table(std::ostringstream& o, const RunSet& set) {
  struct Layer {
    std::string kind;
    std::map<std::string, std::vector<double>> values;
  };
  std::vector<std::map<double, Layer>> rows(set.groups.size());  // [group] -> layer -> numbers
  std::vector<std::string> kinds;                                // in order of first appearance
  std::map<std::string, std::vector<std::string>> fields;        // kind -> its columns
  for (size_t g = 0; g < set.groups.size(); ++g)
    for (size_t r : set.groups[g].runs) {
      const json* m = last_with(set.runs[r], "attention");
      if (!m || !(*m)["attention"].is_array()) continue;
      for (const json& e : (*m)["attention"]) {
        if (!e.is_object()) continue;
        const double layer = number(e, "layer").value_or(-1);
        Layer& L = rows[g][layer];
        if (e.contains("kind") && e["kind"].is_string()) L.kind = e["kind"].get<std::string>();
        if (std::find(kinds.begin(), kinds.end(), L.kind) == kinds.end()) kinds.push_back(L.kind);
        std::vector<std::string>& cols = fields[L.kind];
        for (const auto& [k, v] : e.items()) {
          if (k == "layer" || k == "kind") continue;
          double x = NAN;
          std::string name = k;
          if (v.is_number()) {
            x = v.get<double>();
          } else if (v.is_array()) {
            double s = 0;
            int64_t n = 0;
            for (const json& a : v)
              if (a.is_number() && std::isfinite(a.get<double>())) s += a.get<double>(), ++n;
            if (n) x = s / static_cast<double>(n);
            name = k + " (mean)";
          }
          if (!std::isfinite(x)) continue;
          if (std::find(cols.begin(), cols.end(), name) == cols.end()) cols.push_back(name);
          L.values[name].push_back(x);
        }
      }
    }
  if (kinds.empty()) return;
  o << "<h2>Per-layer diagnostics (last eval, mean over seeds)</h2>\n";
  for (const std::string& kind : kinds) {
    const std::vector<std::string>& cols = fields[kind];
    o << "<h3>" << escape(kind.empty() ? std::string("(kind not logged)") : kind)
      << " layers</h3>\n<div class=\"table-wrap\"><table class=\"diag\"><thead><tr><th "
         "class=\"l\">group</th><th>layer</th>";
    for (const std::string& f : cols) o << "<th>" << escape(f) << "</th>";
    o << "</tr></thead><tbody>\n";
    for (size_t g = 0; g < set.groups.size(); ++g)
      for (const auto& [layer, L] : rows[g]) {
        if (L.kind != kind) continue;
        o << "<tr><td class=\"l\">" << swatch(g) << escape(group_name(set, set.groups[g])) << "</td><td>"
          << (layer >= 0 ? format_number(layer, 6) : "?") << "</td>";
        for (const std::string& f : cols) {
          const auto it = L.values.find(f);
          std::optional<double> v;
          if (it != L.values.end()) {
            double sum = 0;
            for (double x : it->second) sum += x;
            v = sum / static_cast<double>(it->second.size());
          }
          o << value_cell(v);
        }
        o << "</tr>\n";
      }
    o << "</tbody></table></div>\n";
  }
}

constexpr const char* kStyle = R"(
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1360px;
padding:20px 20px 40px;color:#222;background:#f7f7f7;line-height:1.4}
h1{font-size:22px;margin:0 0 6px;overflow-wrap:anywhere}
h2{font-size:17px;margin:28px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:14px;margin:16px 0 6px}
table.diag td.l{min-width:160px}
.meta{color:#444;font-size:14px;margin:2px 0;overflow-wrap:anywhere}
.how{background:#eaf2fb;border-left:4px solid #1f77b4;padding:8px 12px;font-size:14px;margin:14px 0}
.table-wrap{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:13px;background:#fff}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right;white-space:nowrap;vertical-align:top}
th{background:#efefef;font-weight:600;white-space:normal;vertical-align:bottom}
th.l,td.l{text-align:left;white-space:normal;min-width:60px;max-width:460px;overflow-wrap:anywhere}
td.na{color:#999;text-align:center}
th.k{text-align:left}
.sd{display:block;color:#777;font-size:11px}
td.k{text-align:left;white-space:normal;overflow-wrap:anywhere;min-width:64px;max-width:320px}
svg.sw{vertical-align:middle;margin-right:6px}
.st{padding:1px 6px;border-radius:3px;font-size:12px}
.st-done{background:#e3f3e3;color:#1d6b1d}.st-failed{background:#c62828;color:#fff;font-weight:600}
.st-running{background:#fff1cc;color:#7a5600}.st-pending{background:#eee;color:#666}.st-other{background:#eee}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(600px,1fr));gap:16px}
.chart-box{background:#fff;border:1px solid #ddd;padding:6px;min-width:0}
svg.chart{width:100%;height:auto;display:block}
.note{color:#666;font-size:13px}
.why{color:#8a1c1c;font-size:12px;margin-top:3px;font-family:monospace;white-space:pre-wrap}
)";

}  // namespace

std::string render_report(const RunSet& set) {
  std::vector<size_t> group_of(set.runs.size(), SIZE_MAX);
  for (size_t g = 0; g < set.groups.size(); ++g)
    for (size_t r : set.groups[g].runs)
      if (r < group_of.size()) group_of[r] = g;

  std::map<std::string, int> status_count;
  for (const RunRecord& r : set.runs) ++status_count[r.status.empty() ? "unknown" : r.status];
  std::string statuses;
  for (const auto& [s, n] : status_count) statuses += (statuses.empty() ? "" : ", ") + std::to_string(n) + " " + s;

  char when[64] = "";
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  std::strftime(when, sizeof when, "%Y-%m-%d %H:%M UTC", &tm);

  std::string keys;
  for (const std::string& k : set.keys) keys += (keys.empty() ? "" : ", ") + k;
  const std::string title = set.title.empty() ? "runs" : set.title;

  std::ostringstream o;
  o << "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
       "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>"
    << escape(title) << " \u2013 attnlab report</title>\n<style>" << kStyle << "</style>\n</head>\n<body>\n";
  o << "<h1>" << escape(title) << "</h1>\n";
  if (!set.dir.empty()) {
    o << "<p class=\"meta\">Ablation directory: <code>" << escape(set.dir) << "</code>";
    if (!set.recipe.empty()) o << " \u00b7 recipe <code>" << escape(set.recipe) << "</code>";
    if (!set.design.empty()) o << " \u00b7 design: " << escape(set.design);
    o << "</p>\n";
  }
  o << "<p class=\"meta\">Compared: <b>" << (keys.empty() ? "separate runs" : escape(keys)) << "</b> \u00b7 "
    << set.runs.size() << " runs (" << escape(statuses.empty() ? "none" : statuses) << ") in " << set.groups.size()
    << " groups \u00b7 Metric: <b>" << escape(metric_label(set)) << "</b> \u00b7 Generated " << when << "</p>\n";
  o << "<p class=\"how\">How to read: each colour is one group (runs that differ only in <code>run.seed</code>). "
       "In the charts the line is the mean over the group's seeds and the shaded band spans their minimum to "
       "maximum. The results table ranks groups best first by "
    << escape(set.metric) << "; \u00b1 is the sample standard deviation over seeds, n the finished runs that "
    << "reported it out of the group's runs.</p>\n";

  o << "<h2>Results</h2>\n";
  if (set.groups.empty()) {
    o << "<p class=\"note\">No runs found.</p>\n";
  } else {
    results_table(o, set);
  }

  if (!set.runs.empty()) {
    o << "<h2>Runs</h2>\n";
    runs_table(o, set, group_of);
  }

  if (!set.groups.empty()) {
    o << "<h2>Training curves</h2>\n<div class=\"charts\">\n";
    auto box = [&](const std::string& chart) { o << "<div class=\"chart-box\">" << chart << "</div>\n"; };
    box(step_chart(set, "train_loss", "Train loss", "train loss"));
    box(step_chart(set, "val_loss", "Validation loss", "val loss"));
    const EvalKeys ek = eval_keys(set);
    for (const std::string& k : ek.over_steps) box(step_chart(set, k, k + " over training", k));
    for (const auto& [base, lengths] : ek.by_length) box(length_chart(set, base, lengths));
    o << "</div>\n";

    const PerElement sink = per_element(set, "attention", "sink", layer_name);
    const PerElement route = per_element(set, "residual", "max_weight", op_name);
    if (sink.any || route.any) {
      o << "<h2>Diagnostics</h2>\n<div class=\"charts\">\n";
      if (sink.any)
        box(bar_chart(set, sink, "Attention-sink mass per layer (last eval)", "layer", "mean weight on position 0"));
      if (route.any)
        box(bar_chart(set, route, "Routing max weight per routing op (last eval)", "routing op", "mean max weight"));
      o << "</div>\n";
    }
    diagnostics_table(o, set);
  }
  o << "</body>\n</html>\n";
  return o.str();
}

void write_report(const RunSet& set, const std::string& path) { write_file_atomic(path, render_report(set)); }

void run_report(const std::vector<std::string>& paths, const std::string& out, std::ostream& log) {
  namespace fs = std::filesystem;
  AL_CHECK_CONFIG(!paths.empty(),
                  "report: no run or ablation directory given; usage: attnlab report RUN... [--out PATH]");
  for (const std::string& p : paths)
    AL_CHECK_IO(fs::is_directory(p), "report: ", p, " is not a directory (expected a run directory with ",
                "metrics.jsonl or result.json, or an ablation directory with ", kAblationFile, ")");
  if (paths.size() == 1 && fs::exists(fs::path(paths[0]) / kAblationFile)) {
    // One ablation: rebuild everything it shows from its cells, beside them.
    const fs::path dir(paths[0]);
    const RunSet set = load_ablation(dir.string());
    write_results_csv(set, (dir / "results.csv").string());
    write_results_md(set, (dir / "results.md").string());
    const std::string path = out.empty() ? (dir / "report.html").string() : out;
    write_report(set, path);
    log << path << "\n";
    return;
  }
  const RunSet set = load_runs(paths);
  const std::string path = out.empty() ? "report.html" : out;
  write_report(set, path);
  log << path << "\n";
}

}  // namespace attnlab
