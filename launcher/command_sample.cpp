#include <iostream>

#include "core/checkpoint.h"
#include "core/config.h"
#include "core/model.h"
#include "core/sample.h"
#include "kernels/cpu/threads.h"
#include "core/error.h"
#include "launcher/args.h"
#include "launcher/commands.h"

namespace loom {
namespace {

constexpr const char* kHelp = R"(usage: loom sample CHECKPOINT [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K]
                   [--seed S]

Generates text with the model saved in CHECKPOINT (a runs/.../checkpoints/step_NNNNNNN folder).

  --prompt TEXT       text to continue (default: start of a document)
  --tokens N          tokens to generate (default 200)
  --temperature T     softmax temperature; 0 = always the most likely token
                      (default: the run's logging.sample_temperature)
  --top-k K           sample among the K most likely tokens; 0 = all
                      (default: the run's logging.sample_top_k)
  --seed S            random seed (default 1)
)";

}  // namespace

int command_sample(int argc, char** argv) {
  const Args args = parse_args("sample", argv, argc,
                               {{"--prompt", false}, {"--tokens", false}, {"--temperature", false},
                                {"--top-k", false}, {"--seed", false}},
                               {});
  if (args.flag("--help")) {
    std::cout << kHelp;
    return 0;
  }
  if (args.positional.size() != 1) throw Error("expected one CHECKPOINT (see loom sample --help)");
  const long tokens = args.integer("--tokens", 200);
  if (tokens < 0) throw Error("--tokens must not be negative");
  const CheckpointState state = checkpoint_read_state(args.positional[0]);
  validate_config(state.config);
  kernels::cpu::init_threads(state.config.runtime().threads());
  Model model = model_create(state.config.model());
  checkpoint_load(args.positional[0], model, nullptr);
  model_plan(model, 1, state.config.train().seq_len());
  Rng rng{static_cast<uint64_t>(args.integer("--seed", 1))};
  const std::string prompt = args.value("--prompt", "");
  const std::vector<int> out =
      sample_tokens(model, encode_bytes(prompt), static_cast<int>(tokens),
                    static_cast<float>(args.number("--temperature",
                                                   state.config.logging().sample_temperature())),
                    static_cast<int>(args.integer("--top-k", state.config.logging().sample_top_k())),
                    rng);
  std::cout << prompt << decode_bytes(out) << std::endl;
  return 0;
}

}  // namespace loom
