#include "core/safetensors.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace loom {
namespace {

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof(escaped), "\\u%04x", c);
      out += escaped;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

}  // namespace

void safetensors_write(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [key, value] : metadata) {
      if (!first) header += ',';
      header += json_string(key) + ":" + json_string(value);
      first = false;
    }
    header += "},";
  }
  uint64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const NamedTensor& t = tensors[i];
    uint64_t elements = 1;
    std::string shape;
    for (size_t d = 0; d < t.shape.size(); ++d) {
      elements *= static_cast<uint64_t>(t.shape[d]);
      if (d) shape += ',';
      shape += std::to_string(t.shape[d]);
    }
    const uint64_t bytes = elements * sizeof(float);
    if (i) header += ',';
    header += json_string(t.name) + ":{\"dtype\":\"F32\",\"shape\":[" + shape +
              "],\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + bytes) + "]}";
    offset += bytes;
  }
  header += "}";
  // The data section starts 8-byte aligned, as the format recommends.
  while ((header.size() % 8) != 0) header += ' ';

  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error("cannot write " + tmp + ": " + std::strerror(errno));
    const uint64_t header_size = header.size();
    out.write(reinterpret_cast<const char*>(&header_size), sizeof(header_size));
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    for (const NamedTensor& t : tensors) {
      uint64_t elements = 1;
      for (int64_t d : t.shape) elements *= static_cast<uint64_t>(d);
      out.write(reinterpret_cast<const char*>(t.data),
                static_cast<std::streamsize>(elements * sizeof(float)));
    }
    if (!out.flush()) {
      const int error = errno;
      out.close();
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      throw Error("cannot write " + tmp + ": " + std::strerror(error));
    }
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace loom
