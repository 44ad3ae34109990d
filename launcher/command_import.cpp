#include <google/protobuf/text_format.h>

#include <algorithm>
#include <filesystem>
#include <iostream>

#include "base/error.h"
#include "core/checkpoint.h"
#include "core/config.h"
#include "core/file_io.h"
#include "core/hf_llama.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "core/tokenizer.h"
#include "launcher/args.h"
#include "launcher/commands.h"

namespace loom {
namespace {

namespace fs = std::filesystem;

constexpr const char* kHelp = R"(usage: loom import HF_DIR --output RUN_DIR

Reads a Hugging Face Llama checkpoint (HF_DIR/config.json and model.safetensors, or the shards
model.safetensors.index.json lists; F32, BF16 or F16) and writes it as a loom run directory:
RUN_DIR/checkpoints/step_0000000 (fp32) and RUN_DIR/config.textproto, whose model section is
the Llama as loom writes it (one unshared block of num_hidden_layers layers; mlp SWIGLU,
n_kv_heads, RMSNORM, ROTARY). When HF_DIR has a SentencePiece tokenizer.model it is copied beside
them (with data.textproto), so loom sample decodes with it. Then:

  loom sample RUN_DIR --prompt "..."                     generate text
  loom eval RUN_DIR --data 'val_*.bin'                   validation loss
  loom train CONFIG --init-from RUN_DIR                  train on (CONFIG's model section must
                                                         be RUN_DIR/config.textproto's)
  loom export RUN_DIR --hf DIR                           back to the Hugging Face layout

Every config.json field loom cannot honour (rope_scaling, a sliding window, another
architecture, biases on some layers only, ...) is an error naming it; so is a vocabulary of more
than 65536 tokens (loom's shards hold uint16 ids).
)";

// The run config an imported model starts from: its model, the schema's defaults elsewhere, and
// sequences no longer than the model's positions.
config::RunConfig imported_config(const config::ModelConfig& model) {
  config::RunConfig cfg;
  *cfg.mutable_model() = model;
  cfg.mutable_train()->set_seq_len(std::min(cfg.train().seq_len(), model.max_seq_len()));
  cfg = resolve_defaults(cfg);
  validate_config(cfg);
  return cfg;
}

// A SentencePiece tokenizer.model in hf_dir, copied into run_dir with the data.textproto that
// names it; false when hf_dir has none.
bool import_tokenizer(const fs::path& hf_dir, const fs::path& run_dir, int vocab, int end_of_text) {
  const fs::path model = hf_dir / "tokenizer.model";
  if (!fs::exists(model)) return false;
  const Tokenizer tok = tokenizer_sentencepiece(model.string());  // refuses what it cannot load
  if (tok.vocab_size > vocab)
    throw Error(model.string() + " has " + std::to_string(tok.vocab_size) +
                " pieces, more than config.json's vocab_size " + std::to_string(vocab));
  fs::copy_file(model, run_dir / "tokenizer.model", fs::copy_options::overwrite_existing);
  config::DataInfo info;
  info.set_tokenizer(config::DataInfo::SENTENCEPIECE);
  info.set_vocab_size(vocab);
  info.set_end_of_text(end_of_text >= 0 ? end_of_text : tok.end_of_text);
  info.set_tokenizer_file("tokenizer.model");
  std::string text;
  google::protobuf::TextFormat::PrintToString(info, &text);
  write_file((run_dir / "data.textproto").string(), text.data(), text.size());
  return true;
}

}  // namespace

int command_import(int argc, char** argv) {
  const Args args = parse_args("import", argv, argc, {{"--output", false}}, {});
  if (args.flag("--help")) {
    std::cout << kHelp;
    return 0;
  }
  if (args.positional.size() != 1 || !args.has("--output"))
    throw Error("expected HF_DIR and --output RUN_DIR (see loom import --help)");
  const fs::path hf_dir = args.positional[0], run_dir = args.value("--output", "");
  std::error_code ec;
  if (fs::exists(run_dir, ec) && !fs::is_empty(run_dir, ec))
    throw Error("--output " + run_dir.string() + " exists and is not empty; name a new folder");
  const HfLlamaModel hf = hf_llama_read(hf_dir.string());
  const config::RunConfig cfg = imported_config(hf.model);
  Model model = model_create(cfg.model());
  model.buf.params.upload(hf_llama_params(model, hf));
  const std::string folder = checkpoint_start_run(run_dir.string(), cfg, model);
  const bool tokenizer =
      import_tokenizer(hf_dir, run_dir, cfg.model().vocab_size(), hf.end_of_text);
  std::cout << "imported " << model.layout.tensors.size() << " tensors (" << model.layout.num_params
            << " parameters, " << cfg.model().block_layers() << " layers) from " << hf_dir.string()
            << " into " << folder << "\n"
            << (tokenizer ? "tokenizer: " + (run_dir / "tokenizer.model").string()
                          : "no tokenizer.model in " + hf_dir.string() +
                                ": loom sample needs one (a byte vocabulary of 257 needs none)")
            << "\n";
  return 0;
}

}  // namespace loom
