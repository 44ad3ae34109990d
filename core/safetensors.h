// Writing and reading safetensors files: an 8-byte little-endian header length, a JSON header
// naming each tensor's dtype, shape and byte range, then the raw data. loom writes F32 and reads
// F32, BF16 and F16 (widened to float).
//
//   loom::safetensors_write("model.safetensors", {{"wte", {V, C}, wte_ptr}}, {{"format", "pt"}});
//   const loom::SafetensorsFile f = loom::safetensors_read("model.safetensors");
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

struct SafetensorsTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
};
struct SafetensorsFile {
  std::map<std::string, std::string> metadata;
  std::vector<SafetensorsTensor> tensors;  // in the order of their data
};

// Reads a safetensors file whole (F32, BF16 or F16 tensors, as floats), checking everything the
// header claims against the file (sizes, offsets inside the data, shapes matching byte ranges);
// throws loom::Error naming the file and what is wrong.
SafetensorsFile safetensors_read(const std::string& path);

}  // namespace loom
