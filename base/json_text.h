// A string as a JSON string literal: quotes, backslashes and control characters escaped (the
// bytes are otherwise copied, so UTF-8 text stays UTF-8). Header-only: loom_parallel's flight
// recorder and loom_core's safetensors writer both write JSON by hand.
//
//   out += loom::json_quote(name);   // "block.0.attn.qkv.weight"
#pragma once
#include <cstdio>
#include <string>
#include <string_view>

namespace loom {

inline std::string json_quote(std::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char code[8];
      std::snprintf(code, sizeof(code), "\\u%04x", c);
      out += code;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

}  // namespace loom
