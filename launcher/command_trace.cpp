#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "base/error.h"
#include "core/trace.h"
#include "launcher/args.h"
#include "launcher/commands.h"
#include "tools/trace_view.h"

namespace loom {
namespace {

constexpr const char* kHelp = R"(usage: loom trace FILE --svg OUT [--steps A-B]

Draws a trace that a run wrote with logging.trace_steps > 0 (RUN_DIR/trace.json, Chrome's
trace-event format; Perfetto and chrome://tracing open it too) as an SVG Gantt chart: one row per
rank, a bar per span coloured by category, forward/backward bars labelled with their micro-batch
("3", or "3c1" for chunk 1). Then prints, per rank, the milliseconds spent in each category and
the wait: time blocked on communication (the categories marked *: pipeline sends and receives,
tensor- and sequence-parallel exchanges, data-parallel and shared-weight gradient reductions,
the step's loss and norm sums, ZeRO-1's parameter gather; overlapping waits counted once) in ms
and as a fraction of the rank's span.

  --steps A-B   only the time of steps A to B (a single step: --steps A); default: every step
)";

struct StepRange {
  int first = -1, last = -1;  // −1: every step
};

StepRange parse_steps(const std::string& text) {
  const std::string usage =
      "--steps expects A-B or A (step numbers, A <= B), e.g. --steps 2-3; got \"" + text + "\"";
  const size_t dash = text.find('-');
  const std::string a = text.substr(0, dash);
  const std::string b = dash == std::string::npos ? a : text.substr(dash + 1);
  char* end_a = nullptr;
  char* end_b = nullptr;
  const long first = std::strtol(a.c_str(), &end_a, 10);
  const long last = std::strtol(b.c_str(), &end_b, 10);
  if (a.empty() || b.empty() || *end_a != '\0' || *end_b != '\0' || first < 0 || last < first ||
      last > 1000000000)
    throw Error(usage);
  return {static_cast<int>(first), static_cast<int>(last)};
}

void print_summary(const std::vector<TraceRankSummary>& ranks,
                   const std::vector<std::string>& categories) {
  size_t label_width = 4;
  for (const TraceRankSummary& r : ranks) label_width = std::max(label_width, r.label.size());
  std::printf("%-*s %10s", static_cast<int>(label_width), "rank", "span ms");
  for (const std::string& c : categories) {
    const std::string title = c + (trace_is_wait(c) ? "*" : "");
    std::printf(" %*s", static_cast<int>(std::max<size_t>(c.size() + 1, 9)), title.c_str());
  }
  std::printf(" %10s %7s\n", "wait* ms", "wait");
  for (const TraceRankSummary& r : ranks) {
    std::printf("%-*s %10.3f", static_cast<int>(label_width), r.label.c_str(), r.span_us / 1000);
    for (const std::string& c : categories) {
      const auto it = r.busy_us.find(c);
      std::printf(" %*.3f", static_cast<int>(std::max<size_t>(c.size() + 1, 9)),
                  it == r.busy_us.end() ? 0.0 : it->second / 1000);
    }
    std::printf(" %10.3f %6.1f%%\n", r.wait_us / 1000, 100 * r.wait_fraction);
  }
}

}  // namespace

int command_trace(int argc, char** argv) {
  const Args args = parse_args("trace", argv, argc, {{"--svg", false}, {"--steps", false}}, {});
  if (args.flag("--help")) {
    std::cout << kHelp;
    return 0;
  }
  if (args.positional.size() != 1 || !args.has("--svg"))
    throw Error("expected FILE and --svg OUT (see loom trace --help)");
  const std::string path = args.positional[0];
  const StepRange steps =
      args.has("--steps") ? parse_steps(args.value("--steps", "")) : StepRange{};
  const config::TraceFile trace = trace_read(path);
  const TraceWindow window = trace_window(trace, steps.first, steps.last);

  const std::string out_path = args.value("--svg", "");
  std::error_code same_error;
  if (std::filesystem::equivalent(path, out_path, same_error))
    throw Error("--svg " + out_path +
                " is the trace FILE itself: writing it would destroy the "
                "trace; choose another file for the chart");
  std::ofstream out(out_path, std::ios::binary | std::ios::trunc);
  if (!out) throw Error("cannot write " + out_path + ": " + std::strerror(errno));
  out << trace_svg(trace, window);
  if (!out.flush()) throw Error("cannot write " + out_path + ": " + std::strerror(errno));

  std::printf("%s: %s, %.3f ms; wrote %s\n", path.c_str(), trace_steps_text(window).c_str(),
              (window.to_us - window.from_us) / 1000, out_path.c_str());
  print_summary(trace_summary(trace, window), trace_categories(trace, window));
  return 0;
}

}  // namespace loom
