#include "tools/run_chart.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "tools/svg.h"

namespace loom {
namespace {

constexpr double kWidth = 760, kLeft = 80, kRight = kWidth - 30;
constexpr double kPanelHeight = 220, kPanelGap = 56;
// One colour per run, in order (Tableau 10, as the other charts).
constexpr const char* kColours[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};

struct Range {
  double from = std::numeric_limits<double>::infinity();
  double to = -std::numeric_limits<double>::infinity();
  void add(double v) {
    if (!std::isfinite(v)) return;
    from = std::min(from, v);
    to = std::max(to, v);
  }
  bool empty() const { return from > to; }
  // Padded so that no point sits on the frame; a single value gets a span of its own.
  Range padded(double below, double above) const {
    if (empty()) return {0, 1};
    const double span = std::max(to - from, 1e-3 * std::max(1.0, std::abs(to)));
    return {from - below * span, to + above * span};
  }
};

// Ticks (value, label) across `r`, about `count` of them.
std::vector<std::pair<double, std::string>> ticks(const Range& r, int count) {
  const double step = svg_tick_step(r.to - r.from, count);
  const int decimals = svg_tick_decimals(step);
  std::vector<std::pair<double, std::string>> out;
  for (double t = std::ceil(r.from / step) * step; t <= r.to + step * 1e-9; t += step)
    out.emplace_back(t, svg_number(std::abs(t) < step * 1e-6 ? 0.0 : t, decimals));
  return out;
}

// A tick label of a large x (tokens): 1.5M, 200k.
std::string short_number(double v, const std::string& plain) {
  const double a = std::abs(v);
  if (a >= 1e9) return svg_number(v / 1e9, a >= 1e10 ? 0 : 1) + "G";
  if (a >= 1e6) return svg_number(v / 1e6, a >= 1e7 ? 0 : 1) + "M";
  if (a >= 1e4) return svg_number(v / 1e3, 0) + "k";
  return plain;
}

// The header's lines: the title, then the hardware lines, each ~100 characters at most.
std::vector<std::string> hardware_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::string line;
  for (size_t at = 0; at < text.size();) {
    size_t next = text.find("; ", at);
    const std::string part = text.substr(at, next == std::string::npos ? next : next + 2 - at);
    if (!line.empty() && line.size() + part.size() > 100) lines.push_back(line), line.clear();
    line += part;
    at = next == std::string::npos ? text.size() : next + 2;
  }
  if (!line.empty()) lines.push_back(line);
  return lines;
}

double header_height(const ChartHeader& h) {
  return 24 + 15.0 * static_cast<double>(hardware_lines(h.hardware).size());
}

std::string header_svg(const ChartHeader& h) {
  std::ostringstream svg;
  svg << "<text class=\"title\" x=\"" << kLeft << "\" y=\"24\" font-weight=\"bold\" "
      << "font-size=\"14\">" << svg_escape(h.title) << "</text>\n";
  double y = 24;
  for (const std::string& line : hardware_lines(h.hardware))
    svg << "<text class=\"hardware\" x=\"" << kLeft << "\" y=\"" << (y += 15)
        << "\" font-size=\"11\" fill=\"#555\">" << svg_escape(line) << "</text>\n";
  return svg.str();
}

void draw_panel(std::ostringstream& svg, double top, const std::string& metric,
                const std::vector<RunSeries>& runs, const Range& xs, const std::string& x_label) {
  const double bottom = top + kPanelHeight;
  Range ys;
  for (const RunSeries& run : runs)
    if (const auto found = run.points.find(metric); found != run.points.end())
      for (const auto& [x, y] : found->second) ys.add(y);
  const Range y = ys.padded(0.08, 0.08);
  auto px = [&](double v) { return kLeft + (v - xs.from) / (xs.to - xs.from) * (kRight - kLeft); };
  auto py = [&](double v) { return bottom - (v - y.from) / (y.to - y.from) * kPanelHeight; };
  svg << "<text class=\"axis-y\" x=\"" << kLeft << "\" y=\"" << top - 8
      << "\" font-weight=\"bold\">" << svg_escape(metric) << "</text>\n";
  svg << "<rect x=\"" << kLeft << "\" y=\"" << top << "\" width=\"" << kRight - kLeft
      << "\" height=\"" << kPanelHeight << "\" fill=\"none\" stroke=\"#444\"/>\n";
  if (ys.empty()) {
    svg << "<text x=\"" << (kLeft + kRight) / 2 << "\" y=\"" << top + kPanelHeight / 2
        << "\" text-anchor=\"middle\" fill=\"#888\">no run has " << svg_escape(metric)
        << "</text>\n";
  } else {
    for (const auto& [t, label] : ticks(y, 5))
      svg << "<line x1=\"" << kLeft << "\" y1=\"" << py(t) << "\" x2=\"" << kRight << "\" y2=\""
          << py(t) << "\" stroke=\"#e4e4e4\"/>\n<text x=\"" << kLeft - 6 << "\" y=\"" << py(t)
          << "\" text-anchor=\"end\" dominant-baseline=\"central\">" << label << "</text>\n";
  }
  for (const auto& [t, label] : ticks(xs, 8))
    svg << "<line x1=\"" << px(t) << "\" y1=\"" << top << "\" x2=\"" << px(t) << "\" y2=\""
        << bottom + 4 << "\" stroke=\"#e4e4e4\"/>\n<text x=\"" << px(t) << "\" y=\"" << bottom + 17
        << "\" text-anchor=\"middle\">" << short_number(t, label) << "</text>\n";
  svg << "<text class=\"axis-x\" x=\"" << kRight << "\" y=\"" << bottom + 34
      << "\" text-anchor=\"end\" fill=\"#555\">" << svg_escape(x_label) << "</text>\n";
  for (size_t r = 0; r < runs.size(); ++r) {
    const auto found = runs[r].points.find(metric);
    if (found == runs[r].points.end() || found->second.empty()) continue;
    const char* colour = kColours[r % std::size(kColours)];
    std::string line;
    size_t finite = 0;
    for (const auto& [x, v] : found->second)
      if (std::isfinite(v)) {
        line += svg_number(px(x), 2) + "," + svg_number(py(v), 2) + " ";
        ++finite;
      }
    svg << "<polyline class=\"series\" data-run=\"" << svg_escape(runs[r].name)
        << "\" data-metric=\"" << svg_escape(metric) << "\" points=\"" << line
        << "\" fill=\"none\" stroke=\"" << colour << "\" stroke-width=\"1.6\"/>\n";
    if (finite <= 2)  // a line of one or two points is hard to see: mark them
      for (const auto& [x, v] : found->second)
        if (std::isfinite(v))
          svg << "<circle cx=\"" << px(x) << "\" cy=\"" << py(v) << "\" r=\"3\" fill=\"" << colour
              << "\"/>\n";
  }
}

}  // namespace

std::string run_chart_svg(const std::vector<RunSeries>& runs,
                          const std::vector<std::string>& metrics, const std::string& x_label,
                          const ChartHeader& header) {
  Range xs;
  for (const RunSeries& run : runs)
    for (const auto& [metric, points] : run.points)
      if (std::find(metrics.begin(), metrics.end(), metric) != metrics.end())
        for (const auto& [x, y] : points) xs.add(x);
  if (xs.empty()) xs = {0, 1};
  if (xs.to - xs.from <= 0) xs = {xs.from - 0.5, xs.to + 0.5};
  // The legend: a row of runs under the title, wrapped to the width.
  std::vector<std::pair<double, double>> legend;  // (x, y) of each run's entry
  double x = kLeft, y = header_height(header) + 20;
  for (const RunSeries& run : runs) {
    const double w = 30 + 7.0 * static_cast<double>(run.name.size());
    if (x + w > kRight && x > kLeft) x = kLeft, y += 18;
    legend.emplace_back(x, y);
    x += w + 16;
  }
  const double first_top = y + 36;
  const double height = first_top + metrics.size() * (kPanelHeight + kPanelGap) + 4;
  std::ostringstream svg;
  svg << svg_open(kWidth, height, "") << header_svg(header);
  for (size_t r = 0; r < runs.size(); ++r) {
    const auto [lx, ly] = legend[r];
    svg << "<g class=\"legend\"><line x1=\"" << lx << "\" y1=\"" << ly << "\" x2=\"" << lx + 22
        << "\" y2=\"" << ly << "\" stroke=\"" << kColours[r % std::size(kColours)]
        << "\" stroke-width=\"3\"/><text x=\"" << lx + 28 << "\" y=\"" << ly
        << "\" dominant-baseline=\"central\">" << svg_escape(runs[r].name) << "</text></g>\n";
  }
  for (size_t m = 0; m < metrics.size(); ++m)
    draw_panel(svg, first_top + m * (kPanelHeight + kPanelGap), metrics[m], runs, xs, x_label);
  svg << "</svg>\n";
  return svg.str();
}

namespace {

// One heat map with its frame's top at `top`; returns the height it took.
double draw_heat_map(std::ostringstream& svg, const HeatMap& map, double top) {
  const size_t R = map.rows.size(), S = map.columns.size();
  const double cell_h = std::clamp(260.0 / std::max<size_t>(R, 1), 8.0, 28.0);
  const double bottom = top + cell_h * R, right = kRight - 90;
  Range values;
  for (const auto& row : map.rows)
    for (double v : row) values.add(v);
  if (values.empty()) values = {0, 1};
  if (values.to <= values.from) values.to = values.from + 1;
  const double cell_w = (right - kLeft) / std::max<size_t>(S, 1);
  // Light (small) to dark blue (large).
  auto colour = [&](double v) {
    const double t = (v - values.from) / (values.to - values.from);
    const int r = static_cast<int>(std::lround(247 - t * (247 - 8)));
    const int g = static_cast<int>(std::lround(251 - t * (251 - 48)));
    const int b = static_cast<int>(std::lround(255 - t * (255 - 107)));
    char text[16];
    std::snprintf(text, sizeof text, "#%02x%02x%02x", r, g, b);
    return std::string(text);
  };
  svg << "<text x=\"" << kLeft << "\" y=\"" << top - 8 << "\" font-weight=\"bold\">"
      << svg_escape(map.title) << "</text>\n";
  for (size_t r = 0; r < R; ++r) {
    const double y = top + r * cell_h;
    if (R <= 16 || r % ((R + 15) / 16) == 0)
      svg << "<text x=\"" << kLeft - 6 << "\" y=\"" << y + cell_h / 2
          << "\" text-anchor=\"end\" dominant-baseline=\"central\">" << r << "</text>\n";
    for (size_t s = 0; s < S && s < map.rows[r].size(); ++s) {
      const double v = map.rows[r][s];
      if (!std::isfinite(v)) continue;
      svg << "<rect class=\"cell\" x=\"" << svg_number(kLeft + s * cell_w, 2) << "\" y=\"" << y
          << "\" width=\"" << svg_number(cell_w + 0.3, 2) << "\" height=\"" << cell_h
          << "\" fill=\"" << colour(v) << "\"><title>" << svg_escape(map.row_label) << " " << r
          << ", " << svg_escape(map.column_label) << " " << map.columns[s] << ": " << v
          << "</title></rect>\n";
    }
  }
  svg << "<rect x=\"" << kLeft << "\" y=\"" << top << "\" width=\"" << right - kLeft
      << "\" height=\"" << bottom - top << "\" fill=\"none\" stroke=\"#444\"/>\n";
  if (S > 0) {
    Range xs{map.columns.front(), map.columns.back()};
    if (xs.to <= xs.from) xs.to = xs.from + 1;
    for (const auto& [t, label] : ticks(xs, 8)) {
      const double x =
          kLeft + (t - xs.from) / (xs.to - xs.from) * (right - kLeft - cell_w) + cell_w / 2;
      svg << "<text x=\"" << x << "\" y=\"" << bottom + 17 << "\" text-anchor=\"middle\">" << label
          << "</text>\n";
    }
  }
  svg << "<text class=\"axis-x\" x=\"" << (kLeft + right) / 2 << "\" y=\"" << bottom + 38
      << "\" text-anchor=\"middle\">" << svg_escape(map.column_label) << "</text>\n"
      << "<text class=\"axis-y\" transform=\"translate(" << kLeft - 40 << " " << (top + bottom) / 2
      << ") rotate(-90)\" text-anchor=\"middle\">" << svg_escape(map.row_label) << "</text>\n";
  // The colour scale.
  const double scale_x = right + 24;
  for (int k = 0; k < 20; ++k) {
    const double v = values.to - (values.to - values.from) * k / 19.0;
    svg << "<rect x=\"" << scale_x << "\" y=\"" << top + k * (bottom - top) / 20
        << "\" width=\"14\""
        << " height=\"" << (bottom - top) / 20 + 0.3 << "\" fill=\"" << colour(v) << "\"/>\n";
  }
  svg << "<text x=\"" << scale_x + 18 << "\" y=\"" << top + 6 << "\">" << svg_number(values.to, 3)
      << "</text>\n<text x=\"" << scale_x + 18 << "\" y=\"" << bottom << "\">"
      << svg_number(values.from, 3) << "</text>\n<text x=\"" << scale_x << "\" y=\"" << bottom + 17
      << "\">" << svg_escape(map.value_label) << "</text>\n";
  return bottom + 60 - top;
}

}  // namespace

std::string heat_maps_svg(const std::vector<HeatMap>& maps, const ChartHeader& header) {
  std::ostringstream body;
  double top = header_height(header) + 36;
  for (const HeatMap& map : maps) top += draw_heat_map(body, map, top) + 30;
  std::ostringstream svg;
  svg << svg_open(kWidth, top, "") << header_svg(header) << body.str() << "</svg>\n";
  return svg.str();
}

}  // namespace loom
