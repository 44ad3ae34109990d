#include <filesystem>
#include <iostream>

#include "core/checkpoint.h"
#include "core/config.h"
#include "core/data.h"
#include "core/model.h"
#include "core/sample.h"
#include "core/tokenizer.h"
#include "kernels/cpu/threads.h"
#include "core/error.h"
#include "launcher/args.h"
#include "launcher/commands.h"

namespace loom {
namespace {

constexpr const char* kHelp = R"(usage: loom sample CHECKPOINT [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K]
                   [--seed S] [--tokenizer-file FILE]

Generates text with the model saved in CHECKPOINT (a runs/.../checkpoints/step_NNNNNNN folder),
encoding the prompt and decoding with the tokenizer the run was trained on (the run directory's
data.textproto: bytes or SentencePiece).

  --prompt TEXT       text to continue (default: start of a document)
  --tokens N          tokens to generate (default 200)
  --temperature T     softmax temperature; 0 = always the most likely token
                      (default: the run's logging.sample_temperature)
  --top-k K           sample among the K most likely tokens; 0 = all
                      (default: the run's logging.sample_top_k)
  --seed S            random seed (default 1)
  --tokenizer-file F  decode with llm.c's tokenizer file (gpt2_tokenizer.bin), for runs on
                      llm.c's shards; it cannot encode, so no --prompt
)";

// The tokenizer of the run that wrote `checkpoint` (RUN/checkpoints/step_N): RUN/data.textproto,
// or bytes for a byte-sized model without one.
Tokenizer tokenizer_of_run(const std::string& checkpoint, const config::RunConfig& cfg) {
  namespace fs = std::filesystem;
  const fs::path run_dir = fs::absolute(checkpoint).lexically_normal().parent_path().parent_path();
  const fs::path info = run_dir / kDataInfoFile;
  std::error_code ec;
  if (fs::exists(info, ec)) return tokenizer_from_info(data_info_read(info.string()), run_dir.string());
  if (cfg.model().vocab_size() == kEndOfText + 1) return tokenizer_bytes();
  throw Error("the run " + run_dir.string() + " has no " + kDataInfoFile +
              " saying how its tokens decode (trained on shards made elsewhere?): pass "
              "--tokenizer-file, e.g. llm.c's gpt2_tokenizer.bin");
}

}  // namespace

int command_sample(int argc, char** argv) {
  const Args args = parse_args("sample", argv, argc,
                               {{"--prompt", false}, {"--tokens", false}, {"--temperature", false},
                                {"--top-k", false}, {"--seed", false}, {"--tokenizer-file", false}},
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
  const Tokenizer tokenizer = args.has("--tokenizer-file")
                                  ? tokenizer_llmc_file(args.value("--tokenizer-file", ""))
                                  : tokenizer_of_run(args.positional[0], state.config);
  if (tokenizer.vocab_size > model.V)
    throw Error("the tokenizer has " + std::to_string(tokenizer.vocab_size) +
                " ids but the model only " + std::to_string(model.V) +
                " (model.vocab_size): not the tokenizer this model was trained with");
  Rng rng{static_cast<uint64_t>(args.integer("--seed", 1))};
  const std::string prompt = args.value("--prompt", "");
  const std::vector<int> out =
      sample_tokens(model, tokenizer_encode(tokenizer, prompt), tokenizer.end_of_text,
                    static_cast<int>(tokens),
                    static_cast<float>(args.number("--temperature",
                                                   state.config.logging().sample_temperature())),
                    static_cast<int>(args.integer("--top-k", state.config.logging().sample_top_k())),
                    rng);
  std::cout << prompt << tokenizer_decode(tokenizer, out) << std::endl;
  return 0;
}

}  // namespace loom
