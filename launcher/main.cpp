// `loom`: the command-line entry point. Dispatches to a sub-command and turns loom::Error into a
// message on stderr and exit status 1.
#include <cstring>
#include <exception>
#include <iostream>
#include <string>

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

}  // namespace

int main(int argc, char** argv) {
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
