// The SVG chart writer (train/svg_plot.h). Sizes of text are estimated from character counts
// (there is no font metrics here): a 12px sans-serif character is taken as 6.8px wide, which errs
// on the wide side so that labels do not collide in a real browser.
#include "train/svg_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>

namespace attnlab::svg {

namespace {

constexpr double kCharWidth = 6.8;        // 12px sans-serif, generous
constexpr double kLegendCharWidth = 6.0;  // 11px legend text
constexpr double kTitleHeight = 30;
constexpr double kRightMargin = 18;
constexpr double kLegendRow = 20;
constexpr size_t kLegendChars = 56;  // longer legend labels are cut (full text in a tooltip)
constexpr size_t kCategoryChars = 24;

constexpr const char* kFonts = "Arial, Helvetica, 'Liberation Sans', sans-serif";

// Code points in a UTF-8 string (continuation bytes not counted).
size_t text_length(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s)
    if ((c & 0xC0) != 0x80) ++n;
  return n;
}

double text_width(std::string_view s) { return static_cast<double>(text_length(s)) * kCharWidth; }

// At most `max` code points, ending in an ellipsis when cut (never inside a UTF-8 sequence).
std::string truncate(const std::string& s, size_t max) {
  if (text_length(s) <= max) return s;
  size_t points = 0, i = 0;
  for (; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) {
      if (points == max - 1) break;
      ++points;
    }
  }
  return s.substr(0, i) + "\u2026";
}

std::string px(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f", v);
  return b;
}

bool usable(double v, bool log) { return std::isfinite(v) && (!log || v > 0); }

// A tick label for a value on a linear axis with tick spacing `step`: enough decimals to tell
// neighbouring ticks apart, none more.
std::string tick_label(double v, double step, bool log) {
  if (log || step <= 0 || std::abs(v) >= 1e6 || step < 1e-5) return format_number(v, log ? 6 : 3);
  const int decimals = std::max(0, static_cast<int>(std::ceil(-std::log10(step) - 1e-9)));
  char b[48];
  std::snprintf(b, sizeof b, "%.*f", decimals, std::abs(v) < step * 1e-9 ? 0.0 : v);
  return b;
}

std::vector<std::string> tick_labels(const std::vector<double>& ticks, bool log) {
  const double step = ticks.size() >= 2 ? ticks[1] - ticks[0] : 0;
  std::vector<std::string> out;
  for (double t : ticks) out.push_back(tick_label(t, step, log));
  return out;
}

// [lo, hi] widened when it is a single value (or empty) so that it can be drawn.
void widen(double& lo, double& hi, bool log) {
  if (!(lo <= hi)) {
    lo = log ? 0.1 : 0;
    hi = 1;
  }
  if (lo == hi) {
    if (log) {
      lo /= 2, hi *= 2;
    } else {
      const double pad = lo == 0 ? 1 : std::abs(lo) * 0.1;
      lo -= pad, hi += pad;
    }
  }
}

struct LegendEntry {
  std::string label;
  size_t color = 0;
  bool band = false;  // shaded swatch behind the line
  bool bar = false;   // a filled square instead of a line
};

// Legend rows: entries placed left to right, wrapping at `width`.
struct LegendPlacement {
  std::vector<std::pair<double, int>> at;  // x offset and row of each entry
  int rows = 0;
};

LegendPlacement place_legend(const std::vector<LegendEntry>& entries, double width) {
  // Columns (entry i in column i % cols, each column as wide as its widest entry), as many as fit
  // up to 4: aligned entries read better than a ragged flow. One column when not even two fit.
  LegendPlacement p;
  std::vector<double> widths;
  for (const LegendEntry& e : entries)
    widths.push_back(32 + static_cast<double>(text_length(truncate(e.label, kLegendChars))) * kLegendCharWidth + 14);
  size_t cols = std::min<size_t>(4, entries.size());
  std::vector<double> col_x;
  for (; cols >= 1; --cols) {
    std::vector<double> col_w(cols, 0);
    for (size_t i = 0; i < widths.size(); ++i) col_w[i % cols] = std::max(col_w[i % cols], widths[i]);
    col_x.assign(1, 0);
    for (size_t c = 0; c + 1 < cols; ++c) col_x.push_back(col_x.back() + col_w[c]);
    if (cols == 1 || col_x.back() + col_w.back() <= width) break;
  }
  for (size_t i = 0; i < entries.size(); ++i) p.at.push_back({col_x[i % cols], static_cast<int>(i / cols)});
  p.rows = cols == 0 ? 0 : static_cast<int>((entries.size() + cols - 1) / cols);
  return p;
}

// A bar's paint: solid for the first 10 palette entries, then light with an outline, then outlined
// only, so that bars of series 10+ apart share a colour but not a look (lines use dashes instead).
std::string bar_paint(size_t i) {
  const std::string c = palette_color(i);
  switch ((i / 10) % 3) {
    case 0:
      return "fill=\"" + c + "\"";
    case 1:
      return "fill=\"" + c + "\" fill-opacity=\"0.35\" stroke=\"" + c + "\" stroke-width=\"1.2\"";
    default:
      return "fill=\"#fff\" stroke=\"" + c + "\" stroke-width=\"1.5\"";
  }
}

void draw_legend(std::ostringstream& o, const std::vector<LegendEntry>& entries, const LegendPlacement& p, double x0,
                 double y0) {
  for (size_t i = 0; i < entries.size(); ++i) {
    const LegendEntry& e = entries[i];
    const double x = x0 + p.at[i].first, y = y0 + p.at[i].second * kLegendRow + kLegendRow / 2;
    const std::string c = palette_color(e.color);
    o << "<g class=\"legend-entry\"><title>" << escape(e.label) << "</title>";
    if (e.bar) {
      o << "<rect x=\"" << px(x + 7) << "\" y=\"" << px(y - 6) << "\" width=\"12\" height=\"12\" " << bar_paint(e.color)
        << "/>";
    } else {
      if (e.band)
        o << "<rect x=\"" << px(x) << "\" y=\"" << px(y - 6) << "\" width=\"26\" height=\"12\" fill=\"" << c
          << "\" fill-opacity=\"0.2\"/>";
      o << "<line x1=\"" << px(x) << "\" y1=\"" << px(y) << "\" x2=\"" << px(x + 26) << "\" y2=\"" << px(y)
        << "\" stroke=\"" << c << "\" stroke-width=\"2.5\"";
      const std::string dash = dash_pattern(e.color);
      if (!dash.empty()) o << " stroke-dasharray=\"" << dash << "\"";
      o << "/>";
    }
    o << "<text x=\"" << px(x + 32) << "\" y=\"" << px(y + 4) << "\" font-size=\"11\">"
      << escape(truncate(e.label, kLegendChars)) << "</text></g>";
  }
}

void open_svg(std::ostringstream& o, int width, int height, const std::string& title) {
  o << "<svg class=\"chart\" viewBox=\"0 0 " << width << " " << height << "\" width=\"" << width << "\" height=\""
    << height << "\" role=\"img\" aria-label=\"" << escape(title) << "\" font-family=\"" << kFonts
    << "\" font-size=\"12\">"
    << "<rect x=\"0\" y=\"0\" width=\"" << width << "\" height=\"" << height << "\" fill=\"#fff\"/>";
  if (!title.empty())
    o << "<text class=\"chart-title\" x=\"" << px(width / 2.0) << "\" y=\"19\" text-anchor=\"middle\" "
      << "font-size=\"14\" font-weight=\"bold\">" << escape(truncate(title, static_cast<size_t>(width / 8.5)))
      << "</text>";
}

void y_axis_label(std::ostringstream& o, const std::string& label, double top, double bottom) {
  if (label.empty()) return;
  const double cy = (top + bottom) / 2;
  o << "<text x=\"14\" y=\"" << px(cy) << "\" text-anchor=\"middle\" transform=\"rotate(-90 14 " << px(cy) << ")\">"
    << escape(truncate(label, static_cast<size_t>((bottom - top) / kCharWidth))) << "</text>";
}

}  // namespace

std::string palette_color(size_t i) {
  // Tableau-like 10: distinguishable on white, and by most colour-blind readers in pairs.
  static const char* const colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                       "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};
  return colors[i % 10];
}

std::string dash_pattern(size_t i) {
  static const char* const dashes[] = {"", "7 4", "2 3", "10 3 2 3", "4 2 4 6"};
  return dashes[(i / 10) % 5];
}

std::string escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string format_number(double v, int sig) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (v == 0) return "0";
  char b[48];
  std::snprintf(b, sizeof b, "%.*g", sig, v);
  return b;
}

double Scale::map(double v) const {
  const double a = log ? std::log10(d0) : d0, b = log ? std::log10(d1) : d1, t = log ? std::log10(v) : v;
  if (b == a) return (r0 + r1) / 2;
  return r0 + (t - a) / (b - a) * (r1 - r0);
}

std::vector<double> linear_ticks(double lo, double hi, int target) {
  if (!(hi > lo) || !std::isfinite(lo) || !std::isfinite(hi)) return {lo};
  const double raw = (hi - lo) / std::max(target, 1);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double norm = raw / mag;
  const double step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  std::vector<double> out;
  const auto k0 = static_cast<long long>(std::ceil(lo / step - 1e-9));
  const auto k1 = static_cast<long long>(std::floor(hi / step + 1e-9));
  for (long long k = k0; k <= k1; ++k) out.push_back(static_cast<double>(k) * step);
  return out;
}

std::vector<double> log_ticks(double lo, double hi, int target) {
  if (!(hi > lo) || !(lo > 0)) return {lo};
  const int d0 = static_cast<int>(std::floor(std::log10(lo))), d1 = static_cast<int>(std::ceil(std::log10(hi)));
  const std::vector<std::vector<double>> sets = {{1}, {1, 2, 5}, {1, 2, 3, 5}, {1, 1.5, 2, 3, 4, 5, 6, 8}};
  std::vector<double> best;
  for (const std::vector<double>& mult : sets) {
    std::vector<double> t;
    for (int d = d0; d <= d1; ++d)
      for (double m : mult) {
        const double v = m * std::pow(10.0, d);
        if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) t.push_back(v);
      }
    best = t;
    if (static_cast<int>(t.size()) >= std::max(4, target / 2 + 1)) break;
  }
  if (best.size() < 2) {
    // Less than a decade with no round value in it: plain ticks, which a log axis places fine.
    std::vector<double> t;
    for (double v : linear_ticks(lo, hi, target))
      if (v > 0) t.push_back(v);
    return t;
  }
  // Many decades: keep every k-th so that about `target` remain.
  const size_t want = static_cast<size_t>(std::max(target, 1));
  if (best.size() <= want * 3 / 2 + 1) return best;
  const size_t stride = (best.size() + want - 1) / want;
  std::vector<double> thin;
  for (size_t i = 0; i < best.size(); i += stride) thin.push_back(best[i]);
  return thin;
}

LineLayout line_layout(const LineChart& c) {
  LineLayout L;
  double xlo = std::numeric_limits<double>::infinity(), xhi = -xlo, ylo = xlo, yhi = -xlo;
  auto take = [&](double x, double y) {
    if (!usable(x, c.log_x) || !usable(y, c.log_y)) return;
    xlo = std::min(xlo, x), xhi = std::max(xhi, x), ylo = std::min(ylo, y), yhi = std::max(yhi, y);
    L.empty = false;
  };
  for (const Series& s : c.series) {
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) take(s.x[i], s.y[i]);
    for (size_t i = 0; i < s.x.size() && i < s.band_lo.size() && i < s.band_hi.size(); ++i) {
      if (!usable(s.band_lo[i], c.log_y) || !usable(s.band_hi[i], c.log_y)) continue;
      take(s.x[i], s.band_lo[i]);
      take(s.x[i], s.band_hi[i]);
    }
  }
  if (c.x_min) xlo = *c.x_min;
  if (c.x_max) xhi = *c.x_max;
  if (c.y_min) ylo = *c.y_min;
  if (c.y_max) yhi = *c.y_max;
  widen(xlo, xhi, c.log_x);
  widen(ylo, yhi, c.log_y);

  // y: a little headroom, then out to round values (unless fixed).
  if (c.log_y) {
    const double span = std::log10(yhi) - std::log10(ylo);
    if (!c.y_min) ylo = std::pow(10.0, std::log10(ylo) - 0.04 * span);
    if (!c.y_max) yhi = std::pow(10.0, std::log10(yhi) + 0.04 * span);
    L.y_ticks = log_ticks(ylo, yhi, 6);
  } else {
    const double pad = 0.04 * (yhi - ylo);
    // Data that is never negative (accuracy, sink mass) keeps its axis from going below 0.
    if (!c.y_min) ylo = ylo >= 0 ? std::max(0.0, ylo - pad) : ylo - pad;
    if (!c.y_max) yhi += pad;
    L.y_ticks = linear_ticks(ylo, yhi, 6);
    if (L.y_ticks.size() >= 2) {
      const double step = L.y_ticks[1] - L.y_ticks[0];
      if (!c.y_min) ylo = std::floor(ylo / step + 1e-9) * step;
      if (!c.y_max) yhi = std::ceil(yhi / step - 1e-9) * step;
      L.y_ticks = linear_ticks(ylo, yhi, 6);
    }
  }
  if (!c.x_ticks.empty()) {
    for (double t : c.x_ticks)
      if (usable(t, c.log_x) && t >= xlo && t <= xhi) L.x_ticks.push_back(t);
  } else {
    L.x_ticks = c.log_x ? log_ticks(xlo, xhi, 6) : linear_ticks(xlo, xhi, 6);
  }

  double label_w = 0;
  for (const std::string& s : tick_labels(L.y_ticks, c.log_y)) label_w = std::max(label_w, text_width(s));
  L.left = (c.y_label.empty() ? 8 : 26) + label_w + 8;
  L.top = c.title.empty() ? 12 : kTitleHeight;
  L.right = c.width - kRightMargin;
  L.bottom = L.top + c.plot_height;
  L.x = Scale{xlo, xhi, L.left, L.right, c.log_x};
  L.y = Scale{ylo, yhi, L.bottom, L.top, c.log_y};
  return L;
}

std::string render_line_chart(const LineChart& c) {
  const LineLayout L = line_layout(c);
  std::vector<LegendEntry> entries;
  for (const Series& s : c.series) entries.push_back({s.label, s.color, !s.band_lo.empty(), false});
  const double legend_top = L.bottom + (c.x_label.empty() ? 26 : 44);
  const LegendPlacement lp = place_legend(entries, L.right - L.left);
  const int height = static_cast<int>(legend_top + lp.rows * kLegendRow + 8);

  std::ostringstream o;
  open_svg(o, c.width, height, c.title);
  // Grid and tick labels.
  const std::vector<std::string> ylabels = tick_labels(L.y_ticks, c.log_y);
  for (size_t i = 0; i < L.y_ticks.size(); ++i) {
    const double y = L.y.map(L.y_ticks[i]);
    o << "<line x1=\"" << px(L.left) << "\" y1=\"" << px(y) << "\" x2=\"" << px(L.right) << "\" y2=\"" << px(y)
      << "\" stroke=\"#e4e4e4\"/>"
      << "<text x=\"" << px(L.left - 6) << "\" y=\"" << px(y + 4) << "\" text-anchor=\"end\">" << escape(ylabels[i])
      << "</text>";
  }
  const std::vector<std::string> xlabels = tick_labels(L.x_ticks, c.log_x);
  double last_label_end = -1e9;
  for (size_t i = 0; i < L.x_ticks.size(); ++i) {
    const double x = L.x.map(L.x_ticks[i]);
    o << "<line x1=\"" << px(x) << "\" y1=\"" << px(L.top) << "\" x2=\"" << px(x) << "\" y2=\"" << px(L.bottom)
      << "\" stroke=\"#efefef\"/>";
    // Labels that would overlap the previous one are left out (explicit ticks can crowd).
    const double w = text_width(xlabels[i]);
    if (x - w / 2 < last_label_end + 6) continue;
    last_label_end = x + w / 2;
    // The last label may hang past the plot; keep it inside the picture.
    const double lx = std::min(x, c.width - 2 - w / 2);
    o << "<text x=\"" << px(lx) << "\" y=\"" << px(L.bottom + 16) << "\" text-anchor=\"middle\">" << escape(xlabels[i])
      << "</text>";
  }
  o << "<rect x=\"" << px(L.left) << "\" y=\"" << px(L.top) << "\" width=\"" << px(L.right - L.left) << "\" height=\""
    << px(L.bottom - L.top) << "\" fill=\"none\" stroke=\"#888\"/>";
  if (!c.x_label.empty())
    o << "<text x=\"" << px((L.left + L.right) / 2) << "\" y=\"" << px(L.bottom + 34) << "\" text-anchor=\"middle\">"
      << escape(c.x_label) << "</text>";
  y_axis_label(o, c.y_label, L.top, L.bottom);

  if (L.empty) {
    o << "<text x=\"" << px((L.left + L.right) / 2) << "\" y=\"" << px((L.top + L.bottom) / 2)
      << "\" text-anchor=\"middle\" fill=\"#777\">no data yet</text>";
  } else {
    // Bands first, so that every line is drawn over every band.
    for (const Series& s : c.series) {
      std::string upper, lower;
      std::vector<std::string> lows;
      for (size_t i = 0; i < s.x.size() && i < s.band_lo.size() && i < s.band_hi.size(); ++i) {
        if (!usable(s.x[i], c.log_x) || !usable(s.band_lo[i], c.log_y) || !usable(s.band_hi[i], c.log_y)) continue;
        const std::string xs = px(L.x.map(s.x[i]));
        upper += xs + "," + px(L.y.map(s.band_hi[i])) + " ";
        lows.push_back(xs + "," + px(L.y.map(s.band_lo[i])));
      }
      if (lows.size() < 2) continue;
      for (auto it = lows.rbegin(); it != lows.rend(); ++it) lower += *it + " ";
      std::string pts = upper + lower;
      pts.pop_back();
      o << "<polygon class=\"band\" points=\"" << pts << "\" fill=\"" << palette_color(s.color)
        << "\" fill-opacity=\"0.15\" stroke=\"none\"/>";
    }
    for (const Series& s : c.series) {
      std::vector<std::pair<double, double>> pts;
      for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i)
        if (usable(s.x[i], c.log_x) && usable(s.y[i], c.log_y)) pts.push_back({L.x.map(s.x[i]), L.y.map(s.y[i])});
      const std::string color = palette_color(s.color), dash = dash_pattern(s.color);
      o << "<g><title>" << escape(s.label) << "</title>";
      if (pts.size() >= 2) {
        o << "<polyline class=\"series\" points=\"";
        for (size_t i = 0; i < pts.size(); ++i) o << (i ? " " : "") << px(pts[i].first) << "," << px(pts[i].second);
        o << "\" fill=\"none\" stroke=\"" << color << "\" stroke-width=\"2\" stroke-linejoin=\"round\"";
        if (!dash.empty()) o << " stroke-dasharray=\"" << dash << "\"";
        o << "/>";
      }
      // Few points (eval steps, lengths): mark each; a lone point is only visible as a marker.
      if (pts.size() <= 40)
        for (const auto& [x, y] : pts)
          o << "<circle cx=\"" << px(x) << "\" cy=\"" << px(y) << "\" r=\"" << (pts.size() == 1 ? "4" : "2.6")
            << "\" fill=\"" << color << "\"/>";
      o << "</g>";
    }
  }
  draw_legend(o, entries, lp, L.left, legend_top);
  o << "</svg>";
  return o.str();
}

std::string render_bar_chart(const BarChart& chart) {
  // Series without a value take no slot and no legend row (their colour is theirs elsewhere too).
  BarChart c = chart;
  c.series.clear();
  for (const Bars& b : chart.series)
    if (std::any_of(b.values.begin(), b.values.end(), [](double v) { return std::isfinite(v); })) c.series.push_back(b);
  double lo = 0, hi = 0;
  bool any = false;
  for (const Bars& b : c.series)
    for (double v : b.values)
      if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v), any = true;
  if (hi == lo) hi = lo + 1;
  std::vector<double> ticks = linear_ticks(lo, hi, 5);
  if (ticks.size() >= 2) {
    const double step = ticks[1] - ticks[0];
    lo = std::floor(lo / step + 1e-9) * step;
    hi = std::ceil(hi / step - 1e-9) * step;
    ticks = linear_ticks(lo, hi, 5);
  }
  double label_w = 0;
  const std::vector<std::string> ylabels = tick_labels(ticks, false);
  for (const std::string& s : ylabels) label_w = std::max(label_w, text_width(s));
  const double left = (c.y_label.empty() ? 8 : 26) + label_w + 8, right = c.width - kRightMargin;
  const double top = c.title.empty() ? 12 : kTitleHeight, bottom = top + c.plot_height;
  const size_t ncat = std::max<size_t>(c.categories.size(), 1);
  const double slot = (right - left) / static_cast<double>(ncat);

  // Category labels: horizontal when they fit their slot, else slanted (more room below).
  double cat_w = 0;
  for (const std::string& s : c.categories) cat_w = std::max(cat_w, text_width(truncate(s, kCategoryChars)));
  const bool slant = cat_w > slot - 4;
  const size_t every = slant ? std::max<size_t>(1, static_cast<size_t>(std::ceil(16.0 / slot))) : 1;
  const double cat_h = slant ? cat_w * 0.5 + 14 : 16;
  const double xlabel_y = bottom + cat_h + 18;
  const double legend_top = c.x_label.empty() ? bottom + cat_h + 10 : xlabel_y + 10;
  std::vector<LegendEntry> entries;
  for (const Bars& b : c.series) entries.push_back({b.label, b.color, false, true});
  const LegendPlacement lp = place_legend(entries, right - left);
  const int height = static_cast<int>(legend_top + lp.rows * kLegendRow + 8);

  const Scale ys{lo, hi, bottom, top, false};
  std::ostringstream o;
  open_svg(o, c.width, height, c.title);
  for (size_t i = 0; i < ticks.size(); ++i) {
    const double y = ys.map(ticks[i]);
    o << "<line x1=\"" << px(left) << "\" y1=\"" << px(y) << "\" x2=\"" << px(right) << "\" y2=\"" << px(y)
      << "\" stroke=\"#e4e4e4\"/><text x=\"" << px(left - 6) << "\" y=\"" << px(y + 4) << "\" text-anchor=\"end\">"
      << escape(ylabels[i]) << "</text>";
  }
  const double group_w = slot * 0.8;
  const double bar_w = group_w / static_cast<double>(std::max<size_t>(c.series.size(), 1));
  const double y0 = ys.map(std::clamp(0.0, lo, hi));
  for (size_t k = 0; k < c.categories.size(); ++k) {
    const double cx = left + slot * (static_cast<double>(k) + 0.5);
    for (size_t s = 0; s < c.series.size(); ++s) {
      const Bars& b = c.series[s];
      if (k >= b.values.size() || !std::isfinite(b.values[k])) continue;
      const double x = cx - group_w / 2 + bar_w * static_cast<double>(s), y = ys.map(b.values[k]);
      o << "<rect class=\"bar\" x=\"" << px(x) << "\" y=\"" << px(std::min(y, y0)) << "\" width=\""
        << px(std::max(bar_w - (bar_w > 4 ? 1 : 0), 0.5)) << "\" height=\"" << px(std::abs(y0 - y)) << "\" "
        << bar_paint(b.color) << "><title>" << escape(b.label) << " \u00b7 " << escape(c.categories[k]) << ": "
        << format_number(b.values[k]) << "</title></rect>";
    }
    if (k % every != 0) continue;
    const std::string label = escape(truncate(c.categories[k], kCategoryChars));
    if (slant)
      o << "<text x=\"" << px(cx + 4) << "\" y=\"" << px(bottom + 14)
        << "\" text-anchor=\"end\" transform=\"rotate(-30 " << px(cx + 4) << " " << px(bottom + 14) << ")\">" << label
        << "</text>";
    else
      o << "<text x=\"" << px(cx) << "\" y=\"" << px(bottom + 16) << "\" text-anchor=\"middle\">" << label << "</text>";
  }
  o << "<line x1=\"" << px(left) << "\" y1=\"" << px(y0) << "\" x2=\"" << px(right) << "\" y2=\"" << px(y0)
    << "\" stroke=\"#888\"/><rect x=\"" << px(left) << "\" y=\"" << px(top) << "\" width=\"" << px(right - left)
    << "\" height=\"" << px(bottom - top) << "\" fill=\"none\" stroke=\"#888\"/>";
  if (!any)
    o << "<text x=\"" << px((left + right) / 2) << "\" y=\"" << px((top + bottom) / 2)
      << "\" text-anchor=\"middle\" fill=\"#777\">no data yet</text>";
  if (!c.x_label.empty())
    o << "<text x=\"" << px((left + right) / 2) << "\" y=\"" << px(xlabel_y) << "\" text-anchor=\"middle\">"
      << escape(c.x_label) << "</text>";
  y_axis_label(o, c.y_label, top, bottom);
  draw_legend(o, entries, lp, left, legend_top);
  o << "</svg>";
  return o.str();
}

}  // namespace attnlab::svg
