#include <chrono>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <iostream>

#include "core/config.h"
#include "core/trainer.h"
#include "core/error.h"
#include "launcher/args.h"
#include "launcher/commands.h"

namespace loom {
namespace {

constexpr const char* kHelp = R"(usage: loom train CONFIG [--set path.to.field=value]... [--run-dir DIR] [--resume]

Trains the model CONFIG (a text-format loom.config.RunConfig, see configs/loom.proto) describes.

  --set k=v      override one config field, e.g. --set optim.lr=1e-3 (repeatable, applied in order)
  --run-dir DIR  where config.textproto, metrics.jsonl, train.log and checkpoints/ go
                 (default: runs/<config name>-<date>-<time>); never overwritten without --resume
  --resume       continue the run in --run-dir from its newest checkpoint
)";

std::string default_run_dir(const std::string& config_path) {
  const std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", std::localtime(&now));
  return "runs/" + std::filesystem::path(config_path).stem().string() + "-" + stamp;
}

// Launchers announce the job's size in the environment. This version trains on one rank, and N
// independent copies would race on one run directory, so a multi-rank launch is refused.
void reject_multi_rank_launch() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS"}) {
    const char* value = std::getenv(name);
    if (value && std::atoi(value) > 1)
      throw Error(std::string("started as one of ") + value + " ranks (" + name +
                  "), but this version of loom trains on a single rank; run it with one task");
  }
}

}  // namespace

int command_train(int argc, char** argv) {
  const Args args = parse_args("train", argv, argc, {{"--set", true}, {"--run-dir", false}},
                               {"--resume"});
  if (args.flag("--help")) {
    std::cout << kHelp;
    return 0;
  }
  if (args.positional.size() != 1)
    throw Error("expected exactly one CONFIG file (see loom train --help)");
  reject_multi_rank_launch();
  const std::string config_path = args.positional[0];
  const config::RunConfig cfg = load_config(config_path, args.values("--set"));
  if (args.flag("--resume") && !args.has("--run-dir"))
    throw Error("--resume needs --run-dir naming the run to continue");
  TrainOptions options;
  options.run_dir = args.value("--run-dir", default_run_dir(config_path));
  options.resume = args.flag("--resume");
  const TrainSummary summary = train(cfg, options);
  std::cout << "done: " << summary.steps << " steps, final loss " << summary.last_loss;
  if (summary.last_val_loss >= 0) std::cout << ", val_loss " << summary.last_val_loss;
  std::cout << "; run directory " << summary.run_dir << "\n";
  return 0;
}

}  // namespace loom
