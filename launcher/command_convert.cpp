#include <filesystem>
#include <iostream>

#include "base/error.h"
#include "core/checkpoint.h"
#include "core/config.h"
#include "core/convert.h"
#include "core/model.h"
#include "core/run_dir.h"
#include "core/tokenizer.h"
#include "launcher/args.h"
#include "launcher/commands.h"

namespace loom {
namespace {

namespace fs = std::filesystem;

constexpr const char* kHelp =
    R"(usage: loom convert CHECKPOINT|RUN_DIR --to-looped --prelude P --block-layers K --loops R
                    --coda C [--init stepwise|average|lower] [--lora-rank r] --output DIR

Turns the unshared model of CHECKPOINT (or of the newest checkpoint of RUN_DIR), N = P + K·R + C
layers, into a looped one (Relaxed Recursive Transformers): its first P layers become the
prelude, its last C the coda, and a shared block of K layers run R times replaces the K·R middle
layers, iteration ℓ's layer j standing for middle layer ℓ·K + j. The shared layers start as
  stepwise  the middle layers at round(linspace(0, K·R − 1, K)) (default)
  average   the mean of each shared layer's R tied layers
  lower     the first K middle layers
With --lora-rank r > 0 (model.loop_lora_rank) each iteration gets, for each linear layer, the
rank-r truncated SVD of its tied layer's weight less the shared one: at full rank (r = d_model)
the looped model computes what the unshared one did, up to the norms and biases, which are
shared. The new run directory DIR holds config.textproto (the source run's, with the looped
model) and checkpoints/step_0000000; continue training with
  loom train DIR/config.textproto --init-from DIR --run-dir NEW_RUN
)";

ConvertOptions convert_options(const Args& args) {
  ConvertOptions o;
  for (const char* required : {"--prelude", "--block-layers", "--loops", "--coda", "--output"})
    if (!args.has(required))
      throw Error(std::string("missing ") + required + " (see loom convert --help)");
  o.prelude = static_cast<int>(args.integer("--prelude", 0));
  o.block_layers = static_cast<int>(args.integer("--block-layers", 1));
  o.loops = static_cast<int>(args.integer("--loops", 1));
  o.coda = static_cast<int>(args.integer("--coda", 0));
  o.init = convert_init(args.value("--init", "stepwise"));
  o.lora_rank = static_cast<int>(args.integer("--lora-rank", 0));
  return o;
}

}  // namespace

int command_convert(int argc, char** argv) {
  const Args args = parse_args("convert", argv, argc,
                               {{"--prelude", false},
                                {"--block-layers", false},
                                {"--loops", false},
                                {"--coda", false},
                                {"--init", false},
                                {"--lora-rank", false},
                                {"--output", false}},
                               {"--to-looped"});
  if (args.flag("--help")) {
    std::cout << kHelp;
    return 0;
  }
  if (args.positional.size() != 1 || !args.flag("--to-looped"))
    throw Error("expected CHECKPOINT (or RUN_DIR) and --to-looped (see loom convert --help)");
  const ConvertOptions options = convert_options(args);
  const std::string checkpoint = checkpoint_of(args.positional[0]);
  const CheckpointState state = checkpoint_read_state(checkpoint);
  validate_config(state.config);
  Model source = model_create(state.config.model());
  checkpoint_load(checkpoint, source, nullptr);
  config::RunConfig cfg = state.config;
  *cfg.mutable_model() = looped_config(state.config.model(), options);
  validate_config(cfg);
  Model target = model_create(cfg.model());
  target.buf.params.upload(
      convert_params(source, source.buf.params.download().data(), target, options));
  const std::string output = args.value("--output", "");
  const std::string folder = checkpoint_start_run(output, cfg, target);
  // The source run's tokenizer, so that loom sample and loom eval read the new run alike.
  if (const std::string data = data_info_dir_of_checkpoint(checkpoint); !data.empty())
    data_info_copy(data_info_read((fs::path(data) / "data.textproto").string()), data, output);
  std::cout << "converted " << checkpoint << " (" << source.spec.unique_layers
            << " layers) into a looped model of " << options.prelude << " + "
            << options.block_layers << " × " << options.loops << " + " << options.coda
            << " layers, " << target.layout.num_params << " parameters ("
            << source.layout.num_params << " before), LoRA rank " << options.lora_rank << ": "
            << folder << "\n";
  return 0;
}

}  // namespace loom
