#include "core/data.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <tuple>

#include "base/error.h"
#include "base/regular_file.h"
#include "base/rng.h"
#include "core/tokenizer.h"

namespace loom {
namespace {

namespace fs = std::filesystem;

std::string errno_text() { return std::strerror(errno); }

std::string shard_name(const std::string& dir, const char* split, int index) {
  char name[64];
  std::snprintf(name, sizeof(name), "%s_%06d.bin", split, index);
  return (fs::path(dir) / name).string();
}

bool has_extension(const std::string& path, const std::vector<std::string>& extensions) {
  if (extensions.empty()) return true;
  for (const std::string& e : extensions)
    if (path.size() >= e.size() && path.compare(path.size() - e.size(), e.size(), e) == 0)
      return true;
  return false;
}

}  // namespace

Shard shard_open(const std::string& path) {
  int fd = open_regular_file(path, "shard");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw Error("cannot stat shard " + path + ": " + errno_text());
  }
  const size_t header_bytes = kShardHeaderInts * sizeof(int32_t);
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < header_bytes) {
    ::close(fd);
    throw Error("shard " + path + " is truncated: " + std::to_string(size) +
                " bytes, shorter than its 1024-byte header");
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (map == MAP_FAILED) {
    const std::string why = errno_text();
    ::close(fd);
    throw Error("cannot map shard " + path + ": " + why);
  }
  std::shared_ptr<int> file(new int(fd), [](int* f) {
    ::close(*f);
    delete f;
  });
  std::shared_ptr<void> mapping(map, [size](void* p) { ::munmap(p, size); });

  const int32_t* header = static_cast<const int32_t*>(map);
  if (header[0] != kShardMagic)
    throw Error("shard " + path + " is not a token shard: magic " + std::to_string(header[0]) +
                ", expected " + std::to_string(kShardMagic) + " (make shards with loom prepare)");
  if (header[1] != kShardVersion)
    throw Error("shard " + path + " has version " + std::to_string(header[1]) +
                "; loom reads version " + std::to_string(kShardVersion) + " (uint16 tokens)");
  if (header[2] < 0)
    throw Error("shard " + path + " has a negative token count in its header");
  const size_t expected = header_bytes + static_cast<size_t>(header[2]) * sizeof(uint16_t);
  if (size != expected)
    throw Error("shard " + path + " is " + (size < expected ? "truncated" : "corrupt") +
                ": its header promises " + std::to_string(header[2]) + " tokens (" +
                std::to_string(expected) + " bytes) but the file has " + std::to_string(size) +
                " bytes");
  Shard shard;
  shard.path = path;
  shard.num_tokens = static_cast<size_t>(header[2]);
  shard.tokens = reinterpret_cast<const uint16_t*>(static_cast<const char*>(map) + header_bytes);
  shard.mapping = std::move(mapping);
  shard.fd = std::move(file);
  shard.file_bytes = static_cast<int64_t>(st.st_size);
  shard.modified_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  return shard;
}

void shard_write(const std::string& path, const std::vector<uint16_t>& tokens) {
  if (tokens.size() > static_cast<size_t>(INT32_MAX))
    throw Error("shard " + path + " would hold more tokens than its int32 header can count");
  int32_t header[kShardHeaderInts] = {};
  header[0] = kShardMagic;
  header[1] = kShardVersion;
  header[2] = static_cast<int32_t>(tokens.size());
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error("cannot write " + tmp + ": " + errno_text());
    out.write(reinterpret_cast<const char*>(header), sizeof(header));
    out.write(reinterpret_cast<const char*>(tokens.data()),
              static_cast<std::streamsize>(tokens.size() * sizeof(uint16_t)));
    if (!out.flush()) throw Error("writing " + tmp + " failed: " + errno_text());
  }
  fs::rename(tmp, path);
}

std::vector<std::string> shard_paths(const std::string& pattern) {
  glob_t matches{};
  const int rc = ::glob(pattern.c_str(), 0, nullptr, &matches);
  std::vector<std::string> paths(matches.gl_pathv, matches.gl_pathv + matches.gl_pathc);
  globfree(&matches);
  if (rc == GLOB_NOMATCH || paths.empty())
    throw Error("no shard matches \"" + pattern + "\"" +
                (fs::path(pattern).is_absolute()
                     ? ""
                     : " (relative to " + fs::current_path().string() + ")") +
                "; create shards with `loom prepare` (./run.sh makes data/pystdlib) or fix "
                "data.train_shards / data.val_shards");
  if (rc != 0) throw Error("cannot list shards \"" + pattern + "\"");
  std::sort(paths.begin(), paths.end());
  return paths;
}

TokenDataset dataset_open(const std::string& pattern, int T, int vocab_size) {
  TokenDataset data;
  data.pattern = pattern;
  data.T = T;
  data.vocab_size = vocab_size;
  data.first_sequence.push_back(0);
  for (const std::string& path : shard_paths(pattern)) {
    Shard shard = shard_open(path);
    // Checked once here, so a bad token stops the run before it starts, not hours into it.
    uint16_t max_token = 0;
#pragma omp parallel for simd reduction(max : max_token)
    for (size_t i = 0; i < shard.num_tokens; ++i)
      max_token = shard.tokens[i] > max_token ? shard.tokens[i] : max_token;
    if (shard.num_tokens > 0 && max_token >= vocab_size) {
      const size_t at = static_cast<size_t>(
          std::find_if(shard.tokens, shard.tokens + shard.num_tokens,
                       [&](uint16_t t) { return t >= vocab_size; }) - shard.tokens);
      throw Error("shard " + path + " has token " + std::to_string(shard.tokens[at]) +
                  " at position " + std::to_string(at) + ", not below model.vocab_size " +
                  std::to_string(vocab_size) + " (corrupt shard, or made for another vocabulary)");
    }
    const int64_t sequences =
        shard.num_tokens > static_cast<size_t>(T) ? (shard.num_tokens - 1) / T : 0;
    data.first_sequence.push_back(data.first_sequence.back() + sequences);
    data.shards.push_back(std::move(shard));
  }
  if (data.num_sequences() == 0)
    throw Error("the shards matching \"" + pattern + "\" hold no sequence of " +
                std::to_string(T + 1) + " tokens; use more text or a smaller train.seq_len");
  return data;
}

void dataset_read_sequence(const TokenDataset& data, int64_t index, int* inputs, int* targets) {
  LOOM_CHECK(index >= 0 && index < data.num_sequences());
  const auto it = std::upper_bound(data.first_sequence.begin(), data.first_sequence.end(), index);
  const size_t s = static_cast<size_t>(it - data.first_sequence.begin()) - 1;
  const Shard& shard = data.shards[s];
  const size_t start = static_cast<size_t>(index - data.first_sequence[s]) * data.T;
  // A file written over in place (same size, other tokens) shows in its status: one fstat per
  // sequence read.
  struct stat st {};
  if (::fstat(*shard.fd, &st) == 0 &&
      (static_cast<int64_t>(st.st_size) != shard.file_bytes ||
       static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec !=
           shard.modified_ns))
    throw Error("shard " + shard.path +
                " changed while the run read it: it was written to after "
                "the run opened it (size or modification time differ); restore it, then --resume "
                "from the last checkpoint (the run directory's shards.crc holds every shard's "
                "CRC-32 as the run started)");
  // T + 1 tokens from the file, a block at a time; checked again, as the file may have changed.
  constexpr size_t kBlock = 4096;
  uint16_t block[kBlock];
  const size_t count = static_cast<size_t>(data.T) + 1;
  const off_t first = static_cast<off_t>(kShardHeaderInts * sizeof(int32_t) +
                                         start * sizeof(uint16_t));
  for (size_t done = 0; done < count;) {
    const size_t want = std::min(kBlock, count - done);
    const ssize_t got = ::pread(*shard.fd, block, want * sizeof(uint16_t),
                                first + static_cast<off_t>(done * sizeof(uint16_t)));
    if (got < 0 && errno == EINTR) continue;
    if (got != static_cast<ssize_t>(want * sizeof(uint16_t)))
      throw Error("shard " + shard.path + " changed while the run read it: " +
                  (got < 0 ? "read error: " + errno_text()
                           : "it is now shorter than when it was opened (truncated?)") +
                  "; restore it, then --resume from the last checkpoint");
    for (size_t i = 0; i < want; ++i) {
      const int token = block[i];
      if (token >= data.vocab_size)
        throw Error("shard " + shard.path + " changed while the run read it: token " +
                    std::to_string(token) + " at position " + std::to_string(start + done + i) +
                    " is not below model.vocab_size " + std::to_string(data.vocab_size) +
                    " (it was when the shard was opened); restore it, then --resume from the "
                    "last checkpoint");
      const size_t t = done + i;
      if (t < static_cast<size_t>(data.T)) inputs[t] = token;
      if (t > 0) targets[t - 1] = token;
    }
    done += want;
  }
}

int64_t loader_sequence_at(DataLoader& loader, int64_t position) {
  const int64_t n = loader.data->num_sequences();
  const int64_t epoch = position / n, index = position % n;
  if (!loader.shuffle) return index;
  if (loader.permuted_epoch != epoch) {
    // Fisher–Yates with a generator derived from (seed, epoch): any position can be reached
    // directly, which is what makes resuming exact.
    Rng rng{loader.seed ^ (0xD1B54A32D192ED03ull * static_cast<uint64_t>(epoch + 1))};
    loader.permutation.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) loader.permutation[i] = i;
    for (int64_t i = n - 1; i > 0; --i)
      std::swap(loader.permutation[i], loader.permutation[rng.below(static_cast<uint64_t>(i + 1))]);
    loader.permuted_epoch = epoch;
  }
  return loader.permutation[index];
}

void loader_next(DataLoader& loader, int* inputs, int* targets, int B) {
  const int T = loader.data->T;
  for (int b = 0; b < B; ++b) {
    const int64_t sequence = loader_sequence_at(loader, loader.position + b);
    dataset_read_sequence(*loader.data, sequence, inputs + static_cast<size_t>(b) * T,
                          targets + static_cast<size_t>(b) * T);
  }
  loader.position += B;
}

namespace {

// The files `loom prepare` reads: files given, and directories' files (recursively) whose names
// end in one of `extensions` (all when empty), sorted, each once.
std::vector<std::string> list_files(const std::vector<std::string>& inputs,
                                    const std::vector<std::string>& extensions) {
  std::vector<std::string> files;
  for (const std::string& input : inputs) {
    std::error_code ec;
    if (fs::is_directory(input, ec)) {
      for (auto it = fs::recursive_directory_iterator(
               input, fs::directory_options::skip_permission_denied, ec);
           !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (it->is_regular_file(ec) && has_extension(it->path().string(), extensions))
          files.push_back(it->path().string());
      }
      if (ec) throw Error("prepare: cannot walk " + input + ": " + ec.message());
    } else if (fs::is_regular_file(input, ec)) {
      files.push_back(input);
    } else {
      throw Error("prepare: input " + input + " is neither a file nor a directory");
    }
  }
  std::sort(files.begin(), files.end());
  files.erase(std::unique(files.begin(), files.end()), files.end());
  if (files.empty()) throw Error("prepare: the inputs hold no matching files");
  return files;
}

std::string read_document(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("prepare: cannot read " + path + ": " + errno_text());
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Document d goes to validation when ⌊(d + 1)·f⌋ > ⌊d·f⌋: exactly ⌊n·f⌋ of the first n.
bool is_validation(int64_t d, double val_fraction) {
  return std::floor((d + 1) * val_fraction) > std::floor(d * val_fraction);
}

// The tokenizer the shards will hold: bytes; a given SentencePiece model (copied beside the
// shards); or one trained on the training documents' non-empty lines.
Tokenizer prepare_tokenizer(const PrepareOptions& o, const std::vector<std::string>& files) {
  if (o.tokenizer == config::DataInfo::BYTES) return tokenizer_bytes();
  const std::string model_path = (fs::path(o.output_dir) / "tokenizer.model").string();
  if (!o.tokenizer_model.empty()) {
    tokenizer_sentencepiece(o.tokenizer_model);  // a file that is not a model fails here
    std::error_code ec;
    if (!fs::equivalent(o.tokenizer_model, model_path, ec))
      fs::copy_file(o.tokenizer_model, model_path, fs::copy_options::overwrite_existing);
  } else {
    std::vector<std::string> lines;
    for (size_t d = 0; d < files.size(); ++d) {
      if (is_validation(static_cast<int64_t>(d), o.val_fraction)) continue;
      std::istringstream text(read_document(files[d]));
      for (std::string line; std::getline(text, line);)
        if (!line.empty()) lines.push_back(std::move(line));
    }
    const std::string model = sentencepiece_train(lines, o.vocab_size, o.model_type);
    std::ofstream out(model_path, std::ios::binary | std::ios::trunc);
    out.write(model.data(), static_cast<std::streamsize>(model.size()));
    if (!out) throw Error("prepare: cannot write " + model_path);
  }
  const Tokenizer tok = tokenizer_sentencepiece(model_path);
  if (tok.vocab_size > kMaxShardVocabulary)
    throw Error("prepare: the SentencePiece model has " + std::to_string(tok.vocab_size) +
                " pieces, but shards store uint16 ids: at most " +
                std::to_string(kMaxShardVocabulary));
  return tok;
}

}  // namespace

PrepareResult prepare_text(const PrepareOptions& o) {
  if (o.inputs.empty()) throw Error("prepare: no --input given");
  if (!(o.val_fraction >= 0 && o.val_fraction < 1))  // NaN too
    throw Error("prepare: --val-fraction must be in [0, 1), got " + std::to_string(o.val_fraction));
  if (o.shard_tokens <= 0) throw Error("prepare: --shard-tokens must be positive");
  if (o.tokenizer == config::DataInfo::SENTENCEPIECE && o.tokenizer_model.empty()) {
    if (o.vocab_size > kMaxShardVocabulary)
      throw Error("prepare: --vocab-size " + std::to_string(o.vocab_size) +
                  " is more than shards can hold: they store uint16 ids, at most " +
                  std::to_string(kMaxShardVocabulary));
    if (o.model_type != "bpe" && o.model_type != "unigram")
      throw Error("prepare: --model-type must be bpe or unigram, got \"" + o.model_type + "\"");
  }
  const std::vector<std::string> files = list_files(o.inputs, o.extensions);

  std::error_code ec;
  if (fs::is_directory(o.output_dir, ec))
    for (const auto& entry : fs::directory_iterator(o.output_dir))
      if (entry.path().extension() == ".bin")
        throw Error("prepare: " + o.output_dir + " already holds shards (" +
                    entry.path().filename().string() +
                    "); remove them or choose another --output, so old and new data never mix");
  if (o.output_dir.empty()) throw Error("prepare: --output needs a folder name");
  if (fs::exists(o.output_dir, ec) && !fs::is_directory(o.output_dir, ec))
    throw Error("prepare: --output " + o.output_dir +
                " exists and is not a folder; name a folder for the shards");
  fs::create_directories(o.output_dir, ec);
  if (ec)
    throw Error("prepare: cannot create the --output folder " + o.output_dir + ": " + ec.message());
  const Tokenizer tok = prepare_tokenizer(o, files);

  PrepareResult result;
  result.vocab_size = tok.vocab_size;
  result.end_of_text = tok.end_of_text;
  std::vector<uint16_t> train, val;
  auto flush = [&](std::vector<uint16_t>& tokens, const char* split, int& count, bool force) {
    if (tokens.empty() || (!force && static_cast<int64_t>(tokens.size()) < o.shard_tokens)) return;
    shard_write(shard_name(o.output_dir, split, count++), tokens);
    tokens.clear();
  };
  for (const std::string& path : files) {
    const std::string text = read_document(path);
    const bool to_val = is_validation(result.documents, o.val_fraction);
    std::vector<uint16_t>& out = to_val ? val : train;
    const std::vector<int> ids = tokenizer_encode(tok, text);
    // The data must be the text: SentencePiece replaces invalid UTF-8, and a given model may
    // normalise.
    if (o.tokenizer == config::DataInfo::SENTENCEPIECE && tokenizer_decode(tok, ids) != text)
      throw Error("prepare: the SentencePiece model does not give " + path +
                  " back exactly (is it valid UTF-8? a --tokenizer-model may also normalise "
                  "text); convert the file, leave it out (--ext), or use --tokenizer bytes");
    for (int id : ids) out.push_back(static_cast<uint16_t>(id));
    out.push_back(static_cast<uint16_t>(tok.end_of_text));
    // A document's bytes, plus one for its end (so bytes and tokens match at byte level).
    (to_val ? result.val_tokens : result.train_tokens) += static_cast<int64_t>(ids.size()) + 1;
    (to_val ? result.val_bytes : result.train_bytes) += static_cast<int64_t>(text.size()) + 1;
    ++result.documents;
    flush(train, "train", result.train_shards, false);
    flush(val, "val", result.val_shards, false);
  }
  flush(train, "train", result.train_shards, true);
  flush(val, "val", result.val_shards, true);

  config::DataInfo info;
  info.set_tokenizer(o.tokenizer);
  info.set_vocab_size(tok.vocab_size);
  info.set_end_of_text(tok.end_of_text);
  if (o.tokenizer == config::DataInfo::SENTENCEPIECE) info.set_tokenizer_file("tokenizer.model");
  info.set_train_tokens(result.train_tokens);
  info.set_train_bytes(result.train_bytes);
  info.set_val_tokens(result.val_tokens);
  info.set_val_bytes(result.val_bytes);
  data_info_write((fs::path(o.output_dir) / kDataInfoFile).string(), info);
  return result;
}

void data_info_check(const config::DataInfo& info, const std::string& path) {
  auto refuse = [&](const std::string& what) {
    return Error("data description " + path + ": " + what +
                 " (corrupt or edited: remake the data with loom prepare)");
  };
  const int64_t V = info.vocab_size(), end = info.end_of_text();
  if (V < 1 || V > kMaxShardVocabulary)
    throw refuse("vocab_size " + std::to_string(V) + " is outside [1, " +
                 std::to_string(kMaxShardVocabulary) + "] (shards store uint16 ids)");
  if (end < 0 || end >= V)
    throw refuse("end_of_text " + std::to_string(end) + " is outside the vocabulary [0, " +
                 std::to_string(V) + ")");
  if (info.tokenizer() == config::DataInfo::BYTES && (V != kEndOfText + 1 || end != kEndOfText))
    throw refuse("a BYTES tokenizer has vocab_size " + std::to_string(kEndOfText + 1) +
                 " and end_of_text " + std::to_string(kEndOfText) + ", not " + std::to_string(V) +
                 " and " + std::to_string(end));
  const std::string& file = info.tokenizer_file();
  if (info.tokenizer() == config::DataInfo::SENTENCEPIECE &&
      (file.empty() || file.find('/') != std::string::npos || file == "." || file == ".."))
    throw refuse("tokenizer_file \"" + file + "\" is not the name of a file beside it");
  for (auto [split, tokens, bytes] : {std::tuple{"train", info.train_tokens(), info.train_bytes()},
                                      std::tuple{"val", info.val_tokens(), info.val_bytes()}}) {
    const std::string s(split);
    if (tokens < 0 || bytes < 0)
      throw refuse(s + "_tokens " + std::to_string(tokens) + " and " + s + "_bytes " +
                   std::to_string(bytes) + " must not be negative");
    if ((tokens == 0) != (bytes == 0))  // every document is at least one token and one byte
      throw refuse(s + "_tokens " + std::to_string(tokens) + " and " + s + "_bytes " +
                   std::to_string(bytes) + " disagree: a split with tokens has bytes of text");
  }
}

void data_info_check_shards(const config::DataInfo& info, const std::string& path,
                            const TokenDataset& data) {
  if (!info.has_train_tokens() && !info.has_val_tokens()) return;
  int64_t held = 0;
  for (const Shard& shard : data.shards) held += static_cast<int64_t>(shard.num_tokens);
  int64_t counted = 0;
  if (__builtin_add_overflow(info.train_tokens(), info.val_tokens(), &counted)) counted = INT64_MAX;
  if (held > counted)
    throw Error("data description " + path + " counts " + std::to_string(counted) +
                " tokens (train_tokens + val_tokens), but the shards matching \"" + data.pattern +
                "\" hold " + std::to_string(held) +
                ": it describes other shards (remake the data with loom prepare)");
}

}  // namespace loom
