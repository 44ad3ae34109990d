#include <algorithm>
#include <iostream>

#include "base/error.h"
#include "core/checkpoint.h"
#include "core/config.h"
#include "core/loop_sampling.h"
#include "core/model.h"
#include "core/run_dir.h"
#include "core/sample.h"
#include "core/tokenizer.h"
#include "kernels/cpu/threads.h"
#include "launcher/args.h"
#include "launcher/commands.h"

namespace loom {
namespace {

constexpr const char* kHelp =
    R"(usage: loom sample CHECKPOINT|RUN_DIR [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K]
                   [--seed S] [--loops N] [--tokenizer-file FILE]

Generates text with the model saved in CHECKPOINT (a runs/.../checkpoints/step_NNNNNNN folder),
or in the newest checkpoint of the run RUN_DIR, encoding the prompt and decoding with the tokenizer the run was trained on (the run directory's
data.textproto: bytes or SentencePiece).

  --prompt TEXT       text to continue (default: start of a document)
  --tokens N          tokens to generate (default 200)
  --temperature T     softmax temperature; 0 = always the most likely token
                      (default: the run's logging.sample_temperature)
  --top-k K           sample among the K most likely tokens; 0 = all
                      (default: the run's logging.sample_top_k)
  --seed S            random seed (default 1)
  --loops N           run the looped block N times, deeper or shallower than it was trained
                      (default: the first of the run's train.eval_loops, else
                      model.loops)
  --tokenizer-file F  decode with llm.c's tokenizer file (gpt2_tokenizer.bin), for runs on
                      llm.c's shards; it cannot encode, so no --prompt
)";

// The tokenizer of the run that wrote `checkpoint` (tokenizer_of_checkpoint), or an error saying
// what to do without one.
Tokenizer tokenizer_of_run(const std::string& checkpoint, const config::RunConfig& cfg) {
  if (std::optional<Tokenizer> tok = tokenizer_of_checkpoint(checkpoint, cfg.model().vocab_size()))
    return *tok;
  throw Error("no " + std::string(kDataInfoFile) + " above " + checkpoint +
              " says how the run's tokens decode (trained on shards made elsewhere, or by an "
              "older loom prepare?): pass --tokenizer-file for llm.c's GPT-2 shards, or copy "
              "the data's data.textproto into the run directory");
}

}  // namespace

int command_sample(int argc, char** argv) {
  const Args args = parse_args("sample", argv, argc,
                               {{"--prompt", false},
                                {"--tokens", false},
                                {"--temperature", false},
                                {"--top-k", false},
                                {"--seed", false},
                                {"--loops", false},
                                {"--tokenizer-file", false}},
                               {});
  if (args.flag("--help")) {
    std::cout << kHelp;
    return 0;
  }
  if (args.positional.size() != 1)
    throw Error("expected one CHECKPOINT or RUN_DIR (see loom sample --help)");
  const long tokens = args.integer("--tokens", 200);
  if (tokens < 0 || tokens > kMaxSampleTokens)
    throw Error("--tokens must be between 0 and " + std::to_string(kMaxSampleTokens) + " (got " +
                std::to_string(tokens) + ")");
  const std::string checkpoint = checkpoint_of(args.positional[0]);
  if (checkpoint != args.positional[0]) std::cerr << "loom sample: " << checkpoint << "\n";
  const CheckpointState state = checkpoint_read_state(checkpoint);
  validate_config(state.config);
  kernels::cpu::init_threads(state.config.runtime().threads());
  const config::ModelConfig& model_cfg = state.config.model();
  const long loops = args.integer("--loops", eval_loops(state.config));
  const int least = model_cfg.input_injection() ? 2 : 1;
  if (loops < least || loops > 1000000)
    throw Error("--loops " + std::to_string(loops) + " is outside [" + std::to_string(least) +
                ", 1000000]" + (least == 2 ? " (input injection needs 2 iterations)" : ""));
  Model model = model_create(model_cfg);  // at the checkpoint's model.loops (its LoRA factors)
  checkpoint_load(checkpoint, model, nullptr);
  model_set_loop_range(model, static_cast<int>(loops), static_cast<int>(loops));
  model_plan(model, 1, state.config.train().seq_len());
  const Tokenizer tokenizer = args.has("--tokenizer-file")
                                  ? tokenizer_llmc_file(args.value("--tokenizer-file", ""))
                                  : tokenizer_of_run(checkpoint, state.config);
  if (tokenizer.vocab_size > model.spec.V)
    throw Error("the tokenizer has " + std::to_string(tokenizer.vocab_size) +
                " ids but the model only " + std::to_string(model.spec.V) +
                " (model.vocab_size): not the tokenizer this model was trained with");
  const double temperature =
      args.number("--temperature", state.config.logging().sample_temperature());
  if (!(temperature >= 0 && temperature <= 1e6))  // NaN too
    throw Error("--temperature must be a number ≥ 0 (0: always the most likely token)");
  const long top_k = args.integer("--top-k", state.config.logging().sample_top_k());
  if (top_k < 0) throw Error("--top-k must not be negative (0: all tokens)");
  Rng rng{static_cast<uint64_t>(args.integer("--seed", 1))};
  const std::string prompt = args.value("--prompt", "");
  const std::vector<int> prompt_ids = tokenizer_encode(tokenizer, prompt);
  std::vector<int> out = sample_tokens(model, prompt_ids, tokenizer.end_of_text,
                                       static_cast<int>(tokens), static_cast<float>(temperature),
                                       static_cast<int>(std::min<long>(top_k, 1 << 30)), rng);
  // Decoded together: a subword tokenizer joins the prompt's last piece and the first new one.
  out.insert(out.begin(), prompt_ids.begin(), prompt_ids.end());
  std::cout << printable_text(tokenizer_decode(tokenizer, out)) << std::endl;
  return 0;
}

}  // namespace loom
