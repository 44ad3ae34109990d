#include <filesystem>
#include <iostream>

#include "base/error.h"
#include "core/checkpoint.h"
#include "core/config.h"
#include "core/hf_llama.h"
#include "core/model.h"
#include "core/run_dir.h"
#include "core/safetensors.h"
#include "launcher/args.h"
#include "launcher/commands.h"

namespace loom {
namespace {

constexpr const char* kHelp = R"(usage: loom export CHECKPOINT|RUN_DIR --safetensors FILE [--force]
       loom export CHECKPOINT|RUN_DIR --hf DIR

Writes the model weights of CHECKPOINT (or of the newest checkpoint of the run RUN_DIR) as a
safetensors file (F32, loom's tensor names; see docs/checkpoint-format.md). The resolved run
config is stored in the file's metadata under "loom.config". The file is written beside FILE
and renamed onto it once complete.

With --hf, writes a Hugging Face Llama checkpoint into the new folder DIR instead: config.json
and model.safetensors (F32, Hugging Face names). A looped model is unrolled: each loop
iteration's layers become layers of their own (model.loops iterations; with relaxed recursion
each iteration's matrices are W + B·A). Only Llama-style
models can be written (mlp SWIGLU, RMSNORM, ROTARY, the standard residual, no input injection).

  --force   replace FILE if it exists (only a regular file, never inside a checkpoint)
)";

// FILE may be a new path, or with --force an existing regular file outside any checkpoint.
void check_target(const std::filesystem::path& path, bool force) {
  namespace fs = std::filesystem;
  if (path.empty() || path.filename().empty())
    throw Error("--safetensors needs a file name (got \"" + path.string() + "\")");
  std::error_code ec;
  const fs::file_status status = fs::symlink_status(path, ec);
  const fs::path folder = path.has_parent_path() ? path.parent_path() : fs::path(".");
  if (fs::exists(folder / "checkpoint.textproto", ec))
    throw Error("--safetensors " + path.string() + " is inside a checkpoint folder; write it "
                "elsewhere");
  if (!fs::exists(status)) return;
  if (!fs::is_regular_file(status))
    throw Error("--safetensors " + path.string() + " exists and is not a regular file; name a "
                "new file");
  if (!force)
    throw Error("--safetensors " + path.string() + " exists; pass --force to replace it");
}

}  // namespace

int command_export(int argc, char** argv) {
  const Args args =
      parse_args("export", argv, argc, {{"--safetensors", false}, {"--hf", false}}, {"--force"});
  if (args.flag("--help")) {
    std::cout << kHelp;
    return 0;
  }
  if (args.positional.size() != 1 || args.has("--safetensors") == args.has("--hf"))
    throw Error(
        "expected CHECKPOINT (or RUN_DIR) and one of --safetensors FILE or --hf DIR (see "
        "loom export --help)");
  const std::string hf_dir = args.value("--hf", "");
  std::error_code ec;
  if (args.has("--hf") && std::filesystem::exists(hf_dir, ec))
    throw Error("--hf " + hf_dir + " exists; name a new folder");
  if (args.has("--safetensors"))
    check_target(args.value("--safetensors", ""), args.flag("--force"));
  const std::string checkpoint = checkpoint_of(args.positional[0]);
  const CheckpointState state = checkpoint_read_state(checkpoint);
  validate_config(state.config);
  Model model = model_create(state.config.model());
  checkpoint_load(checkpoint, model, nullptr);
  if (args.has("--hf")) {
    hf_llama_write(hf_dir, model, model.buf.params.data());
    std::cout << "wrote a Hugging Face Llama checkpoint of " << model.spec.unrolled.size()
              << " layers (" << checkpoint << ") to " << hf_dir << "\n";
    return 0;
  }
  std::vector<NamedTensor> tensors;
  for (const ParamTensor& t : model.layout.tensors)
    tensors.push_back({t.name, t.shape, model.buf.params.data() + t.offset});
  const std::string path = args.value("--safetensors", "");
  safetensors_write(path, tensors,
                    {{"format", "pt"}, {"loom.step", std::to_string(state.step)},
                     {"loom.config", config_to_text(state.config)}});
  std::cout << "wrote " << tensors.size() << " tensors (" << model.layout.num_params
            << " parameters) of " << checkpoint << " to " << path << "\n";
  return 0;
}

}  // namespace loom
