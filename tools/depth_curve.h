// The loss against depth: `loom eval`'s chart of one checkpoint's validation loss (y) at each
// loop count it was run with (x, log2 scale), every point labelled with its count and loss, and
// with the data's bits per byte a second y axis in bits per byte. An offline tool: it draws
// figures the caller measured.
//
//   const std::vector<loom::DepthPoint> points = {{1, 3.21}, {2, 2.64}, {4, 2.31}};
//   std::ofstream("eval_loops.svg") << loom::depth_curve_svg(points, "step_0000300", 1.52);
#pragma once
#include <string>
#include <vector>

namespace loom {

struct DepthPoint {
  int loops = 0;    // ≥ 1
  double loss = 0;  // nats per token; a non-finite loss is listed in the title, not drawn
};

// An SVG line chart of `points` (in any order; drawn by loop count) headed by `title`.
// `bpb_per_nat` converts a loss to bits per byte (tokens / (bytes · ln 2)) for the right-hand
// axis; ≤ 0 draws none.
std::string depth_curve_svg(const std::vector<DepthPoint>& points, const std::string& title,
                            double bpb_per_nat);

}  // namespace loom
