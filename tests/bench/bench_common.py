"""What the training benchmarks (dp_overlap.py, tp_ladder.py) and the overlap test
(tests/parallel/tp_overlap_test.py) share: the training data, an emulated slow link, launching
`loom train` alone or under mpirun, and the medians of its metrics.jsonl.

    link = bench_common.Link()                       # the machine as it is
    with bench_common.slow_link("1gbit") as link:    # ranks over a rate-limited TCP loopback
        bench_common.prepare_data(loom, source)
        run_dir = bench_common.train(loom, "bench.textproto", "run-a", ["parallel.tp=2"],
                                     ranks=2, link=link)
        ms, comm_ms = bench_common.step_medians(run_dir, warmup=2)

A failed run raises BenchError carrying the command and what it printed (the "error:" lines
first), so a benchmark stops with loom's own message.

Every chart a benchmark writes into docs/ says what it measured: chart_svg puts a title, the
hardware line (hardware_line: CPU, cores, ranks × threads, ranks per core) and the condition above
the plot, whose axes carry axis_label's labels; tests/bench/check_charts.py checks all of them.
"""
import contextlib
import dataclasses
import html
import json
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import textwrap


class BenchError(Exception):
    """A command the benchmark needs failed; the message says which and what it printed."""


@dataclasses.dataclass
class Link:
    """How ranks reach each other: a command prefix (entering a network namespace) and the
    options mpirun needs for that transport. Empty: the machine as it is (shared memory)."""
    prefix: list = dataclasses.field(default_factory=list)
    mpirun_options: list = dataclasses.field(default_factory=list)
    description: str = ""


def bench_config(model, micro_batch, seq_len, extra=""):
    """A benchmark run's config: `model` (a `model { ... }` text) trained on the prepared data
    with one thread per rank, no validation, checkpoints or samples."""
    return f"""{model}
train {{ micro_batch: {micro_batch} seq_len: {seq_len} eval_interval: 0 }}
optim {{ lr: 1e-3 warmup_steps: 2 }}
data {{ train_shards: "data/train_*.bin" val_shards: "" }}
checkpoint {{ interval: 0 }}
logging {{ interval: 1000 sample_tokens: 0 }}
runtime {{ threads: 1 }}
{extra}"""


def exit_on_sigterm():
    """SIGTERM ends the benchmark through the normal exception path, so `finally` blocks (the
    namespace's removal, the temporary folder's) run, as they do for Ctrl-C."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def run_command(cmd, what, env=None, timeout=None):
    """Runs cmd, returns its output (stdout and stderr together). Raises BenchError naming `what`
    when it fails. If the benchmark is interrupted meanwhile, cmd (mpirun passes it on to the
    ranks) is asked to stop, then killed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    if proc.returncode != 0:
        lines = output.splitlines()
        errors = list(dict.fromkeys(line for line in lines if "error:" in line))
        raise BenchError(f"{what} failed (exit status {proc.returncode})\n"
                         + "".join(f"  {line}\n" for line in errors[:5])
                         + f"command: {shlex.join(cmd)}\nlast lines of its output:\n"
                         + "\n".join(lines[-25:]))
    return output


@contextlib.contextmanager
def slow_link(rate):
    """Yields the Link for `rate` (e.g. "1gbit"; "" = the machine as it is). With a rate, every
    rank runs inside a network namespace created here (needs root) whose loopback is limited to
    `rate` by a token bucket (tc tbf), and talks to the others over TCP through it, as between
    machines. The namespace is removed on the way out, also after an error or Ctrl-C."""
    if not rate:
        yield Link()
        return
    namespace = f"loom-bench-{os.getpid()}"
    enter = ["ip", "netns", "exec", namespace]
    run_command(["ip", "netns", "add", namespace], "creating network namespace " + namespace)
    try:
        run_command(enter + ["ip", "link", "set", "lo", "up"], "bringing up its loopback")
        run_command(enter + ["tc", "qdisc", "replace", "dev", "lo", "root", "tbf", "rate", rate,
                             "burst", "256kb", "latency", "100ms"],
                    f"limiting its loopback to {rate} (tc tbf)")
        yield Link(prefix=enter,
                   mpirun_options=["--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", "lo"],
                   description=f"ranks over TCP on a {rate}/s link")
    finally:
        subprocess.run(["ip", "netns", "delete", namespace])


def prepare_data(loom, source, inputs=("core", "kernels"), output="data"):
    """Tokenises the source folders `inputs` of the loom checkout `source` into `output`."""
    cmd = [loom, "prepare"]
    for folder in inputs:
        cmd += ["--input", os.path.join(source, folder)]
    run_command(cmd + ["--output", output], "loom prepare")


def mpirun_command(ranks, link=None, exported=()):
    """mpirun for `ranks` ranks on this machine, over `link`, passing the environment variables
    named in `exported` to every rank."""
    cmd = ["mpirun", "-np", str(ranks), "--oversubscribe"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    cmd += (link or Link()).mpirun_options
    for name in exported:
        cmd += ["-x", name]
    return cmd


def train(loom, config, run_dir, sets, ranks=1, link=None, env=None, timeout=None):
    """Runs `loom train config --run-dir run_dir --set ...` (one process, or `ranks` ranks under
    mpirun over `link`) and returns run_dir. `env`: extra environment variables, passed on to
    every rank. Ranks that share cores wait passively (OMP_WAIT_POLICY=PASSIVE)."""
    link = link or Link()
    cmd = [loom, "train", config, "--run-dir", run_dir]
    for assignment in sets:
        cmd += ["--set", assignment]
    extra = dict(env or {})
    if ranks > 1:
        cmd = mpirun_command(ranks, link, exported=sorted(extra)) + cmd
    full_env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", **extra)
    run_command(link.prefix + cmd, f"loom train ({run_dir})", env=full_env, timeout=timeout)
    return run_dir


def step_medians(run_dir, warmup=2):
    """(median ms per step, median exposed communication ms per step) over the steps of
    run_dir/metrics.jsonl after the first `warmup` ones."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f][warmup:]
    if not rows:
        raise BenchError(f"{run_dir}: no step after the {warmup} warm-up steps in metrics.jsonl")
    return (statistics.median(r["ms_per_step"] for r in rows),
            statistics.median(r["comm_wait_ms"] for r in rows))


def rerun_command(script, write_docs):
    """The command line that reruns this benchmark from the repository root: its options as
    given, without --write-docs and its file."""
    kept = [a for a in sys.argv[3:] if not a.startswith("--write-docs") and a != write_docs]
    return " ".join([f"python3 tests/bench/{script} build/loom ."] + kept)


def write_section(docs, section, lines, charts):
    """replace_section, with the SVG charts (file name → text) written beside docs."""
    for name, svg in charts.items():
        with open(os.path.join(os.path.dirname(docs), name), "w") as f:
            f.write(svg)
    replace_section(docs, section, lines)


def replace_section(docs, section, lines):
    """Writes `lines` (a section starting with its `section` heading) into the Markdown file
    docs in place of that section (up to the next "## " heading), or appends it."""
    text = open(docs).read() if os.path.exists(docs) else "# Benchmarks\n"
    if section in text:
        before, rest = text.split(section, 1)
        after = rest[rest.find("\n## "):] if "\n## " in rest else ""
        text = before + "\n".join(lines) + after
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines)
    with open(docs, "w") as f:
        f.write(text)


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, for the record of a measurement."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def cpu_description():
    """"<CPU model> (<n> cores)", for the record of a measurement."""
    return f"{cpu_model()} ({os.cpu_count()} cores)"


def hardware_line(ranks, threads_per_rank, model=None, cores=None):
    """A chart's hardware line: the CPU, its cores, ranks × threads and how the ranks share the
    cores, e.g. "AMD EPYC (2 cores); 1, 2 or 4 ranks × 1 thread; 4 ranks on 2 cores (2 per core,
    oversubscribed)". `ranks`: a count, or the counts of the chart's runs; `model` and `cores`:
    this machine's unless given (a chart redrawn elsewhere names the machine that measured)."""
    model = model or cpu_model()
    cores = cores or os.cpu_count()
    counts = sorted(set(ranks)) if isinstance(ranks, (list, tuple, set)) else [ranks]
    most, threads = counts[-1], threads_per_rank

    def plural(n, noun):
        return f"{n} {noun}" if n == 1 else f"{n} {noun}s"

    listed = ", ".join(map(str, counts[:-1])) + f" or {most}" if len(counts) > 1 else str(most)
    ranks_text = f"{listed} rank" + ("" if counts == [1] else "s")
    if most > cores:
        sharing = f"{most} ranks on {cores} cores ({most / cores:g} per core, oversubscribed)"
    elif most * threads > cores:
        sharing = (f"{most * threads} threads on {cores} cores "
                   f"({most * threads / cores:g} per core, oversubscribed)")
    elif most * threads == cores:
        sharing = (f"{plural(most, 'rank')} on {cores} cores "
                   f"(1 {'rank' if threads == 1 else 'thread'} per core)")
    else:
        sharing = f"{plural(most, 'rank')} on {cores} cores (at most 1 thread per core)"
    return f"{model} ({cores} cores); {ranks_text} × {plural(threads, 'thread')}; {sharing}"


def chart_svg(width, height, body, title, hardware, condition="", font_size=12):
    """A chart for docs/, whole: its header — the title (class "title"), the hardware line (class
    "hardware", from hardware_line) and the condition measured under (class "condition"), wrapped
    to the width — above `body`, the plot's SVG elements (a list of lines) drawn in a
    width × height box, axis labels included (axis_label)."""
    chars = int(width / 6.5)  # of 11 px sans-serif per line
    header, y = [f'<text class="title" x="{width / 2:g}" y="22" text-anchor="middle" '
                 f'font-size="15">{html.escape(title, quote=False)}</text>'], 26
    for kind, text in (("hardware", hardware), ("condition", condition)):
        for line in textwrap.wrap(text, chars):
            y += 14
            header.append(f'<text class="{kind}" x="{width / 2:g}" y="{y}" text-anchor="middle" '
                          f'font-size="11">{html.escape(line, quote=False)}</text>')
    top = y + 12
    total = top + height
    return "\n".join([f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:g}" '
                      f'height="{total:g}" viewBox="0 0 {width:g} {total:g}" '
                      f'font-family="sans-serif" font-size="{font_size}">',
                      f'<rect width="{width:g}" height="{total:g}" fill="white"/>', *header,
                      f'<g transform="translate(0 {top})">', *body, "</g>", "</svg>"]) + "\n"


def axis_label(axis, text, x, y, anchor="middle", rotated=False):
    """The label of axis "x" or "y" (class "axis-x" or "axis-y"), with its unit, at (x, y);
    `rotated`: a quarter turn anticlockwise, for a label beside a vertical axis."""
    turn = f' transform="rotate(-90 {x:g} {y:g})"' if rotated else ""
    return (f'<text class="axis-{axis}" x="{x:g}" y="{y:g}" text-anchor="{anchor}"{turn}>'
            f'{html.escape(text, quote=False)}</text>')


def svg_parts(svg):
    """(width, height, elements) of an SVG document another program drew (`loom trace --svg`),
    the elements being the lines inside its <svg> element: to put the drawing under chart_svg's
    header."""
    opening = re.match(r"\s*<svg\b[^>]*>", svg)
    if not opening:
        raise BenchError("not an SVG document: it does not start with <svg ...>")
    size = {name: float(re.search(rf'\s{name}="([0-9.]+)"', opening.group()).group(1))
            for name in ("width", "height")}
    inner = svg[opening.end():svg.rindex("</svg>")].strip("\n")
    return size["width"], size["height"], inner.split("\n")


def tick_step(peak, ticks=6):
    """The step of a value axis from 0 to beyond `peak` with at most `ticks` steps: 1, 2, 2.5 or
    5 times a power of ten."""
    scale = 10 ** math.floor(math.log10(peak / ticks)) if peak > 0 else 1
    return next(s * scale for s in (1, 2, 2.5, 5, 10) if peak / (s * scale) <= ticks)
