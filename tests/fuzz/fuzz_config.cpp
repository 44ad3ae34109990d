// The config parser, --set overrides and validation: any input ends in a config or a
// loom::Error, never a crash. Input: the first line is an override, the rest a config text.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/config.h"
#include "base/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t newline = input.find('\n');
  const std::string override_line = input.substr(0, newline);
  const std::string text = newline == std::string::npos ? "" : input.substr(newline + 1);
  try {
    loom::config::RunConfig cfg = loom::parse_config_text(text, "fuzz.textproto");
    try {
      loom::apply_override(cfg, override_line);
    } catch (const loom::Error&) {
    }
    loom::validate_config(cfg);
    (void)loom::config_to_text(cfg);
  } catch (const loom::Error&) {
  }
  return 0;
}
