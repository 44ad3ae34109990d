#include "tools/trace_view.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "base/error.h"
#include "base/regular_file.h"
#include "tools/svg.h"

namespace loom {
namespace {

using Event = config::TraceFile::Event;

struct CategoryStyle {
  const char* name;
  const char* colour;
};
// Tableau 10's hues, chosen to stay apart from one another at a glance.
constexpr CategoryStyle kCategories[] = {
    {"forward", "#4e79a7"},   {"backward", "#f28e2b"},       {"p2p_wait", "#e15759"},
    {"dp_reduce", "#76b7b2"}, {"replica_reduce", "#59a14f"}, {"tp_wait", "#edc948"},
    {"optimizer", "#b07aa1"}, {"sp_wait", "#ff9da7"},        {"recompute", "#8cd17d"},
    {"sum_wait", "#d37295"},  {"zero_gather", "#499894"},    {"other", "#bab0ac"},
};
constexpr const char* kUnknownColour = "#9c755f";

const char* category_colour(const std::string& category) {
  for (const CategoryStyle& c : kCategories)
    if (category == c.name) return c.colour;
  return kUnknownColour;
}

int step_of(const Event& e) { return e.args().has_step() ? e.args().step() : -1; }

// Events that draw and count: complete ("X") spans of the window's steps overlapping its time. A
// zero-length span counts when it lies inside the window; one that only touches its edge does not.
bool clip_to_window(const Event& e, TraceWindow window, double* start, double* end) {
  if (e.phase() != "X") return false;
  const int step = step_of(e);
  if (window.first_step >= 0 && (step < window.first_step || step > window.last_step)) return false;
  *start = std::max(e.start_us(), window.from_us);
  *end = std::min(e.start_us() + e.duration_us(), window.to_us);
  if (e.duration_us() <= 0) return e.start_us() >= window.from_us && e.start_us() <= window.to_us;
  return *end > *start;
}

// pid → row label, from process_name metadata, else "pid N" for pids seen only in events.
std::map<int, std::string> trace_rows(const config::TraceFile& trace) {
  std::map<int, std::string> rows;
  for (const Event& e : trace.trace_events())
    if (e.phase() == "M" && e.name() == "process_name") rows[e.pid()] = e.args().name();
  for (const Event& e : trace.trace_events())
    if (rows.count(e.pid()) == 0) rows[e.pid()] = "pid " + std::to_string(e.pid());
  return rows;
}

}  // namespace

config::TraceFile trace_read(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    throw Error("cannot open trace " + path + ": " + std::strerror(ENOENT) +
                " (a run writes RUN_DIR/trace.json when logging.trace_steps > 0)");
  std::stringstream text;
  text << read_regular_file(path, size_t{1} << 30, "trace");
  config::TraceFile trace;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;  // other tools' traces carry fields loom does not draw
  const auto status = google::protobuf::util::JsonStringToMessage(text.str(), &trace, options);
  if (!status.ok()) {
    std::string why = status.ToString();  // multi-line: the parser points at the bad character
    std::replace(why.begin(), why.end(), '\n', ' ');
    throw Error(path + " is not a Chrome trace-event JSON object ({\"traceEvents\": [...]}): " +
                why + "; re-run with logging.trace_steps > 0 to write a new one");
  }
  return trace;
}

TraceWindow trace_window(const config::TraceFile& trace, int first_step, int last_step) {
  TraceWindow window{std::numeric_limits<double>::infinity(),
                     -std::numeric_limits<double>::infinity(), first_step, last_step};
  int min_step = std::numeric_limits<int>::max(), max_step = -1;
  for (const Event& e : trace.trace_events()) {
    if (e.phase() != "X") continue;
    const int step = step_of(e);
    if (step >= 0) {
      min_step = std::min(min_step, step);
      max_step = std::max(max_step, step);
    }
    if (first_step >= 0 && (step < first_step || step > last_step)) continue;
    window.from_us = std::min(window.from_us, e.start_us());
    window.to_us = std::max(window.to_us, e.start_us() + e.duration_us());
  }
  if (window.from_us <= window.to_us) return window;
  if (first_step < 0) throw Error("the trace holds no spans (no \"X\" events)");
  throw Error("the trace holds no spans of steps " + std::to_string(first_step) + "-" +
              std::to_string(last_step) +
              (max_step < 0 ? std::string("; its spans carry no step")
                            : "; it holds steps " + std::to_string(min_step) + "-" +
                                  std::to_string(max_step) + ", choose --steps within them"));
}

std::vector<std::string> trace_categories(const config::TraceFile& trace, TraceWindow window) {
  std::set<std::string> present;
  double start = 0, end = 0;
  for (const Event& e : trace.trace_events())
    if (clip_to_window(e, window, &start, &end)) present.insert(e.category());
  std::vector<std::string> ordered;
  for (const CategoryStyle& c : kCategories)
    if (present.erase(c.name) > 0) ordered.push_back(c.name);
  ordered.insert(ordered.end(), present.begin(), present.end());
  return ordered;
}

std::string trace_steps_text(TraceWindow window) {
  if (window.first_step < 0) return "every step";
  if (window.first_step == window.last_step) return "step " + std::to_string(window.first_step);
  return "steps " + std::to_string(window.first_step) + "-" + std::to_string(window.last_step);
}

bool trace_is_wait(const std::string& category) {
  return category == "p2p_wait" || category == "tp_wait" || category == "sp_wait" ||
         category == "dp_reduce" || category == "replica_reduce" || category == "sum_wait" ||
         category == "zero_gather";
}

std::vector<TraceRankSummary> trace_summary(const config::TraceFile& trace, TraceWindow window) {
  std::vector<TraceRankSummary> out;
  std::map<int, size_t> index;
  for (const auto& [pid, label] : trace_rows(trace)) {
    index[pid] = out.size();
    out.emplace_back().pid = pid;
    out.back().label = label;
  }
  std::vector<double> first(out.size(), std::numeric_limits<double>::infinity());
  std::vector<double> last(out.size(), -std::numeric_limits<double>::infinity());
  std::vector<std::vector<std::pair<double, double>>> waits(out.size());
  for (const Event& e : trace.trace_events()) {
    double start = 0, end = 0;
    if (!clip_to_window(e, window, &start, &end)) continue;
    const size_t i = index.at(e.pid());
    out[i].busy_us[e.category()] += end - start;
    if (trace_is_wait(e.category())) waits[i].emplace_back(start, end);
    first[i] = std::min(first[i], start);
    last[i] = std::max(last[i], end);
  }
  for (size_t i = 0; i < out.size(); ++i) {
    if (first[i] > last[i]) continue;
    out[i].span_us = last[i] - first[i];
    // The union of the waits: one nested in another counts once.
    std::sort(waits[i].begin(), waits[i].end());
    double covered_to = -std::numeric_limits<double>::infinity();
    for (const auto& [start, end] : waits[i]) {
      out[i].wait_us += std::max(0.0, end - std::max(start, covered_to));
      covered_to = std::max(covered_to, end);
    }
    if (out[i].span_us > 0) out[i].wait_fraction = out[i].wait_us / out[i].span_us;
  }
  return out;
}

// ---- SVG ----------------------------------------------------------------------------------

namespace {

// Geometry of the chart, in SVG pixels.
struct Layout {
  TraceWindow window;
  double label_width = 0, plot_left = 0, plot_width = 0;
  double rows_top = 56, row_height = 26;
  int rows = 0;
  double x(double us) const {
    return plot_left + (us - window.from_us) / (window.to_us - window.from_us) * plot_width;
  }
  double rows_bottom() const { return rows_top + rows * row_height; }
};
constexpr double kWidth = 1200;

void draw_axis(std::ostringstream& svg, const Layout& at) {
  const double from_ms = at.window.from_us / 1000, to_ms = at.window.to_us / 1000;
  const double step = svg_tick_step(to_ms - from_ms, 8);
  const int decimals = svg_tick_decimals(step);
  const double bottom = at.rows_bottom();
  svg << "<line x1=\"" << at.plot_left << "\" y1=\"" << bottom << "\" x2=\""
      << at.plot_left + at.plot_width << "\" y2=\"" << bottom << "\" stroke=\"#444\"/>\n";
  // The window is rarely a tick multiple; the first tick is the first multiple inside it.
  for (double t = std::ceil(from_ms / step - 1e-9) * step; t <= to_ms + step * 1e-9; t += step) {
    const double x = at.x(t * 1000);
    svg << "<line x1=\"" << x << "\" y1=\"" << at.rows_top << "\" x2=\"" << x << "\" y2=\""
        << bottom + 4 << "\" stroke=\"#ddd\"/>\n"
        << "<text x=\"" << x << "\" y=\"" << bottom + 18 << "\" text-anchor=\"middle\">"
        << svg_number(std::abs(t) < step * 1e-6 ? 0.0 : t, decimals) << "</text>\n";  // no "-0"
  }
  svg << "<text x=\"" << at.plot_left + at.plot_width << "\" y=\"" << bottom + 34
      << "\" text-anchor=\"end\">time (ms)</text>\n";
}

void draw_legend(std::ostringstream& svg, const std::vector<std::string>& categories,
                 const Layout& at) {
  double x = at.plot_left;
  for (const std::string& c : categories) {
    svg << "<rect x=\"" << x << "\" y=\"30\" width=\"12\" height=\"12\" fill=\""
        << category_colour(c) << "\"/><text x=\"" << x + 16 << "\" y=\"40\">" << svg_escape(c)
        << "</text>\n";
    x += 16 + 7.0 * c.size() + 18;
  }
}

// "3", or "3c1" for chunk 1: which micro-batch (and chunk) a compute bar is.
std::string bar_label(const Event& e) {
  if ((e.category() != "forward" && e.category() != "backward") || !e.args().has_micro()) return "";
  std::string label = std::to_string(e.args().micro());
  if (e.args().chunk() > 0) label.append("c").append(std::to_string(e.args().chunk()));
  return label;
}

// The bar's rectangle goes to `svg`, its label to `labels`, drawn after every bar of the row so
// that nested bars do not cover it.
void draw_bar(std::ostringstream& svg, std::ostringstream& labels, const Event& e, double start,
              double end, int depth, double row_top, const Layout& at) {
  const double x = at.x(start);
  const double width = std::max(at.x(end) - x, 0.5);  // a sub-pixel span still shows
  const double inset = 3 + 4.0 * depth;
  const double height = std::max(at.row_height - 2 * inset, 4.0);
  svg << "<rect class=\"event\" x=\"" << x << "\" y=\"" << row_top + inset << "\" width=\"" << width
      << "\" height=\"" << height << "\" fill=\"" << category_colour(e.category()) << "\"><title>"
      << svg_escape(e.name()) << " (" << svg_escape(e.category()) << ")";
  if (e.args().has_step()) svg << " step " << e.args().step();
  if (e.args().has_micro()) svg << " micro " << e.args().micro();
  if (e.args().has_chunk()) svg << " chunk " << e.args().chunk();
  svg << ": " << svg_number(e.duration_us() / 1000, 3) << " ms</title></rect>\n";
  const std::string label = bar_label(e);
  if (!label.empty() && width >= 6.0 * label.size() + 4 && height >= 10)
    labels << "<text class=\"bar\" x=\"" << x + width / 2 << "\" y=\""
           << row_top + inset + height / 2
           << "\" text-anchor=\"middle\" dominant-baseline=\"central\">" << label << "</text>\n";
}

// One rank's bars. A span that starts inside another (a wait inside a forward) is nested one
// level deeper, drawn thinner and after its parent so that both stay visible.
void draw_row(std::ostringstream& svg, const config::TraceFile& trace, int pid,
              const std::string& label, double row_top, const Layout& at) {
  svg << "<text class=\"row\" x=\"" << at.label_width - 8 << "\" y=\""
      << row_top + at.row_height / 2 << "\" text-anchor=\"end\" dominant-baseline=\"central\">"
      << svg_escape(label) << "</text>\n";
  struct Clipped {
    const Event* event;
    double start, end;
  };
  std::vector<Clipped> bars;
  for (const Event& e : trace.trace_events()) {
    double start = 0, end = 0;
    if (e.pid() == pid && clip_to_window(e, at.window, &start, &end))
      bars.push_back({&e, start, end});
  }
  std::sort(bars.begin(), bars.end(), [](const Clipped& a, const Clipped& b) {
    return a.start != b.start ? a.start < b.start : a.end > b.end;
  });
  std::vector<double> open_ends;  // ends of the spans enclosing the current one
  std::ostringstream labels;
  for (const Clipped& b : bars) {
    while (!open_ends.empty() && open_ends.back() <= b.start) open_ends.pop_back();
    const int depth = static_cast<int>(open_ends.size());
    draw_bar(svg, labels, *b.event, b.start, b.end, depth, row_top, at);
    open_ends.push_back(b.end);
  }
  svg << labels.str();
}

}  // namespace

std::string trace_svg(const config::TraceFile& trace, TraceWindow window) {
  if (window.to_us <= window.from_us) window.to_us = window.from_us + 1;  // keeps x() finite
  const std::map<int, std::string> rows = trace_rows(trace);
  Layout at{.window = window, .rows = static_cast<int>(rows.size())};
  size_t longest = 0;
  for (const auto& [pid, label] : rows) longest = std::max(longest, label.size());
  at.label_width = std::max(80.0, 7.0 * longest + 16);
  at.plot_left = at.label_width;
  at.plot_width = kWidth - at.plot_left - 24;
  const double height = at.rows_bottom() + 48;

  std::ostringstream svg;
  svg << svg_open(kWidth, height, "text.bar { font-size: 10px; fill: #fff; }") << "<text x=\""
      << at.plot_left << "\" y=\"18\" font-weight=\"bold\">loom trace, " << trace_steps_text(window)
      << ", " << svg_number(window.from_us / 1000, 3) << " to "
      << svg_number(window.to_us / 1000, 3) << " ms</text>\n";
  draw_legend(svg, trace_categories(trace, window), at);
  draw_axis(svg, at);
  double row_top = at.rows_top;
  for (const auto& [pid, label] : rows) {
    draw_row(svg, trace, pid, label, row_top, at);
    row_top += at.row_height;
  }
  svg << "</svg>\n";
  return svg.str();
}

}  // namespace loom
