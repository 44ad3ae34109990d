#!/usr/bin/env python3
"""Every chart in docs/ says what it measured. Checks each DOCS/*.svg for the <text> elements
that bench_common.chart_svg and axis_label write, by class:

  title          what is measured
  hardware       the CPU and its cores, ranks × threads, how many ranks share a core
                 (bench_common.hardware_line)
  axis-x, axis-y the axes' labels

Prints one line per chart, and what each lacks; exits 1 when any lacks something.

usage: check_charts.py DOCS_DIR
"""
import glob
import os
import re
import sys
import xml.etree.ElementTree as ElementTree

TEXT = "{http://www.w3.org/2000/svg}text"
HARDWARE_FACTS = (("the cores", r"\b\d+ cores?\b"), ("the ranks", r"\branks?\b"),
                  ("the threads", r"\bthreads?\b"), ("the ranks or threads per core",
                                                     r"\bper core\b"))


def texts_by_class(path):
    """{class: the texts of the <text> elements of that class, joined}."""
    found = {}
    for element in ElementTree.parse(path).getroot().iter(TEXT):
        text = "".join(element.itertext()).strip()
        for name in element.get("class", "").split():
            found[name] = (found.get(name, "") + " " + text).strip()
    return found


def missing(path):
    """What the chart at `path` lacks, in words; empty when nothing."""
    try:
        found = texts_by_class(path)
    except ElementTree.ParseError as e:
        return [f"well-formed XML ({e})"]
    lacks = []
    if not found.get("title"):
        lacks.append('a title (<text class="title">)')
    hardware = found.get("hardware", "")
    if not hardware:
        lacks.append('a hardware line (<text class="hardware">)')
    else:
        lacks += [f"{what} in the hardware line" for what, pattern in HARDWARE_FACTS
                  if not re.search(pattern, hardware)]
    lacks += [f'a label of the {axis} axis (<text class="axis-{axis}">)' for axis in "xy"
              if not found.get(f"axis-{axis}")]
    return lacks


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.rsplit("\n\n", 1)[-1].strip())
    docs = sys.argv[1]
    paths = sorted(glob.glob(os.path.join(docs, "*.svg")))
    if not paths:
        sys.exit(f"check_charts: no *.svg in {docs}")
    failed = 0
    for path in paths:
        lacks = missing(path)
        print(f"{os.path.basename(path)}: " + ("ok" if not lacks else "lacks " + "; ".join(lacks)))
        failed += bool(lacks)
    if failed:
        sys.exit(f"check_charts: {failed} of {len(paths)} charts in {docs} do not say what they "
                 "measured (see tests/bench/bench_common.py, chart_svg)")


if __name__ == "__main__":
    main()
