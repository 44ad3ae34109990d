// What loom's SVG charts share (loom trace's timeline, tools/trace_view.h; loom eval's loss
// against depth, tools/depth_curve.h): text escaped for XML, fixed-point numbers, tick spacing
// and the document's opening.
//
//   std::ostringstream svg;
//   svg << loom::svg_open(640, 400, "text.point { font-size: 10px; }");
//   const double step = loom::svg_tick_step(range, 8);   // 1, 2 or 5 × 10^k
//   svg << "<text>" << loom::svg_escape(title) << "</text>\n</svg>\n";
#pragma once
#include <string>

namespace loom {

// `s` with &, <, > and " as XML entities.
std::string svg_escape(const std::string& s);

// `value` with `decimals` digits after the point ("%.*f").
std::string svg_number(double value, int decimals);

// A tick spacing of 1, 2 or 5 × 10^k giving about `ticks` ticks over `range` (> 0), and the
// decimals that print every multiple of it exactly.
double svg_tick_step(double range, int ticks);
int svg_tick_decimals(double step);

// The opening of a chart `width` × `height` pixels: the <svg> element (sans-serif, 12 px), the
// CSS rules `style` (may be empty) and a white background. The caller closes it with </svg>.
std::string svg_open(double width, double height, const std::string& style);

}  // namespace loom
