// Writing safetensors files: an 8-byte little-endian header length, a JSON header naming each
// tensor's dtype, shape and byte range, then the raw data. loom writes F32 only.
//
//   loom::safetensors_write("model.safetensors", {{"wte", {V, C}, wte_ptr}}, {{"format", "pt"}});
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace loom {

struct NamedTensor {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;
};

// Writes to a temporary name and renames, so a reader never sees a partial file.
void safetensors_write(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata);

}  // namespace loom
