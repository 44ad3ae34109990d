// `loom eval`: the loss against depth. One checkpoint's validation loss and bits per byte at each
// of several loop counts (the test-time compute curve of a looped model), measured on this
// process's CPU with the trainer's own validation (`evaluate`, core/train_step.h), printed as a
// table and drawn as SVG (tools/depth_curve.h).
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include "base/error.h"
#include "core/backend.h"
#include "core/checkpoint.h"
#include "core/config.h"
#include "core/data.h"
#include "core/loop_sampling.h"
#include "core/model.h"
#include "core/pipeline.h"
#include "core/run_dir.h"
#include "core/tokenizer.h"
#include "core/train_step.h"
#include "kernels/cpu/threads.h"
#include "launcher/args.h"
#include "launcher/commands.h"
#include "parallel/groups.h"
#include "tools/depth_curve.h"

namespace loom {
namespace {

namespace fs = std::filesystem;

constexpr const char* kHelp =
    R"(usage: loom eval CHECKPOINT|RUN_DIR [--loops 1,2,4,...] [--data GLOB] [--batches N] [--svg FILE]

The loss against depth: validation loss and bits per byte of the model saved in CHECKPOINT (a
runs/.../checkpoints/step_NNNNNNN folder), or in the newest checkpoint of the run RUN_DIR, at each
loop count, a looped model's test-time compute curve. Each count runs the validation the trainer
runs (the first N global batches of the validation shards, train.global_batch sequences of
train.seq_len tokens, in train.micro_batch sequences at a time) on this process's CPU, so at the
count the run validated at it gives the run's val_loss for that checkpoint. Prints a table and
draws the curve as SVG (x: loop count, log2 scale; y: loss).

  --loops LIST   loop counts, comma-separated, each at least 1 (2 with model.input_injection)
                 (default: the run's train.eval_loops, else model.loops)
  --data GLOB    validation shards (default: the run's data.val_shards)
  --batches N    global batches per count (default: the run's train.eval_batches)
  --svg FILE     the chart (default: eval_loops.svg in RUN_DIR, or eval_loops_step_NNNNNNN.svg
                 beside CHECKPOINT)

Bits per byte = loss / ln 2 × tokens / bytes, the bytes counted by decoding the evaluated tokens
with the data's tokenizer (data.textproto beside the shards, else the run's), an end-of-text
counted as one byte as loom prepare counts it.
)";

constexpr long kMaxLoops = 1 << 20;        // as train.eval_loops
constexpr long kMaxEvalTokens = 1L << 28;  // per count: 2 GiB of inputs and targets

// "1,2,4" → {1, 2, 4}, each listed once, in the order given. Throws loom::Error naming an item that
// is not a whole number, is below `least` or above kMaxLoops.
std::vector<int> parse_loops(const std::string& text, bool input_injection) {
  const int least = input_injection ? 2 : 1;
  std::vector<int> counts;
  std::istringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    char* end = nullptr;
    errno = 0;
    const long loops = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || errno == ERANGE)
      throw Error("--loops: \"" + item + "\" is not a loop count; expected whole numbers " +
                  "separated by commas, e.g. --loops 1,2,4,8");
    if (loops < 1 || loops > kMaxLoops)
      throw Error("--loops: " + item + " is not a loop count; each must be between 1 and " +
                  std::to_string(kMaxLoops));
    if (loops < least)
      throw Error("--loops: the model has model.input_injection, which needs at least 2 loop " +
                  std::string("iterations (the input is injected from the second on); drop ") +
                  item + " from the list");
    if (std::find(counts.begin(), counts.end(), loops) == counts.end())
      counts.push_back(static_cast<int>(loops));
  }
  if (counts.empty() || text.back() == ',')
    throw Error("--loops: \"" + text + "\" is not a list of loop counts, e.g. --loops 1,2,4,8");
  return counts;
}

// Where the chart goes by default: RUN_DIR/eval_loops.svg, or beside a checkpoint named for it.
std::string default_svg(const std::string& given, const std::string& checkpoint) {
  if (given != checkpoint) return (fs::path(given) / "eval_loops.svg").string();
  fs::path dir = fs::path(checkpoint).lexically_normal();
  if (!dir.has_filename()) dir = dir.parent_path();  // a trailing '/'
  return (dir.parent_path() / ("eval_loops_" + dir.filename().string() + ".svg")).string();
}

// The tokenizer that says how many bytes of text the validation tokens hold: the one described
// beside the shards, else the run's. None when neither says (shards made elsewhere).
std::optional<Tokenizer> tokenizer_of_data(const std::string& glob, const std::string& checkpoint,
                                           int model_vocab_size) {
  std::string dir;
  const std::optional<config::DataInfo> info = data_info_for_shards(glob, &dir);
  if (!info) return tokenizer_of_checkpoint(checkpoint, model_vocab_size);
  if (info->vocab_size() > model_vocab_size)
    throw Error("the validation shards' vocabulary (" + std::to_string(info->vocab_size()) +
                " ids, " + dir + "/" + kDataInfoFile + ") is larger than the model's (" +
                std::to_string(model_vocab_size) + "): not the data this model was trained on");
  return tokenizer_from_info(*info, dir);
}

// Bytes of text in the targets of the first `sequences` validation sequences, as `evaluate`
// reads them. Consecutive sequences' targets follow one another in the shards, so they are
// decoded in long runs, as they were encoded.
int64_t evaluated_bytes(const TokenDataset& val, int64_t sequences, const Tokenizer& tok) {
  DataLoader loader{&val, 0, false};
  const int T = val.T;
  const int64_t per_block = std::max<int64_t>(1, (int64_t{1} << 20) / T);
  std::vector<int> inputs, targets;
  int64_t bytes = 0;
  for (int64_t done = 0; done < sequences;) {
    const int n = static_cast<int>(std::min(per_block, sequences - done));
    inputs.resize(static_cast<size_t>(n) * T);
    targets.resize(static_cast<size_t>(n) * T);
    loader_next(loader, inputs.data(), targets.data(), n);
    bytes += tokenizer_text_bytes(tok, targets);
    done += n;
  }
  return bytes;
}

// What one evaluation covers: the model (planned for every count), its validation data and
// batch shape.
struct EvalSetup {
  std::string checkpoint, glob;
  config::RunConfig cfg;  // the checkpoint's
  long step = 0;
  std::vector<int> loops;
  int batches = 0;
  Model model;
  Pipeline pipe;
  TokenDataset val;
};

// Loads the checkpoint's model on the CPU at the run's precision, planned for the largest count.
// The arena keeps only each iteration's boundary state (LOOP_BOUNDARY): a forward pass computes
// the same values whatever recomputation keeps, and deep counts need no more than a state each.
void load_model(EvalSetup& e) {
  const config::RunConfig& cfg = e.cfg;
  kernels::cpu::init_threads(cfg.runtime().threads());
  const auto [least, most] = std::minmax_element(e.loops.begin(), e.loops.end());
  // At the checkpoint's model.loops (relaxed recursion's factors are per iteration), then run at
  // each count.
  e.model = model_create(cfg.model(), make_host_backend(cfg.runtime()));
  checkpoint_load(e.checkpoint, e.model, nullptr);
  model_set_loop_range(e.model, *least, *most);
  e.pipe = pipeline_single(1);
  model_plan(e.model, cfg.train().micro_batch(), cfg.train().seq_len(), e.pipe.slots,
             e.pipe.boundaries, e.pipe.split_backward, Recompute::kLoopBoundary);
}

EvalSetup set_up(const Args& args) {
  EvalSetup e;
  e.checkpoint = checkpoint_of(args.positional[0]);
  const CheckpointState state = checkpoint_read_state(e.checkpoint);
  validate_config(state.config);
  e.cfg = state.config;
  e.step = state.step;
  e.loops = args.has("--loops")
                ? parse_loops(args.value("--loops", ""), e.cfg.model().input_injection())
                : eval_loop_counts(e.cfg);
  // evaluate holds every token it reads at once, and counts them in an int.
  const long batches = args.integer("--batches", e.cfg.train().eval_batches());
  const long most = std::max(1L, kMaxEvalTokens / (static_cast<long>(e.cfg.train().global_batch()) *
                                                   e.cfg.train().seq_len()));
  if (batches < 1 || batches > most)
    throw Error("--batches must be between 1 and " + std::to_string(most) +
                " global batches (at most 2^28 tokens at once; got " + std::to_string(batches) +
                ")");
  e.batches = static_cast<int>(batches);
  e.glob = args.value("--data", e.cfg.data().val_shards());
  if (e.glob.empty())
    throw Error(
        "the run has no validation data (its data.val_shards is empty): name the "
        "shards with --data GLOB");
  e.val = dataset_open(e.glob, e.cfg.train().seq_len(), e.cfg.model().vocab_size());
  load_model(e);
  return e;
}

// One row of the table: a count's loss, and its bits per byte when the bytes are known.
void print_row(const ValLoss& v, int64_t tokens, int64_t bytes, double seconds) {
  const std::string bpb =
      bytes > 0 ? format("%.6f", bits_per_byte(v.loss, tokens, bytes)) : std::string("-");
  std::printf("%6d %12.6f %12s %10lld %9.2f\n", v.loops, v.loss, bpb.c_str(),
              static_cast<long long>(tokens), seconds);
  std::fflush(stdout);
}

// "step 300, trained at 4 loops" ("at 2 to 6 loops" with model.loops_sampling).
std::string describe(const EvalSetup& e) {
  const config::LoopsSampling& s = e.cfg.model().loops_sampling();
  const std::string trained = s.kind() == config::LoopsSampling::FIXED
                                  ? std::to_string(e.cfg.model().loops())
                                  : format("%d to %d", s.min(), s.max());
  return "step " + std::to_string(e.step) + ", trained at " + trained + " loops";
}

}  // namespace

int command_eval(int argc, char** argv) {
  const Args args = parse_args(
      "eval", argv, argc,
      {{"--loops", false}, {"--data", false}, {"--batches", false}, {"--svg", false}}, {});
  if (args.flag("--help")) {
    std::cout << kHelp;
    return 0;
  }
  if (args.positional.size() != 1)
    throw Error("expected one CHECKPOINT or RUN_DIR (see loom eval --help)");
  EvalSetup e = set_up(args);
  // Opened before the evaluation, which may take long, so that a chart it cannot write is said
  // at once. Only an SVG file is replaced: a mistyped --svg must not destroy a run's files.
  const std::string svg_path = args.value("--svg", default_svg(args.positional[0], e.checkpoint));
  std::error_code ec;
  if (fs::exists(svg_path, ec) && fs::path(svg_path).extension() != ".svg")
    throw Error("--svg " + svg_path + " exists and is not an .svg file; loom eval replaces only " +
                "a chart");
  std::ofstream out(svg_path, std::ios::binary | std::ios::trunc);
  if (!out) throw Error("cannot write the chart " + svg_path + ": " + std::strerror(errno));
  const config::TrainConfig& t = e.cfg.train();
  const int64_t sequences = static_cast<int64_t>(e.batches) * t.global_batch();
  const int64_t tokens = sequences * t.seq_len();
  const std::optional<Tokenizer> tok =
      tokenizer_of_data(e.glob, e.checkpoint, e.cfg.model().vocab_size());
  const int64_t bytes = tok ? evaluated_bytes(e.val, sequences, *tok) : 0;
  std::printf("loom eval: %s (%s); %lld sequences of %d tokens of %s", e.checkpoint.c_str(),
              describe(e).c_str(), static_cast<long long>(sequences), t.seq_len(), e.glob.c_str());
  if (tok)
    std::printf(", %lld bytes of text\n", static_cast<long long>(bytes));
  else
    std::printf(
        "; no bits per byte: no %s beside the shards or in the run says how its tokens "
        "decode\n",
        kDataInfoFile);
  std::printf("%6s %12s %12s %10s %9s\n", "loops", "val_loss", "bpb", "tokens", "seconds");
  ProcessGroups single = process_groups_create(nullptr, Mesh{});
  std::vector<DepthPoint> points;
  for (const int loops : e.loops) {
    const auto start = std::chrono::steady_clock::now();
    model_set_loops(e.model, loops);
    const double loss = evaluate(e.model, e.pipe, e.val, e.batches, t.global_batch(),
                                 t.micro_batch(), t.seq_len(), {}, *single.dp_sp, nullptr);
    print_row({loops, loss}, tokens, bytes,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    points.push_back({loops, loss});
  }
  out << depth_curve_svg(points, "loom eval: the loss against depth (" + describe(e) + ")",
                         bytes > 0 ? static_cast<double>(tokens) / (bytes * std::log(2.0)) : 0);
  if (!out.flush()) throw Error("cannot write the chart " + svg_path + ": " + std::strerror(errno));
  std::printf("chart: %s\n", svg_path.c_str());
  return 0;
}

}  // namespace loom
