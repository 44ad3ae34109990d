#include "tools/depth_curve.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "tools/svg.h"

namespace loom {
namespace {

constexpr double kWidth = 720, kHeight = 440;

// Where the plot lies, in SVG pixels, and the data ranges it maps: log2(loops) across, the loss
// up.
struct Frame {
  double left = 80, right = kWidth - 90, top = 56, bottom = kHeight - 64;
  double log2_from = 0, log2_to = 1, loss_from = 0, loss_to = 1;
  double x(int loops) const {
    return left + (std::log2(loops) - log2_from) / (log2_to - log2_from) * (right - left);
  }
  double y(double loss) const {
    return bottom - (loss - loss_from) / (loss_to - loss_from) * (bottom - top);
  }
  double loss_tick() const { return svg_tick_step(loss_to - loss_from, 6); }  // about 6 ticks
};

// The ranges of the finite points, padded so that no point sits on the frame.
Frame frame_of(const std::vector<DepthPoint>& points) {
  Frame f;
  double most_loops = 1, least_loops = 1e300, low = 1e300, high = -1e300;
  for (const DepthPoint& p : points) {
    least_loops = std::min<double>(least_loops, p.loops);
    most_loops = std::max<double>(most_loops, p.loops);
    if (!std::isfinite(p.loss)) continue;
    low = std::min(low, p.loss);
    high = std::max(high, p.loss);
  }
  if (least_loops > most_loops) least_loops = 1;
  const double pad = most_loops > least_loops ? 0.3 : 1.0;  // octaves
  f.log2_from = std::log2(least_loops) - pad;
  f.log2_to = std::log2(most_loops) + pad;
  if (low > high) low = 0, high = 1;  // no finite loss: an empty frame
  // Close losses are spread over the height, down to a spread of 0.1% of the loss.
  const double span = std::max(high - low, 1e-3 * std::max(1.0, std::abs(high)));
  f.loss_from = low - 0.12 * span;
  f.loss_to = high + 0.18 * span;  // room for the labels above the points
  return f;
}

// The frame, the loss ticks (left; in bits per byte on the right when known) and the loop-count
// ticks at each power of 2, with the axes' titles.
void draw_axes(std::ostringstream& svg, const Frame& f, double bpb_per_nat) {
  svg << "<rect x=\"" << f.left << "\" y=\"" << f.top << "\" width=\"" << f.right - f.left
      << "\" height=\"" << f.bottom - f.top << "\" fill=\"none\" stroke=\"#444\"/>\n";
  const double step = f.loss_tick();
  const int decimals = svg_tick_decimals(step);
  for (double t = std::ceil(f.loss_from / step) * step; t <= f.loss_to; t += step) {
    const double y = f.y(t);
    svg << "<line x1=\"" << f.left << "\" y1=\"" << y << "\" x2=\"" << f.right << "\" y2=\"" << y
        << "\" stroke=\"#e4e4e4\"/>\n<text x=\"" << f.left - 6 << "\" y=\"" << y
        << "\" text-anchor=\"end\" dominant-baseline=\"central\">"
        << svg_number(std::abs(t) < step * 1e-6 ? 0.0 : t, decimals) << "</text>\n";
    if (bpb_per_nat > 0)
      svg << "<text x=\"" << f.right + 6 << "\" y=\"" << y << "\" dominant-baseline=\"central\">"
          << svg_number(t * bpb_per_nat, decimals + 1) << "</text>\n";
  }
  const int octave_step = f.log2_to - f.log2_from > 14 ? 2 : 1;
  for (int k = std::max(0, static_cast<int>(std::ceil(f.log2_from))); k <= f.log2_to;
       k += octave_step) {
    const double x = f.x(1 << std::min(k, 30));
    svg << "<line x1=\"" << x << "\" y1=\"" << f.top << "\" x2=\"" << x << "\" y2=\""
        << f.bottom + 4 << "\" stroke=\"#e4e4e4\"/>\n<text x=\"" << x << "\" y=\"" << f.bottom + 18
        << "\" text-anchor=\"middle\">" << (1L << std::min(k, 30)) << "</text>\n";
  }
  const double middle = (f.top + f.bottom) / 2;
  svg << "<text x=\"" << (f.left + f.right) / 2 << "\" y=\"" << f.bottom + 40
      << "\" text-anchor=\"middle\">loop count (log2 scale)</text>\n"
      << "<text transform=\"translate(" << f.left - 62 << " " << middle
      << ") rotate(-90)\" text-anchor=\"middle\">validation loss (nats per token)</text>\n";
  if (bpb_per_nat > 0)
    svg << "<text transform=\"translate(" << f.right + 74 << " " << middle
        << ") rotate(90)\" text-anchor=\"middle\">bits per byte</text>\n";
}

}  // namespace

std::string depth_curve_svg(const std::vector<DepthPoint>& points, const std::string& title,
                            double bpb_per_nat) {
  std::vector<DepthPoint> sorted = points;
  std::sort(sorted.begin(), sorted.end(),
            [](const DepthPoint& a, const DepthPoint& b) { return a.loops < b.loops; });
  const Frame f = frame_of(sorted);
  std::string missing;  // counts whose loss is not a number
  for (const DepthPoint& p : sorted)
    if (!std::isfinite(p.loss)) missing += (missing.empty() ? "" : ", ") + std::to_string(p.loops);
  std::ostringstream svg;
  svg << svg_open(kWidth, kHeight, "text.point { font-size: 11px; }") << "<text x=\"" << f.left
      << "\" y=\"24\" font-weight=\"bold\">" << svg_escape(title) << "</text>\n";
  if (!missing.empty())
    svg << "<text x=\"" << f.left << "\" y=\"42\">no finite loss at " << missing
        << " loops</text>\n";
  draw_axes(svg, f, bpb_per_nat);
  // A point's label has a digit more than the loss axis' ticks, so neighbours differ.
  const int decimals = std::max(3, svg_tick_decimals(f.loss_tick()) + 1);
  std::string line;
  for (const DepthPoint& p : sorted)
    if (std::isfinite(p.loss))
      line += svg_number(f.x(p.loops), 2) + "," + svg_number(f.y(p.loss), 2) + " ";
  svg << "<polyline points=\"" << line
      << "\" fill=\"none\" stroke=\"#4e79a7\" stroke-width=\"2\"/>\n";
  for (const DepthPoint& p : sorted) {
    if (!std::isfinite(p.loss)) continue;
    const double x = f.x(p.loops), y = f.y(p.loss);
    svg << "<circle cx=\"" << x << "\" cy=\"" << y << "\" r=\"4\" fill=\"#4e79a7\"><title>"
        << p.loops << (p.loops == 1 ? " loop" : " loops") << ": loss " << svg_number(p.loss, 4);
    if (bpb_per_nat > 0) svg << ", " << svg_number(p.loss * bpb_per_nat, 4) << " bits per byte";
    svg << "</title></circle>\n<text class=\"point\" x=\"" << x << "\" y=\"" << y - 9
        << "\" text-anchor=\"middle\">" << p.loops << ": " << svg_number(p.loss, decimals)
        << "</text>\n";
  }
  svg << "</svg>\n";
  return svg.str();
}

}  // namespace loom
