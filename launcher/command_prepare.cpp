#include <algorithm>
#include <filesystem>
#include <iostream>

#include "base/error.h"
#include "core/data.h"
#include "core/run_dir.h"
#include "launcher/args.h"
#include "launcher/commands.h"

namespace loom {
namespace {

constexpr const char* kHelp = R"(usage: loom prepare --input PATH... --output DIR [--val-fraction F] [--ext .py]...
                    [--shard-tokens N] [--tokenizer bytes|sentencepiece] [--vocab-size N]
                    [--model-type bpe|unigram] [--tokenizer-model FILE]

Turns text files into token shards (llm.c's .bin layout, uint16 ids, an end-of-text id after
every document): DIR/train_NNNNNN.bin and DIR/val_NNNNNN.bin, with DIR/data.textproto saying
what they hold (tokenizer, vocabulary size, end-of-text id, tokens and bytes per split).
Byte-level by default (ids 0..255 are bytes, 256 is end-of-text). With --tokenizer
sentencepiece a SentencePiece model is trained on the training documents (or --tokenizer-model
is used) and stored as DIR/tokenizer.model; decoding gives the text back exactly.

  --input PATH...     files, or directories read recursively (--input may also repeat)
  --output DIR        where the shards go (created)
  --val-fraction F    share of documents held out for validation (default 0.05)
  --ext SUFFIX        keep only files whose names end in SUFFIX (repeatable; default: all)
  --shard-tokens N    start a new shard after about N tokens (default 100000000)
  --tokenizer KIND    bytes (default) or sentencepiece
  --vocab-size N      sentencepiece: pieces of the trained model (default 8192, at most 65536)
  --model-type T      sentencepiece: bpe (default) or unigram
  --tokenizer-model F sentencepiece: use this .model file instead of training one
)";

}  // namespace

int command_prepare(int argc, char** argv) {
  const Args args = parse_args("prepare", argv, argc,
                               {{"--input", true}, {"--output", false}, {"--val-fraction", false},
                                {"--ext", true}, {"--shard-tokens", false}, {"--tokenizer", false},
                                {"--vocab-size", false}, {"--model-type", false},
                                {"--tokenizer-model", false}},
                               {});
  if (args.flag("--help")) {
    std::cout << kHelp;
    return 0;
  }
  if (!args.has("--input") || !args.has("--output"))
    throw Error("--input and --output are required (see loom prepare --help)");
  // `--input a b c`: the paths after the first one arrive as positionals.
  std::vector<std::string> inputs = args.values("--input");
  inputs.insert(inputs.end(), args.positional.begin(), args.positional.end());
  PrepareOptions options;
  options.inputs = inputs;
  options.extensions = args.values("--ext");
  options.output_dir = args.value("--output", "");
  // Shards written among the sources would be read back as text by the next prepare.
  auto resolved = [](const std::string& path) {  // symlinks followed, no trailing separator
    const std::filesystem::path p = std::filesystem::weakly_canonical(path);
    return p.has_filename() ? p : p.parent_path();
  };
  const std::filesystem::path out = resolved(options.output_dir);
  for (const std::string& input : inputs) {
    const std::filesystem::path in = resolved(input);
    const auto end = std::mismatch(in.begin(), in.end(), out.begin(), out.end()).first;
    if (end == in.end())
      throw Error("--output " + options.output_dir + (in == out ? " is" : " lies inside") +
                  " --input " + input +
                  ": the shards would land among the sources; write "
                  "them elsewhere");
  }
  options.val_fraction = args.number("--val-fraction", 0.05);
  options.shard_tokens = args.integer("--shard-tokens", 100000000);
  const std::string kind = args.value("--tokenizer", "bytes");
  if (kind == "sentencepiece")
    options.tokenizer = config::DataInfo::SENTENCEPIECE;
  else if (kind != "bytes")
    throw Error("--tokenizer must be bytes or sentencepiece, got \"" + kind + "\"");
  const bool sentencepiece = options.tokenizer == config::DataInfo::SENTENCEPIECE;
  for (const char* flag : {"--vocab-size", "--model-type", "--tokenizer-model"})
    if (args.has(flag) && !sentencepiece)
      throw Error(std::string(flag) + " applies to --tokenizer sentencepiece only");
  if (args.has("--tokenizer-model") && (args.has("--vocab-size") || args.has("--model-type")))
    throw Error("--tokenizer-model uses a trained model: --vocab-size and --model-type do not apply");
  const long vocab = args.integer("--vocab-size", 8192);
  if (vocab < 1 || vocab > kMaxShardVocabulary)
    throw Error("--vocab-size " + std::to_string(vocab) + " is out of range: shards store uint16 "
                "ids, so at most " + std::to_string(kMaxShardVocabulary));
  options.vocab_size = static_cast<int>(vocab);
  options.model_type = args.value("--model-type", "bpe");
  options.tokenizer_model = args.value("--tokenizer-model", "");
  const PrepareResult r = prepare_text(options);
  std::cout << "prepared " << counted(r.documents, "document") << ": " << r.train_tokens
            << " training tokens in " << counted(r.train_shards, "shard") << ", " << r.val_tokens
            << " validation tokens in " << counted(r.val_shards, "shard") << " under "
            << options.output_dir << " (" << (sentencepiece ? "SentencePiece" : "bytes")
            << ", vocabulary " << r.vocab_size << ", end-of-text " << r.end_of_text << ", "
            << static_cast<double>(r.train_bytes) / r.train_tokens << " bytes per token)\n";
  return 0;
}

}  // namespace loom
