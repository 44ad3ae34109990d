// `loom plot`'s charts: a run's metrics against step, tokens or time, several runs overlaid (one
// panel per metric, one line per run and metric, a legend naming the runs); and the loop's
// statistics as a heat map (iteration × step). Drawn in the style of loom's other charts
// (tools/svg.h).
//
//   loom::RunSeries run{"baseline", {{"loss", {{1, 5.2}, {2, 4.9}}}}};
//   std::ofstream("runs.svg") << loom::run_chart_svg({run}, {"loss"}, "step", "loss");
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace loom {

// What a chart says above its plot: its title and what it ran on (the runs' "hardware:" lines
// of train.log, "; "-separated parts, wrapped).
struct ChartHeader {
  std::string title, hardware;
};

// One run's points per metric: (x, value) in increasing x.
struct RunSeries {
  std::string name;
  std::map<std::string, std::vector<std::pair<double, double>>> points;
};

// A panel per metric of `metrics` (top to bottom) with a line per run that has points for it
// (class "series", data-run and data-metric naming them), x labelled `x_label`. A metric no run
// has gets a panel saying so.
std::string run_chart_svg(const std::vector<RunSeries>& runs,
                          const std::vector<std::string>& metrics, const std::string& x_label,
                          const ChartHeader& header);

// A heat map: rows[r] holds row r's value at each of `columns` (NaN: none), coloured from the
// smallest value (light) to the largest (dark), each cell titled with its value; rows labelled
// `row_label` 0, 1, ...; columns by their x (steps). heat_maps_svg stacks several under a title.
struct HeatMap {
  std::string title, value_label, row_label, column_label;
  std::vector<double> columns;
  std::vector<std::vector<double>> rows;
};
std::string heat_maps_svg(const std::vector<HeatMap>& maps, const ChartHeader& header);

}  // namespace loom
