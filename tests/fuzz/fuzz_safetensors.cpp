// safetensors: any file given to the reader ends in tensors or a loom::Error, never a crash; and
// any tensors (names, shapes, float bit patterns) and metadata written and read back are the same
// (the writer refuses names and metadata that are not UTF-8: found by this target).
#include <fuzzer/FuzzedDataProvider.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "base/error.h"
#include "core/safetensors.h"

namespace {

const std::string& scratch_dir() {
  static const std::string dir = [] {
    char pattern[] = "/tmp/loom-fuzz-safetensors-XXXXXX";
    return std::string(mkdtemp(pattern));
  }();
  return dir;
}

void round_trip(FuzzedDataProvider& in) {
  struct Owned {
    std::string name;
    std::vector<int64_t> shape;
    std::vector<float> values;
  };
  std::vector<Owned> owned(in.ConsumeIntegralInRange<int>(0, 4));
  for (size_t i = 0; i < owned.size(); ++i) {
    owned[i].name = in.ConsumeRandomLengthString(12) + "#" + std::to_string(i);  // unique
    size_t elements = 1;
    for (int d = in.ConsumeIntegralInRange<int>(0, 3); d > 0; --d) {
      owned[i].shape.push_back(in.ConsumeIntegralInRange<int64_t>(0, 5));
      elements *= static_cast<size_t>(owned[i].shape.back());
    }
    owned[i].values.resize(elements);
    for (float& v : owned[i].values) {
      const uint32_t bits = in.ConsumeIntegral<uint32_t>();
      std::memcpy(&v, &bits, sizeof(v));
    }
  }
  std::map<std::string, std::string> metadata;
  for (int m = in.ConsumeIntegralInRange<int>(0, 2); m > 0; --m)
    metadata[in.ConsumeRandomLengthString(8)] = in.ConsumeRandomLengthString(16);
  std::vector<loom::NamedTensor> tensors;
  for (const Owned& o : owned) tensors.push_back({o.name, o.shape, o.values.data()});
  const std::string path = scratch_dir() + "/round_trip.safetensors";
  try {
    loom::safetensors_write(path, tensors, metadata);
  } catch (const loom::Error&) {
    return;  // names or metadata that are not UTF-8 are refused, as they must be
  }
  const loom::SafetensorsFile back = loom::safetensors_read(path);
  if (back.metadata != metadata || back.tensors.size() != owned.size()) __builtin_trap();
  std::map<std::string, const loom::SafetensorsTensor*> by_name;
  for (const auto& t : back.tensors) by_name[t.name] = &t;
  for (const Owned& o : owned) {
    const auto it = by_name.find(o.name);
    if (it == by_name.end() || it->second->shape != o.shape ||
        it->second->values.size() != o.values.size() ||
        (!o.values.empty() &&
         std::memcmp(it->second->values.data(), o.values.data(), o.values.size() * sizeof(float))))
      __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = scratch_dir() + "/raw.safetensors";
  if (FILE* f = std::fopen(path.c_str(), "wb")) {
    std::fwrite(data, 1, size, f);
    std::fclose(f);
  }
  try {
    (void)loom::safetensors_read(path);
  } catch (const loom::Error&) {
  }
  FuzzedDataProvider in(data, size);
  round_trip(in);
  return 0;
}
