// A small SVG chart writer for the report (train/report.h): line charts whose series may carry a
// shaded band (min-max or mean ± std over seeds), with linear or log axes, ticks, labels and a
// legend that wraps; and grouped bar charts for per-layer diagnostics. The output is an inline
// <svg> element for an HTML5 page: no scripts, no external references, every string escaped.
//
// Non-finite values (NaN, inf) are skipped, as are values <= 0 on a log axis. Series keep the
// colour given by their palette index, so one group has the same colour in every chart.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace attnlab::svg {

// The colour of palette entry i (10 distinguishable colours, then again) and its dash pattern
// ("" solid for the first 10, then dashed, dotted, ...: so 10+ series stay distinguishable).
std::string palette_color(size_t i);
std::string dash_pattern(size_t i);

// &, <, >, " and ' as entities: safe in HTML/SVG text and attribute values.
std::string escape(std::string_view s);

// A number as a short label: up to `sig` significant digits, no trailing zeros.
std::string format_number(double v, int sig = 4);

// Data -> pixel along one axis: d0..d1 maps onto r0..r1 (r1 < r0 for a y axis), in log10 space
// when `log`.
struct Scale {
  double d0 = 0, d1 = 1;
  double r0 = 0, r1 = 1;
  bool log = false;
  double map(double v) const;
};

// Tick positions covering [lo, hi]: 1-2-5 steps (linear) or 1-2-5 per decade (log), about
// `target` of them.
std::vector<double> linear_ticks(double lo, double hi, int target);
std::vector<double> log_ticks(double lo, double hi, int target);

struct Series {
  std::string label;
  size_t color = 0;                      // palette index
  std::vector<double> x, y;              // the line
  std::vector<double> band_lo, band_hi;  // optional, same length as x: the shaded band
};

struct LineChart {
  std::string title, x_label, y_label;
  bool log_x = false, log_y = false;
  std::optional<double> x_min, x_max, y_min, y_max;  // fixed ranges (default: from the data)
  std::vector<double> x_ticks;                       // explicit x ticks (default: computed)
  int width = 640;
  int plot_height = 260;  // the plot area; the legend adds rows below
  std::vector<Series> series;
};

// Where a line chart draws: its plot rectangle and the scales onto it (public for tests).
struct LineLayout {
  double left = 0, top = 0, right = 0, bottom = 0;  // plot rectangle in pixels
  Scale x, y;
  std::vector<double> x_ticks, y_ticks;
  int height = 0;     // of the whole <svg>
  bool empty = true;  // no finite point in any series
};
LineLayout line_layout(const LineChart& chart);

// The chart as an <svg> element. A series with no finite points is still in the legend; a chart
// with no data at all says so in place of the plot.
std::string render_line_chart(const LineChart& chart);

struct Bars {
  std::string label;
  size_t color = 0;
  std::vector<double> values;  // one per category; NaN = no bar
};

struct BarChart {
  std::string title, x_label, y_label;
  std::vector<std::string> categories;  // along x (e.g. layers)
  int width = 640;
  int plot_height = 240;
  std::vector<Bars> series;  // side by side within each category
};

// The chart as an <svg> element. Series with no finite value are left out (slot and legend);
// series 10+ share a palette colour with series 0-9 but are drawn light or outlined.
std::string render_bar_chart(const BarChart& chart);

}  // namespace attnlab::svg
