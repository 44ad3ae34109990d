#include <iostream>

#include "core/checkpoint.h"
#include "core/config.h"
#include "core/model.h"
#include "core/safetensors.h"
#include "core/error.h"
#include "launcher/args.h"
#include "launcher/commands.h"

namespace loom {
namespace {

constexpr const char* kHelp = R"(usage: loom export CHECKPOINT --safetensors FILE

Writes the model weights of CHECKPOINT as a safetensors file (F32, loom's tensor names; see
docs/checkpoint-format.md). The resolved run config is stored in the file's metadata under
"loom.config".
)";

}  // namespace

int command_export(int argc, char** argv) {
  const Args args = parse_args("export", argv, argc, {{"--safetensors", false}}, {});
  if (args.flag("--help")) {
    std::cout << kHelp;
    return 0;
  }
  if (args.positional.size() != 1 || !args.has("--safetensors"))
    throw Error("expected CHECKPOINT and --safetensors FILE (see loom export --help)");
  const CheckpointState state = checkpoint_read_state(args.positional[0]);
  validate_config(state.config);
  Model model = model_create(state.config.model());
  checkpoint_load(args.positional[0], model, nullptr);
  std::vector<NamedTensor> tensors;
  for (const ParamTensor& t : model.tensors)
    tensors.push_back({t.name, t.shape, model.params.data() + t.offset});
  const std::string path = args.value("--safetensors", "");
  safetensors_write(path, tensors,
                    {{"format", "pt"}, {"loom.step", std::to_string(state.step)},
                     {"loom.config", config_to_text(state.config)}});
  std::cout << "wrote " << tensors.size() << " tensors (" << model.num_params << " parameters) to "
            << path << "\n";
  return 0;
}

}  // namespace loom
