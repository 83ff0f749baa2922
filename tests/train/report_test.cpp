// The HTML report (train/report.h) rendered from RunSets built here, and the SVG chart writer
// (train/svg_plot.h): what the page contains and leaves out, the points each band and line carry,
// the ranking, escaping, non-finite values skipped, and where a data point lands in pixels; and
// `attnlab report` through the binary on directories written here.
#include "train/report.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/support/run_attnlab.h"
#include "tests/support/scratch_dir.h"
#include "train/svg_plot.h"

namespace attnlab {
namespace {

using nlohmann::json;

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + what.size())) ++n;
  return n;
}

// The <svg class="chart"> elements of a page, in order.
std::vector<std::string> charts(const std::string& html) {
  std::vector<std::string> out;
  const std::string open = "<svg class=\"chart\"";
  for (size_t at = html.find(open); at != std::string::npos; at = html.find(open, at + 1))
    out.push_back(html.substr(at, html.find("</svg>", at) - at));
  return out;
}

// Point counts of every `<tag ... points="...">` in `svg`, in order.
std::vector<size_t> point_counts(const std::string& svg, const std::string& tag) {
  std::vector<size_t> out;
  const std::string open = "<" + tag + " ";
  for (size_t at = svg.find(open); at != std::string::npos; at = svg.find(open, at + 1)) {
    const size_t p = svg.find("points=\"", at) + 8;
    const std::string pts = svg.substr(p, svg.find('"', p) - p);
    out.push_back(pts.empty() ? 0 : count(pts, " ") + 1);
  }
  return out;
}

RunRecord run(const std::string& name, const std::string& status, const std::map<std::string, std::string>& settings) {
  RunRecord r;
  r.name = name;
  r.dir = "/runs/abl/" + name;
  r.status = status;
  r.settings = settings;
  return r;
}

// Metrics rows like the trainer's: train_loss every step 1..4, an eval (val_loss, a task metric,
// per-layer attention diagnostics, routing stats) at steps 2 and 4, lengths at the last eval.
std::vector<json> metrics(double offset, double nan_at_step = 0) {
  std::vector<json> rows;
  for (int step = 1; step <= 4; ++step) {
    json m = {{"step", step}, {"train_loss", step == nan_at_step ? NAN : 5.0 - step + offset}, {"lr", 1e-3}};
    if (step % 2 == 0) {
      m["val_loss"] = 4.5 - step + offset;
      m["val_accuracy"] = 0.2 * step - offset;
      m["attention"] = json::array({{{"layer", 0}, {"kind", "softmax"}, {"sink", 0.3 + offset}, {"sink_share", 0.3}},
                                    {{"layer", 1}, {"kind", "infsa"}, {"sink", 0.1}, {"gamma", {1.0, 3.0}}}});
      m["residual"] = json::array({{{"op", "block0.attn"}, {"max_weight", 0.6 + offset}, {"entropy", 0.9}},
                                   {{"op", "block1.mlp"}, {"max_weight", 0.5}, {"entropy", 1.1}}});
    }
    if (step == 4) {
      m["val_accuracy@64"] = 0.9 - offset;
      m["val_accuracy@128"] = 0.7 - offset;
      m["val_accuracy@256"] = 0.4 - offset;
    }
    rows.push_back(m);
  }
  return rows;
}

ResultGroup group(const std::string& label, std::vector<size_t> runs, double metric, int64_t n,
                  const std::map<std::string, std::string>& settings) {
  ResultGroup g;
  g.label = label;
  g.settings = settings;
  g.runs = std::move(runs);
  if (n > 0) g.stats["metric_value"] = Stat{metric, 0.01, n};
  if (n > 0) g.stats["final_val_loss"] = Stat{2.5, 0.1, n};
  return g;
}

// Three groups: "attention=kda" (two seeds, the worst), "attention=<&>" (one seed with a NaN
// train loss at step 3, the best), "attention=lla" (one failed run without metrics).
RunSet sample_set() {
  RunSet set;
  set.title = "attn <sweep>";
  set.dir = "/runs/abl";
  set.keys = {"model.attention", "run.seed"};
  set.metric = "accuracy";
  set.higher_is_better = true;
  set.runs.push_back(run("attention-kda_seed-1", "done", {{"model.attention", "kda"}, {"run.seed", "1"}}));
  set.runs.push_back(run("attention-kda_seed-2", "done", {{"model.attention", "kda"}, {"run.seed", "2"}}));
  set.runs.push_back(run("attention-odd_seed-1", "running", {{"model.attention", "<&>"}, {"run.seed", "1"}}));
  set.runs.push_back(run("attention-lla_seed-1", "failed", {{"model.attention", "lla"}, {"run.seed", "1"}}));
  set.runs[0].metrics = metrics(0.0);
  set.runs[1].metrics = metrics(0.2);
  set.runs[2].metrics = metrics(0.1, 3);
  set.runs[0].result = {{"steps", 4}, {"final_train_loss", 1.0}, {"metric_value", 0.8}, {"seconds", 12.5}};
  set.groups.push_back(group("attention=kda", {0, 1}, 0.7, 2, {{"model.attention", "kda"}}));
  set.groups.push_back(group("attention=<&>", {2}, 0.75, 1, {{"model.attention", "<&>"}}));
  set.groups.push_back(group("attention=lla", {3}, 0, 0, {{"model.attention", "lla"}}));
  return set;
}

TEST(Report, SelfContainedWithNoScriptOrUrl) {
  const std::string html = render_report(sample_set());
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_NE(html.find("<meta charset=\"utf-8\">"), std::string::npos);
  EXPECT_EQ(count(html, "<script"), 0u);
  EXPECT_EQ(count(html, "http://"), 0u);
  EXPECT_EQ(count(html, "https://"), 0u);
  EXPECT_EQ(count(html, "url("), 0u);
  EXPECT_EQ(count(html, "src="), 0u);
  EXPECT_EQ(count(html, "href="), 0u);
  // Balanced elements (the page is hand-written markup).
  for (const std::string tag : {"svg", "g", "table", "tr", "td", "th", "text", "title", "div", "p", "h2"})
    EXPECT_EQ(count(html, "<" + tag + " ") + count(html, "<" + tag + ">"), count(html, "</" + tag + ">")) << tag;
}

TEST(Report, OneChartPerQuantity) {
  const std::vector<std::string> c = charts(render_report(sample_set()));
  // train loss, val loss, val_accuracy over steps, val_accuracy by length, sink per layer, routing.
  ASSERT_EQ(c.size(), 6u);
  EXPECT_NE(c[0].find("Train loss"), std::string::npos);
  EXPECT_NE(c[1].find("Validation loss"), std::string::npos);
  EXPECT_NE(c[2].find("val_accuracy over training"), std::string::npos);
  EXPECT_NE(c[3].find("val_accuracy by eval length"), std::string::npos);
  EXPECT_NE(c[4].find("sink mass per layer"), std::string::npos);
  EXPECT_NE(c[5].find("Routing max weight"), std::string::npos);
}

TEST(Report, BandsAndLinesCarryEveryFinitePoint) {
  const std::vector<std::string> c = charts(render_report(sample_set()));
  ASSERT_GE(c.size(), 6u);
  // Train loss: the two-seed group has a band (4 steps up, 4 back) and a 4-point mean line; the
  // one-seed group no band and 3 points (its NaN at step 3 skipped); the failed run no line.
  EXPECT_EQ(point_counts(c[0], "polygon"), (std::vector<size_t>{8}));
  EXPECT_EQ(point_counts(c[0], "polyline"), (std::vector<size_t>{4, 3}));
  // Val loss and the task metric: evals at steps 2 and 4.
  EXPECT_EQ(point_counts(c[1], "polygon"), (std::vector<size_t>{4}));
  EXPECT_EQ(point_counts(c[2], "polyline"), (std::vector<size_t>{2, 2}));
  // By length: 3 lengths per group.
  EXPECT_EQ(point_counts(c[3], "polyline"), (std::vector<size_t>{3, 3}));
  EXPECT_EQ(point_counts(c[3], "polygon"), (std::vector<size_t>{6}));
  // Sink: 2 layers x 2 groups with data; routing: 2 ops x 2 groups.
  EXPECT_EQ(count(c[4], "<rect class=\"bar\""), 4u);
  EXPECT_EQ(count(c[5], "<rect class=\"bar\""), 4u);
  EXPECT_NE(c[5].find("block1.mlp"), std::string::npos);
  // Every group is in every line chart's legend; bar charts leave out the group without data.
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(count(c[i], "class=\"legend-entry\""), 3u);
  for (size_t i = 4; i < 6; ++i) EXPECT_EQ(count(c[i], "class=\"legend-entry\""), 2u);
}

TEST(Report, GroupsBestFirstAndRunsWithStatus) {
  const std::string html = render_report(sample_set());
  const size_t table = html.find("<table class=\"results\"");
  const size_t end = html.find("</table>", table);
  ASSERT_NE(table, std::string::npos);
  const std::string results = html.substr(table, end - table);
  EXPECT_EQ(count(results, "<tr class=\"group-row\""), 3u);
  // Higher is better: <&> (0.75), then kda (0.7), then lla (no metric).
  const size_t odd = results.find("&lt;&amp;&gt;"), kda = results.find(">kda<"), lla = results.find(">lla<");
  ASSERT_NE(odd, std::string::npos);
  ASSERT_NE(kda, std::string::npos);
  ASSERT_NE(lla, std::string::npos);
  EXPECT_LT(odd, kda);
  EXPECT_LT(kda, lla);
  EXPECT_NE(results.find("0.7<span class=\"sd\">\u00b1 0.01</span>"), std::string::npos);
  EXPECT_NE(results.find("<td>0.75</td>"), std::string::npos);  // one run: no spread
  EXPECT_EQ(count(html, "<tr class=\"run-row\""), 4u);
  EXPECT_NE(html.find("st-failed\">failed<"), std::string::npos);
  EXPECT_NE(html.find("st-running\">running<"), std::string::npos);
}

TEST(Report, EscapesEverythingFromFiles) {
  const std::string html = render_report(sample_set());
  EXPECT_EQ(count(html, "<&>"), 0u);
  EXPECT_EQ(count(html, "<sweep>"), 0u);
  EXPECT_NE(html.find("attn &lt;sweep&gt;"), std::string::npos);
  EXPECT_NE(html.find("attention=&lt;&amp;&gt;"), std::string::npos);
}

TEST(Report, PerLayerDiagnosticsTablePerKind) {
  const std::string html = render_report(sample_set());
  // One table per kind of layer, each with only its own columns.
  EXPECT_EQ(count(html, "<table class=\"diag\""), 2u);
  const size_t soft = html.find("<h3>softmax layers</h3>"), inf = html.find("<h3>infsa layers</h3>");
  ASSERT_NE(soft, std::string::npos);
  ASSERT_NE(inf, std::string::npos);
  const std::string softmax_table = html.substr(soft, html.find("</table>", soft) - soft);
  const std::string infsa_table = html.substr(inf, html.find("</table>", inf) - inf);
  EXPECT_EQ(softmax_table.find("gamma"), std::string::npos) << "a column of another kind";
  EXPECT_NE(softmax_table.find("sink_share"), std::string::npos);
  EXPECT_NE(infsa_table.find("gamma (mean)"), std::string::npos);
  EXPECT_NE(infsa_table.find("<td>2</td>"), std::string::npos) << "gamma {1, 3} shows as its mean";
  // kda's two seeds: sink 0.3 and 0.5 at layer 0 -> 0.4.
  EXPECT_NE(softmax_table.find("<td>0.4</td>"), std::string::npos);
}

TEST(Report, EmptyAndSingleStepRuns) {
  RunSet set;
  set.title = "fresh";
  set.runs.push_back(run("a", "pending", {}));
  set.groups.push_back(group("", {0}, 0, 0, {}));
  std::string html = render_report(set);
  EXPECT_NE(html.find("no data yet"), std::string::npos);
  EXPECT_NE(html.find(">a</td>"), std::string::npos);  // the group is named after its run
  EXPECT_EQ(charts(html).size(), 2u);                  // the loss charts, empty

  set.runs[0].metrics.push_back({{"step", 1}, {"train_loss", 7.5}});
  html = render_report(set);
  const std::vector<std::string> c = charts(html);
  ASSERT_EQ(c.size(), 2u);
  EXPECT_TRUE(point_counts(c[0], "polyline").empty());  // one point: a marker, no line
  EXPECT_EQ(count(c[0], "<circle"), 1u);
  EXPECT_EQ(c[0].find("nan"), std::string::npos);

  EXPECT_NE(render_report(RunSet{}).find("No runs found"), std::string::npos);
}

TEST(Report, ManyGroupsCycleColoursWithDashes) {
  RunSet set;
  for (size_t i = 0; i < 24; ++i) {
    set.runs.push_back(run("run-with-a-rather-long-name-" + std::to_string(i), "done", {}));
    set.runs.back().metrics = metrics(0.01 * static_cast<double>(i));
    set.groups.push_back(group("", {i}, 1.0, 1, {}));
  }
  const std::string html = render_report(set);
  const std::vector<std::string> c = charts(html);
  ASSERT_FALSE(c.empty());
  EXPECT_EQ(count(c[0], "class=\"legend-entry\""), 24u);
  EXPECT_GT(count(c[0], "stroke-dasharray"), 0u);
  EXPECT_EQ(svg::palette_color(3), svg::palette_color(13));
  EXPECT_NE(svg::dash_pattern(3), svg::dash_pattern(13));
}

TEST(SvgPlot, ScalesMapDataOntoPixels) {
  EXPECT_DOUBLE_EQ((svg::Scale{0, 10, 100, 200, false}.map(5)), 150);
  EXPECT_DOUBLE_EQ((svg::Scale{0, 10, 300, 100, false}.map(10)), 100);  // y: up is smaller
  EXPECT_NEAR((svg::Scale{1, 100, 0, 200, true}.map(10)), 100, 1e-9);
  EXPECT_NEAR((svg::Scale{1, 1000, 0, 300, true}.map(100)), 200, 1e-9);
}

TEST(SvgPlot, KnownPointLandsAtItsPixel) {
  svg::LineChart c;
  c.title = "t";
  c.x_min = 0, c.x_max = 100, c.y_min = 0, c.y_max = 10;
  c.series.push_back({"s", 0, {0, 50, 100}, {0, 5, 10}, {}, {}});
  const svg::LineLayout L = svg::line_layout(c);
  EXPECT_DOUBLE_EQ(L.x.map(0), L.left);
  EXPECT_DOUBLE_EQ(L.x.map(100), L.right);
  EXPECT_DOUBLE_EQ(L.y.map(0), L.bottom);
  EXPECT_DOUBLE_EQ(L.y.map(10), L.top);
  EXPECT_DOUBLE_EQ(L.right, 640 - 18);
  EXPECT_DOUBLE_EQ(L.bottom - L.top, 260);
  char mid[64];
  std::snprintf(mid, sizeof mid, "%.1f,%.1f", (L.left + L.right) / 2, (L.top + L.bottom) / 2);
  const std::string svg = svg::render_line_chart(c);
  EXPECT_NE(svg.find(mid), std::string::npos) << mid;
}

TEST(SvgPlot, TicksAreRoundAndCoverTheRange) {
  EXPECT_EQ(svg::linear_ticks(0, 1, 5), (std::vector<double>{0, 0.2, 0.4, 0.6000000000000001, 0.8, 1}));
  const std::vector<double> lt = svg::log_ticks(1, 1000, 6);
  for (double v : {1.0, 10.0, 100.0, 1000.0}) EXPECT_NE(std::find(lt.begin(), lt.end(), v), lt.end()) << v;
  const std::vector<double> narrow = svg::log_ticks(2.2, 4.8, 6);  // less than a decade
  ASSERT_GE(narrow.size(), 2u);
  for (double v : narrow) EXPECT_TRUE(v >= 2.2 && v <= 4.8) << v;
}

TEST(SvgPlot, LogAxisSkipsNonPositiveAndNonFinite) {
  svg::LineChart c;
  c.log_y = true;
  c.series.push_back({"s", 0, {1, 2, 3, 4, 5}, {1, 0, -1, INFINITY, 10}, {}, {}});
  EXPECT_EQ(point_counts(svg::render_line_chart(c), "polyline"), (std::vector<size_t>{2}));
}

TEST(SvgPlot, BarsSkipEmptySeriesAndVaryTheirLookPastTenColours) {
  svg::BarChart c;
  c.categories = {"layer 0", "layer 1"};
  c.series.push_back({"solid", 2, {0.5, NAN}});
  c.series.push_back({"light", 12, {0.25, 1.0}});
  c.series.push_back({"empty", 3, {NAN, NAN}});
  const std::string out = svg::render_bar_chart(c);
  EXPECT_EQ(count(out, "<rect class=\"bar\""), 3u);
  EXPECT_EQ(count(out, "class=\"legend-entry\""), 2u);
  EXPECT_EQ(out.find(">empty<"), std::string::npos);
  EXPECT_EQ(count(out, "fill-opacity=\"0.35\""), 3u);  // two bars and the legend swatch of series 12
}

TEST(SvgPlot, EscapeAndNumbers) {
  EXPECT_EQ(svg::escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
  EXPECT_EQ(svg::format_number(0.123456), "0.1235");
  EXPECT_EQ(svg::format_number(NAN), "nan");
  EXPECT_EQ(svg::format_number(0), "0");
}

// ---- `attnlab report` through the binary ----------------------------------------------------

namespace fs = std::filesystem;

class ReportCli : public test::ScratchDir {
 protected:
  ReportCli() : ScratchDir("attnlab_report_test_") {}
  static void write(const fs::path& path, const std::string& text) { test::write_text(path, text); }
  static std::string read(const fs::path& path) { return test::read_text(path); }
  // A run directory as `attnlab train` leaves it: metrics.jsonl and, when finished, result.json.
  static void write_run(const fs::path& dir, double offset, bool finished) {
    std::string lines;
    for (const json& m : metrics(offset)) lines += m.dump() + "\n";
    write(dir / "metrics.jsonl", lines);
    if (finished)
      write(dir / kResultFile, json{{"metric", "accuracy"},
                                    {"metric_value", 0.8 - offset},
                                    {"higher_is_better", true},
                                    {"final_val_loss", 0.5 + offset},
                                    {"final_train_loss", 1.0 + offset},
                                    {"steps", 4},
                                    {"metric_by_length", {{"64", 0.9 - offset}, {"128", 0.7 - offset}}}}
                                   .dump());
  }
  // Two attention values x two seeds; one cell unfinished.
  fs::path make_ablation() {
    const fs::path abl = dir_ / "abl";
    json cells = json::array();
    for (const std::string att : {"softmax", "kda"})
      for (const std::string seed : {"1", "2"}) {
        const std::string name = "attention-" + att + "_seed-" + seed;
        cells.push_back({{"name", name}, {"settings", {{"model.attention", att}, {"run.seed", seed}}}});
        write_run(abl / name, att == "kda" ? 0.1 : 0.0 + (seed == "2" ? 0.05 : 0.0), name != "attention-kda_seed-2");
      }
    write(abl / kAblationFile, json{{"name", "abl"},
                                    {"recipe", "recipes/x.ini"},
                                    {"keys", {"model.attention", "run.seed"}},
                                    {"design", "grid"},
                                    {"cells", cells}}
                                   .dump());
    return abl;
  }
};

TEST_F(ReportCli, AblationDirectoryRebuildsItsReportAndTables) {
  const fs::path abl = make_ablation();
  write(abl / "attention-kda_seed-2" / kFailedFile, "exit status 1\nerror: <boom>\n\n");
  const auto r = test::run_attnlab("report " + abl.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, (abl / "report.html").string() + "\n");
  const std::string html = read(abl / "report.html");
  EXPECT_NE(html.find("attention=softmax"), std::string::npos);
  EXPECT_NE(html.find("st-failed\">failed</span><div class=\"why\">error: &lt;boom&gt;</div>"), std::string::npos);
  EXPECT_EQ(count(html, "<script"), 0u);
  // train loss, val loss, val_accuracy, by length, sink, routing.
  EXPECT_EQ(charts(html).size(), 6u);
  EXPECT_TRUE(fs::exists(abl / "results.csv"));
  EXPECT_TRUE(fs::exists(abl / "results.md"));
}

TEST_F(ReportCli, SeveralRunsGoToOut) {
  write_run(dir_ / "a", 0.0, true);
  write_run(dir_ / "b", 0.2, false);
  const fs::path out = dir_ / "cmp.html";
  const auto r =
      test::run_attnlab("report " + (dir_ / "a").string() + " " + (dir_ / "b").string() + " --out " + out.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, out.string() + "\n");
  const std::string html = read(out);
  EXPECT_EQ(count(html, "<tr class=\"run-row\""), 2u);
  EXPECT_FALSE(fs::exists(dir_ / "a" / "report.html"));
}

TEST_F(ReportCli, BadInputIsAUserError) {
  const std::string missing = (dir_ / "no-such-run").string();
  auto r = test::run_attnlab("report " + missing);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find(missing), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(kAblationFile), std::string::npos) << r.err;

  fs::create_directories(dir_ / "empty");  // a directory with nothing of a run in it
  r = test::run_attnlab("report " + (dir_ / "empty").string() + " --out " + (dir_ / "bad.html").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("empty"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir_ / "bad.html"));

  EXPECT_EQ(test::run_attnlab("report").code, 2);
  EXPECT_EQ(test::run_attnlab("report " + dir_.string() + " --bogus").code, 2);
  EXPECT_EQ(test::run_attnlab("report " + dir_.string() + " --out").code, 2);
}

}  // namespace
}  // namespace attnlab
