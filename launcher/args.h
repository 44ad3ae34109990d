// Command-line parsing for the `loom` sub-commands: positionals, `--name value` options (some
// repeatable) and `--flag`s, checked against what the sub-command declares.
//
//   loom::Args args = loom::parse_args("train", argv + 2, argc - 2,
//                                      {{"--set", true}, {"--run-dir", false}}, {"--resume"});
//   args.values("--set");  args.value("--run-dir", "runs/x");  args.flag("--resume");
#pragma once
#include <map>
#include <set>
#include <string>
#include <vector>

namespace loom {

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::vector<std::string>> options;
  std::set<std::string> flags;

  bool flag(const std::string& name) const { return flags.count(name) > 0; }
  bool has(const std::string& name) const { return options.count(name) > 0; }
  std::string value(const std::string& name, const std::string& fallback) const;
  std::vector<std::string> values(const std::string& name) const;
  long integer(const std::string& name, long fallback) const;
  double number(const std::string& name, double fallback) const;
};

// `options` maps each option to whether it may repeat; `--help` is always a known flag. Throws
// loom::Error naming the offending argument (and the option probably meant); the caller says
// which command it was.
Args parse_args(const std::string& command, char** argv, int argc,
                const std::map<std::string, bool>& options, const std::set<std::string>& flags);

}  // namespace loom
