#include "launcher/args.h"

#include <cerrno>
#include <climits>
#include <cstdlib>

#include "base/error.h"
#include "base/names.h"

namespace loom {

std::string Args::value(const std::string& name, const std::string& fallback) const {
  auto it = options.find(name);
  return it == options.end() ? fallback : it->second.back();
}

std::vector<std::string> Args::values(const std::string& name) const {
  auto it = options.find(name);
  return it == options.end() ? std::vector<std::string>{} : it->second;
}

long Args::integer(const std::string& name, long fallback) const {
  if (!has(name)) return fallback;
  const std::string text = value(name, "");
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0') throw Error(name + " takes a whole number, got \"" + text + "\"");
  if (errno == ERANGE || v > INT_MAX || v < INT_MIN)
    throw Error(name + " " + text + " is out of range");
  return v;
}

double Args::number(const std::string& name, double fallback) const {
  if (!has(name)) return fallback;
  const std::string text = value(name, "");
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0') throw Error(name + " takes a number, got \"" + text + "\"");
  return v;
}

Args parse_args(const std::string& command, char** argv, int argc,
                const std::map<std::string, bool>& options, const std::set<std::string>& flags) {
  Args args;
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0 || arg == "--") {
      args.positional.push_back(arg);
      continue;
    }
    std::string inline_value;
    bool has_inline = false;
    if (size_t eq = arg.find('='); eq != std::string::npos && !options.count(arg)) {
      inline_value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_inline = true;
    }
    if (arg == "--help" || flags.count(arg)) {
      if (has_inline) throw Error(arg + " takes no value");
      args.flags.insert(arg);
      continue;
    }
    auto known = options.find(arg);
    if (known == options.end()) {
      std::vector<std::string> names(flags.begin(), flags.end());
      for (const auto& [name, repeats] : options)
        if (!name.starts_with("--restart")) names.push_back(name);  // loom's own, not a user's
      const std::string guess = closest_name(arg, names);
      throw Error("unknown option " + arg +
                  (guess.empty() ? "" : " (did you mean " + guess + "?)") + "; see loom " +
                  command + " --help");
    }
    if (!has_inline && i + 1 >= argc) throw Error(arg + " needs a value");
    const std::string value = has_inline ? inline_value : argv[++i];
    // `--set train.steps 2`: the shell form of another tool; loom's is one word.
    if (arg == "--set" && value.find('=') == std::string::npos && !has_inline && i + 1 < argc &&
        std::string(argv[i + 1]).rfind("--", 0) != 0)
      throw Error("--set " + value + " " + argv[i + 1] +
                  ": the field and its value are one argument joined by \"=\": --set " + value +
                  "=" + argv[i + 1]);
    if (!known->second && args.options.count(arg)) throw Error(arg + " given twice");
    args.options[arg].push_back(value);
  }
  return args;
}

}  // namespace loom
