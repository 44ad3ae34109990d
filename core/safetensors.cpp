#include "core/safetensors.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <algorithm>
#include <cmath>

#include "base/error.h"
#include "base/json_text.h"

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

namespace loom {
namespace {

// Whether s is well-formed UTF-8 (no overlong forms, surrogates or code points past U+10FFFF),
// as JSON requires.
bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const int extra = c < 0x80 ? 0 : (c >> 5) == 0x6 ? 1 : (c >> 4) == 0xE ? 2 : (c >> 3) == 0x1E ? 3 : -1;
    if (extra < 0 || i + extra >= s.size() + (extra == 0 ? 1 : 0)) return false;
    uint32_t code = extra == 0 ? c : c & (0x3F >> extra);
    for (int k = 1; k <= extra; ++k) {
      const unsigned char next = static_cast<unsigned char>(s[i + k]);
      if ((next >> 6) != 0x2) return false;
      code = (code << 6) | (next & 0x3F);
    }
    static constexpr uint32_t kLeast[] = {0, 0x80, 0x800, 0x10000};
    if (code < kLeast[extra] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return false;
    i += 1 + extra;
  }
  return true;
}

std::string json_string(const std::string& s) {
  if (!valid_utf8(s))
    throw Error("safetensors: \"" + s.substr(0, 40) +
                "\" (a tensor name or metadata) is not valid UTF-8, which the format's JSON header "
                "needs");
  return json_quote(s);
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

namespace {

// A JSON number that is a whole count in [0, limit].
uint64_t whole_number(const google::protobuf::Value& v, double limit, const std::string& what) {
  if (v.kind_case() != google::protobuf::Value::kNumberValue || !(v.number_value() >= 0) ||
      v.number_value() > limit || std::floor(v.number_value()) != v.number_value())
    throw Error(what + " is not a whole number in [0, " + std::to_string(limit) + "]");
  return static_cast<uint64_t>(v.number_value());
}

// IEEE half → float (subnormals, infinities and NaN included).
float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const int exponent = (h >> 10) & 0x1F;
  uint32_t mantissa = h & 0x3FF;
  uint32_t bits;
  if (exponent == 0x1F) {
    bits = sign | 0x7F800000 | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | (static_cast<uint32_t>(exponent + 127 - 15) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    int shift = 0;
    while ((mantissa & 0x400) == 0) {
      mantissa <<= 1;
      ++shift;
    }
    bits = sign | (static_cast<uint32_t>(127 - 15 + 1 - shift) << 23) | ((mantissa & 0x3FF) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Bytes per element of a dtype loom reads (widened to float), 0 for any other.
size_t element_bytes(const std::string& dtype) {
  return dtype == "F32" ? 4 : (dtype == "BF16" || dtype == "F16") ? 2 : 0;
}

// values (n) ← the n elements at `raw` of `dtype` (F32, BF16 or F16), widened to float.
void widen(float* values, const char* raw, size_t n, const std::string& dtype) {
  if (n == 0) return;  // values may be null (an empty vector's data())
  if (dtype == "F32") {
    std::memcpy(values, raw, n * sizeof(float));
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, raw + 2 * i, sizeof(h));
    if (dtype == "BF16") {
      const uint32_t bits = static_cast<uint32_t>(h) << 16;
      std::memcpy(values + i, &bits, sizeof(float));
    } else {
      values[i] = half_to_float(h);
    }
  }
}

}  // namespace

SafetensorsFile safetensors_read(const std::string& path) {
  using google::protobuf::Value;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + path + ": " + std::strerror(errno));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string where = "safetensors file " + path + ": ";
  uint64_t header_size = 0;
  if (bytes.size() < sizeof(header_size)) throw Error(where + "shorter than its 8-byte header size");
  std::memcpy(&header_size, bytes.data(), sizeof(header_size));
  if (header_size > bytes.size() - sizeof(header_size))
    throw Error(where + "its header claims " + std::to_string(header_size) + " bytes, more than the file has");
  google::protobuf::Struct header;
  if (!google::protobuf::util::JsonStringToMessage(bytes.substr(sizeof(header_size), header_size),
                                                   &header)
           .ok())
    throw Error(where + "its header is not a JSON object");
  const size_t data_begin = sizeof(header_size) + header_size;
  const uint64_t data_size = bytes.size() - data_begin;
  SafetensorsFile file;
  std::vector<std::pair<uint64_t, SafetensorsTensor>> found;
  for (const auto& [name, entry] : header.fields()) {
    const std::string what = where + "\"" + name + "\"";
    if (entry.kind_case() != Value::kStructValue) throw Error(what + " is not an object");
    const auto& fields = entry.struct_value().fields();
    if (name == "__metadata__") {
      for (const auto& [key, value] : fields) {
        if (value.kind_case() != Value::kStringValue)
          throw Error(what + "." + key + " is not a string");
        file.metadata[key] = value.string_value();
      }
      continue;
    }
    const auto dtype = fields.find("dtype"), shape = fields.find("shape"),
               offsets = fields.find("data_offsets");
    if (dtype == fields.end() || shape == fields.end() || offsets == fields.end())
      throw Error(what + " lacks dtype, shape or data_offsets");
    const std::string type = dtype->second.string_value();
    const size_t size = element_bytes(type);
    if (size == 0) throw Error(what + " has dtype " + type + "; loom reads F32, BF16 and F16");
    if (shape->second.kind_case() != Value::kListValue ||
        offsets->second.kind_case() != Value::kListValue ||
        offsets->second.list_value().values_size() != 2)
      throw Error(what + ": shape must be a list and data_offsets a list of two numbers");
    SafetensorsTensor t;
    t.name = name;
    uint64_t elements = 1;
    for (const Value& d : shape->second.list_value().values()) {
      const uint64_t dim = whole_number(d, 1e12, what + " shape dimension");
      elements = dim == 0 ? 0 : elements;
      if (dim > 0 && elements > (uint64_t{1} << 40) / dim)
        throw Error(what + " has more elements than any file can hold");
      elements *= dim;
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    const uint64_t begin = whole_number(offsets->second.list_value().values(0), 1e15, what + " data_offsets[0]");
    const uint64_t end = whole_number(offsets->second.list_value().values(1), 1e15, what + " data_offsets[1]");
    if (begin > end || end > data_size)
      throw Error(what + " has data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                  "] outside the " + std::to_string(data_size) + " bytes of data");
    if (end - begin != elements * size)
      throw Error(what + ": its shape holds " + std::to_string(elements) + " " + type +
                  " elements but its data " + std::to_string(end - begin) + " bytes");
    t.values.resize(elements);
    widen(t.values.data(), bytes.data() + data_begin + begin, elements, type);
    found.emplace_back(begin, std::move(t));
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first < b.first : a.second.name < b.second.name;
  });
  for (auto& [begin, t] : found) file.tensors.push_back(std::move(t));
  return file;
}

}  // namespace loom
