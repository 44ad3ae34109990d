#include "launcher/args.h"

#include <cerrno>
#include <climits>
#include <cstdlib>

#include "base/error.h"

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
  const std::string where = "loom " + command + ": ";
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
      if (has_inline) throw Error(where + arg + " takes no value");
      args.flags.insert(arg);
      continue;
    }
    auto known = options.find(arg);
    if (known == options.end())
      throw Error(where + "unknown option " + arg + " (see loom " + command + " --help)");
    if (!has_inline && i + 1 >= argc) throw Error(where + arg + " needs a value");
    const std::string value = has_inline ? inline_value : argv[++i];
    if (!known->second && args.options.count(arg))
      throw Error(where + arg + " given twice");
    args.options[arg].push_back(value);
  }
  return args;
}

}  // namespace loom
