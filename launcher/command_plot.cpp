// `loom plot`: pictures of runs from their run directories. Runs' metrics.jsonl against step,
// tokens or training time, several runs overlaid (tools/run_chart.h); `--loops` draws the
// loop's statistics (logging.loop_stats) as a heat map. Reads what is there, so a run still
// training can be plotted (a last line still being written is left out).
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "base/error.h"
#include "core/file_io.h"
#include "core/run_dir.h"
#include "launcher/args.h"
#include "launcher/commands.h"
#include "launcher/spawn.h"
#include "tools/run_chart.h"

extern char** environ;

namespace loom {
namespace {

namespace fs = std::filesystem;
using google::protobuf::Struct;
using google::protobuf::Value;

constexpr const char* kHelp =
    R"(usage: loom plot RUN_DIR [RUN_DIR ...] --svg OUT [--x step|tokens|time] [--metrics LIST] [--png OUT]
       loom plot --loops RUN_DIR --svg OUT [--png OUT]

Draws runs from their run directories' metrics.jsonl as SVG: one panel per metric, one line per
run, a legend naming the runs (their folder names). Several runs overlay, to compare layouts,
precisions or policies. A run still training can be plotted: what metrics.jsonl holds so far.

  --svg OUT       the chart (required)
  --x AXIS        step (default), tokens (steps × train.global_batch × train.seq_len, from the
                  run's config.textproto) or time (training time: the steps' ms_per_step summed)
  --metrics LIST  metrics.jsonl keys, comma-separated (default: loss, and val_loss where a run
                  has it); nested ones as key/part, e.g. val_loss_by_loops/4, routed_fraction/0
  --png OUT       also a PNG, converted by rsvg-convert (Debian: librsvg2-bin) or ImageMagick's
                  convert, whichever is on PATH

--loops draws a run's loop statistics (logging.loop_stats) as heat maps, iteration × step: the
RMS of the state entering each iteration, the relative change it makes, the norm of the
gradient reaching its input.
)";

// A metric's value in a step's record: a number, or key/part inside an object or a list.
bool metric_value(const Struct& record, const std::string& metric, double& out) {
  const size_t slash = metric.find('/');
  const auto found = record.fields().find(metric.substr(0, slash));
  if (found == record.fields().end()) return false;
  const Value* v = &found->second;
  if (slash != std::string::npos) {
    const std::string part = metric.substr(slash + 1);
    if (v->has_struct_value()) {
      const auto inner = v->struct_value().fields().find(part);
      if (inner == v->struct_value().fields().end()) return false;
      v = &inner->second;
    } else if (v->has_list_value()) {
      char* end = nullptr;
      const long index = std::strtol(part.c_str(), &end, 10);
      if (part.empty() || *end != '\0' || index < 0 || index >= v->list_value().values_size())
        return false;
      v = &v->list_value().values(static_cast<int>(index));
    } else {
      return false;
    }
  }
  if (v->kind_case() == Value::kNullValue) {  // a non-finite value, written as null
    out = std::nan("");
    return true;
  }
  if (v->kind_case() != Value::kNumberValue) return false;
  out = v->number_value();
  return true;
}

// Every numeric key of a record, nested ones as key/part: for saying what a run has.
void collect_names(const Struct& record, std::set<std::string>& names) {
  for (const auto& [key, v] : record.fields()) {
    if (v.kind_case() == Value::kNumberValue) names.insert(key);
    if (v.has_struct_value())
      for (const auto& [part, inner] : v.struct_value().fields())
        if (inner.kind_case() == Value::kNumberValue) names.insert(key + "/" + part);
    if (v.has_list_value() && v.list_value().values_size() > 0) names.insert(key + "/0");
  }
}

// The step records of RUN_DIR/metrics.jsonl (lines with a loss; restart records left out).
std::vector<Struct> read_steps(const fs::path& run_dir) {
  const fs::path path = run_dir / "metrics.jsonl";
  std::ifstream in(path);
  if (!in)
    throw Error(run_dir.string() + " has no metrics.jsonl: not a run directory (loom train " +
                "--run-dir writes one), or no step has finished yet");
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  std::vector<Struct> steps;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].empty()) continue;
    Struct record;
    if (!google::protobuf::util::JsonStringToMessage(lines[i], &record).ok()) {
      if (i + 1 == lines.size()) break;  // being written right now
      throw Error(path.string() + ":" + std::to_string(i + 1) + ": not a JSON object; is it a " +
                  "metrics.jsonl that loom train wrote?");
    }
    if (record.fields().count("loss") && record.fields().count("step")) steps.push_back(record);
  }
  return steps;
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> items;
  std::istringstream in(text);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) items.push_back(item);
  return items;
}

// The legend's name of each run: its folder's name, or the path as given where two share one.
std::vector<std::string> run_names(const std::vector<std::string>& dirs) {
  std::vector<std::string> names;
  for (const std::string& d : dirs)
    names.push_back(fs::path(d).lexically_normal().filename().string());
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i].empty() || std::count(names.begin(), names.end(), names[i]) > 1)
      names[i] = dirs[i];
  return names;
}

// x of each step of a run on `axis`, and the axis' label (for the first run).
double tokens_per_step(const fs::path& run_dir) {
  const fs::path config = run_dir / "config.textproto";
  if (!fs::exists(config))
    throw Error("--x tokens: " + run_dir.string() + " has no config.textproto to read " +
                "train.global_batch and train.seq_len from");
  const config::RunConfig cfg = read_run_config(config);
  return static_cast<double>(cfg.train().global_batch()) * cfg.train().seq_len();
}

// The path of `program` on PATH, or empty.
std::string program_on_path(const std::string& program) {
  try {
    return find_program(program);
  } catch (const Error&) {
    return "";
  }
}

// Runs a converter to make `png` from `svg`; throws saying what is missing or what failed.
void write_png(const std::string& svg, const std::string& png) {
  std::vector<std::string> argv;
  if (const std::string rsvg = program_on_path("rsvg-convert"); !rsvg.empty())
    argv = {rsvg, "--background-color=white", "-o", png, svg};
  else if (const std::string convert = program_on_path("convert"); !convert.empty())
    argv = {convert, svg, png};
  else
    throw Error(
        "--png needs rsvg-convert (Debian: apt-get install librsvg2-bin) or ImageMagick's "
        "convert on PATH; neither is. The SVG is written: " +
        svg);
  std::vector<char*> args;
  for (std::string& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  pid_t pid = 0;
  if (posix_spawn(&pid, args[0], nullptr, nullptr, args.data(), environ) != 0)
    throw Error("--png: cannot start " + argv[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || !fs::exists(png))
    throw Error("--png: " + argv[0] + " could not convert " + svg + " into " + png);
}

// What the runs ran on: the distinct "hardware:" lines of their train.log, joined.
std::string hardware_of(const std::vector<std::string>& dirs) {
  std::vector<std::string> seen;
  for (const std::string& dir : dirs) {
    std::ifstream log(fs::path(dir) / "train.log");
    std::string line, found = "hardware not recorded (train.log has no \"hardware:\" line)";
    while (std::getline(log, line))
      if (const size_t at = line.find(" hardware: "); at != std::string::npos) {
        found = line.substr(at + 11);
        break;
      }
    if (std::find(seen.begin(), seen.end(), found) == seen.end()) seen.push_back(found);
  }
  std::string joined;
  for (const std::string& s : seen) joined += (joined.empty() ? "" : "; ") + s;
  return joined;
}

// One of a step's loop statistics (a list in metrics.jsonl), as values per iteration.
std::vector<double> loop_values(const Struct& step, const std::string& key) {
  std::vector<double> values;
  const auto found = step.fields().find(key);
  if (found == step.fields().end() || !found->second.has_list_value()) return values;
  for (const Value& v : found->second.list_value().values())
    values.push_back(v.kind_case() == Value::kNumberValue ? v.number_value() : std::nan(""));
  return values;
}

void finish_chart(const Args& args, const std::string& svg_text, const std::string& what) {
  const std::string svg = args.value("--svg", "");
  write_file(svg, svg_text.data(), svg_text.size());
  std::printf("wrote %s: %s\n", svg.c_str(), what.c_str());
  if (args.has("--png")) {
    write_png(svg, args.value("--png", ""));
    std::printf("wrote %s\n", args.value("--png", "").c_str());
  }
}

int plot_loops(const Args& args) {
  if (args.positional.size() != 1)
    throw Error("plot --loops draws one RUN_DIR (got " + std::to_string(args.positional.size()) +
                ")");
  if (!args.has("--svg")) throw Error("plot needs --svg OUT, the chart to write");
  for (const char* other : {"--x", "--metrics"})
    if (args.has(other))
      throw Error(std::string(other) + " is for plotting metrics; --loops always draws " +
                  "iteration × step");
  const std::string& dir = args.positional[0];
  const char* keys[] = {"loop_rms", "loop_change", "loop_grad_norm"};
  const char* titles[] = {"RMS of the state entering each iteration",
                          "relative change each iteration makes, ‖s_{r+1} − s_r‖ / ‖s_r‖",
                          "norm of the gradient reaching each iteration's input"};
  std::vector<HeatMap> maps(3);
  for (int k = 0; k < 3; ++k) maps[k] = {titles[k], keys[k], "iteration", "step", {}, {}};
  for (const Struct& s : read_steps(dir)) {
    if (!s.fields().count("loop_rms")) continue;
    double step = 0;
    metric_value(s, "step", step);
    for (int k = 0; k < 3; ++k) {
      const std::vector<double> values = loop_values(s, keys[k]);
      HeatMap& map = maps[k];
      if (map.rows.size() < values.size())
        map.rows.resize(values.size(), std::vector<double>(map.columns.size(), std::nan("")));
      map.columns.push_back(step);
      for (size_t r = 0; r < map.rows.size(); ++r)
        map.rows[r].push_back(r < values.size() ? values[r] : std::nan(""));
    }
  }
  if (maps[0].columns.empty())
    throw Error(dir + "'s metrics.jsonl has no loop statistics: train with --set " +
                "logging.loop_stats=true (they are recorded every logging.interval steps)");
  const ChartHeader header{
      fs::path(dir).lexically_normal().filename().string() + ": the loop, iteration × step",
      hardware_of({dir})};
  finish_chart(args, heat_maps_svg(maps, header),
               std::to_string(maps[0].rows.size()) + " iterations × " +
                   std::to_string(maps[0].columns.size()) + " logged steps");
  return 0;
}

int plot_runs(const Args& args) {
  const std::vector<std::string>& dirs = args.positional;
  if (dirs.empty()) throw Error("plot needs at least one RUN_DIR (see loom plot --help)");
  if (!args.has("--svg")) throw Error("plot needs --svg OUT, the chart to write");
  const std::string axis = args.value("--x", "step");
  if (axis != "step" && axis != "tokens" && axis != "time")
    throw Error("--x must be step, tokens or time (got \"" + axis + "\")");
  std::vector<std::string> metrics = split_list(args.value("--metrics", "loss,val_loss"));
  if (metrics.empty()) throw Error("--metrics lists no metric; e.g. --metrics loss,val_loss");
  const std::vector<std::string> names = run_names(dirs);
  std::vector<RunSeries> runs;
  std::set<std::string> available;
  double seconds_total = 0;
  for (size_t r = 0; r < dirs.size(); ++r) {
    const std::vector<Struct> steps = read_steps(dirs[r]);
    const double tokens = axis == "tokens" ? tokens_per_step(dirs[r]) : 0;
    RunSeries run{names[r], {}};
    double seconds = 0;
    for (const Struct& s : steps) {
      collect_names(s, available);
      double step = 0, ms = 0;
      metric_value(s, "step", step);
      metric_value(s, "ms_per_step", ms);
      seconds += ms / 1000.0;
      const double x = axis == "step" ? step : axis == "tokens" ? step * tokens : seconds;
      for (const std::string& m : metrics)
        if (double v = 0; metric_value(s, m, v)) run.points[m].emplace_back(x, v);
    }
    seconds_total = std::max(seconds_total, seconds);
    runs.push_back(run);
  }
  if (!args.has("--metrics"))  // the default's val_loss only where a run validated
    metrics.erase(std::remove_if(metrics.begin(), metrics.end(),
                                 [&](const std::string& m) { return !available.count(m); }),
                  metrics.end());
  for (const std::string& m : metrics)
    if (!available.count(m)) {
      std::string have;
      for (const std::string& a : available) have += (have.empty() ? "" : ", ") + a;
      throw Error("--metrics: no run has \"" + m + "\"; they have: " + have);
    }
  std::string x_label = axis == "step" ? "step" : axis == "tokens" ? "tokens" : "training time (s)";
  if (axis == "time" && seconds_total > 3 * 3600) {
    for (RunSeries& run : runs)
      for (auto& [m, points] : run.points)
        for (auto& point : points) point.first /= 3600.0;
    x_label = "training time (h)";
  } else if (axis == "time" && seconds_total > 600) {
    for (RunSeries& run : runs)
      for (auto& [m, points] : run.points)
        for (auto& point : points) point.first /= 60.0;
    x_label = "training time (min)";
  }
  std::string title;
  for (const std::string& n : names) title += (title.empty() ? "" : ", ") + n;
  finish_chart(args, run_chart_svg(runs, metrics, x_label, {title, hardware_of(dirs)}),
               std::to_string(runs.size()) + " run(s), " + std::to_string(metrics.size()) +
                   " metric(s) against " + axis);
  return 0;
}

}  // namespace

int command_plot(int argc, char** argv) {
  const Args args = parse_args(
      "plot", argv, argc,
      {{"--svg", false}, {"--x", false}, {"--metrics", false}, {"--png", false}}, {"--loops"});
  if (args.flag("--help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  return args.flag("--loops") ? plot_loops(args) : plot_runs(args);
}

}  // namespace loom
