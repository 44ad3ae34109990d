#include <iostream>

#include "core/data.h"
#include "core/error.h"
#include "launcher/args.h"
#include "launcher/commands.h"

namespace loom {
namespace {

constexpr const char* kHelp = R"(usage: loom prepare --input PATH... --output DIR [--val-fraction F] [--ext .py]...
                    [--shard-tokens N]

Turns text files into token shards (llm.c .bin layout, byte-level tokens 0..255 plus
end-of-text 256 after every document): DIR/train_NNNNNN.bin and DIR/val_NNNNNN.bin.

  --input PATH...     files, or directories read recursively (--input may also repeat)
  --output DIR        where the shards go (created)
  --val-fraction F    share of documents held out for validation (default 0.05)
  --ext SUFFIX        keep only files whose names end in SUFFIX (repeatable; default: all)
  --shard-tokens N    start a new shard after about N tokens (default 100000000)
)";

}  // namespace

int command_prepare(int argc, char** argv) {
  const Args args = parse_args("prepare", argv, argc,
                               {{"--input", true}, {"--output", false}, {"--val-fraction", false},
                                {"--ext", true}, {"--shard-tokens", false}},
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
  const PrepareResult r =
      prepare_text(inputs, args.values("--ext"), args.value("--output", ""),
                   args.number("--val-fraction", 0.05), args.integer("--shard-tokens", 100000000));
  std::cout << "prepared " << r.documents << " documents: " << r.train_tokens << " training tokens in "
            << r.train_shards << " shard(s), " << r.val_tokens << " validation tokens in "
            << r.val_shards << " shard(s) under " << args.value("--output", "") << "\n";
  return 0;
}

}  // namespace loom
