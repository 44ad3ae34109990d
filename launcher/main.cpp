// `loom`: the command-line entry point. Dispatches to a sub-command and turns loom::Error into a
// message on stderr and exit status 1.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "base/error.h"
#include "base/names.h"
#include "launcher/commands.h"
#include "loom_commit.h"

namespace {

constexpr const char* kUsage =
    R"(loom: trains looped GPT language models on one process or many MPI ranks.

usage: loom <command> [arguments]      loom help <command>, or loom <command> --help, for details
       loom --version                  version, build type, -march, CUDA, commit

commands:
  train CONFIG [--set k=v]... [--run-dir DIR] [--resume | --init-from CHECKPOINT] [--max-restarts N]
        [--hostfile FILE | --hosts a:4,b:4] [--oversubscribe] [--allow-cross-node-tp]
                        train a model; parallel.dp × tp × pp × sp > 1 starts that many ranks
                        (mpirun, or srun inside Slurm). --resume --run-dir DIR alone continues
                        the run DIR with its own config
  plan CONFIG [--set k=v]... [--memory-gb G] [--hostfile FILE | --hosts a:4,b:4]
                        show a layout without starting it: groups, stages, batch, memory per
                        rank (against G GiB per rank, or this machine)
  prepare --input PATH... --output DIR [--val-fraction F] [--tokenizer bytes|sentencepiece]
                        make token shards from text files
  sample CHECKPOINT|RUN_DIR [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K]
                        generate text (a run directory: its newest checkpoint)
  eval CHECKPOINT|RUN_DIR [--loops 1,2,4,...] [--data GLOB] [--batches N] [--svg FILE]
                        validation loss and bits per byte at each loop count: the loss
                        against depth, printed and drawn as SVG
  export CHECKPOINT|RUN_DIR --safetensors FILE | --hf DIR
                        write the weights as safetensors, or as a Hugging Face Llama checkpoint
  convert CHECKPOINT|RUN_DIR --to-looped --prelude P --block-layers K --loops R --coda C
        [--init stepwise|average|lower] [--lora-rank r] --output DIR
                        an unshared model as a looped one (relaxed recursion with --lora-rank)
  import HF_DIR --output RUN_DIR
                        a Hugging Face Llama checkpoint as a loom checkpoint (for loom train
                        --init-from, loom sample, loom eval)
  bench step CONFIG     time training steps (--json for scripts)
  bench sgemm           time OpenBLAS sgemm on this machine
  bench comm            (under mpirun) time the collectives between ranks
  bench ring            (under mpirun) time ring attention against all-gathered attention
  trace FILE --svg OUT [--steps A-B]
                        draw a run's trace.json as SVG; time per rank and category
  doctor RUN_DIR        explain a hung or failed run from its flight-recorder dumps
  plot RUN_DIR [RUN_DIR ...] --svg OUT [--x step|tokens|time] [--metrics loss,val_loss]
                        draw runs' metrics as SVG (several overlaid); --loops RUN_DIR the
                        loop's statistics as a heat map

Configs: configs/*.textproto (schema and defaults: configs/loom.proto). Documentation: README.md
and docs/.
)";

// The commands, for "did you mean" and `loom help`.
const std::vector<std::string> kCommands = {"train",  "plan",   "prepare", "sample", "eval",
                                            "export", "import", "convert", "bench",  "trace",
                                            "doctor", "plot",   "help"};

// `loom --version`: what a bug report needs to say which loom it was.
void print_version() {
  std::cout << "loom " << LOOM_VERSION << " (commit " << LOOM_COMMIT << ")\n"
            << "build: " << LOOM_BUILD_TYPE << ", -march=" << LOOM_MARCH_NAME
            << ", CUDA backend: " << (LOOM_WITH_CUDA ? "yes" : "no") << "\n";
}

// The OpenMP and OpenBLAS thread counts the environment asks for, if absurd: loom sets its own
// (runtime.threads) after start-up, but the runtimes read these first and a count far beyond
// the machine crashes them. Empty when they are unset or sane (at most 4× the cores, as
// runtime.threads).
std::string thread_environment_problem() {
  const long cores = std::max(1u, std::thread::hardware_concurrency());
  for (const char* name : {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"}) {
    const char* value = std::getenv(name);
    if (!value || *value == '\0') continue;
    // OMP_NUM_THREADS may list one count per nesting level ("4,2"); every one is checked.
    for (const char* p = value;;) {
      char* end = nullptr;
      const long n = std::strtol(p, &end, 10);
      if (end == p || n <= 0 || n > 4 * cores || (*end != '\0' && *end != ','))
        return std::string(name) + "=" + value + " is not a thread count between 1 and 4× this " +
               "machine's " + std::to_string(cores) + " cores; unset it (loom sets its threads " +
               "from runtime.threads: 0 = one per core)";
      if (*end == '\0') break;
      p = end + 1;
    }
  }
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  if (const std::string problem = thread_environment_problem(); !problem.empty()) {
    std::cerr << "loom: error: " << problem << "\n";
    return 1;
  }
  // `loom`, `loom --help`, `loom help` and `loom help help` print the usage.
  const bool help = argc >= 2 && std::strcmp(argv[1], "help") == 0;
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0 ||
      (help && (argc == 2 || std::strcmp(argv[2], "help") == 0))) {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  if (std::strcmp(argv[1], "--version") == 0) {
    print_version();
    return 0;
  }
  // `loom help train` is `loom train --help`.
  char help_flag[] = "--help";
  char* help_argv[] = {argv[0], argc > 2 ? argv[2] : argv[1], help_flag, nullptr};
  if (help) {
    if (argc > 3) {
      std::cerr << "loom help: expected one command, e.g. loom help train\n";
      return 2;
    }
    argc = 3;
    argv = help_argv;
  }
  const std::string command = argv[1];
  try {
    if (command == "train") return loom::command_train(argc - 2, argv + 2);
    if (command == "plan") return loom::command_plan(argc - 2, argv + 2);
    if (command == "prepare") return loom::command_prepare(argc - 2, argv + 2);
    if (command == "sample") return loom::command_sample(argc - 2, argv + 2);
    if (command == "eval") return loom::command_eval(argc - 2, argv + 2);
    if (command == "export") return loom::command_export(argc - 2, argv + 2);
    if (command == "import") return loom::command_import(argc - 2, argv + 2);
    if (command == "convert") return loom::command_convert(argc - 2, argv + 2);
    if (command == "bench") return loom::command_bench(argc - 2, argv + 2);
    if (command == "trace") return loom::command_trace(argc - 2, argv + 2);
    if (command == "doctor") return loom::command_doctor(argc - 2, argv + 2);
    if (command == "plot") return loom::command_plot(argc - 2, argv + 2);
    const std::string guess = loom::closest_name(command, kCommands);
    std::cerr << "loom: unknown command \"" << command << "\""
              << (guess.empty() ? "" : " (did you mean " + guess + "?)") << "\n\n"
              << kUsage;
    return 2;
  } catch (const loom::Error& e) {
    std::cerr << "loom " << command << ": error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "loom " << command << ": error: " << e.what() << "\n";
    return 1;
  }
}
