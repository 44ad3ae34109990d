// `loom`: the command-line entry point. Dispatches to a sub-command and turns loom::Error into a
// message on stderr and exit status 1.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <iostream>
#include <string>
#include <thread>

#include "base/error.h"
#include "launcher/commands.h"

namespace {

constexpr const char* kUsage = R"(loom: trains looped GPT language models.

usage: loom <command> [arguments]   (loom <command> --help for details)

commands:
  train CONFIG [--set k=v]... [--run-dir DIR] [--resume]   train a model from a config
  plan CONFIG [--set k=v]...                               show a layout: groups, batch, memory
  prepare --input PATH... --output DIR [--val-fraction F]   make token shards from text files
  sample CHECKPOINT [--prompt TEXT] [--tokens N]            generate text from a checkpoint
  export CHECKPOINT --safetensors FILE                      write the weights as safetensors
  bench step CONFIG | bench sgemm                           time training steps / OpenBLAS sgemm
  trace FILE --svg OUT [--steps A-B]                        draw a run's trace.json as SVG
  doctor RUN_DIR                                            explain a hung or failed run
)";

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
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  try {
    if (command == "train") return loom::command_train(argc - 2, argv + 2);
    if (command == "plan") return loom::command_plan(argc - 2, argv + 2);
    if (command == "prepare") return loom::command_prepare(argc - 2, argv + 2);
    if (command == "sample") return loom::command_sample(argc - 2, argv + 2);
    if (command == "export") return loom::command_export(argc - 2, argv + 2);
    if (command == "bench") return loom::command_bench(argc - 2, argv + 2);
    if (command == "trace") return loom::command_trace(argc - 2, argv + 2);
    if (command == "doctor") return loom::command_doctor(argc - 2, argv + 2);
    std::cerr << "loom: unknown command \"" << command << "\"\n\n" << kUsage;
    return 2;
  } catch (const loom::Error& e) {
    std::cerr << "loom " << command << ": error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "loom " << command << ": error: " << e.what() << "\n";
    return 1;
  }
}
