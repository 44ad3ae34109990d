#include "core/tokenizer.h"

#include <dlfcn.h>
#include <google/protobuf/text_format.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "base/error.h"
#include "base/regular_file.h"
#include "core/data.h"

namespace loom {
namespace {

namespace fs = std::filesystem;

constexpr uint32_t kLlmcTokenizerMagic = 20240328;
constexpr const char* kEndOfTextLine = "\n<|endoftext|>\n";

// The functions of core/sentencepiece_module.cpp.
struct SentencePieceApi {
  bool (*train)(const std::vector<std::string>*, const std::unordered_map<std::string, std::string>*,
                std::string*, std::string*);
  void* (*load)(const std::string*, std::string*);
  void (*free)(void*);
  int (*pieces)(const void*);
  int (*eos)(const void*);
  bool (*encode)(const void*, const std::string*, std::vector<int>*, std::string*);
  bool (*decode)(const void*, const std::vector<int>*, std::string*, std::string*);
};

// The module, open while any model (or a training) uses it.
struct SentencePieceLibrary {
  void* handle = nullptr;
  SentencePieceApi api{};
  SentencePieceLibrary() {
    // RTLD_DEEPBIND: the library's symbols (its own protobuf among them) before the process's.
    // Where the build put it; else beside the running program (a copied build folder).
    std::error_code ec;
    const fs::path exe_dir = fs::read_symlink("/proc/self/exe", ec).parent_path();
    std::string tried;
    for (const fs::path& path : {fs::path(LOOM_SENTENCEPIECE_MODULE),
                                 exe_dir / "core" / "libloom_sentencepiece.so",
                                 exe_dir / "libloom_sentencepiece.so"}) {
      handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
      if (handle) break;
      tried += std::string(tried.empty() ? "" : "; ") + dlerror();
    }
    if (!handle)
      throw Error("cannot load loom's SentencePiece module libloom_sentencepiece.so (rebuild "
                  "loom: ./run.sh --setup-only): " + tried);
    auto find = [&](const char* name) {
      void* symbol = dlsym(handle, name);
      if (!symbol) throw Error(std::string("the SentencePiece module lacks ") + name);
      return symbol;
    };
    api.train = reinterpret_cast<decltype(api.train)>(find("loom_spm_train"));
    api.load = reinterpret_cast<decltype(api.load)>(find("loom_spm_load"));
    api.free = reinterpret_cast<decltype(api.free)>(find("loom_spm_free"));
    api.pieces = reinterpret_cast<decltype(api.pieces)>(find("loom_spm_pieces"));
    api.eos = reinterpret_cast<decltype(api.eos)>(find("loom_spm_eos"));
    api.encode = reinterpret_cast<decltype(api.encode)>(find("loom_spm_encode"));
    api.decode = reinterpret_cast<decltype(api.decode)>(find("loom_spm_decode"));
  }
  ~SentencePieceLibrary() {
    if (handle) dlclose(handle);
  }
  SentencePieceLibrary(const SentencePieceLibrary&) = delete;
  SentencePieceLibrary& operator=(const SentencePieceLibrary&) = delete;
};

std::string read_file(const std::string& path, const char* what) {
  return read_regular_file(path, size_t{256} << 20, what);
}

}  // namespace

// A loaded SentencePiece model; the module stays open as long as the model lives.
struct SentencePieceModel {
  std::shared_ptr<SentencePieceLibrary> library;
  void* processor = nullptr;
  ~SentencePieceModel() {
    if (processor) library->api.free(processor);
  }
};

Tokenizer tokenizer_bytes() { return {}; }

Tokenizer tokenizer_sentencepiece(const std::string& model_path) {
  ::close(
      open_regular_file(model_path, "SentencePiece model"));  // SentencePiece would hang on a FIFO
  auto sp = std::make_shared<SentencePieceModel>();
  sp->library = std::make_shared<SentencePieceLibrary>();
  std::string error;
  sp->processor = sp->library->api.load(&model_path, &error);
  if (!sp->processor)
    throw Error("cannot load the SentencePiece model " + model_path + ": " + error);
  Tokenizer tok;
  tok.kind = Tokenizer::Kind::kSentencePiece;
  tok.vocab_size = sp->library->api.pieces(sp->processor);
  tok.end_of_text = sp->library->api.eos(sp->processor);
  if (tok.end_of_text < 0)
    throw Error("the SentencePiece model " + model_path +
                " has no end-of-sentence piece to mark the end of a document");
  tok.source = model_path;
  tok.sentencepiece = std::move(sp);
  return tok;
}

Tokenizer tokenizer_llmc_file(const std::string& path) {
  const std::string bytes = read_file(path, "the llm.c tokenizer file");
  auto fail = [&](const std::string& what) {
    return Error("llm.c tokenizer file " + path + ": " + what);
  };
  if (bytes.size() < 256 * sizeof(uint32_t)) throw fail("shorter than its 1024-byte header");
  uint32_t header[256];
  std::memcpy(header, bytes.data(), sizeof(header));
  if (header[0] != kLlmcTokenizerMagic)
    throw fail("magic " + std::to_string(header[0]) + ", expected " +
               std::to_string(kLlmcTokenizerMagic) + " (not a gpt2_tokenizer.bin?)");
  if (header[1] != 1 && header[1] != 2)
    throw fail("version " + std::to_string(header[1]) + ", expected 1 or 2");
  Tokenizer tok;
  tok.kind = Tokenizer::Kind::kLlmcFile;
  tok.source = path;
  tok.vocab_size = static_cast<int>(header[2]);
  // Version 1 files are GPT-2's and name no end-of-text: it is GPT-2's last id.
  tok.end_of_text = header[1] == 2 ? static_cast<int>(header[3]) : 50256;
  if (tok.vocab_size <= 0 || tok.end_of_text < 0 || tok.end_of_text >= tok.vocab_size)
    throw fail("vocabulary " + std::to_string(tok.vocab_size) + " with end-of-text " +
               std::to_string(tok.end_of_text));
  // Each token takes at least 2 bytes (its length and one byte): a corrupt count fails here, not
  // in an allocation.
  if (static_cast<size_t>(tok.vocab_size) * 2 > bytes.size() - sizeof(header))
    throw fail("the header promises " + std::to_string(tok.vocab_size) + " tokens but " +
               std::to_string(bytes.size() - sizeof(header)) + " bytes follow it");
  size_t at = sizeof(header);
  tok.token_bytes.reserve(tok.vocab_size);
  for (int i = 0; i < tok.vocab_size; ++i) {
    if (at >= bytes.size()) throw fail("ends at token " + std::to_string(i));
    const size_t length = static_cast<unsigned char>(bytes[at++]);
    if (length == 0 || at + length > bytes.size())
      throw fail("token " + std::to_string(i) + " has a bad length " + std::to_string(length));
    tok.token_bytes.emplace_back(bytes, at, length);
    at += length;
  }
  return tok;
}

Tokenizer tokenizer_from_info(const config::DataInfo& info, const std::string& dir) {
  switch (info.tokenizer()) {
    case config::DataInfo::BYTES:
      return tokenizer_bytes();
    case config::DataInfo::SENTENCEPIECE:
      return tokenizer_sentencepiece((fs::path(dir) / info.tokenizer_file()).string());
  }
  throw Error("unknown tokenizer in " + (fs::path(dir) / kDataInfoFile).string());
}

std::optional<Tokenizer> tokenizer_for_run(const std::optional<config::DataInfo>& info,
                                           const std::string& dir, int model_vocab_size) {
  if (info) return tokenizer_from_info(*info, dir);
  if (model_vocab_size == tokenizer_bytes().vocab_size) return tokenizer_bytes();
  return std::nullopt;
}

std::vector<int> tokenizer_encode(const Tokenizer& tok, const std::string& text) {
  if (text.empty()) return {};
  switch (tok.kind) {
    case Tokenizer::Kind::kBytes:
      return std::vector<int>(reinterpret_cast<const unsigned char*>(text.data()),
                              reinterpret_cast<const unsigned char*>(text.data()) + text.size());
    case Tokenizer::Kind::kSentencePiece: {
      std::vector<int> ids;
      std::string error;
      const SentencePieceModel& sp = *tok.sentencepiece;
      if (!sp.library->api.encode(sp.processor, &text, &ids, &error))
        throw Error("SentencePiece cannot encode the text: " + error);
      return ids;
    }
    case Tokenizer::Kind::kLlmcFile:
      break;
  }
  throw Error("llm.c's tokenizer file " + tok.source +
              " holds no merges and cannot encode text: sample without a prompt");
}

std::string tokenizer_decode(const Tokenizer& tok, const std::vector<int>& ids) {
  std::string out;
  std::vector<int> piece;  // SentencePiece decodes runs between end-of-text ids whole
  auto flush = [&] {
    if (piece.empty()) return;
    std::string text, error;
    const SentencePieceModel& sp = *tok.sentencepiece;
    if (!sp.library->api.decode(sp.processor, &piece, &text, &error))
      throw Error("SentencePiece cannot decode: " + error);
    out += text;
    piece.clear();
  };
  for (int id : ids) {
    // A model's vocabulary may be padded past the tokenizer's: such ids have no text.
    if (id < 0 || id >= tok.vocab_size) {
      flush();
      out += "<|" + std::to_string(id) + "|>";
      continue;
    }
    if (id == tok.end_of_text) {
      flush();
      out += kEndOfTextLine;
      continue;
    }
    switch (tok.kind) {
      case Tokenizer::Kind::kBytes:
        out += static_cast<char>(id);
        break;
      case Tokenizer::Kind::kSentencePiece:
        piece.push_back(id);
        break;
      case Tokenizer::Kind::kLlmcFile:
        out += tok.token_bytes[id];
        break;
    }
  }
  flush();
  return out;
}

int64_t tokenizer_text_bytes(const Tokenizer& tok, const std::vector<int>& ids) {
  int64_t bytes = 0;
  std::vector<int> run;  // decoded whole: a subword tokenizer's pieces join
  const auto flush = [&] {
    bytes += static_cast<int64_t>(tokenizer_decode(tok, run).size());
    run.clear();
  };
  for (const int id : ids) {
    if (id == tok.end_of_text) {
      flush();
      ++bytes;
    } else if (id >= 0 && id < tok.vocab_size) {
      run.push_back(id);
    }
  }
  flush();
  return bytes;
}

std::string sentencepiece_train(const std::vector<std::string>& lines, int vocab_size,
                                const std::string& model_type) {
  // The vocabulary holds SentencePiece's 3 meta pieces (unknown, begin, end), the 256 byte pieces
  // of byte fallback and every character of the text (character_coverage 1.0); fewer is an
  // internal assertion of SentencePiece's.
  std::unordered_set<uint32_t> characters;
  for (const std::string& line : lines)
    for (size_t i = 0; i < line.size();) {
      const unsigned char lead = static_cast<unsigned char>(line[i]);
      const size_t length = lead < 0x80 ? 1 : lead < 0xe0 ? 2 : lead < 0xf0 ? 3 : 4;
      uint32_t code = 0;
      for (size_t k = 0; k < length && i + k < line.size(); ++k)
        code = code << 8 | static_cast<unsigned char>(line[i + k]);
      characters.insert(code);
      i += length;
    }
  const size_t needed = characters.size() + 3 + 256;
  if (static_cast<size_t>(vocab_size) < needed)
    throw Error("--vocab-size " + std::to_string(vocab_size) +
                " is too small for SentencePiece "
                "on this text: its " +
                std::to_string(characters.size()) + " distinct characters, " +
                "256 byte pieces and 3 special pieces need at least " + std::to_string(needed) +
                " (loom prepare --vocab-size " + std::to_string(needed) + " or more)");
  // Decoding must give the text back byte for byte: no normalisation, whitespace kept as it is,
  // and characters outside the vocabulary as byte pieces instead of <unk>.
  const std::unordered_map<std::string, std::string> options = {
      {"vocab_size", std::to_string(vocab_size)},
      {"model_type", model_type},
      {"byte_fallback", "true"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"split_digits", "true"},
      {"character_coverage", "1.0"},
      {"input_sentence_size", "1000000"},
      {"shuffle_input_sentence", "true"},
      {"max_sentence_length", "16384"},
      {"num_threads", "2"},
      {"minloglevel", "2"},
  };
  const SentencePieceLibrary library;
  std::string model, error;
  if (!library.api.train(&lines, &options, &model, &error))
    throw Error("SentencePiece training (" + model_type + ", vocabulary " +
                std::to_string(vocab_size) + ") failed: " + error);
  return model;
}

void data_info_write(const std::string& path, const config::DataInfo& info) {
  std::string text;
  google::protobuf::TextFormat::PrintToString(info, &text);
  const std::string temporary = path + ".tmp";
  {
    std::ofstream out(temporary, std::ios::trunc);
    out << "# What the shards beside this file hold (configs/loom.proto, DataInfo).\n" << text;
    if (!out.flush()) throw Error("cannot write " + temporary);
  }
  std::error_code ec;
  fs::rename(temporary, path, ec);
  if (ec) throw Error("cannot write " + path + ": " + ec.message());
}

config::DataInfo data_info_read(const std::string& path) {
  config::DataInfo info;
  if (!google::protobuf::TextFormat::ParseFromString(read_file(path, "the data description"),
                                                     &info))
    throw Error(path + " is not a valid DataInfo (configs/loom.proto)");
  data_info_check(info, path);
  return info;
}

std::optional<config::DataInfo> data_info_for_shards(const std::string& pattern,
                                                     std::string* dir) {
  const fs::path folder = fs::path(pattern).parent_path();
  const fs::path file = folder / kDataInfoFile;
  std::error_code ec;
  if (!fs::exists(file, ec)) return std::nullopt;
  if (dir) *dir = folder.string();
  return data_info_read(file.string());
}

bool data_info_same_tokens(const config::DataInfo& a, const std::string& a_dir,
                           const config::DataInfo& b, const std::string& b_dir) {
  if (a.tokenizer() != b.tokenizer() || a.vocab_size() != b.vocab_size() ||
      a.end_of_text() != b.end_of_text() || a.tokenizer_file().empty() != b.tokenizer_file().empty())
    return false;
  if (a.tokenizer_file().empty()) return true;
  return read_file((fs::path(a_dir) / a.tokenizer_file()).string(), "the tokenizer") ==
         read_file((fs::path(b_dir) / b.tokenizer_file()).string(), "the tokenizer");
}

void data_info_copy(const config::DataInfo& info, const std::string& from_dir,
                    const std::string& to_dir) {
  data_info_write((fs::path(to_dir) / kDataInfoFile).string(), info);
  if (info.tokenizer_file().empty()) return;
  std::error_code ec;
  fs::copy_file(fs::path(from_dir) / info.tokenizer_file(), fs::path(to_dir) / info.tokenizer_file(),
                fs::copy_options::overwrite_existing, ec);
  if (ec)
    throw Error("cannot copy the tokenizer " + (fs::path(from_dir) / info.tokenizer_file()).string() +
                " into the run directory " + to_dir + ": " + ec.message());
}

std::string data_info_dir_of_checkpoint(const std::string& checkpoint) {
  fs::path dir = fs::absolute(checkpoint).lexically_normal();
  if (!dir.has_filename()) dir = dir.parent_path();  // a trailing '/'
  for (int up = 0; up < 4 && dir.has_relative_path(); ++up) {
    std::error_code ec;
    if (fs::exists(dir / kDataInfoFile, ec)) return dir.string();
    dir = dir.parent_path();
  }
  return "";
}

std::optional<Tokenizer> tokenizer_of_checkpoint(const std::string& checkpoint,
                                                 int model_vocab_size) {
  const std::string dir = data_info_dir_of_checkpoint(checkpoint);
  std::optional<config::DataInfo> info;
  if (!dir.empty()) info = data_info_read((fs::path(dir) / kDataInfoFile).string());
  return tokenizer_for_run(info, dir, model_vocab_size);
}

double bits_per_byte(double loss, int64_t tokens, int64_t bytes) {
  return loss * static_cast<double>(tokens) / (static_cast<double>(bytes) * std::log(2.0));
}

}  // namespace loom
